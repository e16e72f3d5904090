//! The `agentlog` binary: everything it does is in the library's `cli` module, so this crate
//! compiles (and recompiles after a change below) in seconds.

/// mimalloc instead of glibc malloc: the task path allocates per event on several threads,
/// and glibc's arena locks showed in the profile (BENCHMARKS.md). Built with `no_thp`: by
/// default mimalloc asks for transparent huge pages on its arenas, and where THP is `madvise`
/// (Debian's default) every sparsely used 2 MiB of heap then counts whole in the RSS — a
/// worker holding 10,000 slow http attempts sat at 609 MB with them, 469 MB without
/// (BENCHMARKS.md, "many slow attempts at once").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    agentlog::cli::main()
}
