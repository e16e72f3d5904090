use std::fs;
use std::path::Path;

use serde_json::{Value, json};

use super::*;

/// `TaskFailed` trimmed to what the cases need, in its released shape.
fn released() -> Value {
    json!({
        "type": "record", "name": "TaskFailed", "namespace": "io.agentlog.v1", "doc": "d",
        "fields": [
            {"name": "meta", "doc": "d", "type": {"type": "record", "name": "Meta", "doc": "d", "fields": [
                {"name": "event_id", "type": "string", "doc": "d"},
                {"name": "causation_id", "type": ["null", "string"], "default": null, "doc": "d"}
            ]}},
            {"name": "task_id", "type": "string", "doc": "d"},
            {"name": "attempt", "type": "int", "doc": "d"},
            {"name": "kind", "doc": "d", "type": {"type": "enum", "name": "Kind", "doc": "d",
                "symbols": ["TIMEOUT", "CRASH"]}},
            {"name": "lane", "doc": "d", "type": {"type": "enum", "name": "Lane", "doc": "d",
                "symbols": ["HIGH", "LOW"], "default": "LOW"}},
            {"name": "previous_kind", "type": "Kind", "doc": "d"}
        ]
    })
}

fn fields(schema: &mut Value) -> &mut Vec<Value> {
    schema["fields"].as_array_mut().expect("fields")
}

fn field<'a>(schema: &'a mut Value, name: &str) -> &'a mut Value {
    fields(schema).iter_mut().find(|f| f["name"] == name).expect("field exists")
}

/// Runs the check with `released()` released and `working` as the working version.
fn check(working: Option<&Value>) -> Result<(), CheckError> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (w, r) = (tmp.path().join("schemas"), tmp.path().join("schemas/released"));
    fs::create_dir_all(&r).expect("mkdir");
    write(&r, &released());
    if let Some(working) = working {
        write(&w, working);
    }
    check_evolution(&w, &r)
}

fn write(dir: &Path, schema: &Value) {
    fs::write(dir.join("TaskFailed.avsc"), serde_json::to_string_pretty(schema).expect("json")).expect("write");
}

/// The incompatibilities of `working`, asserting the check failed.
fn broken(working: &Value) -> Vec<Incompatibility> {
    match check(Some(working)) {
        Err(CheckError::Incompatible(found)) => found,
        other => panic!("expected incompatibilities, got {other:?}"),
    }
}

#[test]
fn unchanged_and_optional_field_with_null_default_pass() {
    check(Some(&released())).expect("unchanged");
    let mut s = released();
    fields(&mut s).push(json!({"name": "hint", "type": ["null", "string"], "default": null, "doc": "d"}));
    check(Some(&s)).expect("optional field with default null is FULL compatible");
    // Removing a field that has a default is compatible too, also inside `meta`.
    let meta = field(&mut s, "meta");
    fields(&mut meta["type"]).retain(|f| f["name"] != "causation_id");
    check(Some(&s)).expect("removing a defaulted field is FULL compatible");
}

#[test]
fn field_added_without_default_is_backward_break() {
    let mut s = released();
    fields(&mut s).push(json!({"name": "retryable", "type": "boolean", "doc": "d"}));
    let found = broken(&s);
    let expected = Incompatibility::FieldAddedWithoutDefault { schema: "io.agentlog.v1.TaskFailed".into(), field: "retryable".into() };
    assert_eq!(found, [expected]);
    assert_eq!(
        found[0].to_string(),
        "io.agentlog.v1.TaskFailed: field `retryable` was added without a default: readers of the \
         new schema cannot read old data (BACKWARD)"
    );
}

#[test]
fn field_removed_without_default_is_forward_break_and_named_inside_meta() {
    let mut s = released();
    let meta = field(&mut s, "meta");
    fields(&mut meta["type"]).retain(|f| f["name"] != "event_id");
    let found = broken(&s);
    assert_eq!(found, [Incompatibility::FieldRemovedWithoutDefault { schema: "io.agentlog.v1.TaskFailed".into(), field: "meta.event_id".into() }]);
    assert!(found[0].to_string().contains("(FORWARD)"), "{}", found[0]);
}

