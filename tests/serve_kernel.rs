//! One process, two engines: `smartproxy serve` provisions the file's kernel routes in its
//! own table (and removes it on stop), falls back to userspace without nftables, shields
//! userspace routes in the kernel, health-checks the targets of both engines, and reports
//! both. Real packets between namespaces:
//!
//! ```text
//!  client 192.0.2.2 --- gateway (serve) --- backend1 198.51.100.2
//!                                      \--- backend2 198.51.100.66
//! ```

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cli::{serve_args, Serve};
use common::pki::Pki;
use common::topo::{self, hello, udp_ask, Server, Topology, UdpServer};
use common::Netns;

const T: Duration = Duration::from_secs(3);
const TABLE: &str = "sk";
/// How long serve may take to come up.
const UP: Duration = Duration::from_secs(15);

/// The options every test passes: quick health checks (a dead target is out within
/// 2 × 0.3 s + 0.3 s of checks, plus the table change).
const HEALTH: [&str; 8] = [
    "--health-interval",
    "0.3",
    "--health-timeout",
    "0.3",
    "--health-fall",
    "2",
    "--health-rise",
    "2",
];

/// A serve process in the gateway namespace.
impl Serve {
    /// Starts serve on `routes` with `args`; `path`: the PATH serve sees (None: ours).
    fn spawn(t: &Topology, routes: &Path, args: &[&str], path: Option<&str>) -> Serve {
        let metrics = 9100 + u16::try_from(std::process::id() % 800).unwrap_or(0);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &t.gateway.name, "env"]);
        if let Some(path) = path {
            cmd.arg(format!("PATH={path}"));
        }
        cmd.arg(env!("CARGO_BIN_EXE_smartproxy"))
            .args(serve_args(routes, metrics))
            .args(HEALTH)
            .args(args)
            .env("SMARTPROXY_STATE_DIR", t.state.path())
            .env("NO_COLOR", "1");
        Serve::from_command(
            cmd,
            routes.with_extension("stderr"),
            Some(&t.gateway.name),
            metrics,
        )
    }

    /// Starts serve and waits until its metrics answer (it is up, routes provisioned).
    fn start(t: &Topology, routes: &Path, args: &[&str]) -> Serve {
        let mut s = Serve::spawn(t, routes, args, None);
        s.wait_up(UP);
        s
    }

    fn metric(&self, name: &str, route: &str) -> f64 {
        self.metrics()
            .into_iter()
            .find(|(n, r, _, _)| n == name && r.as_deref() == Some(route))
            .map_or(0.0, |(_, _, _, v)| v)
    }
}

/// Packets counted by our table's counter of `route`.
fn kernel_packets(gateway: &Netns, route: &str) -> u64 {
    gateway.counter(TABLE, &format!("c_{route}")).0
}

fn table_exists(gateway: &Netns, table: &str) -> bool {
    gateway
        .nft(&["list", "table", "inet", table], None)
        .status
        .success()
}

fn route(name: &str, port: u16, engine: &str, targets: &[&str], extra: &str) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|t| {
            let (host, port) = t.rsplit_once(':').expect("host:port");
            format!("{{ host = \"{host}\", port = {port} }}")
        })
        .collect();
    format!(
        "\n[[routes]]\nname = \"{name}\"\n[routes.match]\nports = {port}\n{extra}\
         [routes.action]\nforwarding_engine = \"{engine}\"\ntargets = [{}]\n",
        targets.join(", ")
    )
}

/// A TLS client in `ns`: the first line the target says through a terminating route.
fn tls_hello(ns: &Netns, pki: &Pki, to: &str, name: &str) -> Result<String, String> {
    let config = pki.client(&[]);
    let to: SocketAddr = to.parse().map_err(|e| format!("{e}"))?;
    let name =
        rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    ns.run_in(move || {
        let sock = TcpStream::connect_timeout(&to, T).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(T)).map_err(|e| e.to_string())?;
        let conn =
            rustls::ClientConnection::new(Arc::clone(&config), name).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while tls.read(&mut byte).map_err(|e| e.to_string())? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    })
}

fn settings() -> String {
    format!("[settings]\ntable = \"{TABLE}\"\n")
}

