//! serve's counters and their Prometheus text form (`--metrics ADDR`, `GET /metrics`), the
//! bounded HTTP server that answers scrapes, and the [`Collector`] that shares one read of
//! the kernel between every scrape and status request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::status::prometheus::{escape_label, ROUTE_FAMILIES};

/// Counters of one route. They survive reloads (keyed by route name).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    pub connections: AtomicU64,
    pub active: AtomicU64,
    /// From clients to targets.
    pub bytes_in: AtomicU64,
    /// From targets to clients.
    pub bytes_out: AtomicU64,
    pub errors: AtomicU64,
    pub refused: AtomicU64,
    pub tls_handshakes: AtomicU64,
}

/// An active connection of a route; counts down on drop.
pub struct Active(Arc<RouteMetrics>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RouteMetrics {
    pub fn open(self: &Arc<Self>) -> Active {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Arc<RouteMetrics>>>,
    /// Connections no route took (unknown SNI without a default route, bad ClientHello).
    pub unrouted: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Times serve found its table changed by someone else and put its routes back.
    pub reconciles: AtomicU64,
    /// Reconciles the kernel refused (retried with a growing pause).
    pub reconcile_failures: AtomicU64,
}

impl Metrics {
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        super::by_name(&self.routes, name)
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let routes: Vec<(String, Arc<RouteMetrics>)> = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = String::new();
        // In the order of [`ROUTE_FAMILIES`].
        let values: [fn(&RouteMetrics) -> &AtomicU64; 7] = [
            |m| &m.connections,
            |m| &m.active,
            |m| &m.bytes_in,
            |m| &m.bytes_out,
            |m| &m.errors,
            |m| &m.refused,
            |m| &m.tls_handshakes,
        ];
        for (&(name, kind, help), get) in ROUTE_FAMILIES.iter().zip(values) {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (route, m) in &routes {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\"}} {}",
                    escape_label(route),
                    get(m).load(Ordering::Relaxed)
                );
            }
        }
        for (name, help, value) in [
            (
                "smartproxy_serve_unrouted_total",
                "connections no route took (unknown SNI, bad or missing ClientHello)",
                &self.unrouted,
            ),
            (
                "smartproxy_serve_reloads_total",
                "configuration reloads that took effect",
                &self.reloads,
            ),
            (
                "smartproxy_serve_reload_failures_total",
                "reloads refused (the running configuration stayed)",
                &self.reload_failures,
            ),
            (
                "smartproxy_serve_reconciles_total",
                "times the table was found changed outside serve (deleted, flushed, edited) and its routes were put back",
                &self.reconciles,
            ),
            (
                "smartproxy_serve_reconcile_failures_total",
                "reconciles that failed (retried with a growing pause, up to 30 s)",
                &self.reconcile_failures,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        out
    }
}

/// More of the exposition: serve's kernel routes and target health (the kernel's part
/// comes from the shared [`Collector`], never from a command run for this request).
pub type Extra = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Scrapes answered at once (rendering, waiting for the kernel's counters); the others
/// admitted wait for a turn.
pub const MAX_ACTIVE: usize = 32;
/// Connections held at once (reading the request, waiting for a turn, writing the answer);
/// beyond it a connection gets `503` at once.
pub const MAX_ADMITTED: usize = 512;
/// The largest request head read.
const REQUEST_MAX: usize = 4096;
/// How long a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an admitted request may take in all (waiting for a turn, then writing).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\nRetry-After: 1\r\nConnection: close\r\n\r\nbusy\n";

/// Serves `GET /metrics` until the listener is dropped. Bounded whatever the scrapers do:
/// at most [`MAX_ADMITTED`] connections and [`MAX_ACTIVE`] answers in progress, requests
/// of at most [`REQUEST_MAX`] bytes within [`READ_TIMEOUT`], each done within
/// [`REQUEST_TIMEOUT`]; no thread and no process per scrape.
pub async fn serve_http(listener: TcpListener, metrics: Arc<Metrics>, extra: Extra) {
    let admitted = Arc::new(Semaphore::new(MAX_ADMITTED));
    let active = Arc::new(Semaphore::new(MAX_ACTIVE));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors, most likely: give the open ones time to close.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(ticket) = admitted.clone().try_acquire_owned() else {
            // A fresh socket's send buffer takes this without waiting.
            let _ = stream.try_write(BUSY);
            continue;
        };
        let (metrics, extra, active) = (metrics.clone(), extra.clone(), active.clone());
        tokio::spawn(async move {
            let _ticket = ticket;
            let _ =
                tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics, &extra, &active))
                    .await;
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, metrics: &Metrics, extra: &Extra, active: &Semaphore) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
        let Ok(_turn) = active.acquire().await else {
            return;
        };
        let more = extra().await;
        ("200 OK", metrics.render() + &more)
    } else {
        ("404 Not Found", "try /metrics\n".to_owned())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The request head (up to the blank line), or `None` when the client sends more than
/// [`REQUEST_MAX`] bytes before it, closes, or takes longer than [`READ_TIMEOUT`].
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 || head.len() + n > REQUEST_MAX {
                return None;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Some(())
    })
    .await;
    matches!(read, Ok(Some(()))).then(|| String::from_utf8_lossy(&head).into_owned())
}

/// What an expensive read of the kernel (nft and conntrack listings) found, shared by every
/// request that wants it: collected on a blocking thread, at most one collection at a time
/// (a request arriving while one runs waits for it and takes its result), and a result
/// younger than the interval is reused. A request that gives up waiting (its client gone,
/// a timeout) does not stop the collection, nor let a second one start beside it.
pub struct Collector<T> {
    interval: Duration,
    state: Mutex<Collecting<T>>,
}

struct Collecting<T> {
    /// The last result and when it was made.
    last: Option<(Instant, Arc<T>)>,
    /// The collection under way: its result arrives here (`Some`), or the sender is
    /// dropped (it panicked).
    running: Option<watch::Receiver<Option<Arc<T>>>>,
}

impl<T: Send + Sync + 'static> Collector<T> {
    pub fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Collector {
            interval,
            state: Mutex::new(Collecting {
                last: None,
                running: None,
            }),
        })
    }

    /// The last result if it is younger than the interval, else that of the collection
    /// under way, else that of a new one made with `collect` (on a blocking thread).
    /// `None` only when the collection panicked.
    pub async fn get(
        self: &Arc<Self>,
        collect: impl FnOnce() -> T + Send + 'static,
    ) -> Option<Arc<T>> {
        let mut result = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, value)) = &state.last {
                if at.elapsed() < self.interval {
                    return Some(value.clone());
                }
            }
            match &state.running {
                Some(running) => running.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    state.running = Some(rx.clone());
                    let work = tokio::task::spawn_blocking(collect);
                    let me = self.clone();
                    tokio::spawn(async move {
                        let value = work.await.ok().map(Arc::new);
                        let mut state = me.state.lock().unwrap_or_else(PoisonError::into_inner);
                        state.running = None;
                        if let Some(value) = &value {
                            state.last = Some((Instant::now(), value.clone()));
                            let _ = tx.send(Some(value.clone()));
                        }
                    });
                    rx
                }
            }
        };
        let value = result.wait_for(Option::is_some).await.ok()?;
        value.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A collection that takes `ms`, counting runs and the most at once.
    fn slow(
        runs: &Arc<AtomicUsize>,
        now: &Arc<AtomicUsize>,
        most: &Arc<AtomicUsize>,
        ms: u64,
    ) -> impl FnOnce() -> usize + Send + 'static {
        let (runs, now, most) = (runs.clone(), now.clone(), most.clone());
        move || {
            let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(at_once, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(ms));
            now.fetch_sub(1, Ordering::SeqCst);
            runs.fetch_add(1, Ordering::SeqCst) + 1
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn collector_runs_one_collection_for_concurrent_requests_and_reuses_a_fresh_result() {
        let c = Collector::new(Duration::from_millis(300));
        let counters = || Arc::new(AtomicUsize::new(0));
        let (runs, now, most) = (counters(), counters(), counters());
        let waiting: Vec<_> = (0..100)
            .map(|_| {
                let (c, work) = (c.clone(), slow(&runs, &now, &most, 100));
                tokio::spawn(async move { c.get(work).await.map(|v| *v) })
            })
            .collect();
        for w in waiting {
            assert_eq!(w.await.expect("joins"), Some(1));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Fresh: reused without running `collect`.
        assert_eq!(
            c.get(slow(&runs, &now, &most, 0)).await.map(|v| *v),
            Some(1)
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            c.get(slow(&runs, &now, &most, 0)).await.map(|v| *v),
            Some(2)
        );
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn collector_keeps_one_collection_when_its_requester_gives_up() {
        let c = Collector::new(Duration::ZERO);
        let counters = || Arc::new(AtomicUsize::new(0));
        let (runs, now, most) = (counters(), counters(), counters());
        let gave_up = tokio::time::timeout(
            Duration::from_millis(20),
            c.get(slow(&runs, &now, &most, 200)),
        )
        .await;
        assert!(gave_up.is_err());
        // The collection under way is joined, not doubled.
        assert_eq!(
            c.get(slow(&runs, &now, &most, 0)).await.map(|v| *v),
            Some(1)
        );
        assert_eq!(
            (runs.load(Ordering::SeqCst), most.load(Ordering::SeqCst)),
            (1, 1)
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn collector_survives_a_panicking_collection() {
        let c: Arc<Collector<u8>> = Collector::new(Duration::from_secs(60));
        assert_eq!(c.get(|| panic!("collection failed")).await, None);
        assert_eq!(c.get(|| 7).await.map(|v| *v), Some(7));
    }
}
