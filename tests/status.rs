//! `smartproxy status` against a real kernel (root, network namespaces): a kernel route's
//! counter and open connections as the three formats show them and as `nft` lists them; a
//! table that does not exist; a running serve answering on its socket; invalid route files.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::topo::{self, Server, Topology};
use common::Netns;
use smartproxy::status::{KernelCounts, RouteStatus, ServeCounts, Status, TargetStatus};

const TABLE: &str = "spstat";

fn routes() -> String {
    format!(
        "[settings]\ntable = \"{TABLE}\"\n\n[[routes]]\nname = \"web\"\n[routes.match]\nports = 8080\n[routes.action]\ntargets = [{{ host = \"{}\", port = 9090 }}]\n",
        topo::B1_4
    )
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `status ARGS` in the gateway; panics unless it exits 0; returns stdout.
fn status(t: &Topology, args: &[&str]) -> String {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    let o = t.smartproxy(&all);
    assert_eq!(o.status.code(), Some(0), "status {args:?}:\n{}", show(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn status_json(t: &Topology, path: &Path) -> Status {
    let text = status(t, &[path.to_str().expect("utf-8"), "--format", "json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("status JSON ({e}):\n{text}"))
}

fn web(s: &Status) -> &RouteStatus {
    s.routes
        .iter()
        .find(|r| r.name == "web")
        .unwrap_or_else(|| panic!("route `web` in {s:#?}"))
}

fn kernel(s: &Status) -> KernelCounts {
    web(s)
        .kernel
        .clone()
        .unwrap_or_else(|| panic!("kernel counts of `web` in {s:#?}"))
}

/// `nft list counter inet spstat c_web` -> (packets, bytes).
fn nft_counter(t: &Topology) -> (u64, u64) {
    t.gateway.counter(TABLE, "c_web")
}

/// A connection from the client through the route, held open until dropped.
fn hold(t: &Topology) -> TcpStream {
    let to: SocketAddr = format!("{}:8080", topo::GW4).parse().expect("address");
    t.client.run_in(move || {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("connects");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("greeting");
        assert!(line.starts_with("b1 "), "backend answers: {line:?}");
        s
    })
}

#[allow(clippy::cast_precision_loss)] // counters of a test stay far below 2^52
fn as_f64(n: u64) -> f64 {
    n as f64
}

#[test]
fn status_counts_packets_bytes_and_open_connections_of_a_kernel_route() {
    if !common::netns_available(
        "status_counts_packets_bytes_and_open_connections_of_a_kernel_route",
    ) {
        return;
    }
    let t = Topology::new("st");
    let _srv = Server::start(&t.b1, "b1", &format!("{}:9090", topo::B1_4));
    let path = t.apply(&routes());

    let fresh = status_json(&t, &path);
    assert_eq!(
        fresh.table, TABLE,
        "the table comes from the file's settings"
    );
    assert_eq!(fresh.serve, None);
    assert_eq!(
        web(&fresh).targets,
        vec![TargetStatus {
            target: "198.51.100.2:9090".into(),
            up: None
        }]
    );
    assert_eq!(web(&fresh).engine, "nftables");

    for _ in 0..5 {
        let greeting = topo::hello(
            &t.client,
            &format!("{}:8080", topo::GW4),
            Duration::from_secs(3),
        );
        assert!(
            greeting.is_ok_and(|g| g.starts_with("b1 ")),
            "route forwards"
        );
    }

    // The counter agrees with nft once the closing packets are through.
    let mut seen = None;
    let agreed = common::wait_until(Duration::from_secs(10), || {
        let before = nft_counter(&t);
        let k = kernel(&status_json(&t, &path));
        let after = nft_counter(&t);
        seen = Some((before, k.clone(), after));
        before == after && (k.packets, k.bytes) == before
    });
    assert!(
        agreed,
        "status agrees with nft (before, status, after): {seen:?}"
    );
    let k = kernel(&status_json(&t, &path));
    assert!(k.packets > 0 && k.bytes > 0, "traffic was counted: {k:?}");

    // One connection held open: active 1 (the five closed ones are in TIME_WAIT).
    let held = hold(&t);
    let mut last = None;
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            let k = kernel(&status_json(&t, &path));
            last = Some(k.clone());
            k.active == 1
        }),
        "one active connection: {last:?}"
    );

    // Without PATH: one entry per counter of the table named by --table.
    let by_table: Status =
        serde_json::from_str(&status(&t, &["--table", TABLE, "--format", "json"])).expect("JSON");
    assert_eq!(by_table.routes.len(), 1, "{by_table:#?}");
    assert_eq!(web(&by_table).engine, "nftables");
    assert_eq!(web(&by_table).kernel.as_ref().map(|k| k.active), Some(1));
    assert!(web(&by_table).targets.is_empty());

    drop(held);
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            let k = kernel(&status_json(&t, &path));
            last = Some(k.clone());
            k.active == 0
        }),
        "no active connection once it closed: {last:?}"
    );

    // Prometheus and text agree with JSON (nothing moves any more; retried if a late
    // packet slipped in between).
    let p = path.to_str().expect("utf-8");
    let mut last = String::new();
    let agree = common::wait_until(Duration::from_secs(10), || {
        let json = kernel(&status_json(&t, &path));
        let prom = status(&t, &[p, "--format", "prometheus"]);
        let samples = common::scrape(&prom);
        let value = |name: &str| {
            samples
                .iter()
                .find(|(n, r, _, _)| n == name && r.as_deref() == Some("web"))
                .map(|s| s.3)
        };
        last = format!("{json:?}\n{prom}");
        value("smartproxy_kernel_packets_total") == Some(as_f64(json.packets))
            && value("smartproxy_kernel_bytes_total") == Some(as_f64(json.bytes))
            && value("smartproxy_kernel_active_connections") == Some(as_f64(json.active))
            && !samples.iter().any(|s| s.0 == "smartproxy_target_up")
    });
    assert!(agree, "prometheus agrees with JSON:\n{last}");

    let text = status(&t, &[p]);
    assert!(text.starts_with(&format!("table inet {TABLE}")), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("a row for `web`:\n{text}"));
    let k = kernel(&status_json(&t, &path));
    assert!(
        row.contains("nftables")
            && row.contains(&k.packets.to_string())
            && row.contains(&k.bytes.to_string())
            && row.contains("198.51.100.2:9090"),
        "{text}"
    );
}

