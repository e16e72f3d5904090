//! Field-level diff of two versions of one schema, so a failed check names the field.
//!
//! Covers the common breaking changes: a field added or removed without a default, a field
//! whose type cannot be resolved in one direction (decided by apache-avro on just that
//! field), and enum symbols added or removed where the reading side has no enum default.
//! Nested records (such as `meta`) are walked, with dotted paths (`meta.tenant`).

use std::collections::{HashMap, HashSet};

use apache_avro::Schema;
use apache_avro::schema::{EnumSchema, Name, RecordSchema, UnionSchema};
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};

use super::{Incompatibility, Rule};

/// Named types defined anywhere in a schema, to resolve `Ref`s (a type's second use).
type Defs = HashMap<Name, Schema>;

pub(super) fn diff(schema: &str, old: &Schema, new: &Schema) -> Vec<Incompatibility> {
    let mut differ = Differ { schema, old_defs: definitions(old), new_defs: definitions(new), found: Vec::new() };
    if let (Schema::Record(o), Schema::Record(n)) = (old, new) {
        differ.records("", o, n);
    }
    differ.found
}

struct Differ<'a> {
    schema: &'a str,
    old_defs: Defs,
    new_defs: Defs,
    found: Vec<Incompatibility>,
}

impl Differ<'_> {
    fn records(&mut self, prefix: &str, old: &RecordSchema, new: &RecordSchema) {
        for nf in &new.fields {
            let path = format!("{prefix}{}", nf.name);
            let names = || std::iter::once(&nf.name).chain(&nf.aliases);
            match names().find_map(|n| old.fields.iter().find(|of| &of.name == n)) {
                Some(of) => self.field(&path, &of.schema, &nf.schema),
                None if nf.default.is_none() => {
                    self.found.push(Incompatibility::FieldAddedWithoutDefault { schema: self.schema.to_owned(), field: path });
                }
                None => {}
            }
        }
        for of in &old.fields {
            let kept = new.fields.iter().any(|nf| nf.name == of.name || nf.aliases.contains(&of.name));
            if !kept && of.default.is_none() {
                self.found.push(Incompatibility::FieldRemovedWithoutDefault { schema: self.schema.to_owned(), field: format!("{prefix}{}", of.name) });
            }
        }
    }

    fn field(&mut self, path: &str, old: &Schema, new: &Schema) {
        let (o, n) = (resolve(old, &self.old_defs), resolve(new, &self.new_defs));
        match (o, n) {
            (Schema::Record(o), Schema::Record(n)) if o.name.name() == n.name.name() => {
                let (o, n) = (o.clone(), n.clone());
                self.records(&format!("{path}."), &o, &n);
            }
            (Schema::Enum(o), Schema::Enum(n)) if o.name.name() == n.name.name() => {
                let (o, n) = (o.clone(), n.clone());
                self.enums(path, &o, &n);
            }
            _ => {
                let (oi, ni) = (inline(o, &self.old_defs), inline(n, &self.new_defs));
                let backward = !full(SchemaCompatibility::can_read(&oi, &ni));
                let forward = !full(SchemaCompatibility::can_read(&ni, &oi));
                if let Some(rule) = Rule::from_directions(backward, forward) {
                    self.found.push(Incompatibility::TypeChanged {
                        schema: self.schema.to_owned(),
                        field: path.to_owned(),
                        old: label(&oi),
                        new: label(&ni),
                        rule,
                    });
                }
            }
        }
    }

    fn enums(&mut self, path: &str, old: &EnumSchema, new: &EnumSchema) {
        let missing = |from: &EnumSchema, to: &EnumSchema| -> Vec<String> { from.symbols.iter().filter(|s| !to.symbols.contains(s)).cloned().collect() };
        let removed = missing(old, new);
        if !removed.is_empty() && new.default.is_none() {
            self.found.push(Incompatibility::EnumSymbolRemoved { schema: self.schema.to_owned(), field: path.to_owned(), symbols: removed });
        }
        let added = missing(new, old);
        if !added.is_empty() && old.default.is_none() {
            self.found.push(Incompatibility::EnumSymbolAdded { schema: self.schema.to_owned(), field: path.to_owned(), symbols: added });
        }
    }
}

fn full<E>(r: Result<Compatibility, E>) -> bool {
    matches!(r, Ok(Compatibility::Full))
}

fn definitions(schema: &Schema) -> Defs {
    fn walk(schema: &Schema, defs: &mut Defs) {
        match schema {
            Schema::Record(r) => {
                defs.insert(r.name.clone(), schema.clone());
                r.fields.iter().for_each(|f| walk(&f.schema, defs));
            }
            Schema::Array(a) => walk(&a.items, defs),
            Schema::Map(m) => walk(&m.types, defs),
            Schema::Union(u) => u.variants().iter().for_each(|v| walk(v, defs)),
            Schema::Ref { .. } => {}
            other => {
                if let Some(name) = other.name() {
                    defs.insert(name.clone(), other.clone());
                }
            }
        }
    }
    let mut defs = Defs::new();
    walk(schema, &mut defs);
    defs
}

fn resolve<'a>(schema: &'a Schema, defs: &'a Defs) -> &'a Schema {
    match schema {
        Schema::Ref { name } => defs.get(name).unwrap_or(schema),
        other => other,
    }
}

/// A copy of `schema` with every `Ref` replaced by its definition, so apache-avro can judge a
/// field on its own (it cannot resolve a `Ref` against a definition). Recursive references are
/// left as `Ref`s.
fn inline(schema: &Schema, defs: &Defs) -> Schema {
    fn go(schema: &Schema, defs: &Defs, open: &mut HashSet<Name>) -> Schema {
        match schema {
            Schema::Ref { name } if !open.contains(name) => match defs.get(name) {
                Some(def) => go(def, defs, open),
                None => schema.clone(),
            },
            Schema::Record(r) => {
                open.insert(r.name.clone());
                let mut r = r.clone();
                for f in &mut r.fields {
                    f.schema = go(&f.schema, defs, open);
                }
                open.remove(&r.name);
                Schema::Record(r)
            }
            Schema::Array(a) => {
                let mut a = a.clone();
                a.items = Box::new(go(&a.items, defs, open));
                Schema::Array(a)
            }
            Schema::Map(m) => {
                let mut m = m.clone();
                m.types = Box::new(go(&m.types, defs, open));
                Schema::Map(m)
            }
            Schema::Union(u) => {
                let variants = u.variants().iter().map(|v| go(v, defs, open)).collect();
                // Inlining changes no variant's kind or name, so the union stays valid; keep
                // the original should that ever not hold.
                UnionSchema::new(variants).map(Schema::Union).unwrap_or_else(|_| schema.clone())
            }
            other => other.clone(),
        }
    }
    go(schema, defs, &mut HashSet::new())
}

/// Short human-readable type: `string`, `[null, string]`, `array<long>`, a full name.
fn label(schema: &Schema) -> String {
    match schema {
        Schema::Union(u) => {
            format!("[{}]", u.variants().iter().map(label).collect::<Vec<_>>().join(", "))
        }
        Schema::Array(a) => format!("array<{}>", label(&a.items)),
        Schema::Map(m) => format!("map<{}>", label(&m.types)),
        Schema::TimestampMicros => "long (timestamp-micros)".to_owned(),
        Schema::TimestampMillis => "long (timestamp-millis)".to_owned(),
        other => match other.name() {
            Some(name) => name.fullname(None),
            // A primitive's canonical form is its quoted name.
            None => other.canonical_form().trim_matches('"').to_owned(),
        },
    }
}
