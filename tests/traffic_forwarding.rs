//! SPEC §4, forwarding: real packets from the client namespace through the gateway (running
//! smartproxy) to the backends, IPv4 and IPv6. Ports, ranges, `preserve`, range→range; TCP,
//! UDP and `all`; weighted spread; source affinity; `preserve_source_ip`; local targets (remote
//! clients through `redirect`, local clients through output DNAT — the SmartProxy scenario);
//! the host's own connections to other hosts stay untouched; route counters count the bytes.
//!
//! Every test builds its own topology (distinct tag) and all traffic stays between the
//! namespaces. Every loop is bounded in count and in time.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::topo::{self, udp_ask, Accepting, Server, Topology, UdpServer};
use common::Netns;

/// Timeout for one connection or one answer that must succeed.
const T: Duration = Duration::from_secs(3);
/// Timeout for an answer that must NOT come (kept short: it is waited out every time).
const NEG: Duration = Duration::from_millis(600);

/// The addresses of one IP family in the topology.
#[derive(Clone, Copy, Debug)]
struct Fam {
    v: &'static str,
    client: &'static str,
    /// The gateway on the client link (what the client connects to).
    gw: &'static str,
    gw_b1: &'static str,
    gw_b2: &'static str,
    b1: &'static str,
    b2: &'static str,
    lo: &'static str,
    any: &'static str,
    /// Extra client addresses used as distinct sources: `{prefix}{n}`.
    client_prefix: &'static str,
    client_plen: u8,
    host_plen: u8,
}

const V4: Fam = Fam {
    v: "v4",
    client: topo::CLIENT4,
    gw: topo::GW4,
    gw_b1: topo::GW4_B1,
    gw_b2: topo::GW4_B2,
    b1: topo::B1_4,
    b2: topo::B2_4,
    lo: "127.0.0.1",
    any: "0.0.0.0",
    client_prefix: "192.0.2.",
    client_plen: 24,
    host_plen: 32,
};

const V6: Fam = Fam {
    v: "v6",
    client: topo::CLIENT6,
    gw: topo::GW6,
    gw_b1: topo::GW6_B1,
    gw_b2: topo::GW6_B2,
    b1: topo::B1_6,
    b2: topo::B2_6,
    lo: "::1",
    any: "::",
    client_prefix: "2001:db8:c::",
    client_plen: 64,
    host_plen: 128,
};

const FAMS: [Fam; 2] = [V4, V6];

