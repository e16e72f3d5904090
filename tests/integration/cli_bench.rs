//! `agentlog bench` on the embedded default keeps its log to itself: two runs started in the
//! same directory (or one beside `agentlog dev`) must not share a RocksDB, and nothing is
//! left behind.

use std::process::{Command, Stdio};

#[test]
fn two_benchmarks_in_one_directory_run_side_by_side_and_leave_nothing() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_agentlog"))
            .args(["bench", "projection", "--events", "4000", "--tail", "400"])
            .current_dir(cwd.path())
            .env("AGENTLOG__LOG__BACKEND", "embedded")
            .env_remove("AGENTLOG__LOG__EMBEDDED__DATA_DIR")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentlog bench")
    };
    let runs = [spawn(), spawn()];
    for run in runs {
        let out = run.wait_with_output().expect("wait");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "bench failed: {}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("full rebuild: 4000 events"), "{stdout}");
    }
    let data = cwd.path().join("data");
    let left: Vec<_> = std::fs::read_dir(&data).map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "left behind in {}: {left:?}", data.display());
}
