//! The limits a schema must stay within, checked on its JSON before apache-avro sees it.
//!
//! Why before: hostile schemas crash or hang the parser and the decoders built from it. An
//! 11,000-deep chain of records overflows the stack, a `fixed` of 10^12 bytes makes every
//! decode allocate that much, a record that contains itself is infinitely large, and the
//! compatibility check is quadratic in enum symbols (160,000 took 4.75 s). The check here
//! walks the JSON once, without recursing deeper than the depth limit allows.
//!
//! Recursive types are refused outright, through a union, array or map too: Avro allows a
//! linked list, but apache-avro's decoder recurses once per nesting level of the *data*, and
//! with a recursive schema a single record of 1 MB can nest a million levels deep.
//!
//! The same check guards the registry's HTTP writes, its replay of the schemas topic, and
//! [`crate::events::wire::WireCodec`]'s reading of writer schemas (which may come from an
//! external registry).

use serde_json::{Map, Value};

use super::config::RegistryConfig;

/// The limits, from `[registry]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaLimits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_named_types: usize,
    pub max_enum_symbols: usize,
    pub max_fixed_size: u64,
}

impl Default for SchemaLimits {
    fn default() -> Self {
        SchemaLimits::of(&RegistryConfig::default())
    }
}

/// Why a schema is refused: the limit, with its config key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaRefused {
    #[error("the schema is {found} bytes, over the limit of {limit} (registry.max_schema_bytes)")]
    TooLarge { found: usize, limit: usize },
    #[error("the schema's JSON nests deeper than {limit} levels (registry.max_schema_depth)")]
    TooDeep { limit: usize },
    #[error("the schema defines more than {limit} named types (registry.max_named_types)")]
    TooManyNamedTypes { limit: usize },
    #[error("enum `{name}` has {found} symbols, over the limit of {limit} (registry.max_enum_symbols)")]
    TooManySymbols { name: String, found: usize, limit: usize },
    #[error("fixed `{name}` has size {found}, over the limit of {limit} bytes (registry.max_fixed_size)")]
    FixedTooLarge { name: String, found: String, limit: u64 },
    #[error(
        "type `{name}` contains itself: recursive schemas are not accepted (decoding recurses once per level of nesting in the data, so one record could nest as deep as it has bytes)"
    )]
    Recursive { name: String },
    #[error("the schema is not valid JSON: {reason}")]
    NotJson { reason: String },
}

const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

impl SchemaLimits {
    pub fn of(config: &RegistryConfig) -> SchemaLimits {
        SchemaLimits {
            max_bytes: config.max_schema_bytes,
            max_depth: config.max_schema_depth,
            max_named_types: config.max_named_types,
            max_enum_symbols: config.max_enum_symbols,
            max_fixed_size: config.max_fixed_size,
        }
    }

    /// `Ok` when `raw` is within every limit and defines no recursive type. A schema that is
    /// JSON but not valid Avro passes: the parser says what is wrong with it.
    pub fn check(&self, raw: &str) -> Result<(), SchemaRefused> {
        if raw.len() > self.max_bytes {
            return Err(SchemaRefused::TooLarge { found: raw.len(), limit: self.max_bytes });
        }
        // Counted on the text, iteratively: parsing first would recurse as deep as the text.
        if json_depth(raw) > self.max_depth {
            return Err(SchemaRefused::TooDeep { limit: self.max_depth });
        }
        let value: Value = serde_json::from_str(raw).map_err(|e| SchemaRefused::NotJson { reason: e.to_string() })?;
        Walk { limits: self, named: 0, enclosing: Vec::new() }.schema(&value, "")
    }
}

/// The deepest nesting of objects and arrays in `text` (strings skipped).
fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// One pass over the type positions of a schema. Its recursion follows the JSON, whose depth
/// is already bounded.
struct Walk<'a> {
    limits: &'a SchemaLimits,
    named: usize,
    /// Full names (and aliases) of the records being defined around the current position.
    enclosing: Vec<String>,
}

