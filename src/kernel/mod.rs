//! The kernel seam: all of smartproxy's process and netlink I/O. Everything that reads or
//! changes nftables goes through a [`Kernel`]: [`nft::NftKernel`] is the real one (`nft`,
//! `unshare` for normalisation, `conntrack`), [`fake::FakeKernel`] an in-memory one that
//! behaves like nftables on our scripts, for tests without root. Besides the trait, this
//! module holds the ruleset generation query ([`generation`], netlink), the capability
//! probe ([`probe`], `PATH` and `/proc`) and the confirm watchdog's detached spawn
//! ([`exec::spawn_session`], `setsid`).
//!
//! Only our own table is ever listed (`list table inet NAME`), never the whole ruleset;
//! the one wider read is the base chains of every table, for preflight.
//!
//! Every external command runs through [`exec`]: a script reaches nft whole or not at all,
//! no child outlives us or our lock, and each has a deadline.

pub mod exec;
pub mod fake;
pub mod generation;
pub mod nft;
pub mod probe;

pub use exec::set_timeout;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error(
        "`{cmd}` did not finish within {} s and was killed (see --kernel-timeout)",
        after.as_secs_f64()
    )]
    Timeout {
        cmd: String,
        after: std::time::Duration,
    },
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
}

/// What plan, apply, status and serve need from the kernel. Shared between threads: plan
/// reads the live table while it works out the desired one, and serve's owners hold an
/// `Arc<dyn Kernel + Send + Sync>`.
pub trait Kernel: Sync {
    /// `nft -s list table inet NAME`: the table without counter values, `None` if absent.
    fn list_table(&self, table: &str) -> Result<Option<String>, KernelError>;
    /// `nft list table inet NAME` with counter values (for rollback), `None` if absent.
    fn dump_table(&self, table: &str) -> Result<Option<String>, KernelError>;
    /// Runs a script as one transaction: all of it or nothing.
    fn run(&self, script: &str) -> Result<(), KernelError>;
    /// The table as the kernel would list it after loading `script` on an empty ruleset
    /// (nft's normalisation: merged ranges, reordered elements, canonical syntax).
    fn normalise(&self, script: &str, table: &str) -> Result<String, KernelError>;
    /// Base chains of every table (`nft -j list chains`), for preflight checks.
    fn list_chains_json(&self) -> Result<String, KernelError>;
    /// The names of the `inet` tables of this namespace (`nft list tables inet`), sorted.
    fn list_tables(&self) -> Result<Vec<String>, KernelError>;
    /// `nft -j list table inet NAME` (counters with values), `None` when the table is absent.
    fn list_table_json(&self, table: &str) -> Result<Option<String>, KernelError>;
    /// `conntrack -L` of this network namespace, `Ok(None)` when conntrack-tools is missing.
    fn conntrack_entries(&self) -> Result<Option<String>, KernelError>;
    /// Whether this process can change nftables here (nft found on PATH, CAP_NET_ADMIN); why not.
    fn capability(&self) -> Result<(), String>;
    /// The namespace's ruleset generation ([`generation`]), `None` when unknown: every
    /// committed transaction changes it.
    fn generation(&self) -> Option<u32> {
        None
    }
    /// What normalises (`nft --version`): a new nft may print the same table differently.
    fn version(&self) -> String {
        String::new()
    }
}
