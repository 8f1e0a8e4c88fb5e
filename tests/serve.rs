//! `smartproxy serve` with real processes on the loopback interface: certificates made
//! here (rcgen), TLS clients that verify them (rustls), plain and TLS backends that say who
//! they are. No root needed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::cli::{serve_args, Serve};
use common::pki::Pki;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

// ---------------------------------------------------------------- certificates

// ---------------------------------------------------------------- backends

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A backend that answers each connection's first line with `NAME got LINE` and closes.
struct Backend {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn answer<S: Read + Write>(name: &str, s: &mut S) {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while s.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let _ = writeln!(s, "{name} got {}", String::from_utf8_lossy(&line));
    let _ = s.flush();
}

/// A backend on a free loopback port that runs `handle` for each connection on its own
/// thread.
fn spawn_backend(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Backend {
    let handle = Arc::new(handle);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    thread::spawn(move || {
        for s in listener.incoming() {
            if flag.load(Ordering::Relaxed) {
                break;
            }
            let Ok(s) = s else { continue };
            let handle = handle.clone();
            thread::spawn(move || handle(s));
        }
    });
    Backend { port, stop }
}

fn backend(name: &'static str) -> Backend {
    spawn_backend(move |mut s| {
        answer(name, &mut s);
        let _ = s.shutdown(Shutdown::Both);
    })
}

/// A TLS backend with its own certificate; says which ALPN it agreed.
fn tls_backend(
    name: &'static str,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    alpn: &[&str],
) -> Backend {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server config");
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let config = Arc::new(config);
    spawn_backend(move |s| {
        let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, s);
        let _ = tls.conn.complete_io(&mut tls.sock);
        let alpn = tls
            .conn
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_else(|| "-".into());
        let label = format!("{name}[alpn={alpn}]");
        answer(&label, &mut tls);
        tls.conn.send_close_notify();
        let _ = tls.conn.complete_io(&mut tls.sock);
    })
}

// ---------------------------------------------------------------- serve

impl Serve {
    fn start(routes: &Path, wait_port: u16) -> Serve {
        Serve::start_with(routes, wait_port, &[])
    }

    fn start_with(routes: &Path, wait_port: u16, env: &[(&str, &Path)]) -> Serve {
        let metrics = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_smartproxy"));
        cmd.args(serve_args(routes, metrics))
            .args(["--hello-timeout", "3"])
            // Userspace only: these tests run on the host's loopback and never touch its
            // ruleset (tests/serve_kernel.rs covers the kernel side in namespaces).
            .args(["--nftables", "off"])
            .env("NO_COLOR", "1")
            .env(
                "SMARTPROXY_STATE_DIR",
                routes.parent().expect("a directory").join("state"),
            )
            .envs(env.iter().map(|(k, v)| (*k, *v)));
        let s = Serve::from_command(cmd, routes.with_extension("stderr"), None, metrics);
        s.wait_for(wait_port);
        s.wait_for(metrics);
        s
    }

