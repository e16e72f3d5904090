//! The faults, one function each: what to break, when, and when it counts as healed. Times
//! are from the start of the load (50 tasks/s by default); every scenario lets 5 s of load run on a
//! healthy system first. A killed process is restarted only where the scenario says so.

use std::time::Duration;

use super::scenario::{Scenario, Step};

const WARM_UP: Duration = Duration::from_secs(5);
/// A broker stays down (or frozen) this long before it is restarted (resumed).
const BROKER_OUTAGE: Duration = Duration::from_secs(10);
/// The node the single-broker scenarios take away (broker id = node number).
const BROKER: u32 = 2;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// No fault: what the same load costs on a healthy system, to read the others against.
pub async fn baseline(sc: &mut Scenario) -> Step {
    sc.sleep(WARM_UP).await;
    sc.fault();
    sc.healed();
    Ok(())
}

/// kill -9 of a worker mid-load; it is restarted after 5 s.
pub async fn worker_kill(sc: &mut Scenario) -> Step {
    sc.sleep(WARM_UP).await;
    sc.fleet.kill9("worker-1")?;
    sc.fault();
    sc.sleep(secs(5)).await;
    sc.fleet.restart("worker-1")?;
    sc.healed();
    Ok(())
}

/// SIGSTOP of a worker for 10 s (longer than the group's session timeout: the group gives
/// its partitions away while it still believes it owns them), then SIGCONT.
pub async fn worker_pause(sc: &mut Scenario) -> Step {
    sc.sleep(WARM_UP).await;
    sc.fleet.pause("worker-1")?;
    sc.fault();
    sc.sleep(secs(10)).await;
    sc.fleet.resume("worker-1")?;
    sc.healed();
    Ok(())
}

/// kill -9 of the supervisor that leads (two run); the standby must take over alone.
pub async fn supervisor_leader_kill(sc: &mut Scenario) -> Step {
    let leader = sc.supervisor_leader(secs(30)).await.ok_or("no supervisor logged that it leads within 30 s")?;
    sc.sleep(WARM_UP).await;
    sc.fleet.kill9(&leader)?;
    sc.fault();
    // Nothing is restarted: the heal is the standby's election, so it counts from the kill.
    sc.healed();
    Ok(())
}

/// kill -9 of the api; restarted after 2 s on the same port and projection directory.
pub async fn api_kill(sc: &mut Scenario) -> Step {
    sc.sleep(WARM_UP).await;
    sc.fleet.kill9("api")?;
    sc.fault();
    sc.sleep(secs(2)).await;
    sc.fleet.restart("api")?;
    sc.healed();
    Ok(())
}

/// kill -9 of one broker (RF 3, min.insync.replicas 2: the cluster keeps accepting
/// acks=all writes); restarted after 10 s.
pub async fn broker_kill(sc: &mut Scenario) -> Step {
    sc.sleep(WARM_UP).await;
    sc.kill_broker(BROKER).await?;
    sc.fault();
    sc.sleep(BROKER_OUTAGE).await;
    sc.restart_broker(BROKER).await?;
    sc.healed();
    Ok(())
}

/// [`broker_kill`] with tracing on in every process, every span exported to a collector that
/// is down: the exporter's failures, on its own thread, must not slow or stop the work.
pub async fn broker_kill_traced(sc: &mut Scenario) -> Step {
    broker_kill(sc).await
}

/// kill -9 of the broker leading the most partitions of the lane topic (most leader
/// elections at once); restarted after 10 s.
pub async fn broker_leader_kill(sc: &mut Scenario) -> Step {
    sc.sleep(WARM_UP).await;
    let leaders = sc.cluster.leaders(&sc.lane_topics()).await?;
    let (&node, &led) = leaders.iter().max_by_key(|(_, n)| **n).ok_or("the lane topic has no partition leaders")?;
    eprintln!("{}: killing broker {node}, leader of {led} lane partitions ({leaders:?})", sc.name);
    sc.kill_broker(node).await?;
    sc.fault();
    sc.sleep(BROKER_OUTAGE).await;
    sc.restart_broker(node).await?;
    sc.healed();
    Ok(())
}

/// SIGSTOP of a broker for 10 s, then SIGCONT: a broker that hangs (long GC, frozen VM)
/// with its connections open, then comes back believing it still leads.
pub async fn broker_pause(sc: &mut Scenario) -> Step {
    sc.sleep(WARM_UP).await;
    sc.cluster.pause(BROKER)?;
    sc.fault();
    sc.sleep(BROKER_OUTAGE).await;
    sc.cluster.resume(BROKER)?;
    sc.healed();
    Ok(())
}

/// kill -9 of the schema registry, restarted after 2 s (schemas are on the schemas topic).
pub async fn registry_restart(sc: &mut Scenario) -> Step {
    sc.sleep(WARM_UP).await;
    sc.fleet.kill9("registry")?;
    sc.fault();
    sc.sleep(secs(2)).await;
    sc.fleet.restart("registry")?;
    sc.healed();
    Ok(())
}

/// A broker is down for 10 s; meanwhile the api is killed and restarted after 2 s, so it
/// starts (projection, producer, consumers) against a cluster missing a broker.
pub async fn api_kill_during_broker_outage(sc: &mut Scenario) -> Step {
    sc.sleep(WARM_UP).await;
    sc.kill_broker(BROKER).await?;
    sc.fault();
    sc.sleep(secs(3)).await;
    sc.fleet.kill9("api")?;
    sc.sleep(secs(2)).await;
    sc.fleet.restart("api")?;
    sc.sleep(secs(5)).await;
    sc.restart_broker(BROKER).await?;
    sc.healed();
    Ok(())
}

/// Everything at once: a worker killed and restarted after 5 s, a second worker killed (not
/// restarted), a broker killed and restarted after 10 s, the api killed and restarted
/// after 2 s while the broker is down.
pub async fn combination(sc: &mut Scenario) -> Step {
    sc.sleep(WARM_UP).await;
    sc.fleet.kill9("worker-1")?;
    sc.fault();
    sc.sleep(secs(5)).await;
    sc.fleet.restart("worker-1")?;
    sc.sleep(secs(2)).await;
    sc.fleet.kill9("worker-2")?;
    sc.sleep(secs(2)).await;
    sc.kill_broker(3).await?;
    sc.sleep(secs(2)).await;
    sc.fleet.kill9("api")?;
    sc.sleep(secs(2)).await;
    sc.fleet.restart("api")?;
    sc.sleep(BROKER_OUTAGE - secs(4)).await;
    sc.restart_broker(3).await?;
    sc.healed();
    Ok(())
}