#[test]
fn status_of_a_missing_table_exits_0_and_says_so() {
    if !common::netns_available("status_of_a_missing_table_exits_0_and_says_so") {
        return;
    }
    let ns = Netns::new("stn");
    let state = tempfile::tempdir().expect("state dir");
    let run = |args: &[&str]| {
        let o = Command::new("ip")
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_smartproxy")])
            .arg("status")
            .args(args)
            .env("SMARTPROXY_STATE_DIR", state.path())
            .env("NO_COLOR", "1")
            .env_remove("SMARTPROXY_NFT")
            .stdin(Stdio::null())
            .output()
            .expect("smartproxy runs");
        assert_eq!(o.status.code(), Some(0), "status {args:?}:\n{}", show(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = run(&["--table", "nope"]);
    assert!(
        text.contains("table inet nope does not exist"),
        "says so: {text}"
    );
    let json: Status =
        serde_json::from_str(&run(&["--table", "nope", "--format", "json"])).expect("JSON");
    assert_eq!(
        json,
        Status {
            table: "nope".into(),
            serve: None,
            routes: Vec::new(),
            pending_confirm: None,
        }
    );
    let prom = run(&["--table", "nope", "--format", "prometheus"]);
    assert!(common::scrape(&prom).is_empty(), "no samples:\n{prom}");
    // The default table is `smartproxy`.
    assert!(run(&[]).contains("table inet smartproxy does not exist"));
}

/// A stand-in for `smartproxy serve` on the status socket: answers one `status` request.
fn fake_serve(listener: UnixListener, answer: String) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("status asks");
        let mut request = String::new();
        BufReader::new(&s).read_line(&mut request).expect("request");
        s.write_all(answer.as_bytes()).expect("answer");
        request
    })
}