    /// A metric by name and `route` label (NaN when there is none).
    fn metric(&self, name: &str, route: Option<&str>) -> f64 {
        self.metrics()
            .into_iter()
            .find(|(n, r, _, _)| n == name && r.as_deref() == route)
            .map_or(f64::NAN, |(_, _, _, v)| v)
    }
}

// ---------------------------------------------------------------- clients

/// A TLS client: sends `line`, returns what came back and the certificate it verified.
fn tls_get(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
    name: &str,
    line: &str,
) -> Result<(String, CertificateDer<'static>), String> {
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let conn =
        rustls::ClientConnection::new(config.clone(), server_name).map_err(|e| e.to_string())?;
    let sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    let mut reader = BufReader::new(&mut tls);
    reader.read_line(&mut out).map_err(|e| e.to_string())?;
    let cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no certificate")?;
    Ok((out.trim_end().to_owned(), cert))
}

fn plain_get(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(request).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

// ---------------------------------------------------------------- the tests

fn route(name: &str, port: u16, domains: &[&str], target: u16, tls: &str) -> String {
    let domains = if domains.is_empty() {
        String::new()
    } else {
        format!(
            "domains = [{}]\n",
            domains
                .iter()
                .map(|d| format!("\"{d}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "\n[[routes]]\nname = \"{name}\"\n[routes.match]\nports = {port}\naddresses = [\"127.0.0.1\"]\n{domains}\
         [routes.action]\nforwarding_engine = \"userspace\"\ntargets = [{{ host = \"127.0.0.1\", port = {target} }}]\n{tls}"
    )
}

fn terminate(stem: &str) -> String {
    format!(
        "[routes.action.tls]\nmode = \"terminate\"\ncertificate = {{ cert = \"{stem}.pem\", key = \"{stem}.key\" }}\n"
    )
}

#[test]
fn sni_routes_terminate_passthrough_default_and_unknown_names() {
    let pki = Pki::new();
    let (alpha_cert, _) = pki.leaf("alpha", &["alpha.example.test"]);
    let (beta_cert, _) = pki.leaf("beta", &["beta.example.test"]);
    let (wild_cert, _) = pki.leaf("wild", &["*.example.test"]);
    let (default_cert, _) = pki.leaf("default", &["127.0.0.1", "default.example.test"]);
    let (pass_cert, pass_key) = pki.leaf("pass", &["pass.example.test"]);
    let (a, b, w, d) = (
        backend("alpha"),
        backend("beta"),
        backend("wild"),
        backend("default"),
    );
    let p = tls_backend("pass", pass_cert.clone(), pass_key, &["h2", "http/1.1"]);
    let port = free_port();
    let mut text = String::new();
    text += &route(
        "alpha",
        port,
        &["alpha.example.test"],
        a.port,
        &terminate("alpha"),
    );
    text += &route(
        "beta",
        port,
        &["beta.example.test"],
        b.port,
        &terminate("beta"),
    );
    text += &route(
        "wild",
        port,
        &["*.example.test"],
        w.port,
        &terminate("wild"),
    );
    text += &route(
        "pass",
        port,
        &["pass.example.test"],
        p.port,
        "[routes.action.tls]\nmode = \"passthrough\"\n",
    );
    text += &route("fallback", port, &[], d.port, &terminate("default"));
    let file = pki.path("routes.toml");
    std::fs::write(&file, text).expect("write routes");
    let serve = Serve::start(&file, port);
    let client = pki.client(&["h2", "http/1.1"]);
    // Serve::start's probe connection closed without a ClientHello: that one is unrouted.
    thread::sleep(Duration::from_millis(200));
    let unrouted_before = serve.metric("smartproxy_serve_unrouted_total", None);

    let (got, cert) = tls_get(&client, port, "alpha.example.test", "one").expect("alpha");
    assert_eq!(got, "alpha got one");
    assert_eq!(cert, alpha_cert, "alpha's certificate");
    let (got, cert) = tls_get(&client, port, "beta.example.test", "two").expect("beta");
    assert_eq!(got, "beta got two");
    assert_eq!(cert, beta_cert, "beta's certificate");
    let (got, cert) = tls_get(&client, port, "api.example.test", "three").expect("wildcard");
    assert_eq!(got, "wild got three");
    assert_eq!(cert, wild_cert);
    // Passthrough: the backend's own certificate and ALPN reach the client untouched.
    let (got, cert) = tls_get(&client, port, "pass.example.test", "four").expect("passthrough");
    assert_eq!(got, "pass[alpn=h2] got four");
    assert_eq!(cert, pass_cert, "the backend's own certificate");
    // No SNI (rustls sends none for an IP address): the route without domains.
    let (got, cert) = tls_get(&client, port, "127.0.0.1", "five").expect("default");
    assert_eq!(got, "default got five");
    assert_eq!(cert, default_cert);
    // A name nobody claims goes to the default route too; its certificate does not match.
    assert!(tls_get(&client, port, "nobody.other.test", "six").is_err());

    let m = |name: &str, route: &str| serve.metric(name, Some(route));
    assert_eq!(m("smartproxy_serve_connections_total", "alpha"), 1.0);
    assert_eq!(m("smartproxy_serve_tls_handshakes_total", "beta"), 1.0);
    assert_eq!(m("smartproxy_serve_tls_handshakes_total", "pass"), 0.0);
    assert_eq!(m("smartproxy_serve_connections_total", "pass"), 1.0);
    assert_eq!(
        m("smartproxy_serve_bytes_in_total", "alpha"),
        4.0,
        "\"one\\n\""
    );
    // Counted once written to the client, which may read it a moment before.
    let want = "alpha got one\n".len() as f64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while m("smartproxy_serve_bytes_out_total", "alpha") != want {
        assert!(Instant::now() < deadline, "bytes out never reached {want}");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(m("smartproxy_serve_connections_total", "fallback"), 2.0);
    // The connection task ends a moment after the client has its answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    while m("smartproxy_serve_connections_active", "alpha") != 0.0 {
        assert!(Instant::now() < deadline, "alpha's connection never closed");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        serve.metric("smartproxy_serve_unrouted_total", None),
        unrouted_before,
        "every client found a route"
    );
}

/// One TLS-terminating route `alpha` for alpha.example.test in front of a backend: the
/// PKI, the backend (keep it alive), serve's port and the route file.
fn alpha_only() -> (Pki, Backend, u16, PathBuf) {
    let pki = Pki::new();
    pki.leaf("alpha", &["alpha.example.test"]);
    let a = backend("alpha");
    let port = free_port();
    let file = pki.path("routes.toml");
    let text = route(
        "alpha",
        port,
        &["alpha.example.test"],
        a.port,
        &terminate("alpha"),
    );
    std::fs::write(&file, text).expect("write");
    (pki, a, port, file)
}

#[test]
fn unknown_names_without_a_default_are_refused_and_counted() {
    let (pki, _a, port, file) = alpha_only();
    let serve = Serve::start(&file, port);
    let client = pki.client(&[]);
    assert!(tls_get(&client, port, "other.example.test", "x").is_err());
    // Garbage, and a ClientHello cut short, do not disturb anyone else.
    plain_get(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    plain_get(port, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]);
    let (got, _) = tls_get(&client, port, "alpha.example.test", "ok").expect("alpha still served");
    assert_eq!(got, "alpha got ok");
    let unrouted = serve.metric("smartproxy_serve_unrouted_total", None);
    assert!(
        unrouted >= 3.0,
        "unknown SNI, garbage and truncated hello counted: {unrouted}"
    );
}

#[test]
fn a_client_hello_in_one_byte_segments_still_routes() {
    let (pki, _a, port, file) = alpha_only();
    let _serve = Serve::start(&file, port);
    let client = pki.client(&[]);
    let mut conn = rustls::ClientConnection::new(
        client,
        ServerName::try_from("alpha.example.test").expect("name"),
    )
    .expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("hello bytes");
    assert!(hello.len() > 100);
    let mut sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_nodelay(true).expect("nodelay");
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
    for byte in &hello {
        sock.write_all(std::slice::from_ref(byte))
            .expect("one byte");
        thread::sleep(Duration::from_micros(300));
    }
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"slow\n").expect("request");
    let mut out = String::new();
    BufReader::new(&mut tls)
        .read_line(&mut out)
        .expect("answer");
    assert_eq!(out.trim_end(), "alpha got slow");
}

#[test]
fn redirects_answer_with_the_location() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        format!(
            "[[routes]]\nname = \"to-https\"\n[routes.match]\nports = {port}\naddresses = [\"127.0.0.1\"]\n\
             [routes.action]\ntype = \"redirect\"\n[routes.action.redirect]\nto = \"https://{{host}}{{path}}\"\nstatus = 308\n"
        ),
    )
    .expect("write");
    let _serve = Serve::start(&file, port);
    let answer = plain_get(
        port,
        b"GET /a/b?c=1 HTTP/1.1\r\nHost: www.example.test:8080\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\r\nLocation: https://www.example.test/a/b?c=1\r\n"),
        "{answer}"
    );
}

#[test]
fn reload_moves_a_route_and_an_invalid_file_keeps_the_old_one() {
    let pki = Pki::new();
    pki.leaf("alpha", &["alpha.example.test"]);
    let (old, new) = (backend("old"), backend("new"));
    let port = free_port();
    let file = pki.path("routes.toml");
    let write = |target: u16| {
        std::fs::write(
            &file,
            route(
                "alpha",
                port,
                &["alpha.example.test"],
                target,
                &terminate("alpha"),
            ),
        )
        .expect("write")
    };
    write(old.port);
    let serve = Serve::start(&file, port);
    let client = pki.client(&[]);
    let get = || tls_get(&client, port, "alpha.example.test", "x").map(|(g, _)| g);
    assert_eq!(get().as_deref(), Ok("old got x"));

    // A bounded client loop across a SIGHUP that moves the route (two clients, 12,500
    // requests each, at most 30 s): at least 20,000 requests, none fails, the ones after
    // the reload move.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let loop_client = client.clone();
            let flag = stop.clone();
            thread::spawn(move || {
                let (mut ok, mut failed, mut new_seen) = (0u32, Vec::new(), 0u32);
                while !flag.load(Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(30)
                    && ok + (failed.len() as u32) < 12_500
                {
                    match tls_get(&loop_client, port, "alpha.example.test", "x") {
                        Ok((g, _)) => {
                            ok += 1;
                            if g == "new got x" {
                                new_seen += 1;
                            }
                        }
                        Err(e) => failed.push(e),
                    }
                }
                (ok, failed, new_seen)
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(8));
    write(new.port);
    serve.signal("HUP");
    let (mut ok, mut failed, mut new_seen) = (0, Vec::new(), 0);
    for c in clients {
        let (o, f, n) = c.join().expect("client loop");
        ok += o;
        failed.extend(f);
        new_seen += n;
    }
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "reload under load: {ok} requests in {:?}, {} after the reload went to the new backend",
        started.elapsed(),
        new_seen
    );
    assert!(
        failed.is_empty(),
        "failed requests across the reload: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(ok >= 20_000 && new_seen > 0, "ok {ok}, new {new_seen}");
    assert_eq!(get().as_deref(), Ok("new got x"));

    // An invalid file: refused with file:line:col, the running routes stay.
    std::fs::write(&file, "[[routes]]\nname = \"Bad Name\"\n").expect("write");
    serve.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while serve.metric("smartproxy_serve_reload_failures_total", None) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "reload failure not counted:\n{}",
            serve.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get().as_deref(), Ok("new got x"));
    assert!(
        serve.log().contains("routes.toml:2:"),
        "the error names file and line:\n{}",
        serve.log()
    );
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let (_pki, _a, port, file) = alpha_only();
    let mut serve = Serve::start(&file, port);
    serve.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = serve.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop:\n{}",
            serve.log()
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}:\n{}", serve.log());
    assert!(
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err(),
        "nothing listens after the stop"
    );
}

#[test]
fn reencrypt_verifies_the_target_and_passes_alpn_on() {
    let pki = Pki::new();
    let (front_cert, _) = pki.leaf("front", &["app.example.test"]);
    let (back_cert, back_key) = pki.leaf("back", &["app.example.test"]);
    let back = tls_backend("back", back_cert.clone(), back_key, &["h2", "http/1.1"]);
    // A target whose certificate no trusted CA signed.
    let rogue_pki = Pki::new();
    let (rogue_cert, rogue_key) = rogue_pki.leaf("rogue", &["rogue.example.test"]);
    let rogue = tls_backend("rogue", rogue_cert, rogue_key, &[]);
    let port = free_port();
    let reencrypt = |stem: &str| {
        format!(
            "[routes.action.tls]\nmode = \"terminate-and-reencrypt\"\ncertificate = {{ cert = \"{stem}.pem\", key = \"{stem}.key\" }}\n"
        )
    };
    pki.leaf("rogue-front", &["rogue.example.test"]);
    let mut text = route(
        "app",
        port,
        &["app.example.test"],
        back.port,
        &reencrypt("front"),
    );
    text += &route(
        "rogue",
        port,
        &["rogue.example.test"],
        rogue.port,
        &reencrypt("rogue-front"),
    );
    let file = pki.path("routes.toml");
    std::fs::write(&file, text).expect("write");
    // The system roots, as OpenSSL would take them: here, the test CA only.
    let ca = pki.path("ca.pem");
    let serve = Serve::start_with(&file, port, &[("SSL_CERT_FILE", ca.as_path())]);

    let (got, cert) = tls_get(
        &pki.client(&["h2", "http/1.1"]),
        port,
        "app.example.test",
        "hi",
    )
    .expect("app");
    assert_eq!(cert, front_cert, "the client sees serve's certificate");
    assert_eq!(got, "back[alpn=h2] got hi", "re-encrypted, ALPN offered on");
    let (got, _) = tls_get(
        &pki.client(&["http/1.1"]),
        port,
        "app.example.test",
        "again",
    )
    .expect("app");
    assert_eq!(got, "back[alpn=http/1.1] got again");
    assert_ne!(back_cert, front_cert);

    // A target with an untrusted certificate is never talked to in clear.
    assert!(tls_get(&pki.client(&[]), port, "rogue.example.test", "secret").is_err());
    // Counted as the connection ends, a moment after the client saw it fail.
    let deadline = Instant::now() + Duration::from_secs(5);
    while serve.metric("smartproxy_serve_errors_total", Some("rogue")) != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the refused target is not counted as an error"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn slowloris_connections_leave_other_clients_served_within_bounded_memory() {
    let (pki, _a, port, file) = alpha_only();
    // The hello timeout (3 s here) is what ends a slowloris connection.
    let serve = Serve::start(&file, port);
    let client = pki.client(&[]);
    tls_get(&client, port, "alpha.example.test", "warm").expect("warm up");
    let before = rss_kib(serve.child.id());

    // 1,000 connections each sending one byte of a ClientHello per second, for 4 s.
    let mut slow: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(slow.len() >= 990, "opened {}", slow.len());
    let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00];
    let started = Instant::now();
    let mut served = 0;
    for second in 0..4 {
        for s in &mut slow {
            let _ = s.write_all(&hello[second..=second]);
        }
        let (got, _) = tls_get(&client, port, "alpha.example.test", "busy")
            .expect("another client is served meanwhile");
        assert_eq!(got, "alpha got busy");
        served += 1;
        let next = Duration::from_secs(second as u64 + 1);
        thread::sleep(next.saturating_sub(started.elapsed()));
    }
    let during = rss_kib(serve.child.id());
    assert_eq!(served, 4);
    assert!(
        during < before + 32 * 1024,
        "RSS grew from {before} KiB to {during} KiB"
    );
    drop(slow);
}