fn tls_section(pki: &Pki) -> String {
    format!(
        "[routes.action.tls]\nmode = \"terminate\"\ncertificate = {{ cert = \"{}\", key = \"{}\" }}\n",
        pki.path("site.pem").display(),
        pki.path("site.key").display()
    )
}

fn write(t: &Topology, name: &str, text: &str) -> PathBuf {
    let path = t.state.path().join(name);
    std::fs::write(&path, text).expect("write routes");
    path
}

/// The mixed file: kernel TCP `web` :8000, kernel UDP `dns` :5300, userspace TLS `tls`
/// :8443 (terminated by serve), all to backend1.
fn mixed(t: &Topology, pki: &Pki, with_udp: bool) -> PathBuf {
    let b1 = format!("{}:8080", topo::B1_4);
    let mut text = settings();
    text += &route("web", 8000, "auto", &[&b1], "");
    if with_udp {
        text += &route(
            "dns",
            5300,
            "auto",
            &[&format!("{}:5353", topo::B1_4)],
            "protocol = \"udp\"\n",
        );
    }
    text += &route("tls", 8443, "auto", &[&b1], "addresses = [\"192.0.2.1\"]\n");
    text += &tls_section(pki);
    write(t, if with_udp { "mixed.toml" } else { "tcp.toml" }, &text)
}

#[test]
fn mixed_file_kernel_routes_in_the_kernel_tls_in_serve_and_the_table_gone_after_sigterm() {
    if !common::netns_available("mixed_file_kernel_routes_in_the_kernel") {
        return;
    }
    let t = Topology::new("skm");
    let _b1 = Server::start(&t.b1, "b1", &format!("{}:8080", topo::B1_4));
    let _u1 = UdpServer::start(&t.b1, "u1", &format!("{}:5353", topo::B1_4));
    let pki = Pki::new();
    pki.leaf("site", &["site.example.test"]);
    let foreign = "table inet foreign {\n\tchain input {\n\t\ttype filter hook input priority 10; policy accept;\n\t\ttcp dport 22 counter accept\n\t}\n}\n";
    t.gateway.nft_ok(&["-f", "-"], Some(foreign));
    let before = t
        .gateway
        .nft_ok(&["-s", "list", "table", "inet", "foreign"], None);

    let file = mixed(&t, &pki, true);
    let mut serve = Serve::start(&t, &file, &[]);
    assert!(table_exists(&t.gateway, TABLE), "{}", serve.log());
    for _ in 0..5 {
        let answer = hello(&t.client, "192.0.2.1:8000", T).expect("kernel TCP route");
        assert!(answer.starts_with("b1 198.51.100.1 "), "{answer}");
        let answer = udp_ask(&t.client, "192.0.2.1:5300", T).expect("kernel UDP route");
        assert!(answer.starts_with("u1 198.51.100.1 "), "{answer}");
        let answer =
            tls_hello(&t.client, &pki, "192.0.2.1:8443", "site.example.test").expect("TLS route");
        assert!(answer.starts_with("b1 198.51.100.1 "), "{answer}");
    }
    // The kernel carried `web` and `dns`; serve carried `tls` and never saw the others.
    assert!(kernel_packets(&t.gateway, "web") >= 5 * 4);
    assert!(kernel_packets(&t.gateway, "dns") >= 5 * 2);
    assert!(serve.metric("smartproxy_serve_bytes_out_total", "tls") > 0.0);
    assert_eq!(
        serve.metric("smartproxy_serve_connections_total", "tls"),
        5.0
    );
    for kernel_route in ["web", "dns"] {
        assert_eq!(
            serve.metric("smartproxy_serve_connections_total", kernel_route),
            0.0
        );
        assert_eq!(
            serve.metric("smartproxy_serve_bytes_out_total", kernel_route),
            0.0
        );
    }
    let listening = t.gateway.exec_ok(&["ss", "-Htln"]);
    assert!(
        !listening.contains(":8000 "),
        "serve binds a kernel route's port:\n{listening}"
    );
    assert!(listening.contains("192.0.2.1:8443"), "{listening}");

    serve.signal("TERM");
    assert_eq!(
        serve.exit_code(Duration::from_secs(15)),
        0,
        "{}",
        serve.log()
    );
    assert!(!table_exists(&t.gateway, TABLE), "{}", serve.log());
    let tables = t.gateway.nft_ok(&["list", "tables"], None);
    assert_eq!(tables.trim(), "table inet foreign", "{tables}");
    let after = t
        .gateway
        .nft_ok(&["-s", "list", "table", "inet", "foreign"], None);
    assert_eq!(before, after, "the foreign table changed");
}

