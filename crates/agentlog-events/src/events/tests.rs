//! Contract tests: each Rust event type against its `.avsc`, for every type in the catalog.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::Path;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::Value as Json;

use super::catalog::{EventTypeVisitor, visit_event_types};
use super::*;

/// A representative value of an event type, with optional fields set so they are exercised.
pub(crate) trait Sample: Sized + PartialEq + Debug {
    fn sample() -> Self;
}

fn meta() -> Meta {
    Meta {
        event_id: "0190f0a4-7c1e-7b3a-9c1d-2f4e5a6b7c8d".into(),
        occurred_at: TimestampMicros(1_722_000_000_123_456),
        tenant: "acme".into(),
        correlation_id: "0190f0a4-0000-7000-8000-000000000001".into(),
        causation_id: Some("0190f0a4-0000-7000-8000-000000000002".into()),
        trace_parent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        trace_state: None,
        producer_id: "worker-1".into(),
    }
}

fn avsc_of(name: &str) -> &'static str {
    event_types().iter().find(|t| t.name == name).map(|t| t.avsc).unwrap_or_else(|| panic!("{name} is not in the catalog"))
}

/// The schema as JSON without `doc`s: everything that matters to readers, including what
/// Parsing Canonical Form drops (defaults, logical types, enum defaults, aliases).
fn contract_json(schema: &Schema) -> Json {
    fn strip(v: &mut Json) {
        match v {
            Json::Object(m) => {
                m.remove("doc");
                m.values_mut().for_each(strip);
            }
            Json::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(schema).expect("schemas serialize");
    strip(&mut v);
    v
}

struct DerivedMatchesFile;
impl EventTypeVisitor for DerivedMatchesFile {
    fn visit<T: Event + Sample>(&mut self) {
        let derived = T::get_schema();
        let file = Schema::parse_str(avsc_of(T::NAME)).expect("avsc parses");
        assert_eq!(derived.name().map(|n| n.fullname(None)).as_deref(), Some(T::NAME));
        assert_eq!(derived.canonical_form(), file.canonical_form(), "{}: canonical form", T::NAME);
        assert_eq!(contract_json(&derived), contract_json(&file), "{}: defaults/logical types", T::NAME);
    }
}

#[test]
fn derived_schema_equals_avsc() {
    visit_event_types(&mut DerivedMatchesFile);
}

struct RoundTrip;
impl EventTypeVisitor for RoundTrip {
    fn visit<T: Event + Sample>(&mut self) {
        roundtrip(T::sample());
    }
}

fn roundtrip<T: Event + Sample>(value: T) {
    let schema = Schema::parse_str(avsc_of(T::NAME)).expect("avsc parses");
    // Schema-aware serde, the fast path.
    let writer = GenericDatumWriter::builder(&schema).build().expect("writer");
    let bytes = writer.write_ser_to_vec(&value).unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
    let reader = GenericDatumReader::builder(&schema).build().expect("reader");
    let back: T = reader.read_deser(&mut &bytes[..]).unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
    assert_eq!(back, value, "{}: schema-aware serde", T::NAME);
    // Through apache_avro::types::Value, with validation: must produce the same bytes.
    let v = apache_avro::to_value(&value).expect("to_value");
    let via_value = writer.write_value_to_vec(v).unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
    assert_eq!(via_value, bytes, "{}: both encoders agree", T::NAME);
    // The direct writer the wire codec uses must write exactly apache-avro's bytes.
    let resolved = apache_avro::schema::ResolvedSchema::try_from(&schema).expect("resolves");
    let mut direct = Vec::new();
    super::avro_binary::write(&schema, resolved.get_names(), &value, &mut direct).unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
    assert_eq!(direct, bytes, "{}: the direct writer agrees", T::NAME);
    let read = reader.read_value(&mut &bytes[..]).expect("read_value");
    let back: T = apache_avro::from_value(&read).unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
    assert_eq!(back, value, "{}: via Value", T::NAME);
}

#[test]
fn every_event_round_trips() {
    visit_event_types(&mut RoundTrip);
    // Optional fields unset as well.
    roundtrip(TaskSubmitted {
        deadline: None,
        not_before: None,
        ordering_key: None,
        idempotency_key: None,
        parent_task_id: None,
        job_id: None,
        labels: HashMap::new(),
        awaiting_signal: None,
        signal: None,
        ..TaskSubmitted::sample()
    });
    // A resumed command with a timeout marker (no id, no payload).
    roundtrip(TaskSubmitted {
        awaiting_signal: None,
        signal: Some(SignalDelivery { name: "approval".into(), signal_id: None, payload: None, timed_out: true }),
        ..TaskSubmitted::sample()
    });
    roundtrip(TaskSignalled { payload: None, ..TaskSignalled::sample() });
    roundtrip(TaskCompleted { usage: None, ..TaskCompleted::sample() });
    roundtrip(TaskCompleted {
        usage: Some(Usage { input_tokens: 0, output_tokens: 7, model: None, cost_micros: None, currency: None, counters: HashMap::new() }),
        ..TaskCompleted::sample()
    });
    roundtrip(TaskProgress { percent: None, message: None, detail: None, ..TaskProgress::sample() });
    roundtrip(TaskCheckpointed { state: None, ..TaskCheckpointed::sample() });
    roundtrip(TaskChunk { text: None, json: Some(r#"{"a":1}"#.into()), ..TaskChunk::sample() });
}

fn parsed_meta() -> Schema {
    Schema::parse_str(META_AVSC).expect("Meta.avsc parses")
}

struct InlinedMeta;
impl EventTypeVisitor for InlinedMeta {
    fn visit<T: Event + Sample>(&mut self) {
        let Schema::Record(event) = Schema::parse_str(avsc_of(T::NAME)).expect("parses") else { panic!("{} is not a record", T::NAME) };
        let first = event.fields.first().expect("has fields");
        assert_eq!(first.name, "meta", "{}: meta must be the first field", T::NAME);
        let meta = parsed_meta();
        assert_eq!(first.schema.canonical_form(), meta.canonical_form(), "{}: inlined Meta drifted", T::NAME);
        assert_eq!(contract_json(&first.schema), contract_json(&meta), "{}: inlined Meta drifted", T::NAME);
    }
}

#[test]
fn inlined_meta_equals_meta_avsc() {
    visit_event_types(&mut InlinedMeta);
    assert_eq!(Meta::get_schema().canonical_form(), parsed_meta().canonical_form());
    assert_eq!(contract_json(&Meta::get_schema()), contract_json(&parsed_meta()));
}

/// Walks a schema's JSON and lists records, enums and fields that lack a `doc`.
fn undocumented(v: &Json, path: &str, out: &mut Vec<String>) {
    match v {
        Json::Object(m) => {
            let kind = m.get("type").and_then(Json::as_str);
            let has_doc = m.get("doc").and_then(Json::as_str).is_some_and(|d| !d.trim().is_empty());
            if matches!(kind, Some("record" | "enum" | "fixed")) && !has_doc {
                out.push(format!("{path} (type)"));
            }
            if let Some(fields) = m.get("fields").and_then(Json::as_array) {
                for f in fields {
                    let name = f.get("name").and_then(Json::as_str).unwrap_or("?");
                    let fpath = format!("{path}.{name}");
                    if f.get("doc").and_then(Json::as_str).is_none_or(|d| d.trim().is_empty()) {
                        out.push(fpath.clone());
                    }
                    if let Some(t) = f.get("type") {
                        undocumented(t, &fpath, out);
                    }
                }
            }
            for key in ["items", "values"] {
                if let Some(t) = m.get(key) {
                    undocumented(t, path, out);
                }
            }
        }
        Json::Array(variants) => variants.iter().for_each(|t| undocumented(t, path, out)),
        _ => {}
    }
}

#[test]
fn every_record_and_field_has_a_doc() {
    let mut missing = Vec::new();
    let files = event_types().iter().map(|t| (t.file, t.avsc)).chain([("Meta.avsc", META_AVSC)]);
    for (file, avsc) in files {
        let json: Json = serde_json::from_str(avsc).expect("valid JSON");
        undocumented(&json, file, &mut missing);
    }
    assert!(missing.is_empty(), "undocumented: {missing:?}");
    // The walker does find a missing doc.
    let mut found = Vec::new();
    undocumented(
        &serde_json::json!({"type": "record", "name": "X", "doc": "d",
        "fields": [{"name": "a", "type": "string"}]}),
        "X",
        &mut found,
    );
    assert_eq!(found, ["X.a"]);
}

#[test]
fn catalog_covers_every_schema_file_and_topic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("schemas/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".avsc") && n != "Meta.avsc")
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = event_types().iter().map(|t| t.file.to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "every schemas/*.avsc is an event type in the catalog");
    assert_eq!(all_schemas().len(), 21);
    for t in event_types() {
        assert_eq!(format!("io.agentlog.v1.{}", t.file.trim_end_matches(".avsc")), t.name);
    }

    let expect = [
        ("TaskSubmitted", "tasks.<type>.<lane>"),
        ("TaskStarted", "task.events"),
        ("TaskProgress", "task.stream"),
        ("TaskChunk", "task.stream"),
        ("TaskCheckpointed", "task.checkpoints"),
        ("TaskSuspended", "task.events"),
        ("TaskSignalled", "timers"),
        ("TaskRetryScheduled", "task.events"),
        ("TaskCancelRequested", "task.events"),
        ("TaskCompleted", "task.results"),
        ("TaskFailed", "task.results"),
        ("TaskDeadLettered", "task.results"),
        ("TaskCancelled", "task.results"),
        ("TaskExpired", "task.results"),
        ("AgentRegistered", "agent.events"),
        ("AgentStateChanged", "agent.events"),
        ("AgentLost", "agent.events"),
        ("AgentDeregistered", "agent.events"),
        ("AgentHeartbeat", "agent.heartbeats"),
        ("JobSubmitted", "task.events"),
        ("JobCompleted", "task.events"),
    ];
    for (name, topic) in expect {
        assert_eq!(topic_of(&format!("io.agentlog.v1.{name}")), Some(topic), "{name}");
    }
    assert_eq!(topic_of("io.agentlog.v1.Meta"), None);
}

/// `TaskCompleted.usage` (issue 17) with real data both ways: a reader of the released schema
/// reads a record that carries usage (skipping it), and the new reader reads an old record as
/// having none.
#[test]
fn task_completed_usage_crosses_schema_versions_both_ways() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/released");
    let released = Schema::parse_str(&std::fs::read_to_string(dir.join("TaskCompleted.avsc")).expect("released schema")).expect("parses");
    let working = Schema::parse_str(avsc_of(TaskCompleted::NAME)).expect("parses");
    let new = TaskCompleted::sample();
    assert!(new.usage.is_some());
    let bytes = GenericDatumWriter::builder(&working).build().expect("writer").write_ser_to_vec(&new).expect("write");
    let old_reader = GenericDatumReader::builder(&working).reader_schema(&released).build().expect("reader");
    let old = old_reader.read_value(&mut &bytes[..]).expect("the released reader reads new data");
    let apache_avro::types::Value::Record(fields) = old else { panic!("a record") };
    assert!(fields.iter().all(|(name, _)| name != "usage"), "{fields:?}");
    assert!(fields.iter().any(|(name, v)| name == "duration_ms" && *v == apache_avro::types::Value::Long(1234)));

    // What a producer of the released schema writes.
    let mut old_record = apache_avro::types::Record::new(&released).expect("record");
    let meta = apache_avro::to_value(&new.meta).expect("meta");
    old_record.put("meta", meta);
    old_record.put("task_id", "t-1");
    old_record.put("attempt", 1);
    old_record.put("output", apache_avro::types::Value::Bytes(b"{}".to_vec()));
    old_record.put("content_type", "application/json");
    old_record.put("duration_ms", 1234i64);
    let old_bytes = GenericDatumWriter::builder(&released).build().expect("writer").write_value_to_vec(old_record).expect("old write");
    let new_reader = GenericDatumReader::builder(&released).reader_schema(&working).build().expect("reader");
    let read = new_reader.read_value(&mut &old_bytes[..]).expect("the new reader reads old data");
    let read: TaskCompleted = apache_avro::from_value(&read).expect("a TaskCompleted");
    assert_eq!(read, TaskCompleted { usage: None, ..new });
}

#[test]
fn released_set_is_compatible_with_working_set() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    check_evolution(&dir, &dir.join("released")).expect("schemas/ is FULL compatible with schemas/released/");
}

#[test]
fn task_submitted_routes_by_type_lane_and_ordering_key() {
    let mut t = TaskSubmitted::sample();
    t.agent_type = "summarize".into();
    t.lane = Lane::High;
    assert_eq!(t.topic(), "tasks.summarize.high");
    assert_eq!(t.key(), "customer-42");
    t.ordering_key = None;
    assert_eq!(t.key(), t.task_id);
    assert_eq!(TaskCompleted::sample().topic(), "task.results");
}

impl Sample for TaskSubmitted {
    fn sample() -> Self {
        Self {
            meta: meta(),
            task_id: "t-1".into(),
            agent_type: "summarize".into(),
            lane: Lane::Critical,
            input: br#"{"text":"hello"}"#.to_vec(),
            content_type: "application/json".into(),
            attempt: 1,
            max_attempts: 3,
            timeout_ms: 120_000,
            deadline: Some(TimestampMicros(1_722_000_100_000_000)),
            not_before: Some(TimestampMicros(1_722_000_000_500_000)),
            ordering_key: Some("customer-42".into()),
            idempotency_key: Some("idem-1".into()),
            parent_task_id: Some("t-0".into()),
            job_id: Some("j-1".into()),
            labels: HashMap::from([("team".into(), "search".into())]),
            awaiting_signal: Some("approval".into()),
            signal: Some(SignalDelivery {
                name: "approval".into(),
                signal_id: Some("sig-1".into()),
                payload: Some(r#"{"approved":true}"#.into()),
                timed_out: false,
            }),
        }
    }
}

impl Sample for TaskStarted {
    fn sample() -> Self {
        Self { meta: meta(), task_id: "t-1".into(), agent_id: "a-1".into(), attempt: 2 }
    }
}

impl Sample for TaskProgress {
    fn sample() -> Self {
        Self { meta: meta(), task_id: "t-1".into(), attempt: 1, percent: Some(42.5), message: Some("reading".into()), detail: Some(vec![0, 1, 255]) }
    }
}

impl Sample for TaskChunk {
    fn sample() -> Self {
        Self { meta: meta(), task_id: "t-1".into(), attempt: 1, seq: 3, text: Some("tok".into()), json: None }
    }
}

impl Sample for TaskCheckpointed {
    fn sample() -> Self {
        Self { meta: meta(), task_id: "t-1".into(), attempt: 2, state: Some(r#"{"step":3}"#.into()) }
    }
}

impl Sample for TaskSuspended {
    fn sample() -> Self {
        Self { meta: meta(), task_id: "t-1".into(), attempt: 1, signal: "approval".into(), timeout_at: TimestampMicros(1_722_086_400_000_000) }
    }
}

impl Sample for TaskSignalled {
    fn sample() -> Self {
        Self { meta: meta(), task_id: "t-1".into(), signal: "approval".into(), signal_id: "sig-1".into(), payload: Some(r#"{"approved":true}"#.into()) }
    }
}

impl Sample for TaskRetryScheduled {
    fn sample() -> Self {
        Self {
            meta: meta(),
            task_id: "t-1".into(),
            attempt: 1,
            next_attempt_at: TimestampMicros(1_722_000_010_000_000),
            backoff_ms: 10_000,
            last_error: "rate limited".into(),
        }
    }
}

impl Sample for TaskCompleted {
    fn sample() -> Self {
        Self {
            meta: meta(),
            task_id: "t-1".into(),
            attempt: 1,
            output: b"{}".to_vec(),
            content_type: "application/json".into(),
            duration_ms: 1234,
            usage: Some(Usage {
                input_tokens: 1200,
                output_tokens: 345,
                model: Some("gpt-4o-mini".into()),
                cost_micros: Some(387),
                currency: Some("USD".into()),
                counters: HashMap::from([("cached_input_tokens".into(), 1024)]),
            }),
        }
    }
}

impl Sample for TaskFailed {
    fn sample() -> Self {
        Self { meta: meta(), task_id: "t-1".into(), attempt: 3, error_kind: "timeout".into(), message: "no answer in 120 s".into(), retryable: true }
    }
}

impl Sample for TaskDeadLettered {
    fn sample() -> Self {
        Self {
            meta: meta(),
            task_id: "t-1".into(),
            attempts: 3,
            last_error: "timeout".into(),
            reason: "max_attempts".into(),
            original_command: vec![0, 0, 0, 0, 7, 2, 4],
        }
    }
}

impl Sample for TaskCancelRequested {
    fn sample() -> Self {
        Self { meta: meta(), task_id: "t-1".into(), reason: Some("user".into()), requested_by: Some("alice".into()) }
    }
}

impl Sample for TaskCancelled {
    fn sample() -> Self {
        Self { meta: meta(), task_id: "t-1".into(), reason: None }
    }
}

impl Sample for TaskExpired {
    fn sample() -> Self {
        Self { meta: meta(), task_id: "t-1".into(), deadline: TimestampMicros(1) }
    }
}

impl Sample for AgentRegistered {
    fn sample() -> Self {
        Self {
            meta: meta(),
            agent_id: "a-1".into(),
            agent_type: "summarize".into(),
            capabilities: vec!["web".into(), "gpt".into()],
            host: "node-3".into(),
            version: "0.1.0".into(),
            concurrency: 8,
        }
    }
}

impl Sample for AgentHeartbeat {
    fn sample() -> Self {
        Self {
            meta: meta(),
            agent_id: "a-1".into(),
            sequence: 99,
            in_flight: 3,
            capacity: 8,
            completed_total: 1000,
            failed_total: 7,
            cpu_percent: 73.25,
            memory_bytes: 512 << 20,
        }
    }
}

impl Sample for AgentStateChanged {
    fn sample() -> Self {
        Self { meta: meta(), agent_id: "a-1".into(), from_state: AgentState::Running, to_state: AgentState::Draining, reason: Some("SIGTERM".into()) }
    }
}

impl Sample for AgentLost {
    fn sample() -> Self {
        Self { meta: meta(), agent_id: "a-1".into(), last_heartbeat_at: TimestampMicros(1_722_000_000_000_000), missed_heartbeats: 3 }
    }
}

impl Sample for AgentDeregistered {
    fn sample() -> Self {
        Self { meta: meta(), agent_id: "a-1".into(), reason: "shutdown".into() }
    }
}

impl Sample for JobSubmitted {
    fn sample() -> Self {
        Self { meta: meta(), job_id: "j-1".into(), task_ids: vec!["t-1".into(), "t-2".into()], total: 2 }
    }
}

impl Sample for JobCompleted {
    fn sample() -> Self {
        Self { meta: meta(), job_id: "j-1".into(), completed: 1, failed: 1 }
    }
}
