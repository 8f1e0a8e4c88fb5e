//! A four-namespace topology for real-packet tests:
//!
//! ```text
//!  client 192.0.2.2 / 2001:db8:c::2
//!     |  192.0.2.0/24, 2001:db8:c::/64
//!  gateway (runs smartproxy; forwarding on)  .1 / ::1 on every link
//!     |  198.51.100.0/26,  2001:db8:b1::/64   -> backend1 198.51.100.2  / 2001:db8:b1::2
//!     |  198.51.100.64/26, 2001:db8:b2::/64   -> backend2 198.51.100.66 / 2001:db8:b2::2
//! ```
//!
//! Only documentation ranges. Everything is deleted on drop (namespaces take their veths
//! with them; spawned processes are killed).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Netns;

pub const CLIENT4: &str = "192.0.2.2";
pub const GW4: &str = "192.0.2.1";
pub const GW4_B1: &str = "198.51.100.1";
pub const GW4_B2: &str = "198.51.100.65";
pub const B1_4: &str = "198.51.100.2";
pub const B2_4: &str = "198.51.100.66";
pub const CLIENT6: &str = "2001:db8:c::2";
pub const GW6: &str = "2001:db8:c::1";
pub const GW6_B1: &str = "2001:db8:b1::1";
pub const GW6_B2: &str = "2001:db8:b2::1";
pub const B1_6: &str = "2001:db8:b1::2";
pub const B2_6: &str = "2001:db8:b2::2";

pub struct Topology {
    pub client: Netns,
    pub gateway: Netns,
    pub b1: Netns,
    pub b2: Netns,
    /// smartproxy's state directory for this topology (lock, applied listing, confirm).
    pub state: tempfile::TempDir,
    children: Mutex<Vec<Child>>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Connects namespace `a` (interface `a_if`) to `b` (`b_if`) with a veth pair.
fn link(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    let tmp_a = format!("sa{}", &a.name[a.name.len().saturating_sub(8)..]).replace('-', "");
    let tmp_b = format!("sb{}", &b.name[b.name.len().saturating_sub(8)..]).replace('-', "");
    ip(&[
        "link", "add", &tmp_a, "type", "veth", "peer", "name", &tmp_b,
    ]);
    ip(&["link", "set", &tmp_a, "netns", &a.name, "name", a_if]);
    ip(&["link", "set", &tmp_b, "netns", &b.name, "name", b_if]);
}

fn addr(ns: &Netns, dev: &str, cidr: &str) {
    let mut args = vec!["-n", &ns.name, "addr", "add", cidr, "dev", dev];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ip(&args);
}

impl Topology {
    pub fn new(tag: &str) -> Topology {
        let t = Topology {
            client: Netns::new(&format!("{tag}c")),
            gateway: Netns::new(&format!("{tag}g")),
            b1: Netns::new(&format!("{tag}b1")),
            b2: Netns::new(&format!("{tag}b2")),
            state: tempfile::tempdir().expect("state dir"),
            children: Mutex::new(Vec::new()),
        };
        link(&t.client, "eth0", &t.gateway, "c0");
        link(&t.b1, "eth0", &t.gateway, "b1");
        link(&t.b2, "eth0", &t.gateway, "b2");
        for ns in [&t.client, &t.gateway, &t.b1, &t.b2] {
            ns.exec_ok(&[
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ]);
            ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        }
        addr(&t.client, "eth0", "192.0.2.2/24");
        addr(&t.client, "eth0", "2001:db8:c::2/64");
        addr(&t.gateway, "c0", "192.0.2.1/24");
        addr(&t.gateway, "c0", "2001:db8:c::1/64");
        addr(&t.gateway, "b1", "198.51.100.1/26");
        addr(&t.gateway, "b1", "2001:db8:b1::1/64");
        addr(&t.gateway, "b2", "198.51.100.65/26");
        addr(&t.gateway, "b2", "2001:db8:b2::1/64");
        addr(&t.b1, "eth0", "198.51.100.2/26");
        addr(&t.b1, "eth0", "2001:db8:b1::2/64");
        addr(&t.b2, "eth0", "198.51.100.66/26");
        addr(&t.b2, "eth0", "2001:db8:b2::2/64");
        for (ns, dev) in [
            (&t.client, "eth0"),
            (&t.gateway, "c0"),
            (&t.gateway, "b1"),
            (&t.gateway, "b2"),
            (&t.b1, "eth0"),
            (&t.b2, "eth0"),
        ] {
            ip(&["-n", &ns.name, "link", "set", dev, "up"]);
        }
        for (ns, gw4, gw6) in [
            (&t.client, GW4, GW6),
            (&t.b1, GW4_B1, GW6_B1),
            (&t.b2, GW4_B2, GW6_B2),
        ] {
            ip(&["-n", &ns.name, "route", "add", "default", "via", gw4]);
            ip(&["-n", &ns.name, "-6", "route", "add", "default", "via", gw6]);
        }
        t.gateway.exec_ok(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]);
        t
    }

