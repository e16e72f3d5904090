//! The registry's in-memory view, rebuilt from the schemas topic.
//!
//! Only [`State::apply`] changes it, and only the tail task calls `apply`, in log order: the
//! state is a pure function of the topic, so every instance reading the same topic converges
//! on the same subjects, versions and ids, and a restart replays to exactly what was written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use apache_avro::Schema;

use super::compatibility::CompatibilityLevel;
use super::error::RegistryError;
use super::limits::SchemaLimits;
use super::stored_event::StoredEvent;

/// One schema, by global id. Ids are never removed, so data written with a since-deleted
/// version stays decodable (`GET /schemas/ids/{id}` keeps answering).
#[derive(Debug, Clone)]
pub struct SchemaEntry {
    /// The text as first registered (what clients get back).
    pub raw: String,
    /// The parsed schema, for compatibility checks.
    pub parsed: Arc<Schema>,
    /// The key identical schemas share, whatever their whitespace or field order in JSON.
    pub normalized: String,
}

/// One version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionEntry {
    pub id: u32,
    pub deleted: bool,
}

/// A subject's version as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
}

/// Which version a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSelector {
    Latest,
    Number(u32),
}

impl VersionSelector {
    /// Parses Confluent's version path segment: `latest`, `-1` (also latest) or 1..=2^31-1.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        if s.eq_ignore_ascii_case("latest") || s == "-1" {
            return Ok(VersionSelector::Latest);
        }
        match s.parse::<u32>() {
            Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(VersionSelector::Number(n)),
            _ => Err(RegistryError::InvalidVersion { version: s.to_owned() }),
        }
    }
}

#[derive(Debug, Default)]
pub struct State {
    /// What a stored schema must stay within to be parsed at all (see [`State::apply`]).
    limits: SchemaLimits,
    /// The highest id of a stored schema skipped for its limits: never given out again, since
    /// records on other topics may carry it.
    skipped_max_id: u32,
    schemas: BTreeMap<u32, SchemaEntry>,
    ids_by_normalized: HashMap<String, u32>,
    subjects: BTreeMap<String, BTreeMap<u32, VersionEntry>>,
    global_level: Option<CompatibilityLevel>,
    subject_levels: HashMap<String, CompatibilityLevel>,
}

/// Parses an Avro schema and computes its identity key. The key is the parsed schema written
/// back as JSON by apache-avro, so formatting differences do not create new ids, while defaults,
/// docs and aliases (which Parsing Canonical Form would drop) still distinguish schemas.
pub fn parse_schema(raw: &str) -> Result<(Schema, String), RegistryError> {
    let parsed = Schema::parse_str(raw).map_err(|e| RegistryError::InvalidSchema { reason: e.to_string() })?;
    let normalized = serde_json::to_string(&parsed).map_err(|e| RegistryError::InvalidSchema { reason: e.to_string() })?;
    Ok((parsed, normalized))
}

impl State {
    pub fn with_limits(limits: SchemaLimits) -> State {
        State { limits, ..State::default() }
    }

