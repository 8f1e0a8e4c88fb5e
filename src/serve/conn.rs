//! One connection: who it is from (a PROXY v2 header from a trusted balancer), which route
//! it takes (by its ClientHello's SNI, else the listener's default), admission, then what
//! the route does with it; and the connect to a route's targets (the weighted or affine
//! pick first, the healthy ones before the others).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::hello::{read_hello, Hello};
use super::metrics::RouteMetrics;
use super::pipe::pipe_tcp;
use super::redirect::redirect;
use super::routes::ListenAddr;
use super::tls::terminate;
use super::{policy, proxy_protocol, RouteState, Shared};
use crate::config::{ActionKind, TargetPort, TlsMode};
use crate::model::UserspaceRoute;

/// Serves one accepted connection on listener `addr` to its end.
pub(crate) async fn connection(
    shared: &Arc<Shared>,
    addr: ListenAddr,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let current = shared.current();
    let running = &current.running;
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
                        shared, running, &route, &metrics, stream, ends, accepted, sni,
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
                        Ok(()) => {
                            pipe_tcp(shared.options.idle_timeout, stream, upstream, &metrics).await
                        }
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
pub(crate) async fn connect(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PortRange;

    #[test]
    fn a_target_port_is_fixed_the_clients_or_the_same_offset_in_its_range() {
        let mut route = UserspaceRoute::bare("r", 0, 0, &[]);
        route.ports = vec![
            PortRange {
                first: 8000,
                last: 8009,
            },
            PortRange {
                first: 9000,
                last: 9000,
            },
        ];
        assert_eq!(
            target_port(&route, TargetPort::Fixed { port: 80 }, 8003),
            80
        );
        assert_eq!(target_port(&route, TargetPort::Preserve, 8003), 8003);
        let range = TargetPort::Range {
            first: 7000,
            last: 7009,
        };
        assert_eq!(target_port(&route, range, 8003), 7003);
        assert_eq!(target_port(&route, range, 9000), 7000);
        let high = TargetPort::Range {
            first: u16::MAX,
            last: u16::MAX,
        };
        assert_eq!(target_port(&route, high, 8009), u16::MAX, "saturates");
    }
}
