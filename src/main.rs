//! The `agentlog` binary: everything it does is in the library's `cli` module, so this crate
//! compiles (and recompiles after a change below) in seconds.

/// mimalloc instead of glibc malloc: the task path allocates per event on several threads,
/// and glibc's arena locks showed in the profile (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    agentlog::cli::main()
}
