//! `schemas check`: the gate that keeps every schema change FULL compatible with the last
//! released set (`schemas/released/`).
//!
//! FULL, not just BACKWARD, because consumers and producers upgrade independently: a new
//! consumer must read what old producers wrote (BACKWARD) and an old consumer must read what
//! new producers write (FORWARD). apache-avro's `SchemaCompatibility` is the authority; its
//! errors rarely say which field broke, so a field-level diff of the common cases (field added
//! or removed without a default, type changed, enum symbols changed) runs first and names the
//! field, and apache-avro's verdict is reported as-is only for what the diff did not explain.

mod diff;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};

/// Which reader breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Readers of the new schema cannot read data written with the released one.
    Backward,
    /// Readers of the released schema cannot read data written with the new one.
    Forward,
    /// Both.
    Full,
}

impl Rule {
    fn consequence(self) -> &'static str {
        match self {
            Rule::Backward => "readers of the new schema cannot read old data",
            Rule::Forward => "readers of the released schema cannot read new data",
            Rule::Full => "neither version can read the other's data",
        }
    }

    fn from_directions(backward: bool, forward: bool) -> Option<Rule> {
        match (backward, forward) {
            (true, true) => Some(Rule::Full),
            (true, false) => Some(Rule::Backward),
            (false, true) => Some(Rule::Forward),
            (false, false) => None,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Backward => "BACKWARD",
            Rule::Forward => "FORWARD",
            Rule::Full => "FULL",
        })
    }
}

/// One incompatible change, naming the schema (full name), the field (a dotted path such as
/// `meta.tenant`) and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incompatibility {
    #[error(
        "{schema}: released schema file `{file}` was removed: data written with it and consumers \
         still using it are left without a schema (FULL); deprecate an event type, never delete it"
    )]
    SchemaRemoved { schema: String, file: String },
    #[error(
        "{schema}: field `{field}` was added without a default: {} ({})",
        Rule::Backward.consequence(), Rule::Backward
    )]
    FieldAddedWithoutDefault { schema: String, field: String },
    #[error(
        "{schema}: field `{field}` was removed but has no default in the released schema: {} ({})",
        Rule::Forward.consequence(), Rule::Forward
    )]
    FieldRemovedWithoutDefault { schema: String, field: String },
    #[error("{schema}: field `{field}` changed type from `{old}` to `{new}`: {} ({rule})", rule.consequence())]
    TypeChanged { schema: String, field: String, old: String, new: String, rule: Rule },
    #[error(
        "{schema}: field `{field}`: enum symbol(s) {symbols:?} removed and the new enum has no \
         default: {} that holds them ({})",
        Rule::Backward.consequence(), Rule::Backward
    )]
    EnumSymbolRemoved { schema: String, field: String, symbols: Vec<String> },
    #[error(
        "{schema}: field `{field}`: enum symbol(s) {symbols:?} added but the released enum has no \
         default: {} that holds them ({})",
        Rule::Forward.consequence(), Rule::Forward
    )]
    EnumSymbolAdded { schema: String, field: String, symbols: Vec<String> },
    #[error("{schema}: {} ({rule}): {detail}", rule.consequence())]
    Other { schema: String, rule: Rule, detail: String },
}

impl Incompatibility {
    /// The rule the change breaks.
    pub fn rule(&self) -> Rule {
        match self {
            Incompatibility::SchemaRemoved { .. } => Rule::Full,
            Incompatibility::FieldAddedWithoutDefault { .. } | Incompatibility::EnumSymbolRemoved { .. } => Rule::Backward,
            Incompatibility::FieldRemovedWithoutDefault { .. } | Incompatibility::EnumSymbolAdded { .. } => Rule::Forward,
            Incompatibility::TypeChanged { rule, .. } | Incompatibility::Other { rule, .. } => *rule,
        }
    }
}

/// Why `schemas check` failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read schema directory {}: {source}", path.display())]
    ReadDir { path: PathBuf, source: std::io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not a valid Avro schema: {source}", path.display())]
    Parse { path: PathBuf, source: Box<apache_avro::Error> },
    #[error("{} is not a named schema (an event must be a record)", path.display())]
    Unnamed { path: PathBuf },
    #[error("{} incompatible schema change(s) against the released set:\n  {}",
        .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Incompatible(Vec<Incompatibility>),
}