/// A backend that reads a PROXY v2 header, then a line; answers with the announced source.
fn proxy_protocol_backend() -> Backend {
    spawn_backend(|mut s| {
        let mut head = [0u8; 16];
        if s.read_exact(&mut head).is_err() || &head[..12] != b"\r\n\r\n\0\r\nQUIT\n" {
            let _ = s.write_all(b"no PROXY header\n");
            return;
        }
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).expect("payload");
        let source = match head[13] {
            0x11 => format!(
                "{}.{}.{}.{}:{}",
                payload[0],
                payload[1],
                payload[2],
                payload[3],
                u16::from_be_bytes([payload[8], payload[9]])
            ),
            other => format!("family {other:#x}"),
        };
        answer(&format!("pp from {source}"), &mut s);
    })
}

fn proxy_header(source: [u8; 4], source_port: u16, port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&source);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&source_port.to_be_bytes());
    h.extend_from_slice(&port.to_be_bytes());
    h
}

#[test]
fn proxy_protocol_v2_in_from_a_listed_balancer_and_out_to_the_target() {
    let dir = tempfile::tempdir().expect("dir");
    let pp = proxy_protocol_backend();
    let port = free_port();
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        format!(
            "[[routes]]\nname = \"front\"\n[routes.match]\nports = {port}\naddresses = [\"127.0.0.1\"]\n\
             [routes.action]\ntargets = [{{ host = \"127.0.0.1\", port = {} }}]\n\
             [routes.action.security]\nip_block_list = [\"192.0.2.66\"]\n\
             [routes.action.userspace]\nsend_proxy_protocol = true\naccept_proxy_protocol = [\"127.0.0.0/8\"]\n",
            pp.port
        ),
    )
    .expect("write");
    let serve = Serve::start(&file, port);

    let mut request = proxy_header([192, 0, 2, 77], 5555, port);
    request.extend_from_slice(b"hi\n");
    assert_eq!(
        plain_get(port, &request).trim_end(),
        "pp from 192.0.2.77:5555 got hi"
    );

    // The announced client is the one the security settings judge.
    let mut blocked = proxy_header([192, 0, 2, 66], 6666, port);
    blocked.extend_from_slice(b"hi\n");
    assert_eq!(plain_get(port, &blocked), "", "refused");
    assert_eq!(
        serve.metric("smartproxy_serve_refused_total", Some("front")),
        1.0
    );

    // From a listed balancer the header is required.
    let unrouted = serve.metric("smartproxy_serve_unrouted_total", None);
    assert_eq!(plain_get(port, b"no header, just words long enough\n"), "");
    assert_eq!(
        serve.metric("smartproxy_serve_unrouted_total", None),
        unrouted + 1.0
    );
}