#[test]
fn without_nft_auto_serves_tcp_kernel_routes_in_userspace_and_refuses_udp_on_fails() {
    if !common::netns_available("without_nft_auto_serves_tcp_kernel_routes_in_userspace") {
        return;
    }
    let t = Topology::new("skf");
    let _b1 = Server::start(&t.b1, "b1", &format!("{}:8080", topo::B1_4));
    let pki = Pki::new();
    pki.leaf("site", &["site.example.test"]);
    let no_nft = "/nonexistent";

    // A UDP kernel route cannot move to userspace: start-up fails, naming it.
    let mut serve = Serve::spawn(&t, &mixed(&t, &pki, true), &[], Some(no_nft));
    assert_eq!(serve.exit_code(Duration::from_secs(10)), 1);
    let log = serve.log();
    assert!(log.contains("route `dns`") && log.contains("udp"), "{log}");
    assert!(!table_exists(&t.gateway, TABLE));

    // `--nftables on`: a clear error instead.
    let tcp = mixed(&t, &pki, false);
    let mut serve = Serve::spawn(&t, &tcp, &["--nftables", "on"], Some(no_nft));
    assert_eq!(serve.exit_code(Duration::from_secs(10)), 1);
    let log = serve.log();
    assert!(
        log.contains("--nftables on") && log.contains("`nft` is not installed"),
        "{log}"
    );

    // Without the UDP route: the TCP kernel route is served in userspace, with a warning
    // naming it, and no table is made.
    let mut serve = Serve::spawn(&t, &tcp, &[], Some(no_nft));
    serve.wait_up(UP);
    let log = serve.log();
    assert!(
        log.contains("nftables is not available") && log.contains("`web`"),
        "{log}"
    );
    for _ in 0..3 {
        let answer = hello(&t.client, "192.0.2.1:8000", T).expect("web in userspace");
        assert!(answer.starts_with("b1 198.51.100.1 "), "{answer}");
    }
    let answer =
        tls_hello(&t.client, &pki, "192.0.2.1:8443", "site.example.test").expect("TLS route");
    assert!(answer.starts_with("b1 "), "{answer}");
    assert_eq!(
        serve.metric("smartproxy_serve_connections_total", "web"),
        3.0
    );
    assert!(!table_exists(&t.gateway, TABLE));
}

