//! Command-line types and help text; no logic.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::diag;

#[derive(Debug, Parser)]
#[command(
    name = "smartproxy",
    version,
    about = "Compile declarative route files into one deterministic nftables table",
    long_about = "smartproxy turns TOML route files into one nftables table it owns (family inet), \
                  and serves the routes the kernel cannot (SNI, TLS) in a userspace engine.\n\n\
                  Exit codes: 0 success, 1 any error (nothing changed)."
)]
pub struct Cli {
    /// When to colour output: auto = on a terminal and NO_COLOR unset.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    pub color: Color,
    /// Seconds any one external command (nft, conntrack, unshare) may take before it is
    /// killed and the command fails; the lock is free again afterwards.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 120.0, value_parser = kernel_timeout)]
    pub kernel_timeout: f64,
    /// Read route files that are symlinks leading out of their route directory (refused by
    /// default, so a link planted in `routes.d` cannot make us read and quote any file).
    #[arg(long, global = true)]
    pub follow_symlinks: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// `--kernel-timeout`: a positive number of seconds (at most a day).
fn kernel_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 86_400.0 => Ok(secs),
        _ => Err(format!("`{text}` is not a number of seconds in (0, 86400]")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and validate route files; report every problem with file:line:col.
    ///
    /// Exits 0 when valid (warnings allowed unless --deny-warnings), 1 otherwise.
    /// Host names are not resolved unless --resolve, so CI lint runs offline.
    Check {
        /// Route files or directories of `*.toml` files (merged in name order).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Output format of the findings.
        #[arg(long, value_enum, default_value_t = diag::Format::Text)]
        format: diag::Format,
        /// Exit 1 when there are warnings.
        #[arg(long)]
        deny_warnings: bool,
        /// Also resolve target host names (needs DNS).
        #[arg(long)]
        resolve: bool,
    },
    /// Print the nftables ruleset for the route files (`nft -f` ready).
    Compile {
        /// Route files or directories of `*.toml` files (merged in name order).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// `nft` script or nftables JSON (`nft -j -f`).
        #[arg(long, value_enum, default_value_t = OutputFormat::Nft)]
        format: OutputFormat,
        /// Write to FILE instead of standard output (replaced atomically).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show what apply would change in the live kernel (Terraform-style).
    ///
    /// Exits 0; with --detailed-exitcode: 0 no changes, 2 changes present, 1 error.
    Plan {
        /// Route files or directories of `*.toml` files (merged in name order).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Save the plan (with fingerprints of inputs and live state) for `apply --plan`.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// Exit 2 when there are changes, 0 when there are none.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Seconds to wait for another smartproxy's lock.
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        lock_timeout: f64,
    },
    /// Make the kernel match the route files in one atomic transaction.
    ///
    /// On a terminal it shows the plan and asks for `yes`; otherwise it needs
    /// --auto-approve. Only what changed is touched when the table exists.
    Apply {
        /// Route files or directories (or give --plan).
        #[arg(
            value_name = "PATH",
            required_unless_present = "plan",
            conflicts_with = "plan"
        )]
        paths: Vec<PathBuf>,
        /// Apply a plan saved by `plan --out`; refused when the live state has changed since.
        #[arg(long, value_name = "FILE")]
        plan: Option<PathBuf>,
        /// Apply without asking.
        #[arg(long)]
        auto_approve: bool,
        /// Apply even while a running `smartproxy serve` owns the table (it puts its own
        /// routes back within a second).
        #[arg(long)]
        force: bool,
        /// Roll back unless `smartproxy confirm` comes within SECS, at least 5 (survives
        /// this process).
        #[arg(long, value_name = "SECS", value_parser = confirm_secs)]
        confirm_timeout: Option<u64>,
        /// Seconds to wait for another smartproxy's lock.
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        lock_timeout: f64,
    },
    /// Keep the ruleset of the last `apply --confirm-timeout` (exit 1 if nothing is pending).
    Confirm {
        /// Only this table (default: every pending table of this network namespace).
        #[arg(long, value_parser = table_arg)]
        table: Option<String>,
    },
    /// Restore now what the pending `apply --confirm-timeout` would restore at its deadline
    /// (exit 1 if nothing is pending).
    Rollback {
        /// Only this table (default: every pending table of this network namespace).
        #[arg(long, value_parser = table_arg)]
        table: Option<String>,
    },
    /// Remove smartproxy's table (and nothing else).
    Destroy {
        /// Take the table name from these route files' settings.
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,
        /// The table to remove (default: PATH's settings, else the table a running serve
        /// owns, else the only smartproxy table here, else `smartproxy`).
        #[arg(long, value_parser = table_arg)]
        table: Option<String>,
        /// Destroy without asking.
        #[arg(long)]
        auto_approve: bool,
        /// Destroy even while a running `smartproxy serve` owns the table (it puts its own
        /// routes back within a second).
        #[arg(long)]
        force: bool,
        /// Seconds to wait for another smartproxy's lock.
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        lock_timeout: f64,
    },
    /// Per route: packets, bytes and open connections in the kernel, serve's own counts.
    ///
    /// Asks a running `smartproxy serve` of the table first; otherwise reads the table's
    /// counters and conntrack. Exits 0, also when the table does not exist.
    Status {
        /// Route files: list every route of them, with its targets (default: the routes
        /// the table counts).
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// The table to report on (default: PATH's settings, else the table a running serve
        /// owns, else the only smartproxy table here, else `smartproxy`).
        #[arg(long, value_parser = table_arg)]
        table: Option<String>,
        #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
        format: StatusFormat,
    },
    /// Run the userspace engine for the routes the kernel cannot serve (SNI, TLS, redirects).
    ///
    /// Reloads on SIGHUP and when a route file changes; an invalid file keeps the running
    /// routes. SIGTERM/SIGINT stop accepting, let open connections finish and exit 0.
    Serve(ServeArgs),
    /// Internal: the detached confirm-timeout watchdog.
    #[command(name = "__watchdog", hide = true)]
    Watchdog {
        #[arg(long, value_parser = table_arg)]
        table: String,
        #[arg(long)]
        token: String,
        #[arg(long)]
        deadline_ms: u64,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `smartproxy serve`'s flags; [`crate::serve::Options`] is made from them.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Route files or directories of `*.toml` files (merged in name order).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Seconds a client has to send its TLS ClientHello (and finish the handshake).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub hello_timeout: f64,
    /// Seconds to connect to a target before trying the next one.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub connect_timeout: f64,
    /// Seconds without a byte in either direction before a connection is closed.
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    pub idle_timeout: f64,
    /// Seconds open connections get to finish after SIGTERM/SIGINT.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Seconds between checks of the route files for changes (0: only SIGHUP reloads).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub watch_interval: f64,
    /// Who carries the kernel routes: nftables when available (auto), nftables or fail
    /// (on), or serve itself (off).
    #[arg(long, value_enum, default_value_t = NftablesMode::Auto)]
    pub nftables: NftablesMode,
    /// On stop, leave the kernel routes in place (default: remove serve's table).
    #[arg(long)]
    pub keep_kernel_routes: bool,
    /// Seconds between health checks of each target (0: no checks).
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub health_interval: f64,
    /// Seconds a health check's TCP connect may take.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub health_timeout: f64,
    /// Failed checks in a row that take a target out.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub health_fall: u32,
    /// Passed checks in a row that bring a target back.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub health_rise: u32,
    /// Group (name or GID) of the status socket, which is always mode 0660; the state
    /// directory then becomes mode 0710 in that group, so that its members can reach
    /// the socket and run `smartproxy status` (default: serve's own group, directory
    /// unchanged). An unknown group stops serve before it starts.
    #[arg(long, value_name = "NAME|GID")]
    pub socket_group: Option<String>,
}

/// `serve --nftables`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NftablesMode {
    /// Use nftables when `nft` is installed and this process holds CAP_NET_ADMIN; else
    /// serve the kernel routes in userspace, with a warning.
    Auto,
    /// Use nftables, or fail.
    On,
    /// Serve every route in userspace.
    Off,
}

