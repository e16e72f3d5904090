//! The consumer group as its coordinator sees it, through Kafka's own tool: each member
//! (client id = worker id) with its current and target assignment and epochs, and each
//! partition's committed offset, end and owner. Written next to the stack dumps when
//! acknowledged tasks lack an outcome, so a run that loses work shows whether the partitions
//! holding it were assigned to nobody, waited on a revocation, or sat with a member that
//! never served them.

use super::cluster::Cluster;

const GROUP_COMMAND: &str = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand";

/// Members and their assignments, then partitions with lag and owner, as text.
pub async fn describe(cluster: &Cluster, group: &str) -> String {
    let mut text = String::new();
    for extra in [&["--members", "--verbose"][..], &["--offsets"][..]] {
        let mut args = vec!["tool", GROUP_COMMAND, "--bootstrap-server", cluster.bootstrap(), "--describe", "--group", group];
        args.extend_from_slice(extra);
        match cluster.run_async(&args).await {
            Ok(out) => text.push_str(&out),
            Err(e) => text.push_str(&format!("describing `{group}` ({}): {e}\n", extra.join(" "))),
        }
        text.push('\n');
    }
    text
}
