//! `smartproxy serve`: the userspace engine for the routes the kernel cannot serve (SNI
//! routing, TLS termination, HTTP redirects, and routes forced to `userspace`).
//!
//! One listener per address and port of the userspace routes. A listener with SNI routes
//! reads the TLS ClientHello first (fed to rustls' `Acceptor` as it arrives, in as many
//! segments and records as the client sends, up to [`HELLO_MAX`] bytes within the hello
//! timeout) and keeps the bytes, so that `passthrough` can replay them untouched. Reloads
//! (SIGHUP, or a changed route file) swap the routes for new connections; connections
//! already open keep going. SIGTERM/SIGINT stop the listeners, let the open connections
//! finish (up to the drain timeout) and exit 0.

pub mod health;
pub mod kernel;
pub mod metrics;
pub mod policy;
pub mod proxy_protocol;
pub mod routes;
mod socket;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{ActionKind, TargetPort, TlsMode};
use crate::model::{Model, UserspaceRoute};
use health::Health;
use kernel::Carrier;
use metrics::{Metrics, RouteMetrics};
use policy::Admission;
use routes::{ListenAddr, Listener};

/// The largest ClientHello serve waits for (post-quantum key shares make them ~2 KB; a
/// client may pad them much further). Larger ones are refused.
pub const HELLO_MAX: usize = 64 * 1024;
/// The largest HTTP request head a redirect route reads.
const REQUEST_HEAD_MAX: usize = 16 * 1024;
/// Copy buffer per direction of a connection moving data in bulk.
const COPY_BUFFER: usize = 64 * 1024;
/// Copy buffer per direction otherwise (and of an idle connection).
const SMALL_BUFFER: usize = 512;

/// How often each worker's runtime wakes for nothing (see [`start_workers`]).
const HEARTBEAT: Duration = Duration::from_millis(500);

/// The accept loops of each listening address.
type Accepting = BTreeMap<ListenAddr, Vec<JoinHandle<()>>>;

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
}

/// One loaded configuration: what a new connection is routed by.
struct Running {
    listeners: BTreeMap<ListenAddr, Arc<Listener>>,
    /// TLS server configurations of the routes that terminate, by route name.
    server_tls: HashMap<String, Arc<rustls::ServerConfig>>,
    /// TLS client configurations for re-encrypting to targets, by route name.
    client_tls: HashMap<String, Arc<rustls::ClientConfig>>,
    /// Each route's counters and admission state, by route name: found once per load
    /// (they outlive reloads), not under a lock shared by the workers on every connection.
    state: HashMap<String, RouteState>,
}

#[derive(Clone)]
struct RouteState {
    metrics: Arc<RouteMetrics>,
    admission: Arc<Admission>,
}

struct Shared {
    options: Options,
    running: RwLock<Arc<Running>>,
    metrics: Arc<Metrics>,
    /// Per-route admission state, by route name (kept across reloads).
    admissions: Mutex<BTreeMap<String, Arc<Admission>>>,
    /// Connections open now, for draining.
    open: AtomicU64,
    /// Spreads new connections over a route's targets.
    next: AtomicU64,
    /// Who carries the kernel routes, decided at start.
    carrier: Carrier,
    /// The model of the running configuration (its kernel routes are provisioned without
    /// the targets that are down).
    model: Mutex<Arc<Model>>,
    health: Arc<Health>,
    /// The kernel's counts for status and `/metrics`, read at most once per interval.
    kernel: Arc<metrics::Collector<socket::KernelCounts>>,
    /// One single-threaded runtime per core: each accepts on its own `SO_REUSEPORT`
    /// socket of every listener and runs the connections it accepted, as HAProxy's threads
    /// and nginx's workers do (a shared work-stealing runtime spent its time waking threads).
    workers: Vec<tokio::runtime::Handle>,
}

