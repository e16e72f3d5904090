//! Retry policy of an agent type: how many attempts, which failures retry, and the
//! exponential backoff with jitter between attempts (fired by durable timers, never a sleep
//! in a worker that holds a partition).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in total, the first included; past it a task is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Fraction of the delay that is randomised (0.2: ±20%), so retries of many tasks that
    /// failed together do not all fire at once.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Error kinds that retry; other kinds fail the task at once.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_initial_backoff_ms() -> u64 {
    1_000
}
fn default_max_backoff_ms() -> u64 {
    60_000
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_jitter() -> f64 {
    0.2
}
fn default_retry_on() -> Vec<String> {
    vec!["timeout".into(), "transient".into()]
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            multiplier: default_multiplier(),
            jitter: default_jitter(),
            retry_on: default_retry_on(),
        }
    }
}

impl RetryPolicy {
    /// Problems with the policy, each naming the fields involved.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.max_attempts == 0 {
            out.push("retry.max_attempts must be at least 1".to_string());
        }
        if self.initial_backoff_ms > self.max_backoff_ms {
            out.push(format!("retry.initial_backoff_ms ({}) exceeds retry.max_backoff_ms ({})", self.initial_backoff_ms, self.max_backoff_ms));
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            out.push(format!("retry.multiplier ({}) must be a finite number >= 1", self.multiplier));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            out.push(format!("retry.jitter ({}) must be between 0 and 1", self.jitter));
        }
        out
    }

    /// Whether a failure of `kind` after attempt `attempt` (1-based) gets another attempt.
    pub fn retries(&self, kind: &str, attempt: u32) -> bool {
        attempt < self.max_attempts && self.retry_on.iter().any(|k| k == kind)
    }

    /// Delay before attempt `attempt + 1`, given `unit` drawn uniformly from [0, 1) (passed
    /// in so the jitter is testable): initial × multiplier^(attempt−1), capped at the max,
    /// then spread by ±jitter.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(63) as i32;
        let base = (self.initial_backoff_ms as f64 * self.multiplier.powi(exponent)).min(self.max_backoff_ms as f64);
        let spread = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_millis((base * spread).round().max(0.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let policy = RetryPolicy { initial_backoff_ms: 100, max_backoff_ms: 1_000, jitter: 0.0, ..RetryPolicy::default() };
        let delays: Vec<u64> = (1..=6).map(|a| policy.backoff(a, 0.5).as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn jitter_spreads_the_delay_both_ways() {
        let policy = RetryPolicy { initial_backoff_ms: 1_000, jitter: 0.2, ..RetryPolicy::default() };
        assert_eq!(policy.backoff(1, 0.0), Duration::from_millis(800));
        assert_eq!(policy.backoff(1, 0.5), Duration::from_millis(1_000));
        assert_eq!(policy.backoff(1, 0.999_999), Duration::from_millis(1_200));
    }

    #[test]
    fn only_listed_kinds_retry_and_only_below_max_attempts() {
        let policy = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
        assert!(policy.retries("timeout", 1));
        assert!(policy.retries("transient", 2));
        assert!(!policy.retries("transient", 3), "the third attempt was the last");
        assert!(!policy.retries("invalid_input", 1));
    }

    #[test]
    fn problems_name_the_fields() {
        let policy = RetryPolicy { max_attempts: 0, initial_backoff_ms: 10, max_backoff_ms: 5, multiplier: 0.5, jitter: 2.0, ..RetryPolicy::default() };
        let problems = policy.problems().join("; ");
        for field in ["retry.max_attempts", "retry.initial_backoff_ms", "retry.max_backoff_ms", "retry.multiplier", "retry.jitter"] {
            assert!(problems.contains(field), "{field} missing from: {problems}");
        }
    }
}
