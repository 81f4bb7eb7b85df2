use std::process::ExitCode;

// jemalloc: same throughput as glibc's malloc here, but a third less memory kept after
// rendering multi-megabyte packuments (bench numbers in README "Performance").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    npg::cli::main()
}
