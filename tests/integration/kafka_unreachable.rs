//! A Kafka cluster that cannot be reached fails calls with `LogError::Unavailable` within
//! 10 s instead of hanging. Needs no broker: it points the client at a closed local port.

use std::time::{Duration, Instant};

use agentlog::config::{Backend, Config};
use agentlog::log::{ConsumerOptions, LogError, Record, SeekTo, TopicPartition};
use agentlog::open::open_log;

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

fn assert_unavailable_in_time(result: Result<impl std::fmt::Debug, LogError>, started: Instant, what: &str, endpoint: &str) {
    let elapsed = started.elapsed();
    let err = result.expect_err(what);
    assert!(matches!(&err, LogError::Unavailable { endpoint: e, .. } if e == endpoint), "{what}: {err:?}");
    assert!(err.to_string().contains(endpoint), "{what}: message must name the broker: {err}");
    assert!(err.retryable(), "{what}: a broker that is down is retryable");
    assert!(elapsed < Duration::from_secs(10), "{what} took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_a_typed_error_within_ten_seconds() {
    let endpoint = format!("127.0.0.1:{}", closed_port());
    let mut config = Config::load_with_env(None, Vec::new()).expect("config");
    config.log.backend = Backend::Kafka;
    config.log.kafka.bootstrap_servers = endpoint.clone();
    let log = open_log(&config.log).expect("clients are created without contacting the broker");

    let producer = log.producer().expect("producer");
    let started = Instant::now();
    let sent = match producer.send(Record::new("agentlog.task.events", "x")).await {
        Ok(delivery) => delivery.await,
        Err(e) => Err(e),
    };
    assert_unavailable_in_time(sent, started, "produce", &endpoint);

    let started = Instant::now();
    assert_unavailable_in_time(log.admin().describe_topic("agentlog.task.events").await, started, "describe", &endpoint);

    let started = Instant::now();
    assert_unavailable_in_time(log.admin().list_topics().await, started, "list topics", &endpoint);

    let mut consumer = log.consumer(ConsumerOptions::default()).expect("consumer");
    let started = Instant::now();
    let assigned = consumer.assign(&[(TopicPartition::new("agentlog.task.events", 0), SeekTo::Earliest)]).await;
    assert_unavailable_in_time(assigned, started, "assign", &endpoint);
}