/// Writes `data` into `s` and waits until the backend counted it.
fn push_through(s: &mut TcpStream, server: &Server, data: &[u8]) -> bool {
    let before = server.received.load(std::sync::atomic::Ordering::Relaxed);
    if s.write_all(data).is_err() {
        return false;
    }
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if server.received.load(std::sync::atomic::Ordering::Relaxed) >= before + data.len() as u64
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_reload_changes_only_the_edited_kernel_route_and_long_connections_stay_up() {
    if !common::netns_available("a_reload_changes_only_the_edited_kernel_route") {
        return;
    }
    let t = Topology::new("skr");
    let b1 = Server::start(&t.b1, "b1", &format!("{}:8080", topo::B1_4));
    let _b2 = Server::start(&t.b2, "b2", &format!("{}:8080", topo::B2_4));
    let b1_target = format!("{}:8080", topo::B1_4);
    let b2_target = format!("{}:8080", topo::B2_4);
    let text = settings()
        + &route("keep", 8001, "nftables", &[&b1_target], "")
        + &route("edit", 8002, "nftables", &[&b1_target], "");
    // Applied before serve starts: serve adopts the table, says so, changes nothing.
    let file = t.apply(&text);
    let mut serve = Serve::start(&t, &file, &["--keep-kernel-routes"]);
    let log = serve.log();
    assert!(
        log.contains("adopted the existing table inet sk added=0 changed=0 destroyed=0"),
        "{log}"
    );
    // A long-lived connection through `keep`, and some traffic on both routes.
    let mut long = t.client.run_in(|| {
        TcpStream::connect_timeout(&"192.0.2.1:8001".parse().expect("addr"), T).expect("connect")
    });
    long.set_read_timeout(Some(T)).expect("timeout");
    let mut greeting = [0u8; 3];
    long.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting, b"b1 ");
    for _ in 0..10 {
        assert!(hello(&t.client, "192.0.2.1:8001", T)
            .expect("keep")
            .starts_with("b1 "));
        assert!(hello(&t.client, "192.0.2.1:8002", T)
            .expect("edit")
            .starts_with("b1 "));
    }
    assert!(push_through(&mut long, &b1, b"before the reload\n"));
    let keep_before = kernel_packets(&t.gateway, "keep");
    assert!(keep_before >= 40, "{keep_before}");

    std::fs::write(
        &file,
        settings()
            + &route("keep", 8001, "nftables", &[&b1_target], "")
            + &route("edit", 8002, "nftables", &[&b2_target], ""),
    )
    .expect("edit");
    serve.signal("HUP");
    assert!(
        common::wait_until(Duration::from_secs(10), || serve.log().contains("~ edit")),
        "serve did not change the table:\n{}",
        serve.log()
    );
    assert!(hello(&t.client, "192.0.2.1:8002", T)
        .expect("edit")
        .starts_with("b2 "));
    assert!(!serve.log().contains("~ keep"), "{}", serve.log());
    // `keep` kept its counter and its connection.
    let keep_after = kernel_packets(&t.gateway, "keep");
    assert!(
        keep_after >= keep_before,
        "{keep_after} < {keep_before}: counter reset"
    );
    assert!(
        push_through(&mut long, &b1, b"after the reload\n"),
        "the long-lived connection broke"
    );
    assert!(hello(&t.client, "192.0.2.1:8001", T)
        .expect("keep")
        .starts_with("b1 "));
    // --keep-kernel-routes: the routes outlive serve.
    drop(long);
    serve.signal("TERM");
    assert_eq!(
        serve.exit_code(Duration::from_secs(15)),
        0,
        "{}",
        serve.log()
    );
    assert!(serve
        .log()
        .contains("kept the kernel routes in table inet sk"));
    assert!(hello(&t.client, "192.0.2.1:8002", T)
        .expect("edit")
        .starts_with("b2 "));
}

#[test]
fn the_kernel_shield_refuses_a_blocked_client_of_a_tls_route_before_serve_sees_it() {
    if !common::netns_available("the_kernel_shield_refuses_a_blocked_client") {
        return;
    }
    let t = Topology::new("sks");
    let _b1 = Server::start(&t.b1, "b1", &format!("{}:8080", topo::B1_4));
    let pki = Pki::new();
    pki.leaf("site", &["site.example.test"]);
    let b1 = format!("{}:8080", topo::B1_4);
    let text = settings()
        + &route("tls", 8443, "auto", &[&b1], "")
        + &tls_section(&pki)
        + "[routes.action.security]\nip_block_list = [\"192.0.2.2/32\"]\n";
    let serve = Serve::start(&t, &write(&t, "shield.toml", &text), &[]);
    // The IPv6 client is not blocked: serve terminates its TLS.
    let answer = tls_hello(&t.client, &pki, "[2001:db8:c::1]:8443", "site.example.test")
        .expect("an allowed client");
    assert!(answer.starts_with("b1 "), "{answer}");
    let counted = kernel_packets(&t.gateway, "tls");
    assert!(counted > 0, "the shield counts the route's packets");
    // The blocked IPv4 client is reset by the kernel: refused, quickly.
    let started = Instant::now();
    let refused = t.client.run_in(|| {
        TcpStream::connect_timeout(&"192.0.2.1:8443".parse().expect("addr"), T)
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(kernel_packets(&t.gateway, "tls") > counted);
    assert_eq!(
        serve.metric("smartproxy_serve_connections_total", "tls"),
        1.0
    );
    assert_eq!(serve.metric("smartproxy_serve_refused_total", "tls"), 0.0);
}

/// Which backends answer `n` connections to `to`.
fn who_answers(client: &Netns, to: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            hello(client, to, T)
                .map(|a| a.split(' ').next().unwrap_or("").to_owned())
                .unwrap_or_else(|e| format!("error: {e}"))
        })
        .collect()
}