impl Walk<'_> {
    fn schema(&mut self, value: &Value, namespace: &str) -> Result<(), SchemaRefused> {
        match value {
            Value::String(name) => self.reference(name, namespace),
            Value::Array(branches) => branches.iter().try_for_each(|branch| self.schema(branch, namespace)),
            Value::Object(object) => self.complex(object, namespace),
            // Not a schema: the parser reports it.
            _ => Ok(()),
        }
    }

    fn complex(&mut self, object: &Map<String, Value>, namespace: &str) -> Result<(), SchemaRefused> {
        let kind = match object.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            Some(nested) => return self.schema(nested, namespace),
            None => return Ok(()),
        };
        match kind {
            "record" | "error" | "enum" | "fixed" => self.named_type(kind, object, namespace),
            "array" => object.get("items").map_or(Ok(()), |items| self.schema(items, namespace)),
            "map" => object.get("values").map_or(Ok(()), |values| self.schema(values, namespace)),
            other => self.reference(other, namespace),
        }
    }

    fn named_type(&mut self, kind: &str, object: &Map<String, Value>, namespace: &str) -> Result<(), SchemaRefused> {
        self.named += 1;
        if self.named > self.limits.max_named_types {
            return Err(SchemaRefused::TooManyNamedTypes { limit: self.limits.max_named_types });
        }
        let name = object.get("name").and_then(Value::as_str).unwrap_or("");
        let (full_name, inner) = match name.rsplit_once('.') {
            Some((space, _)) => (name.to_owned(), space.to_owned()),
            None => {
                let space = object.get("namespace").and_then(Value::as_str).unwrap_or(namespace);
                (qualify(name, space), space.to_owned())
            }
        };
        match kind {
            "enum" => {
                let found = object.get("symbols").and_then(Value::as_array).map_or(0, Vec::len);
                if found > self.limits.max_enum_symbols {
                    return Err(SchemaRefused::TooManySymbols { name: full_name, found, limit: self.limits.max_enum_symbols });
                }
            }
            "fixed" => {
                if let Some(Value::Number(size)) = object.get("size")
                    && size.as_u64().is_none_or(|size| size > self.limits.max_fixed_size)
                {
                    return Err(SchemaRefused::FixedTooLarge { name: full_name, found: size.to_string(), limit: self.limits.max_fixed_size });
                }
            }
            _ => {
                let outer = self.enclosing.len();
                let aliases = object.get("aliases").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str);
                let aliases: Vec<String> = aliases.map(|alias| if alias.contains('.') { alias.to_owned() } else { qualify(alias, &inner) }).collect();
                self.enclosing.push(full_name);
                self.enclosing.extend(aliases);
                let fields = object.get("fields").and_then(Value::as_array).into_iter().flatten();
                for field_type in fields.filter_map(|field| field.get("type")) {
                    self.schema(field_type, &inner)?;
                }
                self.enclosing.truncate(outer);
            }
        }
        Ok(())
    }

    /// A type by name: a primitive, or a named type defined earlier (fine) or around this
    /// position (recursion).
    fn reference(&self, name: &str, namespace: &str) -> Result<(), SchemaRefused> {
        if PRIMITIVES.contains(&name) {
            return Ok(());
        }
        let full_name = qualify(name, namespace);
        if self.enclosing.iter().any(|enclosing| *enclosing == full_name || enclosing == name) {
            return Err(SchemaRefused::Recursive { name: full_name });
        }
        Ok(())
    }
}

