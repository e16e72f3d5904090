//! Encode and decode cost of a typical ~300-byte TaskSubmitted in Confluent's wire format,
//! through `WireCodec` (schema_registry_converter) with the schema id already cached: the hot
//! path of every producer and consumer. The built-in registry runs on a real port over an
//! embedded log in a temp dir only to hand out the id once.
//!
//! `cargo bench --bench events`

use std::collections::HashMap;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;

use agentlog::config::Config;
use agentlog::events::wire::WireCodec;
use agentlog::events::{Lane, Meta, TaskSubmitted, TimestampMicros};
use agentlog::open::open_log;
use agentlog::registry::{Registry, serve};

fn typical_task() -> TaskSubmitted {
    TaskSubmitted {
        meta: Meta {
            event_id: "0192f5a4-7c1e-7b3a-9d2e-4f6a8b0c1d2e".into(),
            occurred_at: TimestampMicros::now(),
            tenant: "acme".into(),
            correlation_id: "0192f5a4-7c1e-7b3a-9d2e-4f6a8b0c1d2e".into(),
            causation_id: None,
            trace_parent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            trace_state: None,
            producer_id: "api-1".into(),
        },
        task_id: "task-0192f5a4-7c1e-7b3a".into(),
        agent_type: "summarize".into(),
        lane: Lane::Normal,
        input: br#"{"url":"https://example.com/report.pdf","max_words":200,"style":"bullet points"}"#.to_vec(),
        content_type: "application/json".into(),
        attempt: 1,
        max_attempts: 5,
        timeout_ms: 120_000,
        deadline: None,
        not_before: None,
        ordering_key: Some("customer-42".into()),
        idempotency_key: Some("req-8812".into()),
        parent_task_id: None,
        job_id: None,
        labels: HashMap::from([("team".to_string(), "research".to_string())]),
        awaiting_signal: None,
        signal: None,
    }
}

fn bench_wire(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::load_with_env(None, Vec::new()).expect("config");
    config.log.embedded.data_dir = dir.path().join("log");
    let shutdown = CancellationToken::new();
    let (codec, server, registry, log) = runtime.block_on(async {
        let log = open_log(&config.log).expect("log");
        let registry = Registry::open(log.clone(), "bench.schemas", shutdown.clone()).await.expect("registry");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(serve(registry.clone(), listener, agentlog::http::access::Access::default(), shutdown.clone()));
        (Arc::new(WireCodec::new(&url).expect("codec")), server, registry, log)
    });
    let task = typical_task();
    let topic = "agentlog.tasks.summarize.normal";
    let bytes = runtime.block_on(codec.encode(topic, &task)).expect("first encode registers the schema");
    println!("TaskSubmitted on the wire: {} bytes", bytes.len());

    // Measured on a current-thread runtime so the figure is the codec, not cross-thread wake-ups.
    let local = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    c.bench_function("wire/encode TaskSubmitted", |b| b.iter(|| local.block_on(codec.encode(topic, &task)).expect("encode")));
    c.bench_function("wire/decode TaskSubmitted", |b| b.iter(|| local.block_on(codec.decode::<TaskSubmitted>(&bytes)).expect("decode")));

    shutdown.cancel();
    runtime.block_on(async {
        let _ = server.await;
        registry.close().await;
        let _ = log.shutdown(std::time::Duration::from_secs(5)).await;
    });
}

criterion_group!(benches, bench_wire);
criterion_main!(benches);
