//! The standard Prometheus process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`...), read from `/proc/self` when
//! scraped: what an operator charts first when a process misbehaves (memory growing with held
//! attempts, descriptors leaking with connections). Linux only; elsewhere none is exported.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What `/proc/self/stat` says about this process (the fields used here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// User and system CPU time, in clock ticks.
    utime: u64,
    stime: u64,
    threads: u64,
    /// Since boot, in clock ticks.
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The second field, the command name in parentheses, may hold
/// spaces and parentheses itself, so the fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: state is field 3, so field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat { utime: field(14)?, stime: field(15)?, threads: field(20)?, start_ticks: field(22)?, virtual_bytes: field(23)?, resident_pages: field(24)? })
}

/// The boot time (`btime` of `/proc/stat`), seconds since the epoch.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// The soft limit on open descriptors (`Max open files` of `/proc/self/limits`).
fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Adds the process families to `registry`; a file that cannot be read leaves its metrics out
/// (a scrape never fails for them).
pub fn register(registry: &mut Registry) {
    // Both are fixed for the life of the process; sysconf cannot fail for these names on Linux.
    // SAFETY: sysconf only reads configuration values.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let (ticks, page) = (u64::try_from(ticks).unwrap_or(100).max(1), u64::try_from(page).unwrap_or(4096));
    if let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_stat) {
        let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        cpu.inc_by((stat.utime + stat.stime) as f64 / ticks as f64);
        registry.register("process_cpu_seconds", "user and system CPU time spent, in seconds", cpu);
        let resident = Gauge::<i64>::default();
        resident.set(i64::try_from(stat.resident_pages.saturating_mul(page)).unwrap_or(i64::MAX));
        registry.register("process_resident_memory_bytes", "resident memory size, in bytes", resident);
        let virtual_bytes = Gauge::<i64>::default();
        virtual_bytes.set(i64::try_from(stat.virtual_bytes).unwrap_or(i64::MAX));
        registry.register("process_virtual_memory_bytes", "virtual memory size, in bytes", virtual_bytes);
        let threads = Gauge::<i64>::default();
        threads.set(i64::try_from(stat.threads).unwrap_or(i64::MAX));
        registry.register("process_threads", "OS threads of the process", threads);
        if let Some(boot) = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(parse_boot_time) {
            let start = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            start.set(boot as f64 + stat.start_ticks as f64 / ticks as f64);
            registry.register("process_start_time_seconds", "start time of the process since the Unix epoch, in seconds", start);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        let open = Gauge::<i64>::default();
        // Includes the descriptor of the directory being read, as every exporter does.
        open.set(i64::try_from(entries.count()).unwrap_or(i64::MAX));
        registry.register("process_open_fds", "open file descriptors", open);
    }
    if let Some(max) = std::fs::read_to_string("/proc/self/limits").ok().as_deref().and_then(parse_max_fds) {
        let limit = Gauge::<i64>::default();
        limit.set(i64::try_from(max).unwrap_or(i64::MAX));
        registry.register("process_max_fds", "the soft limit on open file descriptors", limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a parenthesis, as a process may name itself.
        let text = "4242 (agent (x) y) S 1 4242 4242 0 -1 4194560 2000 0 0 0 1500 250 0 0 20 0 17 0 123456 987654321 2500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(text), Some(Stat { utime: 1500, stime: 250, threads: 17, start_ticks: 123456, virtual_bytes: 987654321, resident_pages: 2500 }));
        assert_eq!(parse_stat("4242 (truncated) S 1"), None);
        assert!(parse_stat(&std::fs::read_to_string("/proc/self/stat").expect("stat")).is_some_and(|s| s.threads >= 1 && s.resident_pages > 0));
    }

    #[test]
    fn boot_time_and_descriptor_limit_are_read() {
        assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1764900000\nprocesses 9\n"), Some(1_764_900_000));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(parse_max_fds("Max open files            unlimited            unlimited            files"), None);
    }

    #[test]
    fn the_families_are_registered_from_this_process() {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_threads",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            // A test process may not have used a clock tick of CPU yet.
            let least = if family == "process_cpu_seconds_total" { 0.0 } else { 1.0 };
            assert!(
                text.lines().any(|l| l.starts_with(family) && l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v >= least)),
                "{family}: {text}"
            );
        }
    }
}