/// Checks every `*.avsc` in `released_dir` against the file of the same name in
/// `working_dir`: both must read each other's data (FULL), and none may be missing. Every
/// working file must parse too; files that are new in `working_dir` are otherwise free.
/// Reports every incompatibility found, not just the first, so one CI run shows them all.
pub fn check_evolution(working_dir: &Path, released_dir: &Path) -> Result<(), CheckError> {
    let working = list_avsc(working_dir)?;
    let released = list_avsc(released_dir)?;
    let mut found = Vec::new();
    for file in &working {
        parse(&working_dir.join(file))?;
    }
    for file in &released {
        let old = parse(&released_dir.join(file))?;
        let schema = full_name(&old, &released_dir.join(file))?;
        if !working.contains(file) {
            found.push(Incompatibility::SchemaRemoved { schema, file: file.clone() });
            continue;
        }
        let new = parse(&working_dir.join(file))?;
        found.extend(compare(&schema, &old, &new));
    }
    if found.is_empty() { Ok(()) } else { Err(CheckError::Incompatible(found)) }
}

/// Incompatibilities between a released schema and its working version.
pub fn compare(schema: &str, old: &Schema, new: &Schema) -> Vec<Incompatibility> {
    let mut found = diff::diff(schema, old, new);
    // apache-avro is the authority: whatever it rejects that the field diff did not explain
    // (a renamed record, a change the diff does not model) is reported with its own words.
    let backward = SchemaCompatibility::can_read(old, new);
    let forward = SchemaCompatibility::can_read(new, old);
    let explained = |r: Rule| found.iter().any(|i| i.rule() == r || i.rule() == Rule::Full);
    let unexplained_backward = !fully(&backward) && !explained(Rule::Backward);
    let unexplained_forward = !fully(&forward) && !explained(Rule::Forward);
    if let Some(rule) = Rule::from_directions(unexplained_backward, unexplained_forward) {
        let detail = [("reading old data", &backward, unexplained_backward), ("reading new data", &forward, unexplained_forward)]
            .into_iter()
            .filter(|(_, _, unexplained)| *unexplained)
            .filter_map(|(what, r, _)| describe(r).map(|d| format!("{what}: {d}")))
            .collect::<Vec<_>>()
            .join("; ");
        found.push(Incompatibility::Other { schema: schema.to_owned(), rule, detail });
    }
    found
}

/// Whether resolving always works: `Partial` (e.g. some union branch or enum symbol cannot be
/// resolved) fails at read time for some values, so it counts as incompatible.
fn fully<E>(r: &Result<Compatibility, E>) -> bool {
    matches!(r, Ok(Compatibility::Full))
}

fn describe(r: &Result<Compatibility, apache_avro::error::CompatibilityError>) -> Option<String> {
    match r {
        Ok(Compatibility::Full) => None,
        Ok(Compatibility::Partial) => Some("only some values resolve".to_owned()),
        Err(e) => {
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                s.push_str(": ");
                s.push_str(&c.to_string());
                cause = c.source();
            }
            Some(s)
        }
    }
}

fn list_avsc(dir: &Path) -> Result<Vec<String>, CheckError> {
    let read_dir = |source| CheckError::ReadDir { path: dir.to_owned(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let path = entry.map_err(read_dir)?.path();
        if path.is_file()
            && path.extension().is_some_and(|e| e == "avsc")
            && let Some(name) = path.file_name().and_then(|n| n.to_str())
        {
            files.push(name.to_owned());
        }
    }
    files.sort();
    Ok(files)
}

fn parse(path: &Path) -> Result<Schema, CheckError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckError::Read { path: path.to_owned(), source })?;
    Schema::parse_str(&text).map_err(|source| CheckError::Parse { path: path.to_owned(), source: Box::new(source) })
}

fn full_name(schema: &Schema, path: &Path) -> Result<String, CheckError> {
    schema.name().map(|n| n.fullname(None)).ok_or_else(|| CheckError::Unnamed { path: path.to_owned() })
}
