//! Idempotency keys this API process has written but the projection may not show yet.
//!
//! The projection learns of a key only once it applies the submit, a few milliseconds (or,
//! under lag, much longer) after the write. Two submits with one key inside that window, or
//! twice in one batch, would both be written if the projection were the only check. So each
//! keyed submit first takes its key's claim here: concurrent submits of one key queue on it,
//! and the ones after the first find the task id the first wrote.
//!
//! The projection is the durable store of keys (`I` entries of its index, rebuilt from the
//! log); a claim is only the bridge over its lag, dropped once the projection has applied
//! the write (or, for a projection that does not follow, after [`REMEMBER`]). Their number is
//! bounded by `api.max_idempotency_claims`: at the bound, with nothing the projection has
//! caught up on, a keyed submit is refused as retryable rather than held in memory.
//!
//! The claims cover one API process. Several API replicas behind a load balancer can still
//! race on a key inside the window; the projection then keeps the earliest submit as the
//! key's task (see `projection::apply`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a written key is remembered here when the projection has not applied it: well
/// past the projection's usual lag.
pub const REMEMBER: Duration = Duration::from_secs(120);

/// Below this many claims none are pruned; above it pruning runs each time their number
/// doubles, so a submit pays for it only now and then.
const PRUNE_AT: usize = 4096;

/// At the bound, how often a refused submit may scan the claims again for ones to drop.
const FULL_RESCAN_EVERY: Duration = Duration::from_millis(100);

/// Where the submit of a claimed key was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub task_id: String,
    pub at: Instant,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What a claimed key is known to name.
#[derive(Debug, Default)]
pub struct Slot {
    /// The task written under this key by this process, and where.
    pub written: Option<Written>,
}

/// How far the projection has applied each partition: (topic, partition) → next offset.
pub type Applied = HashMap<(String, i32), i64>;

/// A keyed submit found `api.max_idempotency_claims` claims waiting for the projection.
#[derive(Debug, thiserror::Error)]
#[error(
    "{held} idempotency keys written by this API are not yet shown by its projection (api.max_idempotency_claims = {cap}); retry when the projection has caught up"
)]
pub struct ClaimsFull {
    pub held: usize,
    pub cap: usize,
}

type Key = (String, String);

struct Slots {
    map: HashMap<Key, Arc<tokio::sync::Mutex<Slot>>>,
    /// Size at which the next prune runs.
    prune_at: usize,
    /// When a prune at the bound last ran.
    last_full_scan: Option<Instant>,
}

pub struct Claims {
    slots: Mutex<Slots>,
    cap: usize,
}

/// A held claim: other submits of the key wait until it is dropped.
pub type Claim = tokio::sync::OwnedMutexGuard<Slot>;

impl Claims {
    /// Claims bounded at `cap` (at least 1).
    pub fn new(cap: usize) -> Self {
        Self { slots: Mutex::new(Slots { map: HashMap::new(), prune_at: PRUNE_AT, last_full_scan: None }), cap: cap.max(1) }
    }

    /// Takes the claim of `key` for `tenant`, waiting while another submit holds it.
    /// `applied` (asked only when claims are pruned) says how far the projection has read.
    pub async fn claim(&self, tenant: &str, key: &str, applied: impl FnOnce() -> Applied) -> Result<Claim, ClaimsFull> {
        let slot = self.slot(tenant, key, &mut Some(applied))?;
        Ok(slot.lock_owned().await)
    }

    /// Claims several keys of one tenant at once, in a fixed order (so two batches naming
    /// the same keys in different orders cannot wait on each other), each key once. Fails,
    /// holding none, when the bound leaves no room for all of them.
    pub async fn claim_all<'k>(
        &self,
        tenant: &str,
        keys: impl IntoIterator<Item = &'k str>,
        applied: impl FnOnce() -> Applied,
    ) -> Result<HashMap<String, Claim>, ClaimsFull> {
        let mut sorted: Vec<&str> = keys.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut applied = Some(applied);
        let mut slots = Vec::with_capacity(sorted.len());
        for key in sorted {
            slots.push((key, self.slot(tenant, key, &mut applied)?));
        }
        let mut held = HashMap::with_capacity(slots.len());
        for (key, slot) in slots {
            held.insert(key.to_string(), slot.lock_owned().await);
        }
        Ok(held)
    }

    fn slot(&self, tenant: &str, key: &str, applied: &mut Option<impl FnOnce() -> Applied>) -> Result<Arc<tokio::sync::Mutex<Slot>>, ClaimsFull> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let id = (tenant.to_string(), key.to_string());
        if let Some(slot) = slots.map.get(&id) {
            return Ok(slot.clone());
        }
        let now = Instant::now();
        let full = slots.map.len() >= self.cap;
        let due = slots.map.len() >= slots.prune_at;
        let rescan = !full || slots.last_full_scan.is_none_or(|at| now.duration_since(at) >= FULL_RESCAN_EVERY);
        if (full || due)
            && rescan
            && let Some(applied) = applied.take()
        {
            prune(&mut slots.map, now, &applied());
            slots.prune_at = (slots.map.len() * 2).max(PRUNE_AT);
            slots.last_full_scan = full.then_some(now);
        }
        if slots.map.len() >= self.cap {
            return Err(ClaimsFull { held: slots.map.len(), cap: self.cap });
        }
        Ok(slots.map.entry(id).or_default().clone())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).map.len()
    }
}

