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
    #[command(subcommand)]
    pub command: Command,
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
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Nft,
    Json,
}
