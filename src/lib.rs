//! smartproxy: declarative route files -> one deterministic nftables table.
//!
//! Pipeline: `config` (parse + validate, with spans) -> `lower` (engine choice, resolved
//! targets) -> `model` -> `render` (nft script via templates, nftables JSON).

pub mod apply;
pub mod cache;
pub mod cli;
/// The command layer (the lead replaces this with `src/cmd/mod.rs`).
pub mod cmd {
    pub mod status;
}
pub mod commands;
pub mod config;
pub mod confirm;
pub mod diag;
pub mod fsutil;
pub mod kernel;
pub mod lower;
pub mod model;
pub mod nft;
pub mod plan;
pub mod preflight;
pub mod render;
pub mod serve;
pub mod state;
pub mod status;
pub mod types;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};

use cli::{Cli, Color, Command, OutputFormat};
use config::Engine;
use diag::Severity;

/// Exit codes (SPEC §3): 0 success, 1 any error. 2 is reserved for
/// `plan --detailed-exitcode`, so clap's usage status (2) is mapped to 1 here.
pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;

/// Runs the command line and returns the exit code. Only this function prints.
pub fn run(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                EXIT_ERROR
            } else {
                EXIT_OK
            };
        }
    };
    kernel::set_timeout(std::time::Duration::from_secs_f64(cli.kernel_timeout));
    config::set_process_options(config::LoadOptions {
        follow_symlinks: cli.follow_symlinks,
    });
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal(),
    };
    match cli.command {
        Command::Check {
            paths,
            format,
            deny_warnings,
            resolve,
        } => check(&paths, format, deny_warnings, resolve, color),
        Command::Compile {
            paths,
            format,
            output,
        } => compile(&paths, format, output.as_deref(), color),
        Command::Plan {
            paths,
            out,
            format,
            detailed_exitcode,
            lock_timeout,
        } => commands::plan(
            &paths,
            out.as_deref(),
            format,
            detailed_exitcode,
            lock_timeout,
            color,
        ),
        Command::Apply {
            paths,
            plan,
            auto_approve,
            confirm_timeout,
            lock_timeout,
        } => commands::apply(&commands::ApplyArgs {
            paths: &paths,
            plan_file: plan.as_deref(),
            auto_approve,
            confirm_timeout,
            lock_secs: lock_timeout,
            color,
        }),
        Command::Confirm { table } => confirm::confirm(table.as_deref()),
        Command::Rollback { table } => confirm::rollback(table.as_deref()),
        Command::Destroy {
            path,
            table,
            auto_approve,
            lock_timeout,
        } => commands::destroy(
            path.as_deref(),
            table.as_deref(),
            auto_approve,
            lock_timeout,
            color,
        ),
        Command::Status {
            paths,
            table,
            format,
        } => cmd::status::run(
            &kernel::nft::NftKernel::default(),
            &paths,
            table.as_deref(),
            format,
            color,
        ),
        Command::Watchdog {
            table,
            token,
            deadline_ms,
        } => confirm::watchdog(&table, &token, deadline_ms),
        Command::Serve {
            paths,
            metrics,
            hello_timeout,
            connect_timeout,
            idle_timeout,
            drain_timeout,
            watch_interval,
            nftables,
            keep_kernel_routes,
            health_interval,
            health_timeout,
            health_fall,
            health_rise,
            socket_group,
        } => {
            let secs = |s: f64| std::time::Duration::from_secs_f64(s.clamp(0.0, 86_400.0 * 365.0));
            serve::run(serve::Options {
                paths,
                metrics,
                hello_timeout: secs(hello_timeout),
                connect_timeout: secs(connect_timeout),
                idle_timeout: secs(idle_timeout).max(std::time::Duration::from_millis(100)),
                drain_timeout: secs(drain_timeout),
                watch_interval: secs(watch_interval),
                nftables,
                keep_kernel_routes,
                health: serve::health::Options {
                    interval: secs(health_interval),
                    timeout: secs(health_timeout).max(std::time::Duration::from_millis(10)),
                    rise: health_rise.max(1),
                    fall: health_fall.max(1),
                },
                socket_group,
            })
        }
        Command::Completions { shell } => {
            let mut out = Vec::new();
            write_completions(shell, &mut out);
            let _ = std::io::stdout().write_all(&out);
            EXIT_OK
        }
    }
}

