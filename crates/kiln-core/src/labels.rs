//! Labels: the business ids a starter attaches to an instance (`customer_id = cust-123`), kept
//! with it for its whole life, shown in its status and used to find it.
//!
//! A small map with limits, so that a label is cheap to index and safe to print: at most
//! [`MAX_LABELS`] labels; keys are identifiers (a letter, then letters, digits, `_`, `-` or `.`,
//! at most [`MAX_LABEL_KEY_LEN`]); values are 1 to [`MAX_LABEL_VALUE_LEN`] characters without
//! commas, control or formatting characters (line separators, bidirectional overrides), or
//! spaces at either end. A filter names one label as `key:value` ([`LabelFilter`]);
//! filters are listed with commas (`customer_id:cust-123,region:eu`), which is why a value holds
//! none.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most labels one instance carries.
pub const MAX_LABELS: usize = 16;
/// Longest label key, in characters.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value, in characters.
pub const MAX_LABEL_VALUE_LEN: usize = 256;

/// An instance's labels: validated keys and values, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(into = "BTreeMap<String, String>")]
pub struct Labels(BTreeMap<String, String>);

/// Stored labels are read as they were written: the rules are checked where labels come in
/// ([`Labels::new`]), so that tightening them never makes stored instances unreadable.
impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Labels, D::Error> {
        BTreeMap::deserialize(deserializer).map(Labels)
    }
}

/// Why labels were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLabel {
    /// More labels than [`MAX_LABELS`].
    #[error("at most {MAX_LABELS} labels are allowed, got {0}")]
    TooMany(usize),
    /// A key that is not an identifier.
    #[error(
        "label key '{0}' is invalid: use 1 to {MAX_LABEL_KEY_LEN} letters, digits, '_', '-' or '.', starting with a letter"
    )]
    Key(String),
    /// A value that is empty, too long, starts or ends with a space, or holds a comma or a
    /// control or formatting character.
    #[error(
        "label '{0}' has an invalid value: use 1 to {MAX_LABEL_VALUE_LEN} characters, without commas, control or \
         formatting characters, or spaces at either end"
    )]
    Value(String),
    /// A filter without the `key:value` shape.
    #[error("label filter '{0}' is not of the form key:value")]
    Filter(String),
}

impl Labels {
    /// Validates `labels`.
    pub fn new<K: Into<String>, V: Into<String>>(
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Labels, InvalidLabel> {
        let map: BTreeMap<String, String> = labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        Labels::try_from(map)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The labels in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The labels as a map.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

/// `key:value` pairs joined by commas, as filters name them (empty when there are none).
impl std::fmt::Display for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, (key, value)) in self.0.iter().enumerate() {
            write!(f, "{}{key}:{value}", if index == 0 { "" } else { "," })?;
        }
        Ok(())
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = InvalidLabel;

    fn try_from(map: BTreeMap<String, String>) -> Result<Labels, InvalidLabel> {
        if map.len() > MAX_LABELS {
            return Err(InvalidLabel::TooMany(map.len()));
        }
        for (key, value) in &map {
            validate_key(key)?;
            validate_value(key, value)?;
        }
        Ok(Labels(map))
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(labels: Labels) -> Self {
        labels.0
    }
}

fn validate_key(key: &str) -> Result<(), InvalidLabel> {
    let mut chars = key.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && key.len() <= MAX_LABEL_KEY_LEN;
    if valid { Ok(()) } else { Err(InvalidLabel::Key(printable(key))) }
}

fn validate_value(key: &str, value: &str) -> Result<(), InvalidLabel> {
    let count = value.chars().count();
    let trimmed = value.trim() == value;
    if (1..=MAX_LABEL_VALUE_LEN).contains(&count) && trimmed && !value.chars().any(|c| c == ',' || is_unsafe(c)) {
        Ok(())
    } else {
        Err(InvalidLabel::Value(key.to_owned()))
    }
}

/// Characters a value may not hold, as they could disguise a log line or a terminal: control
/// characters and [`is_layout_control`] ones.
fn is_unsafe(c: char) -> bool {
    c.is_control() || is_layout_control(c)
}

/// Line and paragraph separators, bidirectional marks, embeddings, overrides and isolates, and
/// invisible format characters (zero-width spaces and joiners, word joiner, byte-order mark, tag
/// characters): what can make a line read differently from what it holds.
pub fn is_layout_control(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{e0000}'..='\u{e007f}'
    )
}

/// A refused key as it can be shown in an error: shortened, control characters escaped.
fn printable(text: &str) -> String {
    let shown: String = text.chars().take(MAX_LABEL_KEY_LEN + 1).flat_map(char::escape_debug).collect();
    if text.chars().count() > MAX_LABEL_KEY_LEN + 1 { format!("{shown}…") } else { shown }
}

/// One label an instance must carry to be listed: `key:value` in query strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelFilter {
    /// The label's key.
    pub key: String,
    /// The value it must have.
    pub value: String,
}

