//! The projection's HDR histograms (submit→outcome latency, attempt duration; cumulative, in
//! ms) exported as Prometheus histograms: cumulative bucket counts that only grow, so
//! `histogram_quantile(0.99, rate(…_bucket[5m]))` gives the percentile of the last five
//! minutes. The `agentlog_task_latency_ms{quantile}` gauges are over every task ever seen, and
//! a slow hour barely moves them after a million fast tasks.

use hdrhistogram::Histogram;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Bucket bounds in seconds: from 5 ms (a no-op agent) to 30 min (a long agent run).
pub const BOUNDS_SECONDS: [f64; 15] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

/// One histogram's exposition: per-bucket counts (the encoder sums them up), the last one
/// unbounded (`+Inf`), the sum in seconds and the count.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Buckets {
    /// `histogram`'s values (ms) by bucket. The sum is mean × count: an HDR histogram keeps
    /// values to 3 significant digits, not their exact total.
    pub fn of(histogram: &Histogram<u64>) -> Buckets {
        let mut buckets: Vec<(f64, u64)> = BOUNDS_SECONDS.iter().map(|b| (*b, 0)).collect();
        buckets.push((f64::INFINITY, 0));
        for value in histogram.iter_recorded() {
            // The highest value equivalent to the recorded one: a value is never counted under
            // a bound it may exceed.
            let seconds = histogram.highest_equivalent(value.value_iterated_to()) as f64 / 1000.0;
            let slot = BOUNDS_SECONDS.iter().position(|bound| seconds <= *bound).unwrap_or(BOUNDS_SECONDS.len());
            buckets[slot].1 += value.count_at_value();
        }
        Buckets { buckets, sum: histogram.mean() * histogram.len() as f64 / 1000.0, count: histogram.len() }
    }
}

/// A family of such histograms, one per label set, as the projection has them when scraped.
#[derive(Debug)]
pub struct HistogramFamily<S> {
    pub series: Vec<(S, Buckets)>,
}

impl<S> Default for HistogramFamily<S> {
    fn default() -> Self {
        HistogramFamily { series: Vec::new() }
    }
}

impl<S: EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static> EncodeMetric for HistogramFamily<S> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, h) in &self.series {
            encoder.encode_family(labels)?.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("histogram");
        for ms in [3, 5, 7, 400, 400, 2_000_000] {
            h.record(ms).expect("record");
        }
        let b = Buckets::of(&h);
        let count_at = |bound: f64| b.buckets.iter().find(|(le, _)| *le == bound).map(|(_, n)| *n);
        assert_eq!(count_at(0.005), Some(2), "3 ms and 5 ms");
        assert_eq!(count_at(0.01), Some(1), "7 ms");
        assert_eq!(count_at(0.5), Some(2), "400 ms twice");
        assert_eq!(count_at(f64::INFINITY), Some(1), "2,000 s is past the last bound");
        assert_eq!(b.buckets.iter().map(|(_, n)| n).sum::<u64>(), 6);
        assert_eq!(b.count, 6);
        assert!((b.sum - 2_000.815).abs() < 2.0, "{}", b.sum);
    }

    #[test]
    fn the_exposition_is_cumulative_with_an_inf_bucket() {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Labels {
            agent_type: String,
        }
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("histogram");
        for ms in [20, 20, 700] {
            h.record(ms).expect("record");
        }
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("lat_seconds", "test", HistogramFamily { series: vec![(Labels { agent_type: "echo".into() }, Buckets::of(&h))] });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains("# TYPE lat_seconds histogram"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"0.025\",agent_type=\"echo\"} 2"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"1.0\",agent_type=\"echo\"} 3"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"+Inf\",agent_type=\"echo\"} 3"), "{text}");
        assert!(text.contains("lat_seconds_count{agent_type=\"echo\"} 3"), "{text}");
    }
}
