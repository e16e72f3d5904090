//! The topic catalog (`topics/catalog.toml`) and applying it to a backend.
//!
//! `apply` creates missing topics and then compares every catalog topic with what the backend
//! reports. Differences are drift: they are reported per topic and fail the command, because
//! a changed partition count moves keys between partitions and a changed cleanup policy
//! deletes data; a person should decide.

use serde::Deserialize;

use crate::log::{Admin, CleanupPolicy, LogError, TopicDescription, TopicSpec};

const CATALOG: &str = include_str!("../topics/catalog.toml");

#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("topic catalog is invalid: {0}")]
    Catalog(String),
    #[error("topic catalog and cluster differ:\n{}", .0.iter().map(|d| format!("  - {d}")).collect::<Vec<_>>().join("\n"))]
    Drift(Vec<Drift>),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// One difference between the catalog and the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub topic: String,
    pub difference: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.topic, self.difference)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    topic: Vec<CatalogTopic>,
}

/// A catalog entry: a topic spec plus documentation of its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogTopic {
    pub name: String,
    pub partitions: i32,
    #[serde(default)]
    pub replication_factor: Option<i16>,
    #[serde(default)]
    pub retention_ms: Option<i64>,
    #[serde(default)]
    pub retention_bytes: Option<i64>,
    #[serde(default)]
    pub cleanup_policy: CleanupPolicy,
    pub key: String,
    pub description: String,
}

/// The catalog with names prefixed and replication resolved.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub topics: Vec<(TopicSpec, CatalogTopic)>,
}

impl Catalog {
    /// The catalog shipped in the binary.
    pub fn builtin(prefix: &str, default_replication: i16) -> Result<Catalog, TopicsError> {
        Self::parse(CATALOG, prefix, default_replication)
    }

    pub fn parse(text: &str, prefix: &str, default_replication: i16) -> Result<Catalog, TopicsError> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| TopicsError::Catalog(e.to_string()))?;
        let mut topics = Vec::with_capacity(file.topic.len());
        for entry in file.topic {
            if entry.partitions < 1 {
                return Err(TopicsError::Catalog(format!("topic `{}`: partitions must be at least 1", entry.name)));
            }
            let mut spec = TopicSpec::new(format!("{prefix}{}", entry.name), entry.partitions);
            spec.replication_factor = entry.replication_factor.unwrap_or(default_replication);
            spec.retention_ms = entry.retention_ms;
            spec.retention_bytes = entry.retention_bytes;
            spec.cleanup_policy = entry.cleanup_policy;
            topics.push((spec, entry));
        }
        Ok(Catalog { topics })
    }

    pub fn specs(&self) -> impl Iterator<Item = &TopicSpec> {
        self.topics.iter().map(|(spec, _)| spec)
    }
}

/// What `apply` did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created(String),
    Unchanged(String),
}

/// Creates the missing topics of `specs`, then fails with every drift found.
pub async fn apply<'a>(admin: &dyn Admin, specs: impl IntoIterator<Item = &'a TopicSpec>) -> Result<Vec<Applied>, TopicsError> {
    let mut applied = Vec::new();
    let mut drift = Vec::new();
    for spec in specs {
        match admin.describe_topic(&spec.name).await {
            Ok(actual) => {
                drift.extend(compare(spec, &actual));
                applied.push(Applied::Unchanged(spec.name.clone()));
            }
            Err(LogError::UnknownTopic { .. }) => match admin.create_topic(spec).await {
                Ok(()) | Err(LogError::TopicExists { .. }) => applied.push(Applied::Created(spec.name.clone())),
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
    if drift.is_empty() { Ok(applied) } else { Err(TopicsError::Drift(drift)) }
}

/// Every difference between what the catalog wants and what the backend has.
pub fn compare(spec: &TopicSpec, actual: &TopicDescription) -> Vec<Drift> {
    let mut out = Vec::new();
    let mut differ = |difference: String| out.push(Drift { topic: spec.name.clone(), difference });
    if actual.partitions < spec.partitions {
        differ(format!("has {} partitions, the catalog wants {} (adding partitions moves keys; do it deliberately)", actual.partitions, spec.partitions));
    } else if actual.partitions > spec.partitions {
        differ(format!("has {} partitions, the catalog wants {}", actual.partitions, spec.partitions));
    }
    if actual.cleanup_policy != spec.cleanup_policy {
        differ(format!("cleanup policy is {}, the catalog wants {}", actual.cleanup_policy.as_str(), spec.cleanup_policy.as_str()));
    }
    if actual.replication_factor != spec.replication_factor {
        differ(format!("replication factor is {}, the catalog wants {}", actual.replication_factor, spec.replication_factor));
    }
    if actual.retention_ms != spec.retention_ms {
        differ(format!("retention.ms is {:?}, the catalog wants {:?}", actual.retention_ms, spec.retention_ms));
    }
    if actual.retention_bytes != spec.retention_bytes {
        differ(format!("retention.bytes is {:?}, the catalog wants {:?}", actual.retention_bytes, spec.retention_bytes));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_with_prefix() {
        let catalog = Catalog::builtin("agentlog.", 1).expect("catalog parses");
        let names: Vec<&str> = catalog.specs().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"agentlog.task.results"), "{names:?}");
        let schemas = catalog.specs().find(|s| s.name == "agentlog.schemas").expect("schemas topic");
        assert_eq!(schemas.cleanup_policy, CleanupPolicy::Compact);
        let control = catalog.specs().find(|s| s.name == "agentlog.control").expect("control topic");
        assert_eq!(control.partitions, 1);
    }

    #[test]
    fn unknown_catalog_key_is_rejected() {
        let err = Catalog::parse("[[topic]]\nname='x'\npartitions=1\nkey='k'\ndescription='d'\nretention='1d'\n", "", 1).expect_err("unknown key");
        assert!(err.to_string().contains("retention"), "{err}");
    }

    #[test]
    fn compare_names_each_difference() {
        let spec = TopicSpec { cleanup_policy: CleanupPolicy::Compact, ..TopicSpec::new("t", 6) };
        let actual = TopicDescription {
            name: "t".into(),
            partitions: 3,
            replication_factor: 1,
            cleanup_policy: CleanupPolicy::Delete,
            retention_ms: None,
            retention_bytes: None,
        };
        let drift = compare(&spec, &actual);
        assert_eq!(drift.len(), 2, "{drift:?}");
        assert!(drift[0].to_string().contains("t: has 3 partitions, the catalog wants 6"), "{}", drift[0]);
        assert!(drift[1].to_string().contains("cleanup policy is delete, the catalog wants compact"), "{}", drift[1]);
    }
}
