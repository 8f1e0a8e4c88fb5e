//! `smartproxy serve`: the userspace engine for the routes the kernel cannot serve (SNI
//! routing, TLS termination, HTTP redirects, and routes forced to `userspace`).
//!
//! One listener per address and port of the userspace routes. A listener with SNI routes
//! reads the TLS ClientHello first (fed to rustls' `Acceptor` as it arrives, in as many
//! segments and records as the client sends, up to [`HELLO_MAX`] bytes within the hello
//! timeout) and keeps the bytes, so that `passthrough` can replay them untouched. Reloads
//! (SIGHUP, or a changed route file) swap the routes and the model together, in one step,
//! for new connections; connections already open keep going. SIGTERM/SIGINT stop the
//! listeners, let the open connections finish (up to the drain timeout) and exit 0.
//!
//! One concern a file: [`supervisor`] (start, the loop of signals, reloads and health
//! changes, the stop), [`signals`], [`load`] (route files to what runs; the one swap),
//! [`listen`], [`hello`], [`conn`], [`tls`], [`pipe`], [`redirect`], [`provision`] (the
//! kernel routes, through [`crate::kernel::Kernel`]), the status socket, [`health`],
//! [`metrics`], [`policy`] and [`proxy_protocol`]. serve knows no command line: the
//! command layer turns its flags into [`Options`] and builds the kernel.

pub mod conn;
pub mod health;
pub mod hello;
pub mod kernel;
pub mod listen;
pub mod load;
pub mod metrics;
pub mod pipe;
pub mod policy;
pub mod provision;
pub mod proxy_protocol;
pub mod redirect;
pub mod routes;
pub mod signals;
mod socket;
pub mod supervisor;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use crate::kernel::Kernel;
use health::Health;
use kernel::Carrier;
use load::Loaded;
use metrics::Metrics;
use policy::Admission;
use provision::Provisioner;

pub use hello::HELLO_MAX;
pub use signals::Signal;

/// What `smartproxy serve` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub paths: Vec<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub hello_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    /// Seconds between checks of the route files' modification times (0 = only SIGHUP).
    pub watch_interval: Duration,
    /// Who carries the kernel routes (`--nftables`).
    pub nftables: kernel::Mode,
    /// Leave the kernel routes in place on stop.
    pub keep_kernel_routes: bool,
    pub health: health::Options,
    /// `--socket-group NAME|GID`: the group of the status socket (and of the state
    /// directory, made 0710 so that the group can reach it).
    pub socket_group: Option<String>,
    /// ANSI colour in the log (the command layer decides: `--color`, `NO_COLOR`, and
    /// whether stderr is a terminal).
    pub log_color: bool,
}

/// Why serve did not start, or did not stop cleanly. [`run`] has logged it already.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--nftables on` without nftables.
    #[error("{0}")]
    Nftables(String),
    #[error(transparent)]
    Load(#[from] load::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot start the worker threads: {0}")]
    Workers(#[source] std::io::Error),
    /// The status socket (e.g. another serve answers for the table).
    #[error("{0}")]
    StatusSocket(String),
    #[error(transparent)]
    Listen(#[from] listen::Error),
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The start-up provisioning failed; the kernel is as it was.
    #[error("{0}")]
    Provision(#[source] provision::Error),
    /// The stop could not remove the table.
    #[error("could not remove table inet {table}: {why}")]
    Removal { table: String, why: String },
    /// The stop gave up on removing the table (nft hung, or the lock is held elsewhere).
    #[error(
        "did not remove table inet {table}: the kernel did not answer within the drain timeout + {} s (nft hung, or another smartproxy holds the table's lock); its routes stay until `smartproxy destroy --table {table}`",
        grace.as_secs_f64()
    )]
    RemovalTimedOut {
        table: String,
        grace: std::time::Duration,
    },
}

impl Error {
    /// What the log says after the cause: that serve did not start (and, when the first
    /// provisioning failed, that the kernel is as it was).
    fn closing(&self) -> Option<&'static str> {
        match self {
            Error::Removal { .. } | Error::RemovalTimedOut { .. } => None,
            Error::Provision(_) => Some("serve did not start; the kernel is as it was"),
            _ => Some("serve did not start"),
        }
    }
}

