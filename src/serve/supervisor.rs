//! serve's life: the start (who carries the kernel routes, the first load, the status
//! socket, the listeners, the metrics port, the first provisioning), the loop of signals,
//! route-file changes and health changes, and the stop (drain, then the table goes).
//! Every failure is logged here, whole, once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::listen::{bind_all, Accepting};
use super::load::{self, Loaded};
use super::signals::{Signal, Signals};
use super::{chain, health, kernel, metrics, provision, socket, Error, Options, Shared};
use crate::kernel::Kernel;

/// How often each worker's runtime wakes for nothing (see [`start_workers`]).
const HEARTBEAT: Duration = Duration::from_millis(500);

/// How long the table's removal may take after the drain timeout: serve exits within the
/// drain timeout plus this (and a little), whatever nft does.
const REMOVAL_GRACE: Duration = Duration::from_millis(1500);

/// How long the route files must stay as they are before a changed one is loaded (an
/// editor or a deploy may still be writing).
const SETTLE: Duration = Duration::from_millis(300);

/// Runs serve until a stop; the failure, logged. `signals`: a test's channel, else the
/// process's signals.
pub(crate) fn run(
    options: Options,
    kernel: Arc<dyn Kernel + Send + Sync>,
    signals: Option<UnboundedReceiver<Signal>>,
) -> Result<(), Error> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(options.log_color)
        .with_target(false)
        .try_init();
    let result = start_and_serve(options, kernel, signals);
    if let Err(e) = &result {
        // One event: its first line carries the time and level, the rest (a diagnostic's
        // source line and carets) stay as `check` renders them.
        error!("{}", chain(e).trim_end());
        if let Some(closing) = e.closing() {
            error!("{closing}");
        }
    }
    result
}

fn start_and_serve(
    options: Options,
    kernel: Arc<dyn Kernel + Send + Sync>,
    signals: Option<UnboundedReceiver<Signal>>,
) -> Result<(), Error> {
    let carrier = match kernel::choose(options.nftables, kernel.capability()) {
        Ok((carrier, None)) => carrier,
        Ok((carrier, Some(why))) => {
            warn!("nftables is not available ({why}): the kernel routes are served in userspace; use --nftables on to fail instead");
            carrier
        }
        Err(e) => return Err(Error::Nftables(e)),
    };
    let loaded = load::load(&options.paths, carrier)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let workers = start_workers().map_err(Error::Workers)?;
    let shared = Arc::new(Shared::new(options, carrier, kernel, workers));
    let result = runtime.block_on(serve(&shared, loaded, signals));
    // Kernel work that shutdown abandoned may still block a thread (a hung nft, until its
    // --kernel-timeout): do not wait for it. Its nft dies with this process (PDEATHSIG).
    runtime.shutdown_background();
    result
}

/// One thread with a single-threaded runtime per core; their handles.
fn start_workers() -> std::io::Result<Vec<tokio::runtime::Handle>> {
    let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (0..n)
        .map(|i| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("serve-{i}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => {
                            let _ = tx.send(Ok(rt.handle().clone()));
                            // A heartbeat: tokio's timer wakes the driver through its
                            // eventfd whenever a new timer is due before the earliest one
                            // it knew of; with a timer always due within a second, a
                            // connection's timeouts (a second or longer) never do.
                            rt.block_on(async {
                                loop {
                                    tokio::time::sleep(HEARTBEAT).await;
                                }
                            });
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })?;
            rx.recv()
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r)
        })
        .collect()
}

/// What the stop must undo: the accept loops, the metrics task, the status socket.
struct Started {
    accepting: Accepting,
    metrics_task: Option<JoinHandle<()>>,
    status_socket: PathBuf,
}

