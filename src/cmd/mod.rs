//! The command layer: one module per command, holding its flow. This is the only layer
//! that prints (serve logs on its own), the one place an error becomes an exit code
//! ([`exit`]), and the only place the real kernel ([`NftKernel`]) is built.

mod apply;
mod check;
mod compile;
mod confirm;
mod destroy;
mod owner;
mod plan;
mod serve;
pub mod status;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::Parser;

use crate::cli::{Cli, Color, Command};
use crate::kernel::nft::NftKernel;
use crate::{config, diag, lower};

/// Exit codes (SPEC §3): 0 success, 1 any error; 2 only for `plan --detailed-exitcode`
/// (so clap's usage status, 2, is mapped to 1).
pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
/// `plan --detailed-exitcode` when there are changes.
pub const EXIT_CHANGES: i32 = 2;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Already shown (route file diagnostics, serve's log): only the exit code is left.
    #[error("(shown above)")]
    Shown,
    #[error(transparent)]
    Converge(#[from] crate::converge::Error),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error(transparent)]
    Confirm(#[from] crate::confirm::Error),
    #[error(transparent)]
    Status(#[from] crate::status::Error),
    #[error("{0}")]
    Message(String),
}

impl Error {
    pub fn msg(text: impl Into<String>) -> Self {
        Error::Message(text.into())
    }
}

/// What a command returns: its exit code, or why it failed.
pub type Outcome = Result<i32, Error>;

/// The one place an error is printed and becomes an exit code.
pub fn exit(outcome: Outcome) -> i32 {
    match outcome {
        Ok(code) => code,
        Err(Error::Shown) => EXIT_ERROR,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERROR
        }
    }
}

/// Prints a warning on stderr (the command layer's one form of it).
pub fn warn(text: impl std::fmt::Display) {
    eprintln!("warning: {text}");
}

/// Runs the command line and returns the exit code.
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
    crate::kernel::set_timeout(std::time::Duration::from_secs_f64(cli.kernel_timeout));
    config::set_process_options(config::LoadOptions {
        follow_symlinks: cli.follow_symlinks,
    });
    let color = colored(cli.color, std::io::stdout().is_terminal());
    let ui = Ui { color };
    let outcome = match cli.command {
        Command::Check {
            paths,
            format,
            deny_warnings,
            resolve,
        } => check::run(&paths, format, deny_warnings, resolve, color),
        Command::Compile {
            paths,
            format,
            output,
        } => compile::run(&ui, &paths, format, output.as_deref()),
        Command::Plan {
            paths,
            out,
            format,
            detailed_exitcode,
            lock_timeout,
        } => plan::run(
            &NftKernel::default(),
            &ui,
            &plan::Args {
                paths: &paths,
                out: out.as_deref(),
                format,
                detailed: detailed_exitcode,
                lock_secs: lock_timeout,
            },
        ),
        Command::Apply {
            paths,
            plan,
            auto_approve,
            force,
            confirm_timeout,
            lock_timeout,
        } => apply::run(
            &NftKernel::default(),
            &ui,
            &apply::Args {
                paths: &paths,
                plan_file: plan.as_deref(),
                auto_approve,
                force,
                confirm_timeout,
                lock_secs: lock_timeout,
            },
        ),
        Command::Confirm { table } => confirm::confirm(table.as_deref()),
        Command::Rollback { table } => confirm::rollback(&NftKernel::default(), table.as_deref()),
        Command::Destroy {
            path,
            table,
            auto_approve,
            force,
            lock_timeout,
        } => destroy::run(
            &NftKernel::default(),
            &ui,
            path.as_deref(),
            table.as_deref(),
            (auto_approve, force),
            lock_timeout,
        ),
        Command::Status {
            paths,
            table,
            format,
        } => status::run(&NftKernel::default(), &ui, &paths, table.as_deref(), format),
        Command::Watchdog {
            table,
            token,
            deadline_ms,
        } => confirm::watchdog(&NftKernel::default(), &table, &token, deadline_ms),
        Command::Serve(args) => serve::run(args, cli.color),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            write_completions(shell, &mut out);
            let _ = std::io::stdout().write_all(&out);
            Ok(EXIT_OK)
        }
    };
    exit(outcome)
}