#[test]
fn type_change_names_field_types_and_direction() {
    let mut s = released();
    field(&mut s, "task_id")["type"] = json!("int");
    let found = broken(&s);
    assert_eq!(
        found,
        [Incompatibility::TypeChanged {
            schema: "io.agentlog.v1.TaskFailed".into(),
            field: "task_id".into(),
            old: "string".into(),
            new: "int".into(),
            rule: Rule::Full,
        }]
    );

    // int -> long: new readers promote old ints, but old readers cannot read longs.
    let mut s = released();
    field(&mut s, "attempt")["type"] = json!("long");
    let found = broken(&s);
    assert!(matches!(&found[..], [Incompatibility::TypeChanged { field, rule: Rule::Forward, .. }] if field == "attempt"), "{found:?}");

    // Making an optional field required: old data may hold null.
    let mut s = released();
    let meta = field(&mut s, "meta");
    let causation = field(&mut meta["type"], "causation_id");
    causation["type"] = json!("string");
    causation.as_object_mut().expect("object").remove("default");
    let found = broken(&s);
    assert!(matches!(&found[..], [Incompatibility::TypeChanged { field, rule: Rule::Backward, .. }] if field == "meta.causation_id"), "{found:?}");
    assert!(found[0].to_string().contains("from `[null, string]` to `string`"), "{}", found[0]);
}

#[test]
fn enum_symbol_removed_or_added_without_default_breaks() {
    let mut s = released();
    field(&mut s, "kind")["type"]["symbols"] = json!(["TIMEOUT"]);
    let found = broken(&s);
    // `previous_kind` uses the same enum (by reference), so it breaks as well.
    let removed =
        |field: &str| Incompatibility::EnumSymbolRemoved { schema: "io.agentlog.v1.TaskFailed".into(), field: field.into(), symbols: vec!["CRASH".into()] };
    assert_eq!(found, [removed("kind"), removed("previous_kind")]);
    assert!(found[0].to_string().contains("(BACKWARD)"));

    let mut s = released();
    field(&mut s, "kind")["type"]["symbols"] = json!(["TIMEOUT", "CRASH", "OOM"]);
    let found = broken(&s);
    assert!(matches!(&found[..], [Incompatibility::EnumSymbolAdded { field, symbols, .. }, _] if field == "kind" && symbols == &["OOM"]), "{found:?}");

    // An enum with a default absorbs unknown symbols both ways.
    let mut s = released();
    field(&mut s, "lane")["type"]["symbols"] = json!(["HIGH", "LOW", "BULK"]);
    check(Some(&s)).expect("symbol added to an enum with a default");
}

#[test]
fn removed_schema_file_is_an_error() {
    let found = match check(None) {
        Err(CheckError::Incompatible(found)) => found,
        other => panic!("{other:?}"),
    };
    assert_eq!(found, [Incompatibility::SchemaRemoved { schema: "io.agentlog.v1.TaskFailed".into(), file: "TaskFailed.avsc".into() }]);
}

#[test]
fn what_the_diff_does_not_model_is_reported_by_apache_avro() {
    let mut s = released();
    s["name"] = json!("TaskFailure");
    let found = broken(&s);
    assert!(
        matches!(&found[..], [Incompatibility::Other { schema, rule: Rule::Full, detail }]
        if schema == "io.agentlog.v1.TaskFailed" && detail.contains("TaskFailure")),
        "{found:?}"
    );
}

#[test]
fn unparsable_working_schema_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("Broken.avsc"), "{").expect("write");
    let released = tempfile::tempdir().expect("tempdir");
    assert!(matches!(check_evolution(tmp.path(), released.path()), Err(CheckError::Parse { .. })));
}