async fn serve(
    shared: &Arc<Shared>,
    loaded: Loaded,
    signals: Option<UnboundedReceiver<Signal>>,
) -> Result<(), Error> {
    let table = loaded.model().table.clone();
    shared.install(loaded);
    // Everything that can fail before the kernel is touched: the status socket (another
    // serve of this table?), the listeners, the metrics port.
    let status_socket = socket::answer_status(shared, &table)
        .await
        .map_err(Error::StatusSocket)?;
    let fail = |e: Error| {
        let _ = std::fs::remove_file(&status_socket);
        e
    };
    let mut accepting: Accepting = Accepting::new();
    bind_all(shared, &mut accepting).map_err(|e| fail(e.into()))?;
    let metrics_task = match shared.options.metrics {
        Some(addr) => Some(serve_metrics(shared, addr).await.map_err(fail)?),
        None => None,
    };
    // Signals first: a stop during the start-up provisioning must not wait on it.
    let mut signals = match signals {
        Some(rx) => Signals::from_channel(rx),
        None => Signals::unix().map_err(|e| fail(Error::Signals(e)))?,
    };
    let provisioner = shared.provisioner.clone();
    let first = provisioner.provision_blocking(shared.current(), shared.health.down(), true);
    let stopped = match signals.unless(first).await {
        Some(Ok(_)) => false,
        Some(Err(e)) => return Err(fail(Error::Provision(e))),
        None => {
            warn!("stopping during start-up: provisioning table inet {table} was abandoned");
            true
        }
    };
    tokio::spawn(health::run(shared.health.clone()));
    info!(
        listeners = accepting.len(),
        "serving {}",
        accepting
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut started = Started {
        accepting,
        metrics_task,
        status_socket,
    };
    if !stopped {
        watch(shared, &table, &mut signals, &mut started.accepting).await;
    }
    shut_down(shared, &table, started).await
}

/// `/metrics` on `addr`, with the status of both engines.
async fn serve_metrics(shared: &Arc<Shared>, addr: SocketAddr) -> Result<JoinHandle<()>, Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Metrics { addr, source })?;
    info!(%addr, "metrics at http://{addr}/metrics");
    let of = shared.clone();
    let extra: metrics::Extra = Arc::new(move || {
        let of = of.clone();
        Box::pin(async move { crate::status::render_prometheus(&socket::status(&of).await, false) })
    });
    Ok(tokio::spawn(metrics::serve_http(
        listener,
        shared.metrics.clone(),
        extra,
    )))
}

/// Reloads on a signal or changed route files and re-provisions on a health change, until
/// a stop (also one that cuts such work short).
async fn watch(
    shared: &Arc<Shared>,
    table: &str,
    signals: &mut Signals,
    accepting: &mut Accepting,
) {
    let paths = &shared.options.paths;
    let mut stamp = files_stamp(paths);
    let interval = if shared.options.watch_interval.is_zero() {
        Duration::from_secs(3600 * 24 * 365)
    } else {
        shared.options.watch_interval
    };
    let abandoned = |what: &str| {
        warn!("stopping during {what}: its kernel change was abandoned; table inet {table} is as nft last committed it");
    };
    let mut reconcile = Reconcile::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(reconcile.next) => {
                let check = shared.provisioner.reconcile_blocking(shared.current(), shared.health.down());
                match signals.unless(check).await {
                    Some(outcome) => reconcile.after(shared, table, outcome),
                    None => {
                        abandoned("a reconcile");
                        return;
                    }
                }
            }
            signal = signals.next() => match signal {
                Signal::Reload => {
                    info!("SIGHUP: reloading");
                    if signals.unless(reload(shared, accepting)).await.is_none() {
                        abandoned("a reload");
                        return;
                    }
                    stamp = files_stamp(paths);
                }
                Signal::Stop => return,
            },
            () = shared.health.changed.notified() => {
                let provisioning = shared.provisioner.provision_blocking(
                    shared.current(),
                    shared.health.down(),
                    false,
                );
                match signals.unless(provisioning).await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => warn!("health: the kernel routes keep their targets: {}", chain(&e)),
                    None => {
                        abandoned("a health change");
                        return;
                    }
                }
            }
            () = tokio::time::sleep(interval) => {
                let now = files_stamp(paths);
                if now != stamp {
                    tokio::time::sleep(SETTLE).await;
                    let settled = files_stamp(paths);
                    if settled == now {
                        info!("route files changed: reloading");
                        if signals.unless(reload(shared, accepting)).await.is_none() {
                            abandoned("a reload");
                            return;
                        }
                        stamp = settled;
                    }
                }
            }
        }
    }
}

/// How often serve looks whether its table was changed by someone else (one generation
/// query: no listing unless something was committed).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// The longest pause between reconciles that keep failing.
const RECONCILE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// When the next reconcile is due: every [`RECONCILE_EVERY`], twice as long after each
/// failure in a row (up to [`RECONCILE_BACKOFF_MAX`]).
struct Reconcile {
    next: tokio::time::Instant,
    pause: Duration,
}

impl Default for Reconcile {
    fn default() -> Self {
        Reconcile {
            next: tokio::time::Instant::now() + RECONCILE_EVERY,
            pause: RECONCILE_EVERY,
        }
    }
}

impl Reconcile {
    fn after(
        &mut self,
        shared: &Shared,
        table: &str,
        outcome: Result<Option<provision::Provisioned>, provision::Error>,
    ) {
        match outcome {
            Ok(done) => {
                if matches!(
                    done,
                    Some(provision::Provisioned::Changed { .. } | provision::Provisioned::Removed)
                ) {
                    shared.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
                }
                self.pause = RECONCILE_EVERY;
            }
            Err(e) => {
                shared
                    .metrics
                    .reconcile_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.pause = (self.pause * 2).min(RECONCILE_BACKOFF_MAX);
                warn!(
                    "reconcile: could not put table inet {table} back (next try in {} s): {}",
                    self.pause.as_secs(),
                    chain(&e)
                );
            }
        }
        self.next = tokio::time::Instant::now() + self.pause;
    }
}

