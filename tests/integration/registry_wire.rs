//! The Confluent wire-format codec against the built-in registry on a real port: round trip,
//! the bytes on the wire, and a typed error (never a panic or a hang) for each malformed input.

use std::sync::Arc;
use std::time::Duration;

use agentlog::config::{Backend, Config};
use agentlog::events::wire::{WireCodec, WireError};
use agentlog::log::EventLog;
use agentlog::open::open_log;
use agentlog::registry::{Registry, RegistryError, VersionSelector, serve};
use apache_avro::AvroSchema;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.test")]
struct Probe {
    id: String,
    count: i64,
    note: Option<String>,
}

/// Every codec call must finish quickly, whatever the input.
const BOUND: Duration = Duration::from_secs(15);

struct Fixture {
    log: Arc<dyn EventLog>,
    registry: Arc<Registry>,
    url: String,
    shutdown: CancellationToken,
    server: Option<JoinHandle<Result<(), RegistryError>>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::load_with_env(None, Vec::new()).expect("default config");
        config.log.backend = Backend::Embedded;
        config.log.embedded.data_dir = dir.path().join("log");
        let log = open_log(&config.log).expect("open log");
        let shutdown = CancellationToken::new();
        let registry = Registry::open(log.clone(), "agentlog.schemas", shutdown.clone()).await.expect("registry");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = Some(tokio::spawn(serve(registry.clone(), listener, agentlog::http::access::Access::default(), shutdown.clone())));
        Fixture { log, registry, url, shutdown, server, _dir: dir }
    }

    fn codec(&self) -> WireCodec {
        let settings = SrSettings::new_builder(self.url.clone()).no_proxy().set_timeout(Duration::from_secs(5)).build().expect("settings");
        WireCodec::with_settings(settings)
    }

    /// Stops serving HTTP (the registry state stays usable in-process).
    async fn stop_http(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran");
        }
    }

    async fn stop(mut self) {
        self.stop_http().await;
        self.registry.close().await;
        self.log.shutdown(Duration::from_secs(10)).await.expect("log shutdown");
    }
}

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f).await.unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

fn probe() -> Probe {
    Probe { id: "abc".into(), count: 5, note: Some("hello".into()) }
}

