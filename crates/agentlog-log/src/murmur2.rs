//! Kafka's default partitioner: murmur2 of the key bytes, sign bit masked, modulo the
//! partition count. This is what the Java client (and librdkafka's `murmur2_random`) do, so a
//! key lands on the same partition whichever client produced it.

/// Kafka's 32-bit murmur2 (seed 0x9747b28c), byte-for-byte as `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    // Java's switch falls through from the highest remaining byte down.
    if tail.len() == 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key` among `partitions`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    ((murmur2(key) & 0x7fff_ffff) as u32 % partitions as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values printed by Kafka's own Java client (kafka-clients 4.3.1,
    /// `Utils.murmur2` and `Utils.toPositive(murmur2) % 6`), so our partitioner is checked
    /// against the real thing rather than against itself.
    #[test]
    fn matches_kafka_java_client_golden_vectors() {
        let cases: [(&str, i32, i32); 12] = [
            ("21", -973932308, 0),
            ("foobar", -790332482, 0),
            ("a-little-bit-long-string", -985981536, 2),
            ("a-little-bit-longer-string", -1486304829, 5),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971, 5),
            ("a", -1563381124, 4),
            ("ab", 316155434, 2),
            ("abc", 479470107, 3),
            ("", 275646681, 3),
            ("task-0", -1037847710, 0),
            ("task-1", -1390929517, 1),
            ("agent-42", 802296718, 4),
        ];
        for (key, hash, partition_of_6) in cases {
            assert_eq!(murmur2(key.as_bytes()), hash, "murmur2({key:?})");
            assert_eq!(partition_for_key(key.as_bytes(), 6), partition_of_6, "partition of {key:?} among 6");
        }
    }

    #[test]
    fn partition_is_positive_and_stable() {
        for i in 0..1000 {
            let key = format!("task-{i}");
            let p = partition_for_key(key.as_bytes(), 12);
            assert!((0..12).contains(&p));
            assert_eq!(p, partition_for_key(key.as_bytes(), 12));
        }
    }
}
