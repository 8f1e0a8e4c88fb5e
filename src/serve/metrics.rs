//! serve's counters and their Prometheus text form (`--metrics ADDR`, `GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        out
    }
}

/// serve's per-route metric families: name, type, help (`status` exports the same).
pub const ROUTE_FAMILIES: [(&str, &str, &str); 7] = [
    (
        "smartproxy_serve_connections_total",
        "counter",
        "connections accepted for the route",
    ),
    (
        "smartproxy_serve_connections_active",
        "gauge",
        "connections open now",
    ),
    (
        "smartproxy_serve_bytes_in_total",
        "counter",
        "bytes from clients to targets",
    ),
    (
        "smartproxy_serve_bytes_out_total",
        "counter",
        "bytes from targets to clients",
    ),
    (
        "smartproxy_serve_errors_total",
        "counter",
        "connections that ended in an error (no target reachable, TLS failure, timeout)",
    ),
    (
        "smartproxy_serve_refused_total",
        "counter",
        "connections refused by the route's security settings",
    ),
    (
        "smartproxy_serve_tls_handshakes_total",
        "counter",
        "TLS handshakes completed with clients",
    ),
];

/// A Prometheus label value, escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// More of the exposition, made on a blocking thread per scrape (serve's kernel routes and
/// target health: it asks nft and conntrack).
pub type Extra = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` until the listener is dropped.
pub async fn serve_http(listener: TcpListener, metrics: Arc<Metrics>, extra: Extra) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let extra = extra.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = stream.read(&mut buf[len..]).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        return Some(());
                    }
                }
                None
            })
            .await;
            if !matches!(read, Ok(Some(()))) {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
                let more = tokio::task::spawn_blocking(move || extra())
                    .await
                    .unwrap_or_default();
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
        });
    }
}
