//! Helpers for the policy tests (`traffic_policy.rs`): connections that stay open or report
//! their own source port, a second client address, UDP and TCP streams paced and measured,
//! nft counters read back, and tcpdump on an nflog group. Every loop is bounded in count
//! and time.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::topo::{Accepting, Topology, B1_4, B1_6, CLIENT4, CLIENT6, GW4, GW6};
use crate::common::Netns;

/// The second client address (documentation range), added by [`add_second_client`].
pub const CLIENT4_B: &str = "192.0.2.66";
pub const CLIENT6_B: &str = "2001:db8:c::66";

/// The 500 ms connect timeout of the acceptance criteria: a reset answers at once, a drop
/// runs into it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Adds the second client address to the client namespace and pins the source of
/// connections to the gateway to the first one (IPv6 would otherwise prefer the newer
/// address); [`use_client_address`] switches.
pub fn add_second_client(client: &Netns) {
    client.exec_ok(&["ip", "addr", "add", "192.0.2.66/24", "dev", "eth0"]);
    client.exec_ok(&[
        "ip",
        "addr",
        "add",
        "2001:db8:c::66/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    use_client_address(client, CLIENT4, CLIENT6);
}

/// Makes the client reach the gateway from `v4` / `v6`: host routes to the gateway with a
/// preferred source (std sockets cannot bind before connecting, and the test crate forbids
/// `unsafe`).
pub fn use_client_address(client: &Netns, v4: &str, v6: &str) {
    client.exec_ok(&["ip", "route", "replace", GW4, "dev", "eth0", "src", v4]);
    client.exec_ok(&[
        "ip", "-6", "route", "replace", GW6, "dev", "eth0", "src", v6,
    ]);
}

/// Waits (at most about 10 s) until the client reaches the gateway and the gateway
/// backend1 over both families, so that the first test connection does not pay for
/// neighbour discovery or addresses still settling. Probes a closed port (answered by the
/// kernel's reset), not the routes under test.
pub fn warm_up(t: &Topology) {
    for (ns, to) in [
        (&t.client, format!("{GW4}:1")),
        (&t.client, format!("[{GW6}]:1")),
        (&t.gateway, format!("{B1_4}:1")),
        (&t.gateway, format!("[{B1_6}]:1")),
    ] {
        let addr: SocketAddr = to.parse().expect("socket address");
        let ok = (0..20).any(|_| {
            let answered =
                ns.run_in(
                    move || match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(_) => true,
                        Err(e) => is_reset(&e),
                    },
                );
            answered || {
                std::thread::sleep(Duration::from_millis(20));
                false
            }
        });
        assert!(ok, "{} cannot reach {to}", ns.name);
    }
}

/// An open connection and what the backend said about it.
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub local: SocketAddr,
    /// The server's greeting: `"{name} {peer_ip} {peer_port}"`.
    pub greeting: String,
}

/// Connects from `ns` and reads the greeting; the connection stays open while `Conn` lives.
pub fn connect(ns: &Netns, to: &str, timeout: Duration) -> std::io::Result<Conn> {
    let to: SocketAddr = to.parse().expect("socket address");
    let mut stream = ns.run_in(move || TcpStream::connect_timeout(&to, timeout))?;
    let local = stream.local_addr()?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 200 && stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    Ok(Conn {
        stream,
        local,
        greeting: String::from_utf8_lossy(&line).into_owned(),
    })
}

/// The port the backend saw (last word of the greeting).
pub fn seen_port(greeting: &str) -> Option<u16> {
    greeting.rsplit(' ').next()?.parse().ok()
}

/// True for the error of a connection answered by a TCP reset (not a timeout).
pub fn is_reset(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::ConnectionRefused
        || e.kind() == std::io::ErrorKind::ConnectionReset
}

/// A UDP sink in a namespace that timestamps every datagram it receives.
pub struct UdpSink {
    stop: Arc<AtomicBool>,
    arrivals: Arc<Mutex<Vec<(Instant, usize)>>>,
}

impl UdpSink {
    pub fn start(ns: &Netns, bind: &str) -> UdpSink {
        let bind: SocketAddr = bind.parse().expect("socket address");
        let sock = ns.run_in(move || UdpSocket::bind(bind).expect("bind udp in namespace"));
        UdpSink::on(sock)
    }

