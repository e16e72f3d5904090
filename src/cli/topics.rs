//! `agentlog topics`: the topic catalog plus one topic per lane of every declared agent type,
//! applied to the backend or compared with it.

use std::sync::Arc;

use anyhow::bail;

use crate::agent::lane_topic_specs;
use crate::config::Config;
use crate::log::{EventLog, LogError, TopicSpec};
use crate::topics::{self, Applied, Catalog};

fn catalog(config: &Config) -> anyhow::Result<Catalog> {
    Ok(Catalog::builtin(&config.log.topic_prefix, config.topics.replication_factor)?)
}

/// The catalog's topics plus one topic per lane of every declared agent type.
fn all_specs(config: &Config) -> anyhow::Result<Vec<TopicSpec>> {
    let mut specs: Vec<TopicSpec> = catalog(config)?.specs().cloned().collect();
    specs.extend(lane_topic_specs(&config.agents, &config.log.topic_prefix, config.topics.replication_factor));
    Ok(specs)
}

/// Creates what is missing; says what it found.
pub async fn apply(log: &Arc<dyn EventLog>, config: &Config) -> anyhow::Result<Vec<Applied>> {
    Ok(topics::apply(log.admin().as_ref(), &all_specs(config)?).await?)
}

/// `topics apply`: one line per topic.
pub async fn apply_and_print(log: &Arc<dyn EventLog>, config: &Config) -> anyhow::Result<()> {
    for applied in apply(log, config).await? {
        match applied {
            Applied::Created(name) => println!("created   {name}"),
            Applied::Unchanged(name) => println!("ok        {name}"),
        }
    }
    Ok(())
}

/// `topics describe`: each catalog topic as the backend has it; fails on any drift.
pub async fn describe(log: &Arc<dyn EventLog>, config: &Config) -> anyhow::Result<()> {
    let admin = log.admin();
    let mut drifted = false;
    for (spec, entry) in &catalog(config)?.topics {
        match admin.describe_topic(&spec.name).await {
            Ok(actual) => {
                let drift = topics::compare(spec, &actual);
                drifted |= !drift.is_empty();
                println!(
                    "{:<28} partitions={:<3} rf={} cleanup={:<7} key={:<10} {}",
                    spec.name,
                    actual.partitions,
                    actual.replication_factor,
                    actual.cleanup_policy.as_str(),
                    entry.key,
                    if drift.is_empty() {
                        "ok".to_string()
                    } else {
                        format!("DRIFT: {}", drift.iter().map(|d| d.difference.clone()).collect::<Vec<_>>().join("; "))
                    }
                );
            }
            Err(LogError::UnknownTopic { .. }) => {
                drifted = true;
                println!("{:<28} MISSING (run `agentlog topics apply`)", spec.name);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if drifted {
        bail!("the backend differs from the topic catalog");
    }
    Ok(())
}