    /// Runs smartproxy in the gateway namespace with this topology's state directory.
    pub fn smartproxy(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.gateway.name,
                env!("CARGO_BIN_EXE_smartproxy"),
            ])
            .args(args)
            .env("SMARTPROXY_STATE_DIR", self.state.path())
            .env("NO_COLOR", "1")
            .env_remove("SSH_CONNECTION")
            .current_dir(super::repo())
            .stdin(Stdio::null())
            .output()
            .expect("smartproxy runs")
    }

    /// Writes a route file and applies it in the gateway; panics unless it succeeds.
    pub fn apply(&self, routes: &str) -> PathBuf {
        let path = self.state.path().join(format!(
            "routes-{}.toml",
            self.children.lock().map(|c| c.len()).unwrap_or(0)
        ));
        std::fs::write(&path, routes).expect("write routes");
        let out = self.smartproxy(&["apply", "--auto-approve", path.to_str().expect("utf-8")]);
        assert!(
            out.status.success(),
            "apply failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    /// Keeps a child process to kill on drop.
    pub fn keep(&self, child: Child) {
        if let Ok(mut c) = self.children.lock() {
            c.push(child);
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Ok(mut children) = self.children.lock() {
            for c in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Accepts TCP connections on `bind` in a namespace until dropped, looking for one every
/// `poll`; each connection (blocking again) is handed to `handle` on a thread of its own.
pub struct Accepting {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Accepting {
    pub fn start(
        ns: &Netns,
        bind: &str,
        poll: Duration,
        handle: impl Fn(TcpStream, SocketAddr) + Send + Sync + 'static,
    ) -> Accepting {
        let bind: SocketAddr = bind.parse().expect("socket address");
        let listener = ns.run_in(move || TcpListener::bind(bind).expect("bind in namespace"));
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, handle) = (stop.clone(), Arc::new(handle));
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, peer)) => {
                        let handle = handle.clone();
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            handle(s, peer);
                        });
                    }
                    Err(_) => std::thread::sleep(poll),
                }
            }
        });
        Accepting { addr, stop }
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An in-process TCP server in a namespace: answers each connection with
/// `"{name} {peer_ip} {peer_port}\n"`, then reads until EOF (counting bytes) and closes.
pub struct Server {
    pub addr: SocketAddr,
    _accepting: Accepting,
    /// Bytes received over all connections.
    pub received: Arc<std::sync::atomic::AtomicU64>,
}

impl Server {
    pub fn start(ns: &Netns, name: &str, bind: &str) -> Server {
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (received2, name) = (received.clone(), name.to_owned());
        let accepting = Accepting::start(ns, bind, Duration::from_millis(2), move |mut s, peer| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = s.write_all(format!("{name} {} {}\n", peer.ip(), peer.port()).as_bytes());
            let mut buf = [0u8; 65536];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                received2.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        Server {
            addr: accepting.addr,
            _accepting: accepting,
            received,
        }
    }
}

/// Connects from a namespace and returns the server's greeting line (or the error).
pub fn hello(ns: &Netns, to: &str, timeout: Duration) -> Result<String, String> {
    let to: SocketAddr = to.parse().map_err(|e| format!("{e}"))?;
    ns.run_in(move || {
        let mut s = TcpStream::connect_timeout(&to, timeout).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while s.read(&mut byte).map_err(|e| e.to_string())? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    })
}

/// A UDP server in a namespace: answers each datagram with `"{name} {peer_ip} {peer_port}"`.
pub struct UdpServer {
    stop: Arc<AtomicBool>,
}

impl UdpServer {
    pub fn start(ns: &Netns, name: &str, bind: &str) -> UdpServer {
        let bind: SocketAddr = bind.parse().expect("socket address");
        let socket = ns.run_in(move || UdpSocket::bind(bind).expect("bind udp in namespace"));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, name) = (stop.clone(), name.to_owned());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                    let answer = format!("{name} {} {}\n", peer.ip(), peer.port());
                    let _ = socket.send_to(answer.as_bytes(), peer);
                }
            }
        });
        UdpServer { stop }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends a datagram from `ns` to `to` and returns the reply (3 tries within `timeout`).
pub fn udp_ask(ns: &Netns, to: &str, timeout: Duration) -> Result<String, String> {
    let to: SocketAddr = to.parse().map_err(|e| format!("{e}"))?;
    ns.run_in(move || {
        let local = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(local).map_err(|e| e.to_string())?;
        s.connect(to).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout / 3))
            .map_err(|e| e.to_string())?;
        let mut last = String::from("no answer");
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            s.send(b"ping").map_err(|e| e.to_string())?;
            match s.recv(&mut buf) {
                Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    })
}