impl Shared {
    fn running(&self) -> Arc<Running> {
        self.running
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn model(&self) -> Arc<Model> {
        self.model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `running` the configuration of new connections, with its routes' state, and
    /// `model` the one the kernel routes and health checks follow.
    fn install(&self, mut running: Running, model: Model) {
        self.health.set_targets(&kernel::checked_targets(&model));
        *self.model.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(model);
        let names: Vec<String> = running
            .listeners
            .values()
            .flat_map(|l| l.by_domain.iter().chain(&l.default))
            .map(|r| r.name.clone())
            .collect();
        for name in names {
            let state = RouteState {
                metrics: self.metrics.route(&name),
                admission: by_name(&self.admissions, &name),
            };
            running.state.insert(name, state);
        }
        *self.running.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(running);
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

/// Loads the route files into what serve runs, and the model; errors are rendered
/// (file:line:col). Unless the kernel carries them, the kernel routes join the userspace
/// ones.
fn load(options: &Options, carrier: Carrier) -> Result<(Running, Model), String> {
    let loaded = crate::config::load(&options.paths);
    let rendered = |diags: &[crate::diag::Diagnostic]| log_summary(&loaded.sources, diags);
    let Some(cfg) = loaded.config.as_ref() else {
        return Err(rendered(&loaded.diagnostics));
    };
    if !loaded.diagnostics.is_empty() {
        for line in rendered(&loaded.diagnostics).lines() {
            if !line.trim().is_empty() {
                warn!("{line}");
            }
        }
    }
    let mut cfg = cfg.clone();
    if carrier != Carrier::Kernel {
        let moved = kernel::to_userspace(&mut cfg)?;
        if carrier == Carrier::Fallback && !moved.is_empty() {
            warn!(
                "nftables is not available: kernel route{} {} served in userspace instead",
                if moved.len() == 1 { "" } else { "s" },
                moved
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let mut model =
        crate::lower::lower(&cfg, &crate::lower::SystemResolver).map_err(|d| rendered(&d))?;
    if carrier != Carrier::Kernel {
        model.kernel.clear();
    }
    let mut server_tls = HashMap::new();
    let mut client_tls = HashMap::new();
    let mut system_roots: Option<Arc<rustls::ClientConfig>> = None;
    for r in &model.userspace {
        let Some(tls) = &r.tls else { continue };
        if tls.mode == TlsMode::Passthrough {
            continue;
        }
        if tls.mode == TlsMode::TerminateAndReencrypt {
            let config = if tls.insecure_skip_verify {
                warn!(
                    route = %r.name,
                    "insecure_skip_verify: the targets' certificates are NOT verified; anyone on the path to them can read and change this route's traffic"
                );
                Arc::new(client_config(Roots::None)?)
            } else if let Some(ca) = &tls.ca {
                Arc::new(client_config(Roots::File(ca))?)
            } else {
                match &system_roots {
                    Some(c) => c.clone(),
                    None => {
                        let c = Arc::new(client_config(Roots::System)?);
                        system_roots = Some(c.clone());
                        c
                    }
                }
            };
            client_tls.insert(r.name.clone(), config);
        }
        let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
            return Err(format!(
                "route `{}`: TLS termination needs a certificate and key",
                r.name
            ));
        };
        server_tls.insert(r.name.clone(), Arc::new(server_config(cert, key)?));
    }
    let running = Running {
        listeners: routes::listeners(&model.userspace)
            .into_iter()
            .map(|(a, l)| (a, Arc::new(l)))
            .collect(),
        server_tls,
        client_tls,
        state: HashMap::new(),
    };
    Ok((running, model))
}

fn server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, String> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read `{}`: {e}", p.display()))
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &read(cert)?[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}`: {e}", cert.display()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &read(key)?[..])
        .map_err(|e| format!("`{}`: {e}", key.display()))?
        .ok_or_else(|| format!("`{}`: no private key", key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("`{}`: {e}", cert.display()))
}

/// Whom re-encryption trusts for a route's targets.
enum Roots<'a> {
    /// The system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` override them, as for OpenSSL).
    System,
    /// The route's `ca` file.
    File(&'a std::path::Path),
    /// Nobody checks: `insecure_skip_verify` (signatures are still checked, the chain and
    /// the name are not).
    None,
}

/// The client side of re-encryption.
fn client_config(roots: Roots<'_>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut store = rustls::RootCertStore::empty();
    match roots {
        Roots::System => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(cert);
            }
        }
        Roots::File(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut bytes.as_slice()) {
                let cert = cert.map_err(|e| format!("`{}`: {e}", path.display()))?;
                store
                    .add(cert)
                    .map_err(|e| format!("`{}`: {e}", path.display()))?;
            }
        }
        Roots::None => {
            return Ok(builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth());
        }
    }
    Ok(builder.with_root_certificates(store).with_no_client_auth())
}

/// `insecure_skip_verify`: accepts any certificate chain and name, checks signatures.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Runs serve until SIGTERM/SIGINT; the exit code.
pub fn run(options: Options) -> i32 {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    let carrier = match kernel::choose(options.nftables) {
        Ok((carrier, None)) => carrier,
        Ok((carrier, Some(why))) => {
            warn!("nftables is not available ({why}): the kernel routes are served in userspace; use --nftables on to fail instead");
            carrier
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("error: serve did not start");
            return crate::EXIT_ERROR;
        }
    };
    let loaded = match load(&options, carrier) {
        Ok(r) => r,
        Err(e) => {
            eprint!("{e}");
            if !e.ends_with('\n') {
                eprintln!();
            }
            eprintln!("error: serve did not start");
            return crate::EXIT_ERROR;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return crate::EXIT_ERROR;
        }
    };
    let workers = match start_workers() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: cannot start the worker threads: {e}");
            return crate::EXIT_ERROR;
        }
    };
    let code = runtime.block_on(serve(options, carrier, loaded, workers));
    // Kernel work that shutdown abandoned may still block a thread (a hung nft, until its
    // --kernel-timeout): do not wait for it. Its nft dies with this process (PDEATHSIG).
    runtime.shutdown_background();
    code
}

/// Diagnostics of a load rendered into serve's output; the others are counted.
const LOG_DIAGNOSTICS: usize = 20;
/// The longest line of them logged (a source line may be megabytes long).
const LOG_LINE_MAX: usize = 300;
/// The most text of them logged in all.
const LOG_TEXT_MAX: usize = 32 * 1024;