impl std::str::FromStr for LabelFilter {
    type Err = InvalidLabel;

    /// Parses `key:value` (the value may itself hold `:`), with the rules labels follow.
    fn from_str(text: &str) -> Result<LabelFilter, InvalidLabel> {
        let (key, value) = text.split_once(':').ok_or_else(|| InvalidLabel::Filter(printable(text)))?;
        validate_key(key)?;
        validate_value(key, value)?;
        Ok(LabelFilter { key: key.to_owned(), value: value.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_labels_keep_key_order() {
        let labels = Labels::new([("region", "eu-west"), ("customer_id", "cust-123")]).unwrap();
        assert_eq!(labels.iter().collect::<Vec<_>>(), [("customer_id", "cust-123"), ("region", "eu-west")]);
        assert_eq!(serde_json::to_string(&labels).unwrap(), r#"{"customer_id":"cust-123","region":"eu-west"}"#);
        assert_eq!(labels.to_string(), "customer_id:cust-123,region:eu-west");
    }

    #[test]
    fn bad_labels_are_refused_with_the_reason() {
        let too_many = (0..=MAX_LABELS).map(|i| (format!("k{i}"), "v".to_owned()));
        assert_eq!(Labels::new(too_many), Err(InvalidLabel::TooMany(MAX_LABELS + 1)));
        for key in ["", "1st", "has space", "semi;colon", &"k".repeat(MAX_LABEL_KEY_LEN + 1)] {
            assert!(matches!(Labels::new([(key, "v")]), Err(InvalidLabel::Key(_))), "{key:?}");
        }
        for value in [
            "",
            "line\nbreak",
            "a,b",
            " padded",
            "padded ",
            "rtl\u{202e}",
            "sep\u{2028}",
            "alm\u{061c}",
            "zw\u{200b}",
            "bom\u{feff}",
            &"v".repeat(MAX_LABEL_VALUE_LEN + 1),
        ] {
            assert_eq!(Labels::new([("k", value)]), Err(InvalidLabel::Value("k".into())), "{value:?}");
        }
        assert!(Labels::new([("k", "é".repeat(MAX_LABEL_VALUE_LEN))]).is_ok());
        // Stored labels are trusted: reading them back does not apply rules tightened since.
        assert!(serde_json::from_str::<Labels>(r#"{"bad key":"v "}"#).is_ok());
    }

    #[test]
    fn filters_split_at_the_first_colon() {
        let filter: LabelFilter = "url:https://example.com".parse().unwrap();
        assert_eq!((filter.key.as_str(), filter.value.as_str()), ("url", "https://example.com"));
        assert_eq!("no-colon".parse::<LabelFilter>(), Err(InvalidLabel::Filter("no-colon".into())));
        assert_eq!("k:".parse::<LabelFilter>(), Err(InvalidLabel::Value("k".into())));
        assert!(matches!("9:v".parse::<LabelFilter>(), Err(InvalidLabel::Key(_))));
    }
}
