//! The listening sockets: per address of the running configuration, one `SO_REUSEPORT`
//! socket per worker, each with its accept loop on that worker's runtime.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::warn;

use super::conn::connection;
use super::routes::ListenAddr;
use super::Shared;

/// The accept loops of each listening address.
pub(crate) type Accepting = BTreeMap<ListenAddr, Vec<JoinHandle<()>>>;

/// A port serve cannot listen on (held by another program, an address not here).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct Error {
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Binds the listeners of the running configuration that are not bound yet.
pub(crate) fn bind_all(shared: &Arc<Shared>, accepting: &mut Accepting) -> Result<(), Error> {
    let current = shared.current();
    for addr in current.running.listeners.keys() {
        if accepting.contains_key(addr) {
            continue;
        }
        let listeners = bind(*addr, shared.workers.len()).map_err(|source| Error {
            addr: *addr,
            source,
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_held_without_reuse_port_is_an_error_not_a_share() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr");
        let e = bind(addr, 2).expect_err("in use");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(held);
        let ours = bind(addr, 3).expect("free again");
        assert_eq!(ours.len(), 3, "one socket per worker");
        assert_eq!(
            bind("127.0.0.1:0".parse().expect("addr"), 0)
                .expect("bind")
                .len(),
            1
        );
    }
}