/// Runs serve until SIGTERM/SIGINT, its kernel routes through `kernel`. A failure is logged
/// here (the caller only turns it into the exit code).
pub fn run(options: Options, kernel: Arc<dyn Kernel + Send + Sync>) -> Result<(), Error> {
    supervisor::run(options, kernel, None)
}

/// [`run`] with its signals from `signals` instead of the process's (tests drive it; a
/// closed channel stops serve).
pub fn run_with_signals(
    options: Options,
    kernel: Arc<dyn Kernel + Send + Sync>,
    signals: tokio::sync::mpsc::UnboundedReceiver<Signal>,
) -> Result<(), Error> {
    supervisor::run(options, kernel, Some(signals))
}

/// A route's counters and admission state: found once per load (they outlive reloads), not
/// under a lock shared by the workers on every connection.
#[derive(Clone)]
pub(crate) struct RouteState {
    pub(crate) metrics: Arc<metrics::RouteMetrics>,
    pub(crate) admission: Arc<Admission>,
}

/// What the whole of serve shares: the options, the one swapped configuration, counters.
pub(crate) struct Shared {
    pub(crate) options: Options,
    /// The running routes and their model, swapped together ([`Shared::install`]).
    current: RwLock<Arc<Loaded>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Per-route admission state, by route name (kept across reloads).
    admissions: Mutex<BTreeMap<String, Arc<Admission>>>,
    /// Connections open now, for draining.
    pub(crate) open: AtomicU64,
    /// Spreads new connections over a route's targets.
    pub(crate) next: AtomicU64,
    /// Who carries the kernel routes, decided at start.
    pub(crate) carrier: Carrier,
    /// The kernel routes, through the kernel serve was given.
    pub(crate) provisioner: Arc<Provisioner>,
    pub(crate) health: Arc<Health>,
    /// The kernel's counts for status and `/metrics`, read at most once per interval.
    pub(crate) counts: Arc<metrics::Collector<socket::KernelCounts>>,
    /// One single-threaded runtime per core: each accepts on its own `SO_REUSEPORT`
    /// socket of every listener and runs the connections it accepted, as HAProxy's threads
    /// and nginx's workers do (a shared work-stealing runtime spent its time waking threads).
    pub(crate) workers: Vec<tokio::runtime::Handle>,
}

impl Shared {
    pub(crate) fn new(
        options: Options,
        carrier: Carrier,
        kernel: Arc<dyn Kernel + Send + Sync>,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Shared {
        Shared {
            health: Arc::new(Health::new(options.health)),
            options,
            current: RwLock::new(Arc::new(Loaded::empty())),
            metrics: Arc::new(Metrics::default()),
            admissions: Mutex::new(BTreeMap::new()),
            open: AtomicU64::new(0),
            next: AtomicU64::new(0),
            carrier,
            provisioner: Arc::new(Provisioner::new(kernel, carrier)),
            counts: socket::collector(),
            workers,
        }
    }

    /// The configuration new connections take, with the model it came from.
    pub(crate) fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `loaded` the configuration of new connections (with its routes' state) and the
    /// one the kernel routes and health checks follow: routes and model in one swap, so no
    /// reader sees the new routes with the old model or the reverse.
    pub(crate) fn install(&self, mut loaded: Loaded) {
        self.health
            .set_targets(&kernel::checked_targets(&loaded.model));
        for name in loaded.route_names() {
            let state = RouteState {
                metrics: self.metrics.route(&name),
                admission: by_name(&self.admissions, &name),
            };
            loaded.running.state.insert(name, state);
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
    }
}

/// The entry of `name` in a per-route map of shared state, made on first use (without an
/// allocation once it exists: this runs for every connection).
pub(crate) fn by_name<T: Default>(map: &Mutex<BTreeMap<String, Arc<T>>>, name: &str) -> Arc<T> {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(entry) = map.get(name) {
        return entry.clone();
    }
    map.entry(name.to_owned()).or_default().clone()
}

/// An error with the causes its text does not already show, `: `-joined: what serve logs,
/// so that nft's own message reaches the log whatever layer wrapped it.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_shows_each_cause_once() {
        let e = Outer(std::io::Error::other("Error: Could not process rule"));
        assert_eq!(chain(&e), "outer: Error: Could not process rule");
        let shown = Error::Runtime(std::io::Error::other("no threads"));
        assert_eq!(chain(&shown), "cannot start the runtime: no threads");
    }
}
