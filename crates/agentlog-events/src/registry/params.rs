//! The query parameters Confluent clients send, parsed the way Confluent's server parses them.
//!
//! Why one struct for every route: clients attach the same few flags to many endpoints
//! (confluent-kafka's Python client sends `normalize=False&deleted=False` on a lookup,
//! `deleted=false&deleted_only=false&offset=0&limit=-1` on a listing), and a flag means the
//! same thing wherever it appears. A handler reads the flags it honours; the rest are ignored,
//! as are parameters not listed here, as Confluent does.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A boolean query parameter. Confluent's server (JAX-RS) reads `true`/`false` in any case;
/// Python clients format booleans as `True`/`False`, Java and Go ones as `true`/`false`. Any
/// other value is rejected, naming the parameter, rather than read as `false`: a typo in
/// `permanent` or `deleted` should not silently change what a request does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flag(pub bool);

impl Flag {
    pub fn get(self) -> bool {
        self.0
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FlagVisitor;

        impl Visitor<'_> for FlagVisitor {
            type Value = Flag;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true or false (any case)")
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Flag, E> {
                Ok(Flag(value))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Flag, E> {
                if value.eq_ignore_ascii_case("true") {
                    Ok(Flag(true))
                } else if value.eq_ignore_ascii_case("false") {
                    Ok(Flag(false))
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(value), &self))
                }
            }
        }

        // Query values arrive as strings; `deserialize_str` keeps serde_urlencoded from
        // trying its own (lowercase-only) boolean parse first.
        deserializer.deserialize_str(FlagVisitor)
    }
}

/// Every boolean query parameter of Confluent's REST API that agentlog's registry knows.
/// Names are Confluent's; `deleted_only` is accepted in both spellings clients use.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct QueryParams {
    /// Include soft-deleted subjects or versions.
    pub deleted: Flag,
    /// Only soft-deleted subjects or versions.
    #[serde(alias = "deletedOnly")]
    pub deleted_only: Flag,
    /// Compatibility checks: list why a schema is incompatible.
    pub verbose: Flag,
    /// Register/lookup/compatibility: normalize the schema first. Accepted and needs nothing
    /// more: schemas are always compared by their parsed form here.
    pub normalize: Flag,
    /// Deletes: hard delete instead of soft delete (not supported: ids must stay readable).
    pub permanent: Flag,
    /// `GET /config/{subject}`: fall back to the global level. This registry always does.
    #[serde(rename = "defaultToGlobal")]
    pub default_to_global: Flag,
    /// Schema by id: also look among deleted schemas. Ids survive soft deletes here anyway.
    #[serde(rename = "lookupDeletedSchema")]
    pub lookup_deleted_schema: Flag,
    /// Schema by id: also answer the highest id (`maxId`).
    #[serde(rename = "fetchMaxId")]
    pub fetch_max_id: Flag,
}

/// Which subjects or versions a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Live,
    /// Live and soft-deleted (`deleted=true`).
    All,
    /// Soft-deleted only (`deleted_only=true`, which wins over `deleted`, as in Confluent).
    DeletedOnly,
}

impl QueryParams {
    pub fn visibility(&self) -> Visibility {
        match (self.deleted_only.get(), self.deleted.get()) {
            (true, _) => Visibility::DeletedOnly,
            (false, true) => Visibility::All,
            (false, false) => Visibility::Live,
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::Query;
    use axum::http::Uri;

    use super::*;

    fn parse(query: &str) -> Result<QueryParams, String> {
        let uri: Uri = format!("/x?{query}").parse().map_err(|e| format!("{e}"))?;
        Query::<QueryParams>::try_from_uri(&uri).map(|Query(p)| p).map_err(|e| e.body_text())
    }

    #[test]
    fn booleans_in_any_case() {
        for (text, expected) in [("true", true), ("True", true), ("TRUE", true), ("false", false), ("False", false), ("fAlSe", false)] {
            let params = parse(&format!("deleted={text}&verbose={text}")).expect("a boolean");
            assert_eq!((params.deleted.get(), params.verbose.get()), (expected, expected), "{text}");
        }
    }

    #[test]
    fn unknown_parameters_are_ignored_and_absent_ones_are_false() {
        let params = parse("offset=0&limit=-1&subjectPrefix=x&format=resolved").expect("ignored");
        assert!(!params.deleted.get() && !params.deleted_only.get() && !params.fetch_max_id.get());
        assert!(parse("deletedOnly=True").expect("camelCase alias").deleted_only.get());
        assert!(parse("fetchMaxId=true").expect("Confluent's name").fetch_max_id.get());
    }

    #[test]
    fn a_malformed_boolean_names_the_parameter() {
        let error = parse("normalize=False&deleted=yes").expect_err("not a boolean");
        assert!(error.contains("deleted") && error.contains("yes"), "{error}");
    }
}
