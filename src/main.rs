use std::process::ExitCode;

// jemalloc: same throughput as glibc's malloc here, but a third less memory kept after
// rendering multi-megabyte packuments (bench numbers in README "Performance").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// One arena instead of four per CPU: memory a rendering thread frees is reused by the next,
// whichever thread it is. Warming the bench's documents peaked at 130 MiB instead of 138 (RSS
// after 116 instead of 126), with the same req/s (small hot requests are served from each
// thread's cache). `_RJEM_MALLOC_CONF=narenas:N` overrides it.
#[unsafe(export_name = "_rjem_malloc_conf")]
#[allow(non_upper_case_globals)]
pub static malloc_conf: &[u8] = b"narenas:1\0";

fn main() -> ExitCode {
    npg::cli::main()
}