impl From<NftablesMode> for crate::serve::kernel::Mode {
    fn from(mode: NftablesMode) -> Self {
        match mode {
            NftablesMode::Auto => Self::Auto,
            NftablesMode::On => Self::On,
            NftablesMode::Off => Self::Off,
        }
    }
}

/// Seconds from the command line as a duration: negative is 0, at most a year.
fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(s.clamp(0.0, 86_400.0 * 365.0))
}

impl From<ServeArgs> for crate::serve::Options {
    fn from(a: ServeArgs) -> Self {
        crate::serve::Options {
            paths: a.paths,
            metrics: a.metrics,
            hello_timeout: secs(a.hello_timeout),
            connect_timeout: secs(a.connect_timeout),
            idle_timeout: secs(a.idle_timeout).max(std::time::Duration::from_millis(100)),
            drain_timeout: secs(a.drain_timeout),
            watch_interval: secs(a.watch_interval),
            nftables: a.nftables.into(),
            keep_kernel_routes: a.keep_kernel_routes,
            health: crate::serve::health::Options {
                interval: secs(a.health_interval),
                timeout: secs(a.health_timeout).max(std::time::Duration::from_millis(10)),
                rise: a.health_rise.max(1),
                fall: a.health_fall.max(1),
            },
            socket_group: a.socket_group,
            // The command layer turns it on (`--color`, `NO_COLOR`, a terminal).
            log_color: false,
        }
    }
}

/// The shortest confirm window: a shorter one rolls back before anyone can confirm.
pub const MIN_CONFIRM_SECS: u64 = 5;

fn confirm_secs(s: &str) -> Result<u64, String> {
    let secs: u64 = s.parse().map_err(|e| format!("{e}"))?;
    if secs < MIN_CONFIRM_SECS {
        return Err(format!(
            "at least {MIN_CONFIRM_SECS} s: a shorter window rolls back before `smartproxy confirm` can arrive"
        ));
    }
    Ok(secs)
}

/// `--table`: checked where it enters, by the rule route files' `settings.table` follow (a
/// bad name is a usage error, before anything is touched).
fn table_arg(name: &str) -> Result<String, String> {
    crate::config::validate::table_name(name)
        .map(|()| name.to_owned())
        .map_err(String::from)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
    /// Prometheus text exposition (for node_exporter's textfile collector).
    Prometheus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Nft,
    Json,
}
