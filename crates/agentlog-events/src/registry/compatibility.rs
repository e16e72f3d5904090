//! Compatibility levels and the check behind them, using apache-avro's schema resolution rules.
//!
//! Direction matters: BACKWARD means consumers upgraded to the new schema can still read data
//! written with the old ones (new = reader, old = writer); FORWARD means consumers still on an
//! old schema can read data written with the new one (old = reader, new = writer).

use std::fmt;
use std::str::FromStr;

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde::{Deserialize, Serialize};

use super::error::RegistryError;

/// Confluent's compatibility levels. The registry default is [`CompatibilityLevel::Backward`],
/// as in Confluent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
    None,
}

impl CompatibilityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityLevel::Backward => "BACKWARD",
            CompatibilityLevel::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityLevel::Forward => "FORWARD",
            CompatibilityLevel::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityLevel::Full => "FULL",
            CompatibilityLevel::FullTransitive => "FULL_TRANSITIVE",
            CompatibilityLevel::None => "NONE",
        }
    }

    /// Whether every earlier version is checked, not just the latest.
    fn transitive(self) -> bool {
        matches!(self, CompatibilityLevel::BackwardTransitive | CompatibilityLevel::ForwardTransitive | CompatibilityLevel::FullTransitive)
    }

    fn backward(self) -> bool {
        matches!(self, CompatibilityLevel::Backward | CompatibilityLevel::BackwardTransitive | CompatibilityLevel::Full | CompatibilityLevel::FullTransitive)
    }

    fn forward(self) -> bool {
        matches!(self, CompatibilityLevel::Forward | CompatibilityLevel::ForwardTransitive | CompatibilityLevel::Full | CompatibilityLevel::FullTransitive)
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = RegistryError;

    /// Case-insensitive, as Confluent accepts `backward` and `BACKWARD` alike.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_uppercase().as_str() {
            "BACKWARD" => CompatibilityLevel::Backward,
            "BACKWARD_TRANSITIVE" => CompatibilityLevel::BackwardTransitive,
            "FORWARD" => CompatibilityLevel::Forward,
            "FORWARD_TRANSITIVE" => CompatibilityLevel::ForwardTransitive,
            "FULL" => CompatibilityLevel::Full,
            "FULL_TRANSITIVE" => CompatibilityLevel::FullTransitive,
            "NONE" => CompatibilityLevel::None,
            _ => return Err(RegistryError::InvalidCompatibilityLevel { level: s.to_owned() }),
        })
    }
}

/// Checks `candidate` against the earlier versions of a subject (`previous`, oldest first,
/// soft-deleted versions already left out) and returns why it is incompatible; an empty list
/// means compatible. Non-transitive levels look at the latest version only.
pub fn check(level: CompatibilityLevel, candidate: &Schema, previous: &[(u32, &Schema)]) -> Vec<String> {
    let against: &[(u32, &Schema)] = if level.transitive() { previous } else { previous.last().map(std::slice::from_ref).unwrap_or(&[]) };
    let mut reasons = Vec::new();
    for (version, old) in against {
        if level.backward()
            && let Some(why) = can_read(old, candidate)
        {
            reasons.push(format!("the new schema cannot read data written with version {version}: {why}"));
        }
        if level.forward()
            && let Some(why) = can_read(candidate, old)
        {
            reasons.push(format!("version {version} cannot read data written with the new schema: {why}"));
        }
    }
    reasons
}

/// `None` when `reader` can always read what `writer` wrote. A partial match (an enum symbol or
/// union branch the reader lacks) counts as incompatible, as in Avro's Java checker that
/// Confluent uses: some records would fail to decode.
fn can_read(writer: &Schema, reader: &Schema) -> Option<String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => None,
        Ok(Compatibility::Partial) => Some("only partially compatible (an enum symbol or union branch of the writer is missing in the reader)".to_owned()),
        Err(e) => Some(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &str) -> Schema {
        Schema::parse_str(&format!(r#"{{"type":"record","name":"R","namespace":"t","fields":[{fields}]}}"#)).expect("test schema parses")
    }

    #[test]
    fn backward_allows_added_field_with_default_only() {
        let v1 = record(r#"{"name":"a","type":"string"}"#);
        let with_default = record(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#);
        let without_default = record(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        assert!(check(CompatibilityLevel::Backward, &with_default, &[(1, &v1)]).is_empty());
        assert_eq!(check(CompatibilityLevel::Backward, &without_default, &[(1, &v1)]).len(), 1);
        assert!(check(CompatibilityLevel::Forward, &without_default, &[(1, &v1)]).is_empty());
        assert!(check(CompatibilityLevel::None, &without_default, &[(1, &v1)]).is_empty());
        assert_eq!(check(CompatibilityLevel::Full, &without_default, &[(1, &v1)]).len(), 1);
    }

    #[test]
    fn transitive_checks_every_version() {
        let v1 = record(r#"{"name":"a","type":"string"}"#);
        let v2 = record(r#"{"name":"b","type":"int","default":0}"#);
        let v3 = record(r#"{"name":"b","type":"int","default":0},{"name":"c","type":"int","default":0}"#);
        // v3 reads v2 data; reading v1 data works too (every reader field has a default).
        assert!(check(CompatibilityLevel::BackwardTransitive, &v3, &[(1, &v1), (2, &v2)]).is_empty());
        // Forward: v1 (reader) needs `a`, which v3 lacks; only transitive notices.
        assert!(check(CompatibilityLevel::Forward, &v3, &[(1, &v1), (2, &v2)]).is_empty());
        assert_eq!(check(CompatibilityLevel::ForwardTransitive, &v3, &[(1, &v1), (2, &v2)]).len(), 1);
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!("full_transitive".parse::<CompatibilityLevel>().ok(), Some(CompatibilityLevel::FullTransitive));
        assert!(matches!("SIDEWAYS".parse::<CompatibilityLevel>(), Err(RegistryError::InvalidCompatibilityLevel { .. })));
    }
}