#[test]
fn a_dead_target_leaves_both_engines_and_comes_back_and_all_dead_refuses_quickly() {
    if !common::netns_available("a_dead_target_leaves_both_engines") {
        return;
    }
    let t = Topology::new("skh");
    let b1_addr = format!("{}:8080", topo::B1_4);
    let b2_addr = format!("{}:8080", topo::B2_4);
    let b1 = Server::start(&t.b1, "b1", &b1_addr);
    let b2 = Server::start(&t.b2, "b2", &b2_addr);
    let text = settings()
        + &route("klb", 8003, "nftables", &[&b1_addr, &b2_addr], "")
        + &route(
            "ulb",
            8004,
            "userspace",
            &[&b1_addr, &b2_addr],
            "addresses = [\"192.0.2.1\"]\n",
        );
    let serve = Serve::start(&t, &write(&t, "health.toml", &text), &[]);
    for to in ["192.0.2.1:8003", "192.0.2.1:8004"] {
        let seen = who_answers(&t.client, to, 40);
        assert!(
            seen.iter().any(|w| w == "b1") && seen.iter().any(|w| w == "b2"),
            "{to}: {seen:?}"
        );
    }
    // The documented fall time with these options: 2 checks 0.3 s apart, each within
    // 0.3 s; the table change takes well under a second more.
    let fall = Duration::from_millis(2 * 300 + 300 + 1500);
    drop(b1);
    std::thread::sleep(fall);
    for to in ["192.0.2.1:8003", "192.0.2.1:8004"] {
        let seen = who_answers(&t.client, to, 20);
        assert!(
            seen.iter().all(|w| w == "b2"),
            "{to} after b1 died: {seen:?}\n{}",
            serve.log()
        );
    }
    let up = |target: &str| {
        serve
            .metrics()
            .into_iter()
            .find(|(n, r, tg, _)| {
                n == "smartproxy_target_up"
                    && r.as_deref() == Some("klb")
                    && tg.as_deref() == Some(target)
            })
            .map(|(_, _, _, v)| v)
    };
    assert_eq!(up(&b1_addr), Some(0.0));
    assert_eq!(up(&b2_addr), Some(1.0));

    // Back: both engines spread over both again.
    let b1 = Server::start(&t.b1, "b1", &b1_addr);
    std::thread::sleep(fall);
    for to in ["192.0.2.1:8003", "192.0.2.1:8004"] {
        let seen = who_answers(&t.client, to, 40);
        assert!(
            seen.iter().any(|w| w == "b1"),
            "{to} after b1 came back: {seen:?}"
        );
    }

    // All dead: the kernel route refuses at once instead of sending packets nowhere.
    drop(b1);
    drop(b2);
    std::thread::sleep(fall);
    let started = Instant::now();
    let refused = t.client.run_in(|| {
        TcpStream::connect_timeout(&"192.0.2.1:8003".parse().expect("addr"), T)
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "{}\n{}",
        serve.log(),
        t.gateway.nft_ok(&["list", "table", "inet", TABLE], None)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // The userspace route finds no target: the client's connection just ends.
    assert!(hello(&t.client, "192.0.2.1:8004", T).map_or(true, |a| a.is_empty()));
}

/// `smartproxy status` in the gateway (it asks the running serve over its socket).
fn status_json(t: &Topology, file: &Path) -> serde_json::Value {
    let out = t.smartproxy(&["status", file.to_str().expect("utf-8"), "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn route_of<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no route {name} in {status}"))
}

#[test]
fn status_and_metrics_agree_with_each_other_and_the_traffic_for_both_engines() {
    if !common::netns_available("status_and_metrics_agree") {
        return;
    }
    let t = Topology::new("skt");
    let b1 = format!("{}:8080", topo::B1_4);
    let _server = Server::start(&t.b1, "b1", &b1);
    let file = write(
        &t,
        "status.toml",
        &(settings()
            + &route("web", 8000, "nftables", &[&b1], "")
            + &route(
                "app",
                8005,
                "userspace",
                &[&b1],
                "addresses = [\"192.0.2.1\"]\n",
            )),
    );
    let serve = Serve::start(&t, &file, &[]);
    // Traffic: 7 connections through the kernel, 5 through serve; one of each held open.
    for _ in 0..7 {
        assert!(hello(&t.client, "192.0.2.1:8000", T)
            .expect("web")
            .starts_with("b1 "));
    }
    let mut greeted = 0;
    for _ in 0..5 {
        let line = hello(&t.client, "192.0.2.1:8005", T).expect("app");
        assert!(line.starts_with("b1 "));
        greeted += line.len() + 1;
    }
    let hold = |port: u16| {
        let mut s = t.client.run_in(move || {
            TcpStream::connect_timeout(&SocketAddr::from(([192, 0, 2, 1], port)), T)
                .expect("connect")
        });
        s.set_read_timeout(Some(T)).expect("timeout");
        let mut b = [0u8; 3];
        s.read_exact(&mut b).expect("greeting");
        s
    };
    let (_web_open, _app_open) = (hold(8000), hold(8005));
    std::thread::sleep(Duration::from_millis(200));

    let status = status_json(&t, &file);
    let metrics = serve.metrics();
    let metric = |name: &str, route: &str| {
        metrics
            .iter()
            .find(|(n, r, _, _)| n == name && r.as_deref() == Some(route))
            .map(|(_, _, _, v)| *v)
            .unwrap_or_else(|| panic!("no {name}{{route={route}}} in /metrics"))
    };
    assert_eq!(status["serve"]["nftables"], "on", "{status}");
    assert_eq!(status["serve"]["pid"], serve.child.id(), "{status}");

    // The kernel route: the table's counter, conntrack's open connection.
    let web = route_of(&status, "web");
    assert_eq!(web["engine"], "nftables");
    let packets = kernel_packets(&t.gateway, "web");
    assert!(packets >= 8 * 4, "{packets}");
    assert_eq!(web["kernel"]["packets"], packets, "{web}");
    assert_eq!(
        metric("smartproxy_kernel_packets_total", "web"),
        packets as f64
    );
    let bytes = web["kernel"]["bytes"].as_f64().expect("bytes");
    assert!(bytes > 0.0);
    assert_eq!(metric("smartproxy_kernel_bytes_total", "web"), bytes);
    assert_eq!(web["kernel"]["active"], 1, "{web}");
    assert_eq!(metric("smartproxy_kernel_active_connections", "web"), 1.0);
    assert!(
        web["serve"].is_null(),
        "serve carries nothing of a kernel route"
    );

    // The userspace route: serve's own counts.
    let app = route_of(&status, "app");
    assert_eq!(app["engine"], "userspace");
    assert_eq!(app["serve"]["connections_total"], 6, "{app}");
    assert_eq!(metric("smartproxy_serve_connections_total", "app"), 6.0);
    assert_eq!(app["serve"]["active"], 1, "{app}");
    assert_eq!(metric("smartproxy_serve_connections_active", "app"), 1.0);
    let out = app["serve"]["bytes_out"].as_u64().expect("bytes_out");
    // The five whole greetings and the first three bytes of the held one at least.
    assert!(out as usize >= greeted + 3, "{out} < {greeted} + 3");
    assert_eq!(
        metric("smartproxy_serve_bytes_out_total", "app"),
        out as f64
    );

    // Both routes' target is checked and up, in both views.
    for route in ["web", "app"] {
        let targets = route_of(&status, route)["targets"]
            .as_array()
            .expect("targets")
            .clone();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0]["target"], b1.as_str());
        assert_eq!(targets[0]["up"], true);
        let up = metrics
            .iter()
            .find(|(n, r, tg, _)| {
                n == "smartproxy_target_up"
                    && r.as_deref() == Some(route)
                    && tg.as_deref() == Some(b1.as_str())
            })
            .map(|(_, _, _, v)| *v);
        assert_eq!(up, Some(1.0), "{route}");
    }
}

