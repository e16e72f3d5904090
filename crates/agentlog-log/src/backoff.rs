//! Waiting between retries of an operation that failed for a passing reason (a broker
//! restarting, a leader moving, a member fenced): exponential, capped, with jitter so that
//! many processes that lost the cluster together do not come back in lockstep.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Delays of one retry sequence: `first`, doubling up to `max`, each with ±20% jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    /// Failures since the last [`Backoff::reset`].
    failures: u32,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { first, max, next: first, failures: 0 }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let jitter = rand::rng().random_range(0.8..1.2);
        base.mul_f64(jitter).min(self.max)
    }

    /// An attempt succeeded: the next failure starts from `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Sleeps the next delay; `false` if `cancel` fired first (stop retrying).
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

impl Default for Backoff {
    /// 100 ms doubling to 5 s: quick after a blip, a few requests a minute while a cluster is down.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(80) && delays[0] <= Duration::from_millis(120), "{delays:?}");
        assert!(delays[1] >= Duration::from_millis(160) && delays[1] <= Duration::from_millis(240), "{delays:?}");
        assert!(delays[5] <= Duration::from_millis(1000), "capped: {delays:?}");
        assert!(delays[5] >= Duration::from_millis(800), "reached the cap: {delays:?}");
        assert_eq!(b.failures(), 6);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