/// Writes the completion script of one shell (also used to check `completions/`).
pub fn write_completions(shell: clap_complete::Shell, out: &mut Vec<u8>) {
    clap_complete::generate(shell, &mut Cli::command(), "smartproxy", out);
}

fn check(
    paths: &[PathBuf],
    format: diag::Format,
    deny_warnings: bool,
    resolve: bool,
    color: bool,
) -> i32 {
    let mut loaded = config::load(paths);
    if resolve {
        if let Some(cfg) = &loaded.config {
            if let Err(diags) = lower::lower(cfg, &lower::SystemResolver) {
                loaded.diagnostics.extend(diags);
                diag::sort(&mut loaded.diagnostics);
            }
        }
    }
    let errors = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = loaded.diagnostics.len() - errors;
    let mut out = diag::render(&loaded.sources, &loaded.diagnostics, format, color);
    if format == diag::Format::Text {
        match (&loaded.config, errors) {
            (Some(cfg), 0) => {
                let kernel = cfg
                    .routes
                    .iter()
                    .filter(|r| r.enabled && r.engine == Engine::Nftables)
                    .count();
                let user = cfg
                    .routes
                    .iter()
                    .filter(|r| r.enabled && r.engine == Engine::Userspace)
                    .count();
                let disabled = cfg.routes.len() - kernel - user;
                out.push_str(&format!(
                    "ok: {} route{} ({kernel} nftables, {user} userspace, {disabled} disabled), {warnings} warning{}\n",
                    cfg.routes.len(),
                    plural(cfg.routes.len()),
                    plural(warnings)
                ));
            }
            _ => out.push_str(&format!(
                "failed: {errors} error{}, {warnings} warning{}\n",
                plural(errors),
                plural(warnings)
            )),
        }
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    if errors > 0 || (deny_warnings && warnings > 0) {
        EXIT_ERROR
    } else {
        EXIT_OK
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn compile(paths: &[PathBuf], format: OutputFormat, output: Option<&Path>, color: bool) -> i32 {
    let loaded = config::load(paths);
    let stderr_color = color && std::io::stderr().is_terminal();
    let report = |diags: &[diag::Diagnostic]| {
        let text = diag::render(&loaded.sources, diags, diag::Format::Text, stderr_color);
        let _ = std::io::stderr().write_all(text.as_bytes());
    };
    report(&loaded.diagnostics);
    let Some(cfg) = &loaded.config else {
        return EXIT_ERROR;
    };
    let model = match lower::lower(cfg, &lower::SystemResolver) {
        Ok(model) => model,
        Err(diags) => {
            report(&diags);
            return EXIT_ERROR;
        }
    };
    let rendered = match format {
        OutputFormat::Nft => render::render_script(&model),
        OutputFormat::Json => render::json::render_json(&model),
    };
    let text = match rendered {
        Ok(text) => text,
        Err(err) => {
            eprintln!("error: {err}");
            return EXIT_ERROR;
        }
    };
    match output {
        None => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            EXIT_OK
        }
        Some(path) => match write_atomically(path, text.as_bytes()) {
            Ok(()) => EXIT_OK,
            Err(err) => {
                eprintln!("error: cannot write `{}`: {err}", path.display());
                EXIT_ERROR
            }
        },
    }
}

/// Replaced atomically without following a planted symlink (see [`fsutil`]); 0644 like
/// any generated config file: it holds no secret, and `nft -f` is often run by others.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    fsutil::write_atomic(path, bytes, 0o644)
}
