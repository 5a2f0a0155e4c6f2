//! Instance ids and event names: validation shared by every entry point.

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
    /// The id is `.` or `..`, whose links change meaning when clients normalise paths.
    #[error("instance id must not be '.' or '..'")]
    DotSegment,
}

/// Longest external event name accepted.
pub const MAX_EVENT_NAME_LEN: usize = 256;

/// Why an external event name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEventName {
    /// The name was empty.
    #[error("event name must not be empty")]
    Empty,
    /// The name was longer than [`MAX_EVENT_NAME_LEN`].
    #[error("event name is {0} characters long; at most 256 are allowed")]
    TooLong(usize),
    /// The name contains a control character (a NUL, a line break…).
    #[error("event name must not contain control characters (found {0:?})")]
    ControlCharacter(char),
    /// The name is `.` or `..`, whose links (`sendEventPostUri`) change meaning when clients
    /// normalise paths.
    #[error("event name must not be '.' or '..'")]
    DotSegment,
}

/// Checks the name of an external event raised from outside.
pub fn validate_event_name(name: &str) -> Result<(), InvalidEventName> {
    if name.is_empty() {
        return Err(InvalidEventName::Empty);
    }
    let len = name.chars().count();
    if len > MAX_EVENT_NAME_LEN {
        return Err(InvalidEventName::TooLong(len));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(InvalidEventName::ControlCharacter(c));
    }
    if name == "." || name == ".." {
        return Err(InvalidEventName::DotSegment);
    }
    Ok(())
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
    if id == "." || id == ".." {
        return Err(InvalidInstanceId::DotSegment);
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
        assert_eq!(validate_instance_id("."), Err(InvalidInstanceId::DotSegment));
        assert_eq!(validate_instance_id(".."), Err(InvalidInstanceId::DotSegment));
        assert!(validate_instance_id("...").is_ok() && validate_instance_id(".x").is_ok());
    }

    #[test]
    fn accepts_ordinary_event_names_and_refuses_bad_ones() {
        assert!(validate_event_name("Approval").is_ok());
        assert!(validate_event_name("s1-i0.0/g0/s1 ünïcode").is_ok());
        assert_eq!(validate_event_name(""), Err(InvalidEventName::Empty));
        assert_eq!(validate_event_name("a\0b"), Err(InvalidEventName::ControlCharacter('\0')));
        assert_eq!(validate_event_name("a\r\nb"), Err(InvalidEventName::ControlCharacter('\r')));
        assert_eq!(validate_event_name(&"x".repeat(5_000)), Err(InvalidEventName::TooLong(5_000)));
        assert_eq!(validate_event_name(".."), Err(InvalidEventName::DotSegment));
    }
}
