//! What the lane topics hold, written out when acknowledged tasks have no outcome: whether a
//! lost task's submit is in the log at all (and where) separates a lost write from a record
//! the workers skipped. Read as a read_committed consumer reads, with each partition's
//! watermarks, so a gap in the offsets (transaction markers, aborted records) shows too.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use agentlog::log::follow::Follower;
use agentlog::log::{EventLog, SeekTo, TopicPartition};

/// How long the read may see nothing move before it gives up (the cluster is healed by now).
const STALL: Duration = Duration::from_secs(20);

/// One line per record (`topic partition offset key`), then each partition's watermarks;
/// `missing` task ids are marked where found and listed when not.
pub async fn dump(log: &Arc<dyn EventLog>, topics: &[String], missing: &[String]) -> String {
    let mut out = String::new();
    let follower = match Follower::open(log, topics, SeekTo::Earliest).await {
        Ok(follower) => follower,
        Err(e) => return format!("opening a reader of {topics:?}: {e}\n"),
    };
    let records = match follower.read_history(STALL).await {
        Ok(records) => records,
        Err(e) => return format!("reading {topics:?}: {e}\n"),
    };
    let mut found = Vec::new();
    for r in &records {
        let key = r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
        let mark = if missing.contains(&key) {
            found.push(key.clone());
            "  <- MISSING TASK"
        } else {
            ""
        };
        let _ = writeln!(out, "{} {} {} {key}{mark}", r.topic, r.partition, r.offset);
    }
    let admin = log.admin();
    for topic in topics {
        let partitions = admin.describe_topic(topic).await.map(|d| d.partitions).unwrap_or(0);
        for p in 0..partitions {
            let tp = TopicPartition::new(topic.as_str(), p);
            match admin.watermarks(&tp).await {
                Ok(marks) => {
                    let read = records.iter().filter(|r| r.topic == *topic && r.partition == p).count();
                    let _ = writeln!(out, "watermarks {topic} {p}: low {} high {} ({read} records read)", marks.low, marks.high);
                }
                Err(e) => {
                    let _ = writeln!(out, "watermarks {topic} {p}: {e}");
                }
            }
        }
    }
    for id in missing.iter().filter(|id| !found.contains(id)) {
        let _ = writeln!(out, "not in the log: {id}");
    }
    out
}