/// The first [`LOG_DIAGNOSTICS`] of `diags` (errors first) rendered as `check` renders
/// them, each line at most [`LOG_LINE_MAX`] characters and all at most [`LOG_TEXT_MAX`]
/// bytes, then how many were left out: a route file with thousands of problems costs serve's
/// log a few kilobytes, not megabytes. `smartproxy check` shows them all.
fn log_summary(sources: &crate::diag::SourceMap, diags: &[crate::diag::Diagnostic]) -> String {
    let mut ordered: Vec<&crate::diag::Diagnostic> =
        diags.iter().filter(|d| d.is_error()).collect();
    ordered.extend(diags.iter().filter(|d| !d.is_error()));
    let shown: Vec<crate::diag::Diagnostic> = ordered
        .iter()
        .take(LOG_DIAGNOSTICS)
        .map(|d| (*d).clone())
        .collect();
    let text = crate::diag::render(sources, &shown, crate::diag::Format::Text, false);
    let mut out = String::new();
    for line in text.lines() {
        if out.len() + LOG_LINE_MAX + 1 > LOG_TEXT_MAX {
            out.push_str("…\n");
            break;
        }
        match line.char_indices().nth(LOG_LINE_MAX) {
            Some((cut, _)) => {
                out.push_str(&line[..cut]);
                out.push_str("…\n");
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let more = diags.len() - shown.len();
    if more > 0 {
        let _ = writeln!(
            out,
            "and {more} more; run `smartproxy check` on the route files to see them all"
        );
    }
    out
}

/// Makes our table what the running model says, without the targets that are down (when
/// the kernel carries the kernel routes; else nothing to do).
async fn provision(shared: &Arc<Shared>, starting: bool) -> Result<(), String> {
    if shared.carrier != Carrier::Kernel {
        return Ok(());
    }
    let model = kernel::without_down(&shared.model(), &shared.health.down());
    let table = model.table.clone();
    if model.kernel.is_empty() {
        // Nothing for the kernel: no table (not even an empty one); one of ours with
        // routes the files no longer have goes.
        let gone = table.clone();
        let removed = tokio::task::spawn_blocking(move || {
            crate::converge::remove_table(&crate::kernel::nft::NftKernel::default(), &gone)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        if removed {
            info!("removed table inet {table}: the route files have no kernel routes");
        }
        return Ok(());
    }
    let converged = tokio::task::spawn_blocking(move || {
        crate::converge::converge(&crate::kernel::nft::NftKernel::default(), &model)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    for w in converged.warnings.iter().take(LOG_DIAGNOSTICS) {
        warn!("{w}");
    }
    if let Some(more) = converged.warnings.len().checked_sub(LOG_DIAGNOSTICS) {
        if more > 0 {
            warn!("and {more} more warnings; run `smartproxy plan` on the route files to see them all");
        }
    }
    let s = converged.summary;
    if starting && converged.existed {
        info!(
            added = s.add,
            changed = s.change,
            destroyed = s.destroy,
            "adopted the existing table inet {table}"
        );
    } else if s != crate::plan::Summary::default() {
        info!(
            added = s.add,
            changed = s.change,
            destroyed = s.destroy,
            "kernel routes in table inet {table}: {}",
            converged.changes.join(", ")
        );
    }
    Ok(())
}

/// One thread with a single-threaded runtime per core; their handles.
fn start_workers() -> io::Result<Vec<tokio::runtime::Handle>> {
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
                .map_err(|e| io::Error::other(e.to_string()))
                .and_then(|r| r)
        })
        .collect()
}

async fn serve(
    options: Options,
    carrier: Carrier,
    (running, model): (Running, Model),
    workers: Vec<tokio::runtime::Handle>,
) -> i32 {
    let table = model.table.clone();
    let shared = Arc::new(Shared {
        options: options.clone(),
        running: RwLock::new(Arc::new(Running {
            listeners: BTreeMap::new(),
            server_tls: HashMap::new(),
            client_tls: HashMap::new(),
            state: HashMap::new(),
        })),
        metrics: Arc::new(Metrics::default()),
        admissions: Mutex::new(BTreeMap::new()),
        open: AtomicU64::new(0),
        next: AtomicU64::new(0),
        carrier,
        model: Mutex::new(Arc::new(Model::default())),
        health: Arc::new(Health::new(options.health)),
        kernel: socket::collector(),
        workers,
    });
    shared.install(running, model);
    // Everything that can fail before the kernel is touched: the status socket (another
    // serve of this table?), the listeners, the metrics port.
    let status_socket = match socket::answer_status(&shared, &table).await {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("error: {e}");
            return crate::EXIT_ERROR;
        }
    };
    let fail = |e: String| {
        let _ = std::fs::remove_file(&status_socket);
        eprintln!("error: {e}");
        crate::EXIT_ERROR
    };
    let mut accepting: Accepting = BTreeMap::new();
    if let Err(e) = bind_all(&shared, &mut accepting) {
        return fail(e);
    }
    let metrics_task = match options.metrics {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => {
                info!(%addr, "metrics at http://{addr}/metrics");
                let of = shared.clone();
                let extra: metrics::Extra = Arc::new(move || {
                    let of = of.clone();
                    Box::pin(async move {
                        crate::status::render_prometheus(&socket::status(&of).await, false)
                    })
                });
                Some(tokio::spawn(metrics::serve_http(
                    l,
                    shared.metrics.clone(),
                    extra,
                )))
            }
            Err(e) => return fail(format!("cannot listen for metrics on {addr}: {e}")),
        },
        None => None,
    };
    // Signals first: a stop during the start-up provisioning must not wait on it.
    let (Ok(mut hup), Ok(mut stop)) = (signal(SignalKind::hangup()), Stop::install()) else {
        return fail("cannot install signal handlers".to_owned());
    };
    let mut stopped = match stop.unless(provision(&shared, true)).await {
        Some(Ok(())) => false,
        Some(Err(e)) => {
            return fail(format!(
                "{e}\nerror: serve did not start; the kernel is as it was"
            ))
        }
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

    let mut stamp = files_stamp(&options.paths);
    let watch = if options.watch_interval.is_zero() {
        Duration::from_secs(3600 * 24 * 365)
    } else {
        options.watch_interval
    };
    let abandoned = |what: &str| {
        warn!("stopping during {what}: its kernel change was abandoned; table inet {table} is as nft last committed it");
    };
    while !stopped {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                if stop.unless(reload(&shared, &mut accepting)).await.is_none() {
                    abandoned("a reload");
                    break;
                }
                stamp = files_stamp(&options.paths);
            }
            () = shared.health.changed.notified() => {
                match stop.unless(provision(&shared, false)).await {
                    Some(Ok(())) => {}
                    Some(Err(e)) => warn!("health: the kernel routes keep their targets: {e}"),
                    None => {
                        abandoned("a health change");
                        break;
                    }
                }
            }
            () = stop.recv() => stopped = true,
            () = tokio::time::sleep(watch) => {
                let now = files_stamp(&options.paths);
                if now != stamp {
                    // Debounce: an editor or a deploy may still be writing.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let settled = files_stamp(&options.paths);
                    if settled == now {
                        info!("route files changed: reloading");
                        if stop.unless(reload(&shared, &mut accepting)).await.is_none() {
                            abandoned("a reload");
                            break;
                        }
                        stamp = settled;
                    }
                }
            }
        }
    }
    shut_down(&shared, &table, accepting, metrics_task, &status_socket).await
}

/// SIGTERM and SIGINT.
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn install() -> io::Result<Stop> {
        Ok(Stop {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }

    /// `work` unless a stop comes first (`None`). Abandoned work is dropped where it
    /// waits; a kernel command it started runs on on its blocking thread until it ends,
    /// times out (--kernel-timeout) or dies with serve.
    async fn unless<T>(&mut self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            out = work => Some(out),
            () = self.recv() => None,
        }
    }
}

/// How long the table's removal may take after the drain timeout: serve exits within the
/// drain timeout plus this (and a little), whatever nft does.
const REMOVAL_GRACE: Duration = Duration::from_millis(1500);

/// The stop: no new connections, the open ones drain (up to the drain timeout), the table
/// goes (unless --keep-kernel-routes), within the drain timeout plus [`REMOVAL_GRACE`].
async fn shut_down(
    shared: &Arc<Shared>,
    table: &str,
    mut accepting: Accepting,
    metrics_task: Option<JoinHandle<()>>,
    status_socket: &std::path::Path,
) -> i32 {
    let options = &shared.options;
    info!(
        open = shared.open.load(Ordering::Relaxed),
        "stopping: no new connections; draining"
    );
    for task in std::mem::take(&mut accepting).into_values().flatten() {
        task.abort();
    }
    if let Some(t) = metrics_task {
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
    let _ = std::fs::remove_file(status_socket);
    let mut code = crate::EXIT_OK;
    if shared.carrier == Carrier::Kernel {
        if options.keep_kernel_routes {
            info!("kept the kernel routes in table inet {table} (--keep-kernel-routes)");
        } else {
            let gone = table.to_owned();
            let removal = tokio::task::spawn_blocking(move || {
                crate::converge::remove_table(&crate::kernel::nft::NftKernel::default(), &gone)
                    .map_err(|e| e.to_string())
            });
            let until = tokio::time::Instant::from_std(deadline + REMOVAL_GRACE);
            match tokio::time::timeout_at(until, removal).await {
                Ok(Ok(Ok(true))) => info!("removed table inet {table}"),
                Ok(Ok(Ok(false))) => {}
                Ok(Ok(Err(e))) => {
                    warn!("could not remove table inet {table}: {e}");
                    code = crate::EXIT_ERROR;
                }
                Ok(Err(e)) => {
                    warn!("could not remove table inet {table}: {e}");
                    code = crate::EXIT_ERROR;
                }
                Err(_) => {
                    warn!("did not remove table inet {table}: the kernel did not answer within the drain timeout + {} s (nft hung, or another smartproxy holds the table's lock); its routes stay until `smartproxy destroy --table {table}`", REMOVAL_GRACE.as_secs_f64());
                    code = crate::EXIT_ERROR;
                }
            }
        }
    }
    info!("stopped");
    code
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
            let meta = std::fs::metadata(&f).ok();
            out.push((
                f,
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map_or(0, |m| m.len()),
            ));
        }
    }
    out.sort();
    out
}

async fn reload(shared: &Arc<Shared>, accepting: &mut Accepting) {
    match load(&shared.options, shared.carrier) {
        Ok((running, model)) => {
            let new: Vec<ListenAddr> = running.listeners.keys().copied().collect();
            shared.install(running, model);
            if let Err(e) = provision(shared, false).await {
                shared
                    .metrics
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!("reload: the kernel routes were not changed: {e}");
            }
            accepting.retain(|addr, tasks| {
                let keep = new.contains(addr);
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
        Err(e) => {
            shared
                .metrics
                .reload_failures
                .fetch_add(1, Ordering::Relaxed);
            for line in e.lines().filter(|l| !l.trim().is_empty()) {
                warn!("reload refused: {line}");
            }
            warn!("reload refused: the running configuration stays");
        }
    }
}

/// Binds the listeners of the running configuration that are not bound yet.
fn bind_all(shared: &Arc<Shared>, accepting: &mut Accepting) -> Result<(), String> {
    let running = shared.running();
    for addr in running.listeners.keys() {
        if accepting.contains_key(addr) {
            continue;
        }
        let listeners = bind(*addr, shared.workers.len())
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let addr = *addr;
        let tasks = listeners
            .into_iter()
            .zip(&shared.workers)
            .map(|(listener, worker)| {
                let shared = shared.clone();
                worker.spawn(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            warn!(%addr, "cannot accept: {e}");
                            return;
                        }
                    };
                    loop {
                        match listener.accept().await {
                            Ok((stream, peer)) => {
                                let shared = shared.clone();
                                shared.open.fetch_add(1, Ordering::Relaxed);
                                tokio::spawn(async move {
                                    connection(&shared, addr, stream, peer).await;
                                    shared.open.fetch_sub(1, Ordering::Relaxed);
                                });
                            }
                            Err(e) => {
                                warn!(%addr, "accept: {e}");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        accepting.insert(addr, tasks);
    }
    Ok(())
}

/// `count` listening sockets for one address, one per worker (`SO_REUSEPORT`: the kernel
/// spreads new connections over them). `[::]` is IPv6 only, so that `0.0.0.0` on the same
/// port can coexist. The port is first bound without `SO_REUSEPORT`, so that a port held by
/// another program (or another serve) is an error, not a silent share.
fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let socket = |reuse_port: bool| -> io::Result<socket2::Socket> {
        let domain = socket2::Domain::for_address(addr);
        let socket =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(reuse_port)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(socket)
    };
    drop(socket(false)?);
    (0..count.max(1))
        .map(|_| {
            let s = socket(true)?;
            s.listen(4096)?;
            Ok(s.into())
        })
        .collect()
}

/// What a connection's ClientHello said.
struct Hello {
    /// Every byte read from the client so far.
    bytes: Vec<u8>,
    accepted: Option<rustls::server::Accepted>,
    sni: Option<String>,
}

/// Reads until rustls has a whole ClientHello (or the bytes cannot be one).
async fn read_hello(stream: &mut TcpStream) -> io::Result<Hello> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a ClientHello",
            ));
        }
        if bytes.len() + n > HELLO_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ClientHello too large",
            ));
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh)? == 0 {
                break;
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok(Hello {
                    bytes,
                    accepted: Some(accepted),
                    sni,
                });
            }
            Ok(None) => {}
            Err(_) => {
                return Ok(Hello {
                    bytes,
                    accepted: None,
                    sni: None,
                })
            }
        }
    }
}

