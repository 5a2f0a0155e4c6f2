//! Instance ids: validation shared by every entry point.

/// Longest instance id accepted, as in Durable Functions.
pub const MAX_INSTANCE_ID_LEN: usize = 256;

/// Why an instance id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInstanceId {
    /// The id was empty.
    #[error("instance id must not be empty")]
    Empty,
    /// The id was longer than [`MAX_INSTANCE_ID_LEN`].
    #[error("instance id is {0} characters long; at most 256 are allowed")]
    TooLong(usize),
    /// The id starts with `@`, which Durable Functions reserves for entities.
    #[error("instance id must not start with '@'")]
    LeadingAt,
    /// The id contains a character that cannot appear in a URL path segment unescaped.
    #[error("instance id must not contain '/', '\\', '#', '?' or control characters (found {0:?})")]
    ForbiddenCharacter(char),
}

/// Checks a caller-chosen instance id against Durable Functions' rules.
pub fn validate_instance_id(id: &str) -> Result<(), InvalidInstanceId> {
    if id.is_empty() {
        return Err(InvalidInstanceId::Empty);
    }
    let len = id.chars().count();
    if len > MAX_INSTANCE_ID_LEN {
        return Err(InvalidInstanceId::TooLong(len));
    }
    if id.starts_with('@') {
        return Err(InvalidInstanceId::LeadingAt);
    }
    if let Some(c) = id.chars().find(|c| matches!(c, '/' | '\\' | '#' | '?') || c.is_control()) {
        return Err(InvalidInstanceId::ForbiddenCharacter(c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids_and_refuses_bad_ones() {
        assert!(validate_instance_id("order-42").is_ok());
        assert_eq!(validate_instance_id(""), Err(InvalidInstanceId::Empty));
        assert_eq!(validate_instance_id("@x"), Err(InvalidInstanceId::LeadingAt));
        assert_eq!(validate_instance_id("a/b"), Err(InvalidInstanceId::ForbiddenCharacter('/')));
        assert_eq!(validate_instance_id(&"x".repeat(257)), Err(InvalidInstanceId::TooLong(257)));
    }
}