/// Waits up to `limit` for a kernel route's answer; how long it took.
fn answers_within(t: &Topology, to: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let quick = Duration::from_millis(300);
    common::wait_until(limit, || {
        hello(&t.client, to, quick).is_ok_and(|a| a.starts_with("b1 "))
    })
    .then(|| start.elapsed())
}

// Issue 12: serve owns its table and puts it back, whoever deleted, flushed or edited it.
#[test]
fn serve_repairs_its_table_after_delete_a_hand_rule_and_flush_ruleset_within_3_s() {
    if !common::netns_available("serve_repairs_its_table") {
        return;
    }
    let t = Topology::new("skr");
    let _b1 = Server::start(&t.b1, "b1", &format!("{}:8080", topo::B1_4));
    let foreign = "table inet foreign {\n\tchain input {\n\t\ttype filter hook input priority 10; policy accept;\n\t\ttcp dport 22 counter accept\n\t}\n}\n";
    t.gateway.nft_ok(&["-f", "-"], Some(foreign));
    let foreign_before = t
        .gateway
        .nft_ok(&["-s", "list", "table", "inet", "foreign"], None);
    let b1 = format!("{}:8080", topo::B1_4);
    let file = write(
        &t,
        "heal.toml",
        &(settings() + &route("web", 8000, "nftables", &[&b1], "")),
    );
    let mut serve = Serve::start(&t, &file, &[]);
    let to = "192.0.2.1:8000";
    let limit = Duration::from_secs(3);
    assert!(answers_within(&t, to, limit).is_some(), "{}", serve.log());
    let good = t
        .gateway
        .nft_ok(&["-s", "list", "table", "inet", TABLE], None);

    // 1. Deleted: traffic stops, then answers again.
    t.gateway.nft_ok(&["delete", "table", "inet", TABLE], None);
    assert!(hello(&t.client, to, Duration::from_millis(500)).is_err());
    let took = answers_within(&t, to, limit);
    assert!(took.is_some(), "not back within 3 s:\n{}", serve.log());
    eprintln!("deleted table: traffic back after {took:?}");
    assert!(
        common::wait_until(limit, || serve.log().contains("was deleted outside serve")),
        "{}",
        serve.log()
    );

    // 2. A rule added by hand (this one drops the route's packets): gone again.
    t.gateway
        .nft_ok(&["insert", "rule", "inet", TABLE, "f_web", "drop"], None);
    let start = Instant::now();
    let healed = common::wait_until(limit, || {
        t.gateway
            .nft_ok(&["-s", "list", "table", "inet", TABLE], None)
            == good
    });
    assert!(healed, "the hand rule stayed:\n{}", serve.log());
    eprintln!("hand rule: removed after {:?}", start.elapsed());
    assert!(answers_within(&t, to, limit).is_some());
    let foreign_now = t
        .gateway
        .nft_ok(&["-s", "list", "table", "inet", "foreign"], None);
    assert_eq!(foreign_now, foreign_before, "the foreign table changed");

    // 3. `flush ruleset` (an admin reloading /etc/nftables.conf): our table comes back, the
    //    foreign one does not (it is not ours to recreate).
    t.gateway.nft_ok(&["flush", "ruleset"], None);
    let took = answers_within(&t, to, limit);
    assert!(took.is_some(), "not back within 3 s:\n{}", serve.log());
    eprintln!("flush ruleset: traffic back after {took:?}");
    let tables = t.gateway.nft_ok(&["list", "tables"], None);
    assert_eq!(tables.trim(), format!("table inet {TABLE}"), "{tables}");
    let reconciles = serve
        .metrics()
        .into_iter()
        .find(|(n, _, _, _)| n == "smartproxy_serve_reconciles_total")
        .map_or(0.0, |(_, _, _, v)| v);
    assert!(
        reconciles >= 3.0,
        "{reconciles}:
{}",
        serve.log()
    );

    serve.signal("TERM");
    assert_eq!(
        serve.exit_code(Duration::from_secs(15)),
        0,
        "{}",
        serve.log()
    );
    assert!(!table_exists(&t.gateway, TABLE));
    // Its stderr is a file: no ANSI escapes in the log (issue 12, item 4).
    assert!(!serve.log().contains('\x1b'), "{:?}", serve.log());
}