    /// Records what arrives on an existing socket (e.g. one that sent the first datagram).
    pub fn on(sock: UdpSocket) -> UdpSink {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (stop2, arrivals2) = (stop.clone(), arrivals.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    if let Ok(mut a) = arrivals2.lock() {
                        a.push((Instant::now(), n));
                    }
                }
            }
        });
        UdpSink { stop, arrivals }
    }

    /// Payload bytes that arrived in `[from, to)`.
    pub fn bytes_between(&self, from: Instant, to: Instant) -> u64 {
        self.arrivals
            .lock()
            .map(|a| {
                a.iter()
                    .filter(|(t, _)| *t >= from && *t < to)
                    .map(|(_, n)| *n as u64)
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends `payload`-byte datagrams from `ns` to `to` at `bytes_per_sec` (payload) for
/// `duration`, on a thread; returns the bytes sent.
pub fn udp_blast(
    ns: &Netns,
    to: &str,
    payload: usize,
    bytes_per_sec: u64,
    duration: Duration,
) -> std::thread::JoinHandle<u64> {
    let to: SocketAddr = to.parse().expect("socket address");
    let local: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("any v4")
    } else {
        "[::]:0".parse().expect("any v6")
    };
    let sock = ns.run_in(move || {
        let s = UdpSocket::bind(local).expect("bind udp sender");
        s.connect(to).expect("connect udp");
        s
    });
    std::thread::spawn(move || {
        let buf = vec![0x5au8; payload];
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration {
            let due = (start.elapsed().as_secs_f64() * bytes_per_sec as f64) as u64;
            // Catch up in a bounded burst, then yield for a millisecond.
            let mut n = 0;
            while sent < due && n < 1000 {
                if sock.send(&buf).is_ok() {
                    sent += payload as u64;
                }
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    })
}

/// Sends one datagram from a fresh socket in `ns` (a new flow each time).
pub fn udp_once(ns: &Netns, to: &str, payload: &[u8]) {
    let to: SocketAddr = to.parse().expect("socket address");
    let local: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("any v4")
    } else {
        "[::]:0".parse().expect("any v6")
    };
    let payload = payload.to_vec();
    ns.run_in(move || {
        let s = UdpSocket::bind(local).expect("bind udp sender");
        s.send_to(&payload, to).expect("send a datagram");
    });
}

/// A UDP socket in `ns` bound to `bind` that waits (at most 5 s) for one datagram, then
/// sends `payload`-byte datagrams back to its sender at `bytes_per_sec` for `duration`:
/// traffic in the reply direction of the flow. Returns the bytes sent.
pub fn udp_reflect(
    ns: &Netns,
    bind: &str,
    payload: usize,
    bytes_per_sec: u64,
    duration: Duration,
) -> std::thread::JoinHandle<u64> {
    let bind: SocketAddr = bind.parse().expect("socket address");
    let sock = ns.run_in(move || UdpSocket::bind(bind).expect("bind udp reflector"));
    std::thread::spawn(move || {
        let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
        let mut first = [0u8; 64];
        let Ok((_, peer)) = sock.recv_from(&mut first) else {
            return 0;
        };
        let buf = vec![0x3cu8; payload];
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration {
            let due = (start.elapsed().as_secs_f64() * bytes_per_sec as f64) as u64;
            let mut n = 0;
            while sent < due && n < 1000 {
                if sock.send_to(&buf, peer).is_ok() {
                    sent += payload as u64;
                }
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    })
}

/// A socket in `ns` that has sent one datagram to `to` (opening the flow), recording what
/// comes back.
pub fn udp_open_flow(ns: &Netns, to: &str) -> UdpSink {
    let to: SocketAddr = to.parse().expect("socket address");
    let local: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("any v4")
    } else {
        "[::]:0".parse().expect("any v6")
    };
    let sock = ns.run_in(move || {
        let s = UdpSocket::bind(local).expect("bind udp client");
        s.send_to(b"hi", to).expect("send the first datagram");
        s
    });
    UdpSink::on(sock)
}

/// Writes to `to` from `ns` as fast as TCP allows for `duration` (bounded by the clock and
/// a write timeout); returns the bytes written.
pub fn tcp_blast(ns: &Netns, to: &str, duration: Duration) -> std::thread::JoinHandle<u64> {
    let to: SocketAddr = to.parse().expect("socket address");
    let stream = ns.run_in(move || TcpStream::connect_timeout(&to, Duration::from_secs(3)));
    std::thread::spawn(move || {
        let Ok(mut s) = stream else { return 0 };
        let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
        let buf = vec![0xa5u8; 64 * 1024];
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration {
            match s.write(&buf) {
                Ok(n) => sent += n as u64,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        sent
    })
}

/// Samples `counter` every 100 ms while `duration` runs; returns (time, value) pairs.
pub fn sample(counter: &AtomicU64, duration: Duration) -> Vec<(Instant, u64)> {
    let start = Instant::now();
    let mut samples = vec![(start, counter.load(Ordering::Relaxed))];
    while start.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(100));
        samples.push((Instant::now(), counter.load(Ordering::Relaxed)));
    }
    samples
}

/// Rate between the first samples at or after `from` and `to` (seconds after the first
/// sample), in bytes per second.
pub fn rate_in_window(samples: &[(Instant, u64)], from: f64, to: f64) -> f64 {
    let t0 = samples[0].0;
    let at = |s: f64| {
        samples
            .iter()
            .find(|(t, _)| t.duration_since(t0).as_secs_f64() >= s)
            .or(samples.last())
            .copied()
            .expect("samples")
    };
    let (a, b) = (at(from), at(to));
    let secs = b.0.duration_since(a.0).as_secs_f64();
    (b.1 - a.1) as f64 / secs.max(0.001)
}

/// The packet count of a named counter in table `inet TABLE` of `ns`.
pub fn counter_packets(ns: &Netns, table: &str, counter: &str) -> u64 {
    let out = ns.nft_ok(&["list", "counter", "inet", table, counter], None);
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {out}"))
}

/// `tcpdump` on nflog group `group` in `ns`: exits after `count` packets or `secs`.
pub fn nflog_capture(ns: &Netns, group: u16, count: u32, secs: u32) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.name, "timeout", &secs.to_string()])
        .args(["tcpdump", "-nl", "-i", &format!("nflog:{group}")])
        .args(["-c", &count.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump spawns")
}

/// True when `cmd` is on the PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A TCP echo server in a namespace: every connection gets back what it sends, and is
/// closed once the client has shut down its side.
pub struct EchoServer {
    _accepting: Accepting,
}

impl EchoServer {
    pub fn start(ns: &Netns, bind: &str) -> EchoServer {
        // Short polls: a sequential client waits for every accept.
        let poll = Duration::from_micros(50);
        let accepting = Accepting::start(ns, bind, poll, |mut s, _| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        EchoServer {
            _accepting: accepting,
        }
    }
}

/// What one echo round trip (connect, one byte there and back, both sides closed) gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Echo {
    Done,
    /// Answered by a TCP reset.
    Refused,
    /// Anything else (timeout, wrong byte), with the error.
    Failed(String),
}

/// Opens a connection, echoes one byte, shuts down the write side and reads until the
/// server has closed too: the connection is finished on both ends before this returns.
/// `timeout` bounds each step. Runs on the calling thread, which must be in the client's
/// namespace (see [`Netns::run_in`]); [`echo_rounds`] runs many back to back.
pub fn echo_here(to: SocketAddr, timeout: Duration) -> Echo {
    let round = || -> std::io::Result<u8> {
        let mut s = TcpStream::connect_timeout(&to, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"x")?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut rest = [0u8; 16];
        while s.read(&mut rest)? > 0 {}
        Ok(byte[0])
    };
    match round() {
        Ok(b'x') => Echo::Done,
        Ok(other) => Echo::Failed(format!("echoed {other:#x}")),
        Err(e) if is_reset(&e) => Echo::Refused,
        Err(e) => Echo::Failed(e.to_string()),
    }
}

/// `rounds` strictly sequential [`echo_here`] rounds from `ns` on one thread (no thread
/// or namespace switch between them, so they come as fast as the path allows), stopping
/// at the first failure or after `limit`: each round's outcome and duration.
pub fn echo_rounds(
    ns: &Netns,
    to: SocketAddr,
    rounds: usize,
    timeout: Duration,
    limit: Duration,
) -> Vec<(Echo, Duration)> {
    ns.run_in(move || {
        let start = Instant::now();
        let mut out = Vec::with_capacity(rounds);
        while out.len() < rounds && start.elapsed() < limit {
            let t = Instant::now();
            let e = echo_here(to, timeout);
            let failed = matches!(e, Echo::Failed(_));
            out.push((e, t.elapsed()));
            if failed {
                break;
            }
        }
        out
    })
}