#[test]
fn a_port_another_serve_holds_is_an_error_not_a_share() {
    let (_pki, _a, port, file) = alpha_only();
    let _first = Serve::start(&file, port);
    let second = |state: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_smartproxy"))
            .args(["serve", file.to_str().expect("utf-8")])
            .args(["--watch-interval", "0", "--nftables", "off"])
            .env("SMARTPROXY_STATE_DIR", state)
            .stdin(Stdio::null())
            .output()
            .expect("second serve runs");
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Another table's serve (its own state): the port is taken.
    let elsewhere = tempfile::tempdir().expect("dir");
    let stderr = second(elsewhere.path());
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")) && stderr.contains("in use"),
        "{stderr}"
    );
    // The same table's: found by its status socket before anything is bound.
    let stderr = second(&file.parent().expect("a directory").join("state"));
    assert!(
        stderr.contains("another smartproxy serve runs for table inet smartproxy"),
        "{stderr}"
    );
}

#[test]
fn reencrypt_trusts_a_per_route_ca_or_nobody_when_told_loudly() {
    let pki = Pki::new();
    pki.leaf(
        "front",
        &[
            "app.example.test",
            "lax.example.test",
            "strict.example.test",
        ],
    );
    let (back_cert, back_key) = pki.leaf("back", &["app.example.test"]);
    let back = tls_backend("back", back_cert, back_key, &[]);
    let rogue_pki = Pki::new();
    let (rogue_cert, rogue_key) = rogue_pki.leaf("rogue", &["rogue.example.test"]);
    let rogue = tls_backend("rogue", rogue_cert, rogue_key, &[]);
    let port = free_port();
    let tls = |extra: &str| {
        format!(
            "[routes.action.tls]\nmode = \"terminate-and-reencrypt\"\n\
             certificate = {{ cert = \"front.pem\", key = \"front.key\" }}\n{extra}"
        )
    };
    let mut text = route(
        "app",
        port,
        &["app.example.test"],
        back.port,
        &tls("ca = \"ca.pem\"\n"),
    );
    text += &route(
        "strict",
        port,
        &["strict.example.test"],
        rogue.port,
        &tls("ca = \"ca.pem\"\n"),
    );
    text += &route(
        "lax",
        port,
        &["lax.example.test"],
        rogue.port,
        &tls("insecure_skip_verify = true\n"),
    );
    let file = pki.path("routes.toml");
    std::fs::write(&file, text).expect("write");
    // The system roots do not know the test CA: only the route's `ca` does.
    let nowhere = pki.path("no-roots.pem");
    std::fs::write(&nowhere, "").expect("write");
    let serve = Serve::start_with(&file, port, &[("SSL_CERT_FILE", nowhere.as_path())]);
    let client = pki.client(&[]);

    let (got, _) = tls_get(&client, port, "app.example.test", "a").expect("per-route CA");
    assert_eq!(got, "back[alpn=-] got a");
    assert!(
        tls_get(&client, port, "strict.example.test", "b").is_err(),
        "a target the route's CA did not sign is refused"
    );
    let (got, _) = tls_get(&client, port, "lax.example.test", "c").expect("insecure route");
    assert_eq!(got, "rogue[alpn=-] got c");
    assert!(
        serve.log().contains("route=lax") && serve.log().contains("NOT verified"),
        "insecure_skip_verify is announced:\n{}",
        serve.log()
    );
}