    /// Applies one event from the topic. Events are trusted to be well-formed (the registry
    /// wrote them); one that does not parse is logged and skipped rather than wedging the tail.
    /// A schema over the limits (only an older version could have written it) is not even
    /// parsed: the version is skipped with a warning, and its id is not reused.
    pub fn apply(&mut self, event: StoredEvent) {
        match event {
            StoredEvent::Schema { subject, version, id, schema, deleted } => {
                if !self.schemas.contains_key(&id)
                    && let Err(refused) = self.limits.check(&schema)
                {
                    tracing::warn!(%subject, version, id, reason = %refused, "skipping a stored schema over the registry's limits");
                    self.skipped_max_id = self.skipped_max_id.max(id);
                    return;
                }
                if !self.schemas.contains_key(&id) {
                    let (parsed, normalized) = match parse_schema(&schema) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(%subject, version, id, error = %e, "stored schema does not parse; keeping it as text");
                            (Schema::Null, schema.clone())
                        }
                    };
                    self.ids_by_normalized.entry(normalized.clone()).or_insert(id);
                    self.schemas.insert(id, SchemaEntry { raw: schema, parsed: Arc::new(parsed), normalized });
                }
                self.subjects.entry(subject).or_default().insert(version, VersionEntry { id, deleted });
            }
            StoredEvent::Config { subject: None, compatibility } => self.global_level = Some(compatibility),
            StoredEvent::Config { subject: Some(subject), compatibility } => {
                self.subject_levels.insert(subject, compatibility);
            }
        }
    }

    /// The id the next new schema gets: one past the highest ever used (ids start at 1).
    pub fn next_id(&self) -> u32 {
        self.schemas.keys().next_back().copied().unwrap_or(0).max(self.skipped_max_id) + 1
    }

    pub fn schema(&self, id: u32) -> Option<&SchemaEntry> {
        self.schemas.get(&id)
    }

    pub fn id_for(&self, normalized: &str) -> Option<u32> {
        self.ids_by_normalized.get(normalized).copied()
    }

    /// Subjects that have at least one live version (or any version with `include_deleted`).
    pub fn subjects(&self, include_deleted: bool) -> Vec<String> {
        self.subjects.iter().filter(|(_, versions)| include_deleted || versions.values().any(|v| !v.deleted)).map(|(name, _)| name.clone()).collect()
    }

    /// A subject's versions, ascending; `SubjectNotFound` when none is visible.
    pub fn versions(&self, subject: &str, include_deleted: bool) -> Result<Vec<(u32, VersionEntry)>, RegistryError> {
        let versions: Vec<(u32, VersionEntry)> =
            self.subjects.get(subject).map(|vs| vs.iter().filter(|(_, v)| include_deleted || !v.deleted).map(|(n, v)| (*n, *v)).collect()).unwrap_or_default();
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound { subject: subject.to_owned() });
        }
        Ok(versions)
    }

    /// The highest version number ever used by the subject, deleted ones included, so a
    /// deleted version number is never reused.
    pub fn max_version(&self, subject: &str) -> u32 {
        self.subjects.get(subject).and_then(|vs| vs.keys().next_back().copied()).unwrap_or(0)
    }

    pub fn version(&self, subject: &str, which: VersionSelector, include_deleted: bool) -> Result<SubjectVersion, RegistryError> {
        let versions = self.versions(subject, include_deleted)?;
        let found = match which {
            VersionSelector::Latest => versions.last().copied(),
            VersionSelector::Number(n) => versions.iter().find(|(v, _)| *v == n).copied(),
        };
        let (version, entry) = found.ok_or_else(|| RegistryError::VersionNotFound {
            subject: subject.to_owned(),
            version: match which {
                VersionSelector::Latest => "latest".to_owned(),
                VersionSelector::Number(n) => n.to_string(),
            },
        })?;
        self.subject_version(subject, version, entry)
    }

    fn subject_version(&self, subject: &str, version: u32, entry: VersionEntry) -> Result<SubjectVersion, RegistryError> {
        let schema = self.schemas.get(&entry.id).ok_or(RegistryError::SchemaNotFound)?;
        Ok(SubjectVersion { subject: subject.to_owned(), version, id: entry.id, schema: schema.raw.clone() })
    }

    /// The live version of `subject` whose schema is identical to `normalized`, if any.
    pub fn find_in_subject(&self, subject: &str, normalized: &str, include_deleted: bool) -> Option<SubjectVersion> {
        let id = self.id_for(normalized)?;
        let versions = self.subjects.get(subject)?;
        let (version, entry) = versions.iter().rfind(|(_, v)| v.id == id && (include_deleted || !v.deleted))?;
        self.subject_version(subject, *version, *entry).ok()
    }

    /// `(subject, version)` pairs using schema `id`, deleted ones left out unless asked for.
    pub fn usages(&self, id: u32, include_deleted: bool) -> Vec<(String, u32)> {
        self.subjects
            .iter()
            .flat_map(|(subject, versions)| {
                versions.iter().filter(move |(_, v)| v.id == id && (include_deleted || !v.deleted)).map(move |(n, _)| (subject.clone(), *n))
            })
            .collect()
    }

    /// The level that applies to `subject`: its own, else the global one, else BACKWARD.
    pub fn level(&self, subject: Option<&str>) -> CompatibilityLevel {
        subject.and_then(|s| self.subject_levels.get(s).copied()).or(self.global_level).unwrap_or_default()
    }

    /// Live versions of a subject with their parsed schemas, oldest first (the compatibility
    /// check's input).
    pub fn live_schemas(&self, subject: &str) -> Vec<(u32, Arc<Schema>)> {
        self.subjects
            .get(subject)
            .map(|vs| vs.iter().filter(|(_, v)| !v.deleted).filter_map(|(n, v)| self.schemas.get(&v.id).map(|s| (*n, Arc::clone(&s.parsed)))).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
    const S1_SPACED: &str = r#"{ "type": "record", "name": "R", "fields": [ { "name": "a", "type": "string" } ] }"#;

    fn schema_event(subject: &str, version: u32, id: u32, schema: &str, deleted: bool) -> StoredEvent {
        StoredEvent::Schema { subject: subject.into(), version, id, schema: schema.into(), deleted }
    }

    #[test]
    fn replayed_events_rebuild_subjects_ids_and_levels() {
        let mut state = State::default();
        state.apply(schema_event("s", 1, 1, S1, false));
        state.apply(schema_event("other", 1, 1, S1, false));
        state.apply(StoredEvent::Config { subject: Some("s".into()), compatibility: CompatibilityLevel::Full });
        assert_eq!(state.next_id(), 2);
        assert_eq!(state.subjects(false), vec!["other".to_string(), "s".to_string()]);
        assert_eq!(state.usages(1, false).len(), 2);
        assert_eq!(state.level(Some("s")), CompatibilityLevel::Full);
        assert_eq!(state.level(Some("other")), CompatibilityLevel::Backward);
        let (_, normalized) = parse_schema(S1_SPACED).expect("parses");
        assert_eq!(state.find_in_subject("s", &normalized, false).map(|v| v.id), Some(1));

        state.apply(schema_event("s", 1, 1, S1, true));
        assert!(matches!(state.versions("s", false), Err(RegistryError::SubjectNotFound { .. })));
        assert_eq!(state.max_version("s"), 1);
        assert_eq!(state.subjects(false), vec!["other".to_string()]);
        assert!(state.schema(1).is_some(), "ids outlive deleted versions");
    }

    #[test]
    fn a_stored_schema_over_the_limits_is_skipped_and_its_id_kept_out_of_use() {
        let mut state = State::default();
        let recursive = r#"{"type":"record","name":"R","fields":[{"name":"r","type":"R"}]}"#;
        state.apply(schema_event("s", 1, 7, recursive, false));
        assert!(state.schema(7).is_none());
        assert!(matches!(state.versions("s", true), Err(RegistryError::SubjectNotFound { .. })));
        assert_eq!(state.next_id(), 8);
        state.apply(schema_event("s", 2, 8, S1, false));
        assert_eq!(state.version("s", VersionSelector::Latest, false).map(|v| v.id).ok(), Some(8));
    }

    #[test]
    fn version_selector_parses_confluent_forms() {
        assert_eq!(VersionSelector::parse("latest").ok(), Some(VersionSelector::Latest));
        assert_eq!(VersionSelector::parse("-1").ok(), Some(VersionSelector::Latest));
        assert_eq!(VersionSelector::parse("3").ok(), Some(VersionSelector::Number(3)));
        for bad in ["0", "abc", "-2", "4294967295"] {
            assert!(matches!(VersionSelector::parse(bad), Err(RegistryError::InvalidVersion { .. })), "{bad}");
        }
    }
}
