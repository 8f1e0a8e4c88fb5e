//! Thin entry point: all work and all printing happen in `smartproxy::run`.

fn main() -> std::process::ExitCode {
    let code = smartproxy::run(std::env::args_os());
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