/// Plain TCP: answers of every size arrive whole and then end, whether the target ends
/// first (its FIN may ride on its last data) or the client does (a half-close: the client
/// sends and shuts down, the target answers after the end).
#[test]
fn plain_tcp_answers_arrive_whole_whichever_side_ends_first() {
    let pattern = |n: usize| (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    // Reads a size line, writes that many bytes, closes.
    let sized = spawn_backend(move |mut s| {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while s.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let n: usize = String::from_utf8_lossy(&line).trim().parse().unwrap_or(0);
        let _ = s.write_all(&pattern(n));
    });
    // Reads to the client's end, answers with the byte count, closes.
    let counting = spawn_backend(|mut s| {
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let _ = write!(s, "{} bytes", all.len());
    });
    let dir = tempfile::tempdir().expect("dir");
    let (p1, p2) = (free_port(), free_port());
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        [
            route("sized", p1, &[], sized.port, ""),
            route("counting", p2, &[], counting.port, ""),
        ]
        .concat(),
    )
    .expect("write");
    let serve = Serve::start(&file, p1);
    let mut total = 0;
    for n in [0, 1, 100, 511, 512, 513, 4096, 65_535, 65_536, 300_000] {
        let mut s = TcpStream::connect(("127.0.0.1", p1)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        writeln!(s, "{n}").expect("write");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("the answer and its end");
        assert!(got == pattern(n), "{n} bytes asked, {} came", got.len());
        total += n;
    }
    for n in [1, 600, 200_000] {
        let mut s = TcpStream::connect(("127.0.0.1", p2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(&pattern(n)).expect("write");
        s.shutdown(Shutdown::Write).expect("half-close");
        let mut got = String::new();
        s.read_to_string(&mut got)
            .expect("the answer after the end");
        assert_eq!(got, format!("{n} bytes"));
    }
    let out = serve.metric("smartproxy_serve_bytes_out_total", Some("sized"));
    assert_eq!(out, total as f64, "bytes out of `sized`");
}