/// Drops claims nobody holds or waits for that wrote nothing (the submit failed or was a
/// duplicate) or whose write the projection has applied (it answers for the key now) or is
/// older than [`REMEMBER`].
fn prune(slots: &mut HashMap<Key, Arc<tokio::sync::Mutex<Slot>>>, now: Instant, applied: &Applied) {
    slots.retain(|_, slot| {
        if Arc::strong_count(slot) > 1 {
            return true;
        }
        match slot.try_lock() {
            Ok(held) => held.written.as_ref().is_some_and(|w| {
                let shown = applied.get(&(w.topic.clone(), w.partition)).is_some_and(|next| *next > w.offset);
                !shown && now.duration_since(w.at) < REMEMBER
            }),
            Err(_) => true,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(task_id: &str, at: Instant, offset: i64) -> Written {
        Written { task_id: task_id.into(), at, topic: "lane".into(), partition: 0, offset }
    }

    fn nothing_applied() -> Applied {
        Applied::new()
    }

    #[tokio::test]
    async fn a_second_submit_of_a_key_waits_and_sees_the_first_ones_task() {
        let claims = Arc::new(Claims::new(100));
        let mut first = claims.claim("acme", "order-17", nothing_applied).await.expect("room");
        let waiting = {
            let claims = claims.clone();
            tokio::spawn(async move { claims.claim("acme", "order-17", nothing_applied).await.expect("room").written.as_ref().map(|w| w.task_id.clone()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the second claim waits for the first");
        first.written = Some(written("task-1", Instant::now(), 7));
        drop(first);
        assert_eq!(waiting.await.expect("joined"), Some("task-1".to_string()));
        // Another tenant's key of the same name is its own.
        assert!(claims.claim("other", "order-17", nothing_applied).await.expect("room").written.is_none());
    }

    #[tokio::test]
    async fn claims_of_a_batch_are_taken_once_each_in_order() {
        let claims = Claims::new(100);
        let held = claims.claim_all("acme", ["b", "a", "b"], nothing_applied).await.expect("room");
        assert_eq!(held.len(), 2);
        drop(held);
        let again = claims.claim_all("acme", ["a", "b"], nothing_applied).await.expect("room");
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn pruning_keeps_unapplied_recent_writes_and_held_claims() {
        let claims = Claims::new(100);
        let now = Instant::now();
        let mut slots = claims.slots.lock().expect("lock");
        let later = now + REMEMBER + Duration::from_secs(1);
        let slot = |w: Option<Written>| Arc::new(tokio::sync::Mutex::new(Slot { written: w }));
        let held = slot(None);
        let _holder = held.clone();
        slots.map.insert(("a".into(), "recent".into()), slot(Some(written("t1", now + REMEMBER, 5))));
        slots.map.insert(("a".into(), "applied".into()), slot(Some(written("t3", now + REMEMBER, 4))));
        slots.map.insert(("a".into(), "old".into()), slot(Some(written("t2", now, 9))));
        slots.map.insert(("a".into(), "never".into()), slot(None));
        slots.map.insert(("a".into(), "held".into()), held);
        // The projection has read offsets 0..=4 of the lane.
        let applied = Applied::from([(("lane".to_string(), 0), 5)]);
        prune(&mut slots.map, later, &applied);
        let mut left: Vec<&str> = slots.map.keys().map(|(_, k)| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["held", "recent"]);
        drop(slots);
        assert_eq!(claims.len(), 2);
    }

    /// Memory is bounded by configuration: at `cap` claims the projection has not caught up
    /// on, a new key is refused (retryable), a key already claimed is still served, and once
    /// the projection applies the writes there is room again.
    #[tokio::test]
    async fn claims_stop_at_the_bound_until_the_projection_catches_up() {
        let claims = Claims::new(3);
        for (i, key) in ["k0", "k1", "k2"].into_iter().enumerate() {
            let mut claim = claims.claim("acme", key, nothing_applied).await.expect("room below the bound");
            claim.written = Some(written(key, Instant::now(), i as i64));
        }
        let refused = claims.claim("acme", "k3", nothing_applied).await.expect_err("a fourth key is refused at the bound");
        assert_eq!((refused.held, refused.cap), (3, 3));
        assert!(refused.to_string().contains("api.max_idempotency_claims"), "{refused}");
        let known = claims.claim("acme", "k1", nothing_applied).await.expect("a claimed key is still served");
        assert_eq!(known.written.as_ref().map(|w| w.task_id.as_str()), Some("k1"));
        drop(known);
        assert!(claims.claim_all("acme", ["k3", "k4"], nothing_applied).await.is_err(), "a batch past the bound holds nothing");
        tokio::time::sleep(FULL_RESCAN_EVERY).await;
        let caught_up = || Applied::from([(("lane".to_string(), 0), 2)]);
        claims.claim("acme", "k3", caught_up).await.expect("room once the projection applied offsets 0 and 1");
        assert_eq!(claims.len(), 2, "k2 (unapplied) and k3 remain");
    }
}
