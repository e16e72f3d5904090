//! The registry's changes as stored: one JSON record per change on the schemas topic, keyed
//! for compaction. [`super::state::State`] applies them; [`super::storage`] reads and writes them.

use serde::{Deserialize, Serialize};

use super::compatibility::CompatibilityLevel;

/// One change, as JSON in a record's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredEvent {
    /// A subject version (new, or re-written with `deleted: true` by a soft delete). Carries the
    /// schema text itself so the record alone, after compaction, restores the id's schema.
    Schema { subject: String, version: u32, id: u32, schema: String, deleted: bool },
    /// A compatibility level; `subject: None` is the global level.
    Config { subject: Option<String>, compatibility: CompatibilityLevel },
}

impl StoredEvent {
    /// The compaction key.
    pub fn key(&self) -> String {
        match self {
            StoredEvent::Schema { subject, version, .. } => format!("schema/{subject}/{version}"),
            StoredEvent::Config { subject: Some(subject), .. } => format!("config/{subject}"),
            StoredEvent::Config { subject: None, .. } => "config".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_json_shape() {
        let e = StoredEvent::Schema { subject: "a/b".into(), version: 2, id: 7, schema: "\"string\"".into(), deleted: false };
        assert_eq!(e.key(), "schema/a/b/2");
        let json = serde_json::to_string(&e).expect("encodes");
        assert!(json.contains(r#""kind":"schema""#), "{json}");
        assert_eq!(serde_json::from_str::<StoredEvent>(&json).ok(), Some(e));
        let c = StoredEvent::Config { subject: None, compatibility: CompatibilityLevel::FullTransitive };
        assert_eq!(c.key(), "config");
        assert!(serde_json::to_string(&c).expect("encodes").contains("FULL_TRANSITIVE"));
    }
}