/// Loads the route files again: new connections take the new routes (routes and model in
/// one swap), the kernel routes follow, listeners no route uses close, new ones open. A
/// load that fails keeps the running configuration; a kernel change that fails keeps the
/// table as it was, its cause logged whole.
async fn reload(shared: &Arc<Shared>, accepting: &mut Accepting) {
    let loaded = match load::load(&shared.options.paths, shared.carrier) {
        Ok(loaded) => loaded,
        Err(e) => {
            shared
                .metrics
                .reload_failures
                .fetch_add(1, Ordering::Relaxed);
            for line in chain(&e).lines().filter(|l| !l.trim().is_empty()) {
                warn!("reload refused: {line}");
            }
            warn!("reload refused: the running configuration stays");
            return;
        }
    };
    let listening = loaded.listening();
    shared.install(loaded);
    let provisioning =
        shared
            .provisioner
            .provision_blocking(shared.current(), shared.health.down(), false);
    if let Err(e) = provisioning.await {
        shared
            .metrics
            .reload_failures
            .fetch_add(1, Ordering::Relaxed);
        warn!("reload: the kernel routes were not changed: {}", chain(&e));
    }
    accepting.retain(|addr, tasks| {
        let keep = listening.contains(addr);
        if !keep {
            tasks.iter().for_each(JoinHandle::abort);
            info!(%addr, "listener closed (no route uses it any more)");
        }
        keep
    });
    if let Err(e) = bind_all(shared, accepting) {
        warn!("reload: {e}");
    }
    shared.metrics.reloads.fetch_add(1, Ordering::Relaxed);
    info!("reloaded: new connections take the new routes");
}

/// The stop: no new connections, the open ones drain (up to the drain timeout), the table
/// goes (unless --keep-kernel-routes), within the drain timeout plus [`REMOVAL_GRACE`].
async fn shut_down(shared: &Arc<Shared>, table: &str, started: Started) -> Result<(), Error> {
    let options = &shared.options;
    info!(
        open = shared.open.load(Ordering::Relaxed),
        "stopping: no new connections; draining"
    );
    for task in started.accepting.into_values().flatten() {
        task.abort();
    }
    if let Some(t) = started.metrics_task {
        t.abort();
    }
    let deadline = Instant::now() + options.drain_timeout;
    while shared.open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = shared.open.load(Ordering::Relaxed);
    if left > 0 {
        warn!(left, "drain timeout: closing the connections still open");
    }
    let _ = std::fs::remove_file(&started.status_socket);
    let mut result = Ok(());
    if shared.carrier == kernel::Carrier::Kernel {
        if options.keep_kernel_routes {
            info!("kept the kernel routes in table inet {table} (--keep-kernel-routes)");
        } else {
            let removal = shared.provisioner.remove_blocking(table.to_owned());
            let until = tokio::time::Instant::from_std(deadline + REMOVAL_GRACE);
            let failed = match tokio::time::timeout_at(until, removal).await {
                Ok(Ok(true)) => {
                    info!("removed table inet {table}");
                    None
                }
                Ok(Ok(false)) => None,
                Ok(Err(e)) => Some(Error::Removal {
                    table: table.to_owned(),
                    why: chain(&e),
                }),
                Err(_) => Some(Error::RemovalTimedOut {
                    table: table.to_owned(),
                    grace: REMOVAL_GRACE,
                }),
            };
            if let Some(e) = failed {
                result = Err(e);
            }
        }
    }
    info!("stopped");
    result
}

/// Modification times and sizes of the route files (and the files of route directories).
fn files_stamp(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out = Vec::new();
    for p in paths {
        let mut files = vec![p.clone()];
        if let Ok(dir) = std::fs::read_dir(p) {
            files.extend(dir.filter_map(Result::ok).map(|e| e.path()));
        }
        for f in files {
            out.push(stamp_of(f));
        }
    }
    out.sort();
    out
}

fn stamp_of(file: PathBuf) -> (PathBuf, Option<SystemTime>, u64) {
    let meta = std::fs::metadata(Path::new(&file)).ok();
    let modified = meta.as_ref().and_then(|m| m.modified().ok());
    (file, modified, meta.map_or(0, |m| m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_changes_with_a_file_of_a_route_directory_and_not_otherwise() {
        let dir = tempfile::tempdir().expect("temp dir");
        let routes = dir.path().join("routes.d");
        std::fs::create_dir(&routes).expect("mkdir");
        std::fs::write(routes.join("a.toml"), "a").expect("write");
        let paths = [routes.clone(), dir.path().join("missing.toml")];
        let before = files_stamp(&paths);
        assert_eq!(before, files_stamp(&paths), "nothing changed");
        std::fs::write(routes.join("a.toml"), "longer").expect("write");
        assert_ne!(before, files_stamp(&paths), "a changed size");
        let now = files_stamp(&paths);
        std::fs::write(routes.join("b.toml"), "b").expect("write");
        assert_ne!(now, files_stamp(&paths), "a new file");
    }
}
