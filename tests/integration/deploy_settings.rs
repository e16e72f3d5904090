//! The broker settings we ship exist twice: `deploy/kafka/server.properties` (the local
//! broker of the tests and `make dev`, and the source of truth) and the `KAFKA_*` variables
//! of `docker-compose.yml` (what users start). They drifted once (the compose file kept a
//! 3 s session when the properties moved to 1.2 s, so users got slower failover than
//! BENCHMARKS.md measures); this test keeps them equal.

use std::collections::BTreeMap;

/// Settings that differ between the two on purpose: addresses and storage.
const PER_ENVIRONMENT: [&str; 5] = ["listeners", "advertised.listeners", "controller.quorum.voters", "listener.security.protocol.map", "log.dirs"];

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn properties() -> BTreeMap<String, String> {
    read("deploy/kafka/server.properties")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// `KAFKA_GROUP_CONSUMER_SESSION_TIMEOUT_MS: 1200` → `group.consumer.session.timeout.ms` =
/// `1200`, as the apache/kafka image maps them.
fn compose() -> BTreeMap<String, String> {
    read("docker-compose.yml")
        .lines()
        .map(str::trim)
        .filter_map(|line| line.strip_prefix("KAFKA_"))
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .map(|(name, value)| {
            let value = value.split(" #").next().unwrap_or_default().trim().trim_matches('"');
            (name.to_ascii_lowercase().replace('_', "."), value.to_string())
        })
        .collect()
}

#[test]
fn docker_compose_ships_the_broker_settings_of_server_properties() {
    let properties = properties();
    let compose = compose();
    assert!(properties.contains_key("group.consumer.session.timeout.ms"), "parsed {properties:?}");
    let mut differences = Vec::new();
    for (key, value) in properties.iter().filter(|(key, _)| !PER_ENVIRONMENT.contains(&key.as_str())) {
        match compose.get(key) {
            Some(theirs) if theirs == value => {}
            Some(theirs) => differences.push(format!("{key}: server.properties {value}, docker-compose.yml {theirs}")),
            None => differences.push(format!("{key}: server.properties {value}, missing from docker-compose.yml")),
        }
    }
    assert!(differences.is_empty(), "deploy/kafka/server.properties and docker-compose.yml disagree:\n{}", differences.join("\n"));
}
