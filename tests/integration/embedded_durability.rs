//! Durability of the embedded log, as stated in the README: an acknowledged append survives a
//! kill -9 of the process at the default `fsync = "never"` (RocksDB's WAL is written before
//! the acknowledgement, the OS keeps it), and with `fsync = "always"`. A kill -9 does not
//! test power loss; `fsync = "always"` is what covers that, by syncing each group commit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentlog::config::{Config, FsyncPolicy};
use agentlog::log::{ConsumerEvent, ConsumerOptions, SeekTo, TopicPartition, TopicSpec};
use agentlog::open::open_log;

async fn acknowledged_appends_survive_kill_9(fsync: FsyncPolicy) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::load_with_env(None, Vec::new()).expect("config");
    config.log.embedded.data_dir = dir.path().join("log");
    config.log.embedded.fsync = fsync;
    let topic = "durability";
    {
        let log = open_log(&config.log).expect("open");
        log.admin().create_topic(&TopicSpec::new(topic, 3)).await.expect("create");
        log.shutdown(Duration::from_secs(5)).await.expect("shutdown");
    }

    let fsync_name = match fsync {
        FsyncPolicy::Never => "never",
        FsyncPolicy::Always => "always",
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentlog"))
        .args(["produce", "--topic", topic, "--key", "k{i}", "--value", "v{i}", "--count", "10000000"])
        .env("AGENTLOG__LOG__EMBEDDED__DATA_DIR", config.log.embedded.data_dir.display().to_string())
        .env("AGENTLOG__LOG__EMBEDDED__FSYNC", fsync_name)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agentlog produce");
    let stdout = child.stdout.take().expect("stdout");
    let mut acked = Vec::new();
    let started = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        acked.push((v["seq"].as_u64().expect("seq"), v["partition"].as_i64().expect("p") as i32, v["offset"].as_i64().expect("o")));
        if acked.len() >= 3000 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    // SIGKILL: no destructors, no flush; only what was durable before the ack may count.
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert!(acked.len() >= 100, "the producer acknowledged too little before the kill: {}", acked.len());

    let log = open_log(&config.log).expect("reopen after kill -9");
    let mut consumer = log.consumer(ConsumerOptions::default()).expect("consumer");
    let parts: Vec<(TopicPartition, SeekTo)> = (0..3).map(|p| (TopicPartition::new(topic, p), SeekTo::Earliest)).collect();
    consumer.assign(&parts).await.expect("assign");
    let mut stored = std::collections::HashMap::new();
    let admin = log.admin();
    let mut total = 0;
    for p in 0..3 {
        total += admin.watermarks(&TopicPartition::new(topic, p)).await.expect("marks").high;
    }
    while stored.len() < total as usize {
        if let ConsumerEvent::Record(r) = tokio::time::timeout(Duration::from_secs(10), consumer.next_event()).await.expect("read in time").expect("read") {
            stored.insert((r.partition, r.offset), String::from_utf8_lossy(&r.payload).into_owned());
        }
    }
    for (seq, partition, offset) in &acked {
        assert_eq!(stored.get(&(*partition, *offset)), Some(&format!("v{seq}")), "acknowledged record {seq} lost");
    }
    log.shutdown(Duration::from_secs(5)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9_by_default() {
    acknowledged_appends_survive_kill_9(FsyncPolicy::Never).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9_with_fsync_always() {
    acknowledged_appends_survive_kill_9(FsyncPolicy::Always).await;
}
