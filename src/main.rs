//! Thin entry point: all work and all printing happen in `smartproxy::run`.

/// glibc's allocator spent a seventh of a 10k-route compile in malloc/free (perf); mimalloc
/// halves that. See BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let code = smartproxy::run(std::env::args_os());
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