async fn connection(
    shared: &Arc<Shared>,
    addr: ListenAddr,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let running = shared.running();
    let Some(listener) = running.listeners.get(&addr).cloned() else {
        return;
    };
    // The listening address is the local one unless it is a wildcard (a syscall saved
    // per connection).
    let mut local = if addr.ip().is_unspecified() {
        stream.local_addr().unwrap_or(addr)
    } else {
        addr
    };
    let _ = stream.set_nodelay(true);
    // A front load balancer we trust tells us who the client is.
    let mut peer = peer;
    if listener
        .accept_proxy_from
        .iter()
        .any(|n| n.contains(&policy::canonical(peer.ip())))
    {
        let header = proxy_protocol::read(&mut stream);
        let Some(header) = opening(shared, peer, addr, "PROXY protocol header", header).await
        else {
            return;
        };
        // None: LOCAL, the balancer's own health check.
        if let Some((source, destination)) = header {
            peer = source;
            local = destination;
        }
    }
    let hello = if listener.needs_hello() {
        let hello = Box::pin(read_hello(&mut stream));
        let Some(hello) = opening(shared, peer, addr, "ClientHello", hello).await else {
            return;
        };
        Some(hello)
    } else {
        None
    };
    let route = match &hello {
        Some(h) if h.accepted.is_none() => listener.default.as_ref().filter(|r| r.tls.is_none()),
        Some(h) => listener.select(h.sni.as_deref()),
        None => listener.default.as_ref(),
    };
    let Some(route) = route.cloned() else {
        shared.metrics.unrouted.fetch_add(1, Ordering::Relaxed);
        info!(%peer, %addr, sni = hello.as_ref().and_then(|h| h.sni.as_deref()).unwrap_or("-"), "no route: refused");
        return;
    };
    let Some(RouteState { metrics, admission }) = running.state.get(&route.name).cloned() else {
        return;
    };
    let _active = metrics.open();
    let _ticket = match admission.admit(&route, peer.ip()) {
        Ok(t) => t,
        Err(why) => {
            RouteMetrics::add(&metrics.refused, 1);
            info!(route = %route.name, %peer, "refused: {}", why.as_str());
            return;
        }
    };
    let result = match (route.kind, route.tls.as_ref().map(|t| t.mode)) {
        (ActionKind::Block, _) => Ok(()),
        (ActionKind::Redirect, _) => {
            Box::pin(redirect(
                &route,
                stream,
                local,
                hello.map(|h| h.bytes).unwrap_or_default(),
            ))
            .await
        }
        (ActionKind::Forward, Some(TlsMode::Terminate | TlsMode::TerminateAndReencrypt)) => {
            match hello {
                Some(Hello {
                    accepted: Some(accepted),
                    sni,
                    ..
                }) => {
                    let ends = (local, peer);
                    Box::pin(terminate(
                        shared, &running, &route, &metrics, stream, ends, accepted, sni,
                    ))
                    .await
                }
                _ => Err(io::Error::new(io::ErrorKind::InvalidData, "not TLS")),
            }
        }
        (ActionKind::Forward, _) => {
            let replay = hello.map(|h| h.bytes).unwrap_or_default();
            match connect(shared, &route, local, peer).await {
                Ok(mut upstream) => {
                    let sent = upstream.write_all(&replay).await;
                    RouteMetrics::add(&metrics.bytes_in, replay.len() as u64);
                    match sent {
                        Ok(()) => pipe_tcp(shared, stream, upstream, &metrics).await,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = result {
        RouteMetrics::add(&metrics.errors, 1);
        info!(route = %route.name, %peer, "connection error: {e}");
    }
}

/// What a connection must send first (a PROXY header, a ClientHello), read within the
/// hello timeout; `None`, counted as unrouted and logged, when it did not come.
async fn opening<T>(
    shared: &Shared,
    peer: SocketAddr,
    addr: ListenAddr,
    what: &str,
    read: impl std::future::Future<Output = io::Result<T>>,
) -> Option<T> {
    let why = match tokio::time::timeout(shared.options.hello_timeout, read).await {
        Ok(Ok(value)) => return Some(value),
        Ok(Err(e)) => format!("no valid {what}: {e}"),
        Err(_) => format!("no {what} within the hello timeout"),
    };
    shared.metrics.unrouted.fetch_add(1, Ordering::Relaxed);
    info!(%peer, %addr, "{why}");
    None
}

/// The port a target gets for a connection that arrived on `local_port`.
fn target_port(route: &UserspaceRoute, port: TargetPort, local_port: u16) -> u16 {
    match port {
        TargetPort::Fixed { port } => port,
        TargetPort::Preserve => local_port,
        TargetPort::Range { first, .. } => {
            let offset = route
                .ports
                .iter()
                .find(|r| r.first <= local_port && local_port <= r.last)
                .map_or(0, |r| local_port - r.first);
            first.saturating_add(offset)
        }
    }
}

/// Connects to the route's targets: the weighted (or affine) pick first, the others on a
/// connect error or timeout.
async fn connect(
    shared: &Shared,
    route: &UserspaceRoute,
    local: SocketAddr,
    peer: SocketAddr,
) -> io::Result<TcpStream> {
    let weights: Vec<u32> = route.targets.iter().map(|t| t.weight).collect();
    let pick = match route.affinity {
        crate::config::Affinity::Source => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            policy::canonical(peer.ip()).hash(&mut h);
            h.finish()
        }
        crate::config::Affinity::None => shared.next.fetch_add(1, Ordering::Relaxed),
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the route has no target");
    // In the order of the pick, the targets that are up first: those that are down only
    // when none is up (a check may lag behind a target that has just come back).
    let mut order: Vec<SocketAddr> = policy::target_order(&weights, pick)
        .into_iter()
        .flat_map(|i| {
            let t = &route.targets[i];
            let port = target_port(route, t.port, local.port());
            t.addrs.iter().map(move |a| SocketAddr::new(*a, port))
        })
        .collect();
    order.sort_by_key(|to| !shared.health.is_up(to));
    for to in order {
        match tokio::time::timeout(shared.options.connect_timeout, TcpStream::connect(to)).await {
            Ok(Ok(mut s)) => {
                let _ = s.set_nodelay(true);
                if route.send_proxy_protocol {
                    s.write_all(&proxy_protocol::header(peer, local)).await?;
                }
                return Ok(s);
            }
            Ok(Err(e)) => {
                warn!(route = %route.name, target = %to, "connect failed, trying the next target: {e}");
                last = e;
            }
            Err(_) => {
                warn!(route = %route.name, target = %to, "connect timed out, trying the next target");
                last = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {to} timed out"),
                );
            }
        }
    }
    Err(last)
}

#[allow(clippy::too_many_arguments)]
async fn terminate(
    shared: &Shared,
    running: &Running,
    route: &UserspaceRoute,
    metrics: &Arc<RouteMetrics>,
    stream: TcpStream,
    (local, peer): (SocketAddr, SocketAddr),
    accepted: rustls::server::Accepted,
    sni: Option<String>,
) -> io::Result<()> {
    let Some(config) = running.server_tls.get(&route.name) else {
        return Err(io::Error::other("no certificate loaded for the route"));
    };
    let reencrypt = route
        .tls
        .as_ref()
        .is_some_and(|t| t.mode == TlsMode::TerminateAndReencrypt);
    let upstream = connect(shared, route, local, peer).await?;
    if reencrypt {
        // Offer the client's ALPN list to the target, answer the client with its choice.
        let offered: Vec<Vec<u8>> = accepted
            .client_hello()
            .alpn()
            .map(|a| a.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        let Some(client_tls) = running.client_tls.get(&route.name) else {
            return Err(io::Error::other(
                "no TLS client configuration for the route",
            ));
        };
        let mut client_config = (**client_tls).clone();
        client_config.alpn_protocols = offered;
        let name = sni
            .clone()
            .or_else(|| route.targets.first().map(|t| t.host.clone()))
            .unwrap_or_default();
        let server_name = ServerName::try_from(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let upstream = tokio::time::timeout(
            shared.options.connect_timeout,
            tokio_rustls::TlsConnector::from(Arc::new(client_config))
                .connect(server_name, upstream),
        )
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake with the target timed out",
            )
        })??;
        let chosen = upstream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let mut server = (**config).clone();
        server.alpn_protocols = chosen.into_iter().collect();
        let client = handshake(shared, accepted, stream, Arc::new(server)).await?;
        RouteMetrics::add(&metrics.tls_handshakes, 1);
        pipe(shared, client, upstream, metrics).await
    } else {
        let client = handshake(shared, accepted, stream, config.clone()).await?;
        RouteMetrics::add(&metrics.tls_handshakes, 1);
        pipe(shared, client, upstream, metrics).await
    }
}

async fn handshake(
    shared: &Shared,
    accepted: rustls::server::Accepted,
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let start = tokio_rustls::StartHandshake::from_parts(accepted, stream);
    tokio::time::timeout(shared.options.hello_timeout, start.into_stream(config))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// Copies both ways until both sides are done, or nothing moved for the idle timeout.
async fn pipe<A, B>(shared: &Shared, a: A, b: B, metrics: &Arc<RouteMetrics>) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    pump(shared, (ar, aw), (br, bw), metrics).await
}

/// [`pipe`] for two TCP sockets: halves without the lock `tokio::io::split` takes on
/// every read and write.
async fn pipe_tcp(
    shared: &Shared,
    mut a: TcpStream,
    mut b: TcpStream,
    metrics: &Arc<RouteMetrics>,
) -> io::Result<()> {
    let (ar, aw) = a.split();
    let (br, bw) = b.split();
    pump(shared, (ar, aw), (br, bw), metrics).await
}

/// Linux `MSG_MORE`: more is coming, hold the segment back.
const MSG_MORE: i32 = 0x8000;

/// What the copy loop can do with a side beyond reading and writing: with plain TCP
/// sockets, save packets and syscalls at a connection's end (TLS sides do none of it).
trait Ends {
    /// Reads on without waiting: `Some(0)` when the peer's end is already here, `Some(n)`
    /// for `n` more bytes read into `spare`.
    fn end_here(&self, _spare: &mut [u8]) -> Option<usize> {
        None
    }

    /// Sends what it can of `buf` held back for a FIN to join (`MSG_MORE`); how much.
    fn send_before_end(&self, _buf: &[u8]) -> usize {
        0
    }

    /// Whether the direction that ends second may leave its FIN to the close that
    /// follows (both receive sides are at their end then, so nothing unread turns the
    /// close into a reset): a shutdown syscall less. A TLS writer must send close_notify.
    const CLOSE_SENDS_END: bool = false;
}

impl<T> Ends for tokio::io::ReadHalf<T> {}
impl<T> Ends for tokio::io::WriteHalf<T> {}

impl Ends for tokio::net::tcp::ReadHalf<'_> {
    fn end_here(&self, spare: &mut [u8]) -> Option<usize> {
        self.try_read(spare).ok()
    }
}

impl Ends for tokio::net::tcp::WriteHalf<'_> {
    fn send_before_end(&self, buf: &[u8]) -> usize {
        let stream: &TcpStream = self.as_ref();
        stream
            .try_io(tokio::io::Interest::WRITABLE, || {
                socket2::SockRef::from(stream).send_with_flags(buf, MSG_MORE)
            })
            .unwrap_or(0)
    }

    const CLOSE_SENDS_END: bool = true;
}

/// Copies a→b and b→a until both directions are done, or nothing moved for the idle
/// timeout.
async fn pump<AR, AW, BR, BW>(
    shared: &Shared,
    (ar, aw): (AR, AW),
    (br, bw): (BR, BW),
    metrics: &Arc<RouteMetrics>,
) -> io::Result<()>
where
    AR: AsyncRead + Unpin + Ends,
    AW: AsyncWrite + Unpin + Ends,
    BR: AsyncRead + Unpin + Ends,
    BW: AsyncWrite + Unpin + Ends,
{
    let started = Instant::now();
    let last = AtomicU64::new(0);
    let ended = AtomicBool::new(false);
    // Only the target's answers are checked for an end right behind them: servers answer
    // and close; clients rarely send and close (the check costs a syscall when it fails).
    let up = copy(ar, bw, &metrics.bytes_in, &last, started, (&ended, false));
    let down = copy(br, aw, &metrics.bytes_out, &last, started, (&ended, true));
    let idle = shared.options.idle_timeout;
    let watch = async {
        loop {
            tokio::time::sleep(idle / 4).await;
            let quiet = started.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
            if quiet >= idle.as_millis() as u64 {
                return;
            }
        }
    };
    tokio::select! {
        (r1, r2) = async { tokio::join!(up, down) } => { r1.and(r2) }
        () = watch => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    }
}

async fn copy<R, W>(
    mut from: R,
    mut to: W,
    counter: &AtomicU64,
    last: &AtomicU64,
    started: Instant,
    (ended, look_for_end): (&AtomicBool, bool),
) -> io::Result<()>
where
    R: AsyncRead + Unpin + Ends,
    W: AsyncWrite + Unpin + Ends,
{
    // An idle connection holds only the small buffer (inside the task); the large one is
    // taken while data flows in bulk and given back when it trickles.
    let mut small = [0u8; SMALL_BUFFER];
    let mut large: Option<Vec<u8>> = None;
    loop {
        let trickling = large.is_none();
        let buf: &mut [u8] = match large.as_mut() {
            Some(l) => l,
            None => &mut small,
        };
        let mut n = match from.read(buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => {
                // The other side still learns that this direction ended (else it waits
                // for the idle timeout, e.g. a TLS client gone without close_notify).
                let _ = to.shutdown().await;
                return Err(e);
            }
        };
        // A short answer with the end right behind it (a server that answers and
        // closes): the data is held back so that the FIN leaves in the same segment.
        let mut at_end = n == 0;
        if look_for_end && trickling && 0 < n && n < buf.len() {
            match from.end_here(&mut buf[n..]) {
                Some(0) => at_end = true,
                Some(more) => n += more,
                None => {}
            }
        }
        let held = if at_end {
            to.send_before_end(&buf[..n])
        } else {
            0
        };
        to.write_all(&buf[held..n]).await?;
        if n > 0 {
            counter.fetch_add(n as u64, Ordering::Relaxed);
            last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        if at_end {
            let other_ended = ended.swap(true, Ordering::Relaxed);
            if !(other_ended && W::CLOSE_SENDS_END) {
                let _ = to.shutdown().await;
            }
            return Ok(());
        }
        if large.is_none() && n == SMALL_BUFFER {
            large = Some(vec![0u8; COPY_BUFFER]);
        } else if large.is_some() && n < SMALL_BUFFER {
            large = None;
        }
    }
}

/// Answers an HTTP/1.x request with the route's redirect.
async fn redirect(
    route: &UserspaceRoute,
    mut stream: TcpStream,
    local: SocketAddr,
    mut head: Vec<u8>,
) -> io::Result<()> {
    let Some(target) = &route.redirect else {
        return Err(io::Error::other(
            "redirect route without `[routes.action.redirect]`",
        ));
    };
    let mut chunk = [0u8; 2048];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > REQUEST_HEAD_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request head too large",
                ));
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a request",
                ));
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    })
    .await;
    match read {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within 10 s",
            ))
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_owned();
    let host = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| local.ip().to_string());
    let host_only = strip_port(&host);
    let location = target
        .to
        .replace("{host}", host_only)
        .replace("{path}", &path)
        .replace("{port}", &local.port().to_string());
    let location: String = location.chars().filter(|c| !c.is_control()).collect();
    let reason = match target.status {
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        _ => "Redirect",
    };
    let answer = format!(
        "HTTP/1.1 {} {reason}\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        target.status
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

/// `example.com:8080` → `example.com`; `[2001:db8::1]:80` → `[2001:db8::1]`.
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_with_many_problems_logs_twenty_diagnostics_cut_short_and_a_count() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("routes.toml");
        // 30 conflicting pairs, the ports written after a comment 10,000 characters long.
        let mut text = String::new();
        for i in 0..30 {
            for side in ["a", "b"] {
                text += &format!(
                    "[[routes]]\nname = \"{side}{i}\"\n[routes.match]\nports = [{}] # {}\n\
                     [routes.action]\nforwarding_engine = \"nftables\"\n\
                     targets = [{{ host = \"198.51.100.2\", port = 80 }}]\n",
                    9000 + i,
                    "x".repeat(10_000)
                );
            }
        }
        std::fs::write(&path, text).expect("write");
        let loaded = crate::config::load(&[path]);
        assert_eq!(loaded.diagnostics.len(), 30, "{:?}", loaded.diagnostics);
        let summary = log_summary(&loaded.sources, &loaded.diagnostics);
        assert_eq!(summary.matches("error[E012]").count(), LOG_DIAGNOSTICS);
        assert!(
            summary.ends_with(
                "and 10 more; run `smartproxy check` on the route files to see them all\n"
            ),
            "{summary}"
        );
        assert!(summary
            .lines()
            .all(|l| l.chars().count() <= LOG_LINE_MAX + 1));
        assert!(summary.len() <= LOG_TEXT_MAX + 1024, "{}", summary.len());
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(strip_port("example.test:8080"), "example.test");
        assert_eq!(strip_port("example.test"), "example.test");
        assert_eq!(strip_port("[2001:db8::1]:80"), "[2001:db8::1]");
    }
}