fn qualify(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() { name.to_owned() } else { format!("{namespace}.{name}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SchemaLimits {
        SchemaLimits::default()
    }

    fn record(name: &str, fields: &str) -> String {
        format!(r#"{{"type":"record","name":"{name}","namespace":"t","fields":[{fields}]}}"#)
    }

    #[test]
    fn ordinary_schemas_pass() {
        for (_, avsc) in crate::events::all_schemas() {
            assert_eq!(limits().check(avsc), Ok(()), "{avsc}");
        }
        // A type used twice is no recursion.
        let twice = record("R", r#"{"name":"a","type":{"type":"fixed","name":"F","size":16}},{"name":"b","type":"F"},{"name":"c","type":["null","t.F"]}"#);
        assert_eq!(limits().check(&twice), Ok(()));
        assert_eq!(limits().check(r#""string""#), Ok(()));
        assert_eq!(limits().check(r#"{"type":"array","items":{"type":"map","values":"long"}}"#), Ok(()));
    }

    #[test]
    fn size_and_depth_are_counted_before_parsing() {
        let big = format!(r#"{{"type":"enum","name":"E","symbols":[{}]}}"#, (0..50_000).map(|i| format!("\"S{i}\"")).collect::<Vec<_>>().join(","));
        assert!(matches!(limits().check(&big), Err(SchemaRefused::TooLarge { .. })));
        // An 11,000-deep chain of records: far deeper than serde_json would even parse.
        let mut chain = String::new();
        for i in 0..11_000 {
            chain.push_str(&format!(r#"{{"type":"record","name":"R{i}","fields":[{{"name":"f","type":"#));
        }
        chain.push_str(r#""string""#);
        chain.push_str(&"}]}".repeat(11_000));
        let wide = SchemaLimits { max_bytes: usize::MAX, ..limits() };
        let refused = wide.check(&chain).expect_err("too deep");
        assert_eq!(refused, SchemaRefused::TooDeep { limit: 64 });
        assert!(refused.to_string().contains("registry.max_schema_depth"), "{refused}");
        // Brackets inside strings do not count.
        assert_eq!(json_depth(r#"{"doc":"[[[[{{{{"}"#), 1);
    }

    #[test]
    fn named_types_symbols_and_fixed_sizes_are_bounded() {
        let few = SchemaLimits { max_named_types: 2, max_enum_symbols: 3, max_fixed_size: 1024, ..limits() };
        let three = record("R", r#"{"name":"a","type":{"type":"enum","name":"E","symbols":["A"]}},{"name":"b","type":{"type":"fixed","name":"F","size":1}}"#);
        assert_eq!(few.check(&three), Err(SchemaRefused::TooManyNamedTypes { limit: 2 }));
        let symbols = r#"{"type":"enum","name":"E","namespace":"t","symbols":["A","B","C","D"]}"#;
        let refused = few.check(symbols).expect_err("4 symbols");
        assert_eq!(refused, SchemaRefused::TooManySymbols { name: "t.E".into(), found: 4, limit: 3 });
        assert!(refused.to_string().contains("registry.max_enum_symbols"));
        for size in ["1000000000000", "-1", "1.5"] {
            let fixed = format!(r#"{{"type":"fixed","name":"F","size":{size}}}"#);
            assert!(matches!(few.check(&fixed), Err(SchemaRefused::FixedTooLarge { .. })), "{size}");
        }
        assert_eq!(few.check(r#"{"type":"fixed","name":"F","size":1024}"#), Ok(()));
    }

    #[test]
    fn recursive_types_are_refused_however_they_recurse() {
        let direct = record("R", r#"{"name":"self","type":"R"}"#);
        assert_eq!(limits().check(&direct), Err(SchemaRefused::Recursive { name: "t.R".into() }));
        let through_union = record("Node", r#"{"name":"next","type":["null","t.Node"]}"#);
        assert!(matches!(limits().check(&through_union), Err(SchemaRefused::Recursive { .. })));
        let through_array = record("Tree", r#"{"name":"children","type":{"type":"array","items":"Tree"}}"#);
        assert!(matches!(limits().check(&through_array), Err(SchemaRefused::Recursive { .. })));
        let mutual = record("A", &format!(r#"{{"name":"b","type":{}}}"#, record("B", r#"{"name":"a","type":["null","A"]}"#)));
        assert!(matches!(limits().check(&mutual), Err(SchemaRefused::Recursive { .. })));
        let by_alias = r#"{"type":"record","name":"R","aliases":["Old"],"fields":[{"name":"o","type":"Old"}]}"#;
        assert!(matches!(limits().check(by_alias), Err(SchemaRefused::Recursive { .. })));
    }
}
