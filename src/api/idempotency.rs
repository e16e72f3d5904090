//! Idempotency keys this API process has written but the projection may not show yet.
//!
//! The projection learns of a key only once it applies the submit, a few milliseconds (or,
//! under lag, much longer) after the write. Two submits with one key inside that window, or
//! twice in one batch, would both be written if the projection were the only check. So each
//! keyed submit first takes its key's claim here: concurrent submits of one key queue on it,
//! and the ones after the first find the task id the first wrote.
//!
//! The claims cover one API process. Several API replicas behind a load balancer can still
//! race on a key inside the window; the projection then keeps the earliest submit as the
//! key's task (see `projection::apply`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a written key is remembered here: well past the projection's usual lag, after
/// which the projection answers for it.
pub const REMEMBER: Duration = Duration::from_secs(120);

/// Claims are pruned when there are more than this many, so memory follows the submit rate.
const PRUNE_AT: usize = 4096;

/// What a claimed key is known to name.
#[derive(Debug, Default)]
pub struct Slot {
    /// The task written under this key by this process, and when.
    pub written: Option<(String, Instant)>,
}

type Key = (String, String);

#[derive(Default)]
pub struct Claims {
    slots: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Slot>>>>,
}

/// A held claim: other submits of the key wait until it is dropped.
pub type Claim = tokio::sync::OwnedMutexGuard<Slot>;

impl Claims {
    /// Takes the claim of `key` for `tenant`, waiting while another submit holds it.
    pub async fn claim(&self, tenant: &str, key: &str) -> Claim {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.len() > PRUNE_AT {
                prune(&mut slots, Instant::now());
            }
            slots.entry((tenant.to_string(), key.to_string())).or_default().clone()
        };
        slot.lock_owned().await
    }

    /// Claims several keys of one tenant at once, in a fixed order (so two batches naming
    /// the same keys in different orders cannot wait on each other), each key once.
    pub async fn claim_all<'k>(&self, tenant: &str, keys: impl IntoIterator<Item = &'k str>) -> HashMap<String, Claim> {
        let mut sorted: Vec<&str> = keys.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut held = HashMap::with_capacity(sorted.len());
        for key in sorted {
            held.insert(key.to_string(), self.claim(tenant, key).await);
        }
        held
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Drops claims nobody holds or waits for whose write is older than [`REMEMBER`] (or that
/// never wrote anything: the submit failed or was a duplicate).
fn prune(slots: &mut HashMap<Key, Arc<tokio::sync::Mutex<Slot>>>, now: Instant) {
    slots.retain(|_, slot| {
        if Arc::strong_count(slot) > 1 {
            return true;
        }
        match slot.try_lock() {
            Ok(held) => held.written.as_ref().is_some_and(|(_, at)| now.duration_since(*at) < REMEMBER),
            Err(_) => true,
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_submit_of_a_key_waits_and_sees_the_first_ones_task() {
        let claims = Arc::new(Claims::default());
        let mut first = claims.claim("acme", "order-17").await;
        let waiting = {
            let claims = claims.clone();
            tokio::spawn(async move { claims.claim("acme", "order-17").await.written.as_ref().map(|(id, _)| id.clone()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the second claim waits for the first");
        first.written = Some(("task-1".into(), Instant::now()));
        drop(first);
        assert_eq!(waiting.await.expect("joined"), Some("task-1".to_string()));
        // Another tenant's key of the same name is its own.
        assert!(claims.claim("other", "order-17").await.written.is_none());
    }

    #[tokio::test]
    async fn claims_of_a_batch_are_taken_once_each_in_order() {
        let claims = Claims::default();
        let held = claims.claim_all("acme", ["b", "a", "b"]).await;
        assert_eq!(held.len(), 2);
        drop(held);
        let again = claims.claim_all("acme", ["a", "b"]).await;
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn pruning_keeps_recent_writes_and_held_claims() {
        let claims = Claims::default();
        let now = Instant::now();
        let mut slots = claims.slots.lock().expect("lock");
        let later = now + REMEMBER + Duration::from_secs(1);
        let recent = Arc::new(tokio::sync::Mutex::new(Slot { written: Some(("t1".into(), now + REMEMBER)) }));
        let old = Arc::new(tokio::sync::Mutex::new(Slot { written: Some(("t2".into(), now)) }));
        let never = Arc::new(tokio::sync::Mutex::new(Slot::default()));
        let held = Arc::new(tokio::sync::Mutex::new(Slot::default()));
        let _holder = held.clone();
        slots.insert(("a".into(), "recent".into()), recent);
        slots.insert(("a".into(), "old".into()), old);
        slots.insert(("a".into(), "never".into()), never);
        slots.insert(("a".into(), "held".into()), held);
        prune(&mut slots, later);
        let mut left: Vec<&str> = slots.keys().map(|(_, k)| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["held", "recent"]);
        drop(slots);
        assert_eq!(claims.len(), 2);
    }
}