/// `addr:port`, bracketing IPv6.
fn at(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// `{ host = "…", port = … }` for both backends' families, as TOML target entries.
fn target(host: &str, port: &str) -> String {
    format!(r#"{{ host = "{host}", port = {port} }}"#)
}

/// The three words of a `Server` greeting: name, peer address, peer port.
fn words(line: &str) -> (String, String) {
    let mut w = line.split_whitespace();
    let name = w.next().unwrap_or_default().to_owned();
    let peer = w.next().unwrap_or_default().to_owned();
    (name, peer)
}

fn hello(ns: &Netns, to: &str) -> Result<String, String> {
    topo::hello(ns, to, T)
}

/// Expects a greeting from `name` (and, when given, with the backend seeing `peer`).
fn expect_hello(ns: &Netns, to: &str, name: &str, peer: Option<&str>, what: &str) {
    let line = hello(ns, to).unwrap_or_else(|e| panic!("{what}: connect to {to}: {e}"));
    let (got, seen) = words(&line);
    assert_eq!(
        got, name,
        "{what}: {to} reached the wrong service: {line:?}"
    );
    if let Some(peer) = peer {
        assert_eq!(
            seen, peer,
            "{what}: the service saw the wrong source: {line:?}"
        );
    }
}

fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 && s.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// A TCP server in a namespace that answers every connection with a fixed line and closes.
struct FixedServer {
    stop: Arc<AtomicBool>,
}

impl FixedServer {
    fn start(ns: &Netns, bind: &str, answer: &str) -> FixedServer {
        let bind: SocketAddr = bind.parse().expect("socket address");
        let listener = ns.run_in(move || TcpListener::bind(bind).expect("bind in namespace"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, answer) = (stop.clone(), format!("{answer}\n"));
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(answer.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        FixedServer { stop }
    }
}

impl Drop for FixedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A TCP server in a namespace that sends `bytes` bytes on every connection, then closes.
struct BlastServer {
    _accepting: Accepting,
}

impl BlastServer {
    fn start(ns: &Netns, bind: &str, bytes: usize) -> BlastServer {
        let poll = Duration::from_millis(2);
        let accepting = Accepting::start(ns, bind, poll, move |mut s, _| {
            let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
            let chunk = vec![0xa5u8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let k = left.min(chunk.len());
                if s.write_all(&chunk[..k]).is_err() {
                    break;
                }
                left -= k;
            }
        });
        BlastServer {
            _accepting: accepting,
        }
    }
}

/// Downloads from `to` until EOF; returns the number of bytes received.
fn download(ns: &Netns, to: &str) -> Result<usize, String> {
    let to: SocketAddr = to.parse().map_err(|e| format!("{e}"))?;
    ns.run_in(move || {
        let e = |e: std::io::Error| e.to_string();
        let mut s = TcpStream::connect_timeout(&to, T).map_err(e)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(e)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        loop {
            match s.read(&mut buf).map_err(e)? {
                0 => return Ok(got),
                n => got += n,
            }
        }
    })
}

/// Opens up to `n` connections to `to` from `ns` over `threads` parallel clients, within
/// `budget`; returns how many reached each service name, and the number of failures.
fn tally(
    ns: &Netns,
    to: &str,
    n: usize,
    threads: usize,
    budget: Duration,
) -> (BTreeMap<String, usize>, usize) {
    let to: SocketAddr = to.parse().expect("socket address");
    let deadline = Instant::now() + budget;
    let per = n / threads;
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let path = format!("/var/run/netns/{}", ns.name);
            std::thread::spawn(move || {
                let file = std::fs::File::open(&path).expect("netns file opens");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let mut seen: BTreeMap<String, usize> = BTreeMap::new();
                let mut failed = 0;
                for _ in 0..per {
                    if Instant::now() > deadline {
                        break;
                    }
                    let got = TcpStream::connect_timeout(&to, T).and_then(|mut s| {
                        s.set_read_timeout(Some(T))?;
                        read_line(&mut s)
                    });
                    match got {
                        Ok(line) if !line.is_empty() => {
                            *seen.entry(words(&line).0).or_default() += 1;
                        }
                        _ => failed += 1,
                    }
                }
                (seen, failed)
            })
        })
        .collect();
    let mut all: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for w in workers {
        let (seen, f) = w.join().expect("client thread");
        for (k, v) in seen {
            *all.entry(k).or_default() += v;
        }
        failed += f;
    }
    (all, failed)
}

// ---------------------------------------------------------------------------------------

#[test]
fn single_port_and_port_range_forward_over_v4_and_v6() {
    if !common::netns_available("single_port_and_port_range_forward_over_v4_and_v6") {
        return;
    }
    let t = Topology::new("fwp");
    let mut keep = Vec::new();
    for f in FAMS {
        keep.push(Server::start(&t.b1, "b1-9090", &at(f.b1, 9090)));
        // The gateway's own services on the ports next to the routed ones: a connection that
        // is not forwarded reaches them instead of a backend.
        keep.push(Server::start(&t.gateway, "gw", &at(f.gw, 81)));
        keep.push(Server::start(&t.gateway, "gw", &at(f.gw, 8011)));
        keep.push(Server::start(&t.gateway, "gw", &at(f.gw, 7999)));
    }
    let targets = [target(V4.b1, "9090"), target(V6.b1, "9090")].join(", ");
    t.apply(&format!(
        r#"
[[routes]]
name = "single"
[routes.match]
ports = 80
[routes.action]
targets = [{targets}]

[[routes]]
name = "range"
[routes.match]
ports = "8000-8010"
[routes.action]
targets = [{targets}]
"#
    ));
    for f in FAMS {
        let v = f.v;
        expect_hello(&t.client, &at(f.gw, 80), "b1-9090", Some(f.gw_b1), v);
        expect_hello(&t.client, &at(f.gw, 81), "gw", Some(f.client), v);
        for port in [8000, 8005, 8010] {
            expect_hello(&t.client, &at(f.gw, port), "b1-9090", Some(f.gw_b1), v);
        }
        for port in [7999, 8011] {
            expect_hello(&t.client, &at(f.gw, port), "gw", Some(f.client), v);
        }
        // Nothing listens on 8012 anywhere but the backend's 9090 would answer if it were
        // forwarded: it must be refused by the gateway.
        assert!(
            hello(&t.client, &at(f.gw, 8012)).is_err(),
            "{v}: port 8012 is outside the range and must not be forwarded"
        );
    }
}

#[test]
fn preserve_and_range_to_range_keep_the_port_mapping() {
    if !common::netns_available("preserve_and_range_to_range_keep_the_port_mapping") {
        return;
    }
    let t = Topology::new("fwm");
    let mut keep = Vec::new();
    for f in FAMS {
        for port in [8100, 8200, 8201, 8202] {
            keep.push(Server::start(&t.b1, &format!("b1-{port}"), &at(f.b1, port)));
        }
        for port in 9000..=9011 {
            keep.push(Server::start(&t.b2, &format!("b2-{port}"), &at(f.b2, port)));
        }
    }
    t.apply(&format!(
        r#"
[[routes]]
name = "keep"
[routes.match]
ports = [8100, "8200-8202"]
[routes.action]
targets = [{}, {}]

[[routes]]
name = "shift"
[routes.match]
ports = "8000-8010"
[routes.action]
targets = [{}, {}]
"#,
        target(V4.b1, r#""preserve""#),
        target(V6.b1, r#""preserve""#),
        target(V4.b2, r#""9000-9010""#),
        target(V6.b2, r#""9000-9010""#),
    ));
    for f in FAMS {
        let v = f.v;
        for port in [8100, 8200, 8201, 8202] {
            let name = format!("b1-{port}");
            expect_hello(&t.client, &at(f.gw, port), &name, Some(f.gw_b1), v);
        }
        for (from, to) in [(8000, 9000), (8003, 9003), (8007, 9007), (8010, 9010)] {
            let name = format!("b2-{to}");
            expect_hello(&t.client, &at(f.gw, from), &name, Some(f.gw_b2), v);
        }
        assert!(
            hello(&t.client, &at(f.gw, 8011)).is_err(),
            "{v}: 8011 is outside the range (the backend's 9011 would answer)"
        );
        assert!(
            hello(&t.client, &at(f.gw, 8101)).is_err(),
            "{v}: 8101 is not a matched port"
        );
    }
}

#[test]
fn tcp_udp_and_all_routes_carry_only_their_protocols() {
    if !common::netns_available("tcp_udp_and_all_routes_carry_only_their_protocols") {
        return;
    }
    let t = Topology::new("fwu");
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for f in FAMS {
        for port in [6000, 6001, 6002, 6100, 6105] {
            tcp.push(Server::start(&t.b1, &format!("t{port}"), &at(f.b1, port)));
            udp.push(UdpServer::start(
                &t.b1,
                &format!("u{port}"),
                &at(f.b1, port),
            ));
        }
    }
    let routes: Vec<String> = [
        ("tcponly", "6000", "tcp", "6000"),
        ("udponly", "6001", "udp", "6001"),
        ("both", "6002", "all", "6002"),
        ("udprange", r#""6100-6105""#, "udp", r#""preserve""#),
    ]
    .iter()
    .map(|(name, ports, proto, port)| {
        format!(
            "[[routes]]\nname = \"{name}\"\n[routes.match]\nports = {ports}\nprotocol = \"{proto}\"\n\
             [routes.action]\ntargets = [{}, {}]\n",
            target(V4.b1, port),
            target(V6.b1, port)
        )
    })
    .collect();
    t.apply(&routes.join("\n"));
    for f in FAMS {
        let v = f.v;
        let gw = |port| at(f.gw, port);
        let udp_ok = |port: u16, name: &str| {
            let answer = udp_ask(&t.client, &gw(port), T)
                .unwrap_or_else(|e| panic!("{v}: UDP to {port} gets no answer: {e}"));
            let (got, peer) = words(&answer);
            assert_eq!(
                (got.as_str(), peer.as_str()),
                (name, f.gw_b1),
                "{v}: UDP {port} reached the wrong service: {answer:?}"
            );
        };
        // tcp: TCP yes, UDP no.
        expect_hello(&t.client, &gw(6000), "t6000", Some(f.gw_b1), v);
        assert!(
            udp_ask(&t.client, &gw(6000), NEG).is_err(),
            "{v}: a tcp route must not forward UDP"
        );
        // udp: UDP yes (and the reply comes back), TCP no.
        udp_ok(6001, "u6001");
        assert!(
            hello(&t.client, &gw(6001)).is_err(),
            "{v}: a udp route must not forward TCP"
        );
        // all: both.
        expect_hello(&t.client, &gw(6002), "t6002", Some(f.gw_b1), v);
        udp_ok(6002, "u6002");
        // A UDP port range with `preserve`.
        udp_ok(6100, "u6100");
        udp_ok(6105, "u6105");
    }
}

#[test]
fn weighted_targets_spread_one_to_two() {
    if !common::netns_available("weighted_targets_spread_one_to_two") {
        return;
    }
    let t = Topology::new("fww");
    let mut keep = Vec::new();
    for f in FAMS {
        keep.push(Server::start(&t.b1, "b1", &at(f.b1, 9090)));
        keep.push(Server::start(&t.b2, "b2", &at(f.b2, 9090)));
    }
    t.apply(&format!(
        r#"
[[routes]]
name = "spread"
[routes.match]
ports = 80
[routes.action]
targets = [
  {{ host = "{}", port = 9090 }},
  {{ host = "{}", port = 9090, weight = 2 }},
  {{ host = "{}", port = 9090 }},
  {{ host = "{}", port = 9090, weight = 2 }},
]
"#,
        V4.b1, V4.b2, V6.b1, V6.b2
    ));
    const N: usize = 3000;
    for f in FAMS {
        let v = f.v;
        let start = Instant::now();
        let (seen, failed) = tally(&t.client, &at(f.gw, 80), N, 6, Duration::from_secs(20));
        let b1 = seen.get("b1").copied().unwrap_or(0);
        let b2 = seen.get("b2").copied().unwrap_or(0);
        eprintln!(
            "{v}: b1 {b1}, b2 {b2}, failed {failed}, others {seen:?} in {:?}",
            start.elapsed()
        );
        assert_eq!(failed, 0, "{v}: every connection succeeds");
        assert_eq!(
            b1 + b2,
            N,
            "{v}: all {N} connections done in time: {seen:?}"
        );
        let share = b1 as f64 / N as f64 * 100.0;
        assert!(
            (share - 100.0 / 3.0).abs() <= 5.0,
            "{v}: weight 1:2 must give b1 33±5 %, got {share:.1} % ({seen:?})"
        );
    }
}

#[test]
fn source_affinity_pins_each_client_to_one_backend() {
    if !common::netns_available("source_affinity_pins_each_client_to_one_backend") {
        return;
    }
    let t = Topology::new("fwa");
    let mut keep = Vec::new();
    for f in FAMS {
        keep.push(Server::start(&t.b1, "b1", &at(f.b1, 9090)));
        keep.push(Server::start(&t.b2, "b2", &at(f.b2, 9090)));
    }
    // Equal weights: without affinity 100 connections would land on both backends (the
    // chance of all on one is 2^-99). preserve_source_ip lets the backend confirm the source.
    t.apply(&format!(
        r#"
[[routes]]
name = "sticky"
[routes.match]
ports = 80
[routes.action]
affinity = "source"
targets = [{}, {}, {}, {}]
[routes.action.nftables]
preserve_source_ip = true
"#,
        target(V4.b1, "9090"),
        target(V4.b2, "9090"),
        target(V6.b1, "9090"),
        target(V6.b2, "9090"),
    ));
    for f in FAMS {
        let v = f.v;
        let (seen, failed) = tally(&t.client, &at(f.gw, 80), 100, 1, Duration::from_secs(10));
        assert_eq!(failed, 0, "{v}: every connection succeeds");
        assert_eq!(
            seen.len(),
            1,
            "{v}: 100 connections from one client must all reach one backend: {seen:?}"
        );
        assert_eq!(seen.values().sum::<usize>(), 100, "{v}: {seen:?}");

        // Different clients may land on different backends: 16 more source addresses (the
        // route to the gateway gets a preferred source), 10 connections each.
        let mut per_source = BTreeMap::new();
        for n in 10..26 {
            let src = format!("{}{n}", f.client_prefix);
            let plen = f.client_plen;
            let cidr = format!("{src}/{plen}");
            let mut add = vec!["-n", &t.client.name, "addr", "add", &cidr, "dev", "eth0"];
            if f.v == "v6" {
                add.push("nodad");
            }
            run_ip(&add);
            let host = format!("{}/{}", f.gw, f.host_plen);
            run_ip(&[
                "-n",
                &t.client.name,
                "route",
                "replace",
                &host,
                "dev",
                "eth0",
                "src",
                &src,
            ]);
            let mut names = BTreeMap::new();
            for _ in 0..10 {
                let line = hello(&t.client, &at(f.gw, 80))
                    .unwrap_or_else(|e| panic!("{v}: from {src}: {e}"));
                let (name, peer) = words(&line);
                assert_eq!(peer, src, "{v}: the backend must see the chosen source");
                *names.entry(name).or_insert(0) += 1;
            }
            assert_eq!(
                names.len(),
                1,
                "{v}: {src} must stick to one backend: {names:?}"
            );
            per_source.insert(src, names.into_keys().next().unwrap_or_default());
        }
        let backends: std::collections::BTreeSet<_> = per_source.values().collect();
        assert_eq!(
            backends.len(),
            2,
            "{v}: 16 sources with equal weights should use both backends: {per_source:?}"
        );
    }
}

fn run_ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn preserve_source_ip_shows_the_client_otherwise_the_gateway() {
    if !common::netns_available("preserve_source_ip_shows_the_client_otherwise_the_gateway") {
        return;
    }
    let t = Topology::new("fws");
    let mut keep = Vec::new();
    let mut udp = Vec::new();
    for f in FAMS {
        keep.push(Server::start(&t.b1, "b1", &at(f.b1, 7000)));
        udp.push(UdpServer::start(&t.b1, "u1", &at(f.b1, 7000)));
    }
    let targets = [target(V4.b1, "7000"), target(V6.b1, "7000")].join(", ");
    t.apply(&format!(
        r#"
[[routes]]
name = "keep"
[routes.match]
ports = 7100
protocol = "all"
[routes.action]
targets = [{targets}]
[routes.action.nftables]
preserve_source_ip = true

[[routes]]
name = "masq"
[routes.match]
ports = 7200
protocol = "all"
[routes.action]
targets = [{targets}]
[routes.action.nftables]
preserve_source_ip = false
"#
    ));
    for f in FAMS {
        let v = f.v;
        expect_hello(&t.client, &at(f.gw, 7100), "b1", Some(f.client), v);
        expect_hello(&t.client, &at(f.gw, 7200), "b1", Some(f.gw_b1), v);
        for (port, peer) in [(7100, f.client), (7200, f.gw_b1)] {
            let answer = udp_ask(&t.client, &at(f.gw, port), T)
                .unwrap_or_else(|e| panic!("{v}: UDP {port}: {e}"));
            let (name, seen) = words(&answer);
            assert_eq!(
                (name.as_str(), seen.as_str()),
                ("u1", peer),
                "{v}: UDP {port}"
            );
        }
    }
}

#[test]
fn a_local_target_serves_remote_clients_through_redirect() {
    if !common::netns_available("a_local_target_serves_remote_clients_through_redirect") {
        return;
    }
    let t = Topology::new("fwl");
    // The services listen on the wildcard address (redirect sends to the address of the
    // incoming interface, SPEC §2).
    let _s4 = Server::start(&t.gateway, "svc4", &at(V4.any, 4000));
    let _s6 = Server::start(&t.gateway, "svc6", &at(V6.any, 4001));
    t.apply(
        r#"
[[routes]]
name = "loc4"
[routes.match]
ports = 5000
[routes.action]
targets = [{ host = "127.0.0.1", port = 4000 }]

[[routes]]
name = "loc6"
[routes.match]
ports = 5001
[routes.action]
targets = [{ host = "::1", port = 4001 }]
"#,
    );
    // The service sees the remote client itself (redirect does not masquerade).
    expect_hello(&t.client, &at(V4.gw, 5000), "svc4", Some(V4.client), "v4");
    expect_hello(&t.client, &at(V6.gw, 5001), "svc6", Some(V6.client), "v6");
    // Each route only carries its own family.
    assert!(hello(&t.client, &at(V6.gw, 5000)).is_err(), "v6 on loc4");
    assert!(hello(&t.client, &at(V4.gw, 5001)).is_err(), "v4 on loc6");
    // And the gateway's own connections to its client-facing address are caught too.
    expect_hello(&t.gateway, &at(V4.gw, 5000), "svc4", None, "v4 local");
    expect_hello(&t.gateway, &at(V6.gw, 5001), "svc6", None, "v6 local");
}

#[test]
fn smartproxy_scenario_localhost_5000_reaches_localhost_4000() {
    if !common::netns_available("smartproxy_scenario_localhost_5000_reaches_localhost_4000") {
        return;
    }
    let t = Topology::new("fwx");
    const ANSWER: &str = "Server says: Hello through NFTables!";
    // Loopback only, like a test server on localhost: local clients use output DNAT.
    let _s4 = FixedServer::start(&t.gateway, &at(V4.lo, 4000), ANSWER);
    let _s6 = FixedServer::start(&t.gateway, &at(V6.lo, 4000), ANSWER);
    // Before the route exists nothing listens on 5000.
    assert!(hello(&t.gateway, &at(V4.lo, 5000)).is_err());
    t.apply(
        r#"
[[routes]]
name = "smartproxy"
[routes.match]
ports = 5000
[routes.action]
targets = [{ host = "localhost", port = 4000 }]
"#,
    );
    for f in FAMS {
        let got = hello(&t.gateway, &at(f.lo, 5000))
            .unwrap_or_else(|e| panic!("{}: {}:5000: {e}", f.v, f.lo));
        assert_eq!(got, ANSWER, "{}: {}:5000", f.v, f.lo);
    }
    // By name, as the SmartProxy test does (whichever address `localhost` resolves to first).
    let by_name = t.gateway.run_in(|| {
        let mut s = TcpStream::connect(("localhost", 5000)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(T)).map_err(|e| e.to_string())?;
        read_line(&mut s).map_err(|e| e.to_string())
    });
    assert_eq!(by_name.as_deref(), Ok(ANSWER), "localhost:5000 by name");
}

#[test]
fn the_hosts_own_connections_to_other_hosts_are_not_caught() {
    if !common::netns_available("the_hosts_own_connections_to_other_hosts_are_not_caught") {
        return;
    }
    let t = Topology::new("fwo");
    let mut keep = Vec::new();
    for f in FAMS {
        keep.push(Server::start(&t.b1, "b1", &at(f.b1, 9090)));
        keep.push(Server::start(&t.b2, "b2", &at(f.b2, 9090)));
    }
    t.apply(&format!(
        r#"
[[routes]]
name = "nine"
[routes.match]
ports = 9090
[routes.action]
targets = [{}, {}]
"#,
        target(V4.b2, "9090"),
        target(V6.b2, "9090")
    ));
    for f in FAMS {
        let v = f.v;
        // The route is live: the gateway's port 9090 leads to backend2, from the client and
        // from the gateway itself (output DNAT to a local address).
        expect_hello(&t.client, &at(f.gw, 9090), "b2", Some(f.gw_b2), v);
        expect_hello(&t.gateway, &at(f.gw, 9090), "b2", Some(f.gw_b2), v);
        // The gateway's own connection to another host on that port is untouched.
        expect_hello(&t.gateway, &at(f.b1, 9090), "b1", Some(f.gw_b1), v);
        // So is forwarded traffic to another host on that port (no NAT either).
        expect_hello(&t.client, &at(f.b1, 9090), "b1", Some(f.client), v);
    }
}

/// Reads `packets` and `bytes` of a named counter in the gateway.
fn counter(t: &Topology, name: &str) -> (u64, u64) {
    let out = t
        .gateway
        .nft_ok(&["list", "counter", "inet", "smartproxy", name], None);
    let w: Vec<&str> = out.split_whitespace().collect();
    let after = |key: &str| -> u64 {
        w.iter()
            .position(|x| *x == key)
            .and_then(|i| w.get(i + 1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in counter {name}:\n{out}"))
    };
    (after("packets"), after("bytes"))
}

/// Connects, reads the greeting, sends `total` bytes, half-closes and reads to EOF.
fn bulk(ns: &Netns, to: &str, total: usize) -> Result<String, String> {
    let to: SocketAddr = to.parse().map_err(|e| format!("{e}"))?;
    ns.run_in(move || {
        let e = |e: std::io::Error| e.to_string();
        let mut s = TcpStream::connect_timeout(&to, T).map_err(e)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(e)?;
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(e)?;
        let line = read_line(&mut s).map_err(e)?;
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let k = left.min(chunk.len());
            s.write_all(&chunk[..k]).map_err(e)?;
            left -= k;
        }
        s.shutdown(Shutdown::Write).map_err(e)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).map_err(e)?;
        Ok(line)
    })
}

#[test]
fn route_counters_count_the_bytes_of_both_directions() {
    if !common::netns_available("route_counters_count_the_bytes_of_both_directions") {
        return;
    }
    const UP: usize = 10 * 1024 * 1024;
    const DOWN: usize = 5 * 1024 * 1024;
    let t = Topology::new("fwc");
    // Per family: port 80/81 is an upload sink (the common Server counts what it reads),
    // port 82/83 a download source. One route per family so each has its own counter.
    let up4 = Server::start(&t.b1, "b1", &at(V4.b1, 80));
    let up6 = Server::start(&t.b1, "b1", &at(V6.b1, 81));
    let _down4 = BlastServer::start(&t.b1, &at(V4.b1, 82), DOWN);
    let _down6 = BlastServer::start(&t.b1, &at(V6.b1, 83), DOWN);
    t.apply(&format!(
        r#"
[[routes]]
name = "vol4"
[routes.match]
ports = [80, 82]
[routes.action]
targets = [{}]

[[routes]]
name = "vol6"
[routes.match]
ports = [81, 83]
[routes.action]
targets = [{}]
"#,
        target(V4.b1, r#""preserve""#),
        target(V6.b1, r#""preserve""#)
    ));
    // How the expected figure is computed: the counters sit in filter chains, so they see
    // every packet of the connection in both directions, and count the length of the IP
    // packet (network header included, link header not). With TSO/GSO on veth one counted
    // "packet" may carry many segments' payload behind one header set, so the header share
    // cannot be derived from the payload size — but it can from the counter's own packet
    // count:
    //   expected bytes = payload (10 MiB up + greeting + 5 MiB down; each byte crosses the
    //                    gateway once) + packets × (IP header + TCP header with timestamps)
    // (IPv4 20 + 32 = 52, IPv6 40 + 32 = 72; SYN and SYN-ACK carry 8 more option bytes each:
    // noise.) Counted bytes must match that within 5 % of the payload. A counter in a nat
    // chain (first packet only), one counting one direction only (off by >= 33 %), or one
    // counting a packet twice (off by ~100 %) fails.
    for (f, name, up_port, down_port, server, hdr) in [
        (V4, "c_vol4", 80, 82, &up4, 52u64),
        (V6, "c_vol6", 81, 83, &up6, 72),
    ] {
        let v = f.v;
        let (p0, b0) = counter(&t, name);
        let greeting =
            bulk(&t.client, &at(f.gw, up_port), UP).unwrap_or_else(|e| panic!("{v}: upload: {e}"));
        assert!(greeting.starts_with("b1 "), "{v}: {greeting}");
        let got = download(&t.client, &at(f.gw, down_port))
            .unwrap_or_else(|e| panic!("{v}: download: {e}"));
        assert_eq!(got, DOWN, "{v}: the client received the whole download");
        // The server saw the whole upload (bounded wait for its last reads).
        let deadline = Instant::now() + T;
        while server.received.load(Ordering::Relaxed) < UP as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            server.received.load(Ordering::Relaxed),
            UP as u64,
            "{v}: the backend received the whole upload"
        );
        // The last ACKs of the closes may still be in flight.
        std::thread::sleep(Duration::from_millis(100));
        let (p1, b1) = counter(&t, name);
        let (packets, bytes) = (p1 - p0, b1 - b0);
        let payload = (UP + greeting.len() + 1 + DOWN) as u64;
        let expected = payload + packets * hdr;
        let off = bytes.abs_diff(expected) as f64 / payload as f64 * 100.0;
        eprintln!(
            "{v}: counter {packets} packets {bytes} bytes; payload {payload}; expected \
             {expected}; off {off:.3} %"
        );
        assert!(
            bytes >= payload,
            "{v}: the counter missed payload: {bytes} < {payload}"
        );
        assert!(
            off <= 5.0,
            "{v}: counter bytes {bytes} vs expected {expected} ({packets} packets): {off:.2} % off"
        );
    }
}