fn header(id: u32) -> Vec<u8> {
    let mut bytes = vec![0];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_through_the_built_in_registry() {
    let mut fx = Fixture::start().await;
    let codec = fx.codec();
    let subject = "orders-io.agentlog.test.Probe";
    assert_eq!(codec.subject_for::<Probe>("orders").expect("subject"), subject);

    let bytes = bounded("encode", codec.encode("orders", &probe())).await.expect("encode");
    let registered = fx.registry.version(subject, VersionSelector::Latest, false).expect("auto-registered under TopicRecordNameStrategy");
    assert_eq!(bytes[0], 0, "magic byte");
    assert_eq!(&bytes[1..5], &registered.id.to_be_bytes(), "schema id, big-endian");
    // Avro binary: "abc" (len 3 zigzag = 6), 5 (zigzag 10), union branch 1, "hello".
    assert_eq!(&bytes[5..], &[6, b'a', b'b', b'c', 10, 2, 10, b'h', b'e', b'l', b'l', b'o']);

    let (id, back) = bounded("decode", codec.decode::<Probe>(&bytes)).await.expect("decode");
    assert_eq!((id, back), (registered.id, probe()));
    let none = Probe { note: None, ..probe() };
    let bytes_none = bounded("encode", codec.encode("orders", &none)).await.expect("encode");
    assert_eq!(bounded("decode", codec.decode::<Probe>(&bytes_none)).await.expect("decode").1, none);

    // Schema ids are cached: with the HTTP server gone, both directions still work.
    fx.stop_http().await;
    assert_eq!(bounded("encode", codec.encode("orders", &probe())).await.expect("cached encode"), bytes);
    assert_eq!(bounded("decode", codec.decode::<Probe>(&bytes)).await.expect("cached decode").1, probe());
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_give_typed_errors() {
    let fx = Fixture::start().await;
    let codec = fx.codec();
    let good = bounded("encode", codec.encode("orders", &probe())).await.expect("encode");
    let id = u32::from_be_bytes([good[1], good[2], good[3], good[4]]);

    let decode = |bytes: Vec<u8>| {
        let codec = &codec;
        async move { bounded("decode", codec.decode::<Probe>(&bytes)).await.map(|(_, p)| p) }
    };

    let mut wrong_magic = good.clone();
    wrong_magic[0] = 1;
    assert_eq!(decode(wrong_magic).await, Err(WireError::WrongMagicByte { found: 1 }));
    assert_eq!(decode(vec![0, 0, 0]).await, Err(WireError::Truncated { len: 3 }));
    assert_eq!(decode(vec![]).await, Err(WireError::Truncated { len: 0 }));

    let mut unknown = header(999_999);
    unknown.extend_from_slice(&good[5..]);
    assert_eq!(decode(unknown).await, Err(WireError::UnknownSchemaId { id: 999_999 }));

    let cut = good[..good.len() - 2].to_vec();
    assert_eq!(decode(cut.clone()).await, Err(WireError::Truncated { len: cut.len() }));
    assert_eq!(decode(header(id)).await, Err(WireError::Truncated { len: 5 }), "header without a datum");

    // Union branch 3 of a 2-branch union.
    let mut bad_union = header(id);
    bad_union.extend_from_slice(&[6, b'a', b'b', b'c', 10, 6]);
    assert!(matches!(decode(bad_union).await, Err(WireError::Corrupt { id: i, .. }) if i == id));
    // A string that is not UTF-8.
    let mut bad_utf8 = header(id);
    bad_utf8.extend_from_slice(&[4, 0xff, 0xfe, 10, 0]);
    assert!(matches!(decode(bad_utf8).await, Err(WireError::Corrupt { .. })));
    // Bytes after a complete datum.
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(decode(trailing).await, Err(WireError::Corrupt { .. })));

    // A writer schema with the same name but an incompatible field type cannot become a Probe.
    let other = r#"{"type":"record","name":"Probe","namespace":"io.agentlog.test","fields":[{"name":"id","type":"string"},{"name":"count","type":"string"}]}"#;
    let other_id = fx.registry.register("elsewhere-io.agentlog.test.Probe", other).await.expect("register other");
    let mut unresolvable = header(other_id);
    unresolvable.extend_from_slice(&[2, b'x', 2, b'y']);
    assert!(matches!(decode(unresolvable).await, Err(WireError::Unresolvable { id: i, .. }) if i == other_id));

    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_is_a_registry_error() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let codec = WireCodec::new("http://127.0.0.1:1").expect("codec");
    let mut framed = header(1);
    framed.extend_from_slice(&[6, b'a', b'b', b'c', 10, 0]);
    assert!(matches!(bounded("decode", codec.decode::<Probe>(&framed)).await, Err(WireError::Registry { .. })));
    assert!(matches!(bounded("encode", codec.encode("orders", &probe())).await, Err(WireError::Registry { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_type_is_rejected_on_encode() {
    let fx = Fixture::start().await;
    let codec = fx.codec();
    // Pre-register a Probe whose `count` is a string: the derived Probe (count: long) cannot
    // read such data, so under BACKWARD the registry refuses it.
    let old = r#"{"type":"record","name":"Probe","namespace":"io.agentlog.test","fields":[{"name":"id","type":"string"},{"name":"count","type":"string"}]}"#;
    fx.registry.register("orders-io.agentlog.test.Probe", old).await.expect("register old");
    let result = bounded("encode", codec.encode("orders", &probe())).await;
    assert!(matches!(&result, Err(WireError::Rejected { subject, .. }) if subject == "orders-io.agentlog.test.Probe"), "{result:?}");
    fx.stop().await;
}