#[test]
fn status_shows_what_a_running_serve_answers_on_its_socket() {
    let state = tempfile::tempdir().expect("state dir");
    let socket = state.path().join("edge.sock");
    let listener = UnixListener::bind(&socket).expect("bind the status socket");
    let serve_status = Status {
        table: "edge".into(),
        pending_confirm: None,
        serve: Some(smartproxy::status::ServeInfo {
            pid: 4242,
            nftables: "fallback".into(),
        }),
        routes: vec![RouteStatus {
            name: "sni".into(),
            engine: "userspace".into(),
            kernel: None,
            serve: Some(ServeCounts {
                connections_total: 3,
                active: 1,
                bytes_in: 10,
                bytes_out: 20,
                errors: 0,
                refused: 2,
                tls_handshakes: 3,
            }),
            targets: vec![TargetStatus {
                target: "198.51.100.2:443".into(),
                up: Some(false),
            }],
        }],
    };
    let run = |format: &str| {
        let handle = fake_serve(
            listener.try_clone().expect("listener"),
            serde_json::to_string(&serve_status).expect("JSON"),
        );
        let o = common::smartproxy()
            .args(["status", "--table", "edge", "--format", format])
            .env("SMARTPROXY_STATE_DIR", state.path())
            .env("NO_COLOR", "1")
            // Serve answers before the kernel is asked: an nft that fails proves it.
            .env("SMARTPROXY_NFT", "false")
            .stdin(Stdio::null())
            .output()
            .expect("smartproxy runs");
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        assert_eq!(handle.join().expect("fake serve"), "status\n");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let json: Status = serde_json::from_str(&run("json")).expect("JSON");
    assert_eq!(json, serve_status);
    let text = run("text");
    assert!(text.contains("serve pid 4242, nftables fallback"), "{text}");
    assert!(text.contains("198.51.100.2:443 DOWN"), "{text}");
    let samples = common::scrape(&run("prometheus"));
    let find = |name: &str| samples.iter().find(|s| s.0 == name).cloned();
    assert_eq!(
        find("smartproxy_serve_refused_total").map(|s| (s.1, s.3)),
        Some((Some("sni".into()), 2.0))
    );
    assert_eq!(
        find("smartproxy_target_up").map(|s| (s.2, s.3)),
        Some((Some("198.51.100.2:443".into()), 0.0))
    );
}

#[test]
fn status_without_a_serve_answering_reads_the_kernel_and_fails_when_nft_does() {
    let state = tempfile::tempdir().expect("state dir");
    // A socket nobody listens on any more (a serve that died) is no answer.
    drop(UnixListener::bind(state.path().join("edge.sock")).expect("bind"));
    let start = Instant::now();
    let o = common::smartproxy()
        .args(["status", "--table", "edge"])
        .env("SMARTPROXY_STATE_DIR", state.path())
        .env("SMARTPROXY_NFT", "false")
        .stdin(Stdio::null())
        .output()
        .expect("smartproxy runs");
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).starts_with("error: "),
        "{}",
        show(&o)
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "no wait for a dead serve"
    );
}

#[test]
fn status_of_invalid_route_files_prints_the_diagnostics_and_exits_1() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[routes]]\nname = \"web\"\n[routes.match]\nports = 8080\n[routes.action]\ntargets = [{ host = \"198.51.100.2\", port = 99999 }]\n",
    )
    .expect("write");
    let o = common::smartproxy()
        .args(["status", file.to_str().expect("utf-8")])
        .env("SMARTPROXY_STATE_DIR", dir.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("smartproxy runs");
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("error[") && stderr.contains("bad.toml:6:"),
        "{stderr}"
    );
    assert!(o.stdout.is_empty(), "{}", show(&o));
}

#[test]
fn a_slow_serve_is_given_up_after_about_two_seconds() {
    let state = tempfile::tempdir().expect("state dir");
    let listener = UnixListener::bind(state.path().join("edge.sock")).expect("bind");
    // Accepts and reads the request, then says nothing until the client gives up.
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("status asks");
        let mut buf = [0u8; 64];
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = s.read(&mut buf);
        let _ = s.read(&mut buf);
    });
    let start = Instant::now();
    let o = common::smartproxy()
        .args(["status", "--table", "edge", "--format", "json"])
        .env("SMARTPROXY_STATE_DIR", state.path())
        .env("SMARTPROXY_NFT", "false")
        .stdin(Stdio::null())
        .output()
        .expect("smartproxy runs");
    let took = start.elapsed();
    assert_eq!(o.status.code(), Some(1), "falls back to nft: {}", show(&o));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "gave up after {took:?}"
    );
    handle.join().expect("slow serve");
}