/// Whether output to a stream (`terminal`: it is one) is coloured under `--color`:
/// `always`, `never`, or `auto` = a terminal and `NO_COLOR` unset.
pub fn colored(choice: Color, terminal: bool) -> bool {
    match choice {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::env::var_os("NO_COLOR").is_none() && terminal,
    }
}

/// Writes the completion script of one shell (also used to check `completions/`).
pub fn write_completions(shell: clap_complete::Shell, out: &mut Vec<u8>) {
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "smartproxy",
        out,
    );
}

/// How output looks for this run.
pub struct Ui {
    /// Colour on standard output.
    pub color: bool,
}

impl Ui {
    /// Colour on standard error: asked for, and stderr is a terminal.
    pub fn stderr_color(&self) -> bool {
        self.color && std::io::stderr().is_terminal()
    }
}

/// The one "load and report" step: reads the route files and shows their diagnostics on
/// stderr (the warnings of valid files only when `warnings`); `Err(Error::Shown)` when
/// they hold errors. The config is there whenever this is `Ok`.
fn load_shown(ui: &Ui, paths: &[PathBuf], warnings: bool) -> Result<config::Loaded, Error> {
    let loaded = config::load(paths);
    if warnings || loaded.has_errors() {
        report(ui, &loaded.sources, &loaded.diagnostics);
    }
    if loaded.has_errors() || loaded.config.is_none() {
        return Err(Error::Shown);
    }
    Ok(loaded)
}

/// The route files' config, their diagnostics shown ([`load_shown`]).
pub fn load(ui: &Ui, paths: &[PathBuf]) -> Result<config::Config, Error> {
    load_shown(ui, paths, true)?.config.ok_or(Error::Shown)
}

/// [`load`], then lowered to the model (resolving target host names); diagnostics shown.
pub fn load_model(ui: &Ui, paths: &[PathBuf]) -> Result<crate::model::Model, Error> {
    load_model_with(ui, paths, true)
}

/// [`load_model`]; the warnings of valid files shown only when `warnings`.
pub fn load_model_with(
    ui: &Ui,
    paths: &[PathBuf],
    warnings: bool,
) -> Result<crate::model::Model, Error> {
    let loaded = load_shown(ui, paths, warnings)?;
    let cfg = loaded.config.as_ref().ok_or(Error::Shown)?;
    lower::lower(cfg, &lower::SystemResolver).map_err(|diags| {
        report(ui, &loaded.sources, &diags);
        Error::Shown
    })
}

/// Shows diagnostics on stderr, as text.
pub fn report(ui: &Ui, sources: &diag::SourceMap, diags: &[diag::Diagnostic]) {
    if diags.is_empty() {
        return;
    }
    let text = diag::render(sources, diags, diag::Format::Text, ui.stderr_color());
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// Asks for `yes` on a terminal; refuses without one unless auto-approved. `what` is what
/// happens (`applied`, `destroyed`), `verb` how the user asks for it (`apply`, `destroy`).
pub fn approved(auto_approve: bool, what: &str, verb: &str) -> Result<(), Error> {
    use std::io::BufRead;
    if auto_approve {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::msg(format!(
            "no terminal to ask for approval: nothing was {what}; pass --auto-approve to {verb} without asking"
        )));
    }
    print!("\nDo you want to perform these actions?\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(Error::msg(format!("not approved: nothing was {what}")))
    }
}

/// Seconds of `--lock-timeout` as a duration (at most a day).
pub fn lock_wait(secs: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(secs.clamp(0.0, 86_400.0))
}