// Issue 12: the CLI respects a running serve, and finds the table when none is named.
#[test]
fn apply_and_destroy_refuse_a_table_serve_owns_and_status_and_destroy_find_the_only_table() {
    use common::cli::{code, show, sp, stderr, stdout};
    if !common::netns_available("apply_and_destroy_refuse_a_table_serve_owns") {
        return;
    }
    let t = Topology::new("sko");
    let _b1 = Server::start(&t.b1, "b1", &format!("{}:8080", topo::B1_4));
    let b1 = format!("{}:8080", topo::B1_4);
    let served = write(
        &t,
        "served.toml",
        &(settings() + &route("web", 8000, "nftables", &[&b1], "")),
    );
    let other = write(
        &t,
        "other.toml",
        &(settings() + &route("web", 8001, "nftables", &[&b1], "")),
    );
    let served_path = served.to_string_lossy().into_owned();
    let other_path = other.to_string_lossy().into_owned();
    let mut serve = Serve::start(&t, &served, &[]);
    let listed = || {
        t.gateway
            .nft_ok(&["-s", "list", "table", "inet", TABLE], None)
    };
    let good = listed();

    let o = sp(&t, &["apply", &other_path, "--auto-approve"], &[]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        stderr(&o).contains("is owned by a running `smartproxy serve`")
            && stderr(&o).contains("nothing was applied")
            && stderr(&o).contains("--force"),
        "{}",
        show(&o)
    );
    assert_eq!(listed(), good, "apply changed serve's table");

    // Without a path or --table, destroy means serve's table, and refuses it.
    let o = sp(&t, &["destroy", "--auto-approve"], &[]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        stderr(&o).contains(&format!("table inet {TABLE} is owned")),
        "{}",
        show(&o)
    );
    assert!(stderr(&o).contains("nothing was destroyed"), "{}", show(&o));
    assert_eq!(listed(), good);
    let o = sp(&t, &["status", "--format", "json"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        stdout(&o).contains(&format!("\"table\": \"{TABLE}\"")),
        "{}",
        show(&o)
    );

    // --force: done, with a warning; serve then puts its own routes back.
    let o = sp(&t, &["destroy", "--auto-approve", "--force"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        stderr(&o).contains("puts its own routes back"),
        "{}",
        show(&o)
    );
    assert!(
        common::wait_until(Duration::from_secs(3), || table_exists(&t.gateway, TABLE)),
        "{}",
        serve.log()
    );

    serve.signal("TERM");
    assert_eq!(
        serve.exit_code(Duration::from_secs(15)),
        0,
        "{}",
        serve.log()
    );

    // No serve: the only smartproxy table here is found by name, a foreign one ignored.
    let edge = write(
        &t,
        "edge.toml",
        &("[settings]\ntable = \"edge\"\n".to_owned()
            + &route("web", 8002, "nftables", &[&b1], "")),
    );
    let edge_path = edge.to_string_lossy().into_owned();
    let o = sp(&t, &["apply", &edge_path, "--auto-approve"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    t.gateway.nft_ok(
        &["-f", "-"],
        Some("table inet foreign {\n\tchain c {\n\t}\n}\n"),
    );
    let o = sp(&t, &["status", "--format", "json"], &[]);
    assert!(stdout(&o).contains("\"table\": \"edge\""), "{}", show(&o));
    // A second smartproxy table: the name is needed, and both are listed.
    let o = sp(&t, &["apply", &served_path, "--auto-approve"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let o = sp(&t, &["destroy", "--auto-approve"], &[]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        stderr(&o).contains(&format!("(inet edge, inet {TABLE})"))
            && stderr(&o).contains("--table"),
        "{}",
        show(&o)
    );
    assert!(table_exists(&t.gateway, "edge") && table_exists(&t.gateway, TABLE));
    let o = sp(&t, &["destroy", "--table", "edge", "--auto-approve"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let o = sp(&t, &["destroy", "--auto-approve"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        stdout(&o).contains(&format!("Destroy complete! Table inet {TABLE} removed.")),
        "{}",
        show(&o)
    );
    assert!(table_exists(&t.gateway, "foreign"));
}
