//! `smartproxy serve` against HAProxy on the same namespace topology as the kernel bench:
//! TCP throughput, new connections per second, TLS-terminate handshakes per second, and
//! memory per idle connection at 5,000 idle connections.
//!
//! Run with `cargo bench --bench serve` as root, with `ip`, `iperf3`, `wrk`, `nginx`,
//! `openssl` and `haproxy` (Debian: `apt-get install iperf3 wrk nginx-light haproxy`).
//! Each round starts one engine in the gateway namespace, measures, and stops it; the
//! engines alternate which goes first, five rounds each; the figures are medians of the
//! per-round ratios. HAProxy's configuration is pinned below (`nbthread 2`, timeouts,
//! `maxconn`); a round where any client reports errors, or HAProxy logs an alert, is
//! reported as invalid.
//!
//! ```text
//!  client 192.0.2.2 --- 192.0.2.1 gateway (engine) 198.51.100.1 --- 198.51.100.2 backend
//!                                                             iperf3 :5201, nginx :80
//! ```

#[path = "common.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    have, iperf, median, nginx_conf, ok, smartproxy_bin, stop, topology, wait_port, wrk, Topo,
};

const ROUNDS: usize = 5;
const IDLE_CONNECTIONS: usize = 5000;
const IPERF_SECS: u32 = 4;
const WRK_SECS: u32 = 5;
const TLS_SECS: u32 = 5;
const PORTS: [u16; 4] = [7001, 7002, 7003, 7443];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Smartproxy,
    Haproxy,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Smartproxy => "smartproxy serve",
            Engine::Haproxy => "HAProxy",
        }
    }
}

fn routes_toml(dir: &Path) -> String {
    let route = |name: &str, port: u16, target: u16, extra: &str| {
        format!(
            "\n[[routes]]\nname = \"{name}\"\n[routes.match]\nports = {port}\naddresses = [\"192.0.2.1\"]\n\
             [routes.action]\nforwarding_engine = \"userspace\"\ntargets = [{{ host = \"198.51.100.2\", port = {target} }}]\n{extra}"
        )
    };
    let tls = format!(
        "[routes.action.tls]\nmode = \"terminate\"\ncertificate = {{ cert = \"{}\", key = \"{}\" }}\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    [
        route("iperf", 7001, 5201, ""),
        route("web", 7002, 80, ""),
        route("idle", 7003, 80, ""),
        route("tls", 7443, 80, &tls),
    ]
    .concat()
}

fn haproxy_cfg(dir: &Path) -> String {
    format!(
        "global\n  nbthread 2\n  maxconn 8000\n\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  maxconn 8000\n\n\
         frontend iperf\n  bind 192.0.2.1:7001\n  default_backend iperf\n\
         backend iperf\n  server b 198.51.100.2:5201\n\n\
         frontend web\n  bind 192.0.2.1:7002\n  default_backend web\n\
         frontend idle\n  bind 192.0.2.1:7003\n  default_backend web\n\
         frontend tls\n  bind 192.0.2.1:7443 ssl crt {}\n  default_backend web\n\
         backend web\n  server b 198.51.100.2:80\n",
        dir.join("combined.pem").display()
    )
}

/// Starts an engine in the gateway with a high file limit; returns it once it listens.
fn start(t: &Topo, engine: Engine, dir: &Path) -> Child {
    let command = match engine {
        Engine::Smartproxy => format!(
            "exec {} serve {} --watch-interval 0 --idle-timeout 600 2>{}",
            smartproxy_bin().display(),
            dir.join("routes.toml").display(),
            dir.join("serve.log").display()
        ),
        Engine::Haproxy => format!(
            "exec haproxy -db -f {} 2>{}",
            dir.join("haproxy.cfg").display(),
            dir.join("haproxy.log").display()
        ),
    };
    let child = t
        .gateway
        .cmd(&["sh", "-c", &format!("ulimit -n $(ulimit -Hn); {command}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("engine starts");
    for port in PORTS {
        wait_port(&t.gateway, port);
    }
    child
}

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

/// Full TLS handshakes per second: two `openssl s_time -new` clients at once.
fn handshakes(t: &Topo) -> (f64, u64) {
    let clients: Vec<Child> = (0..2)
        .map(|_| {
            t.client
                .cmd(&[
                    "openssl",
                    "s_time",
                    "-connect",
                    "192.0.2.1:7443",
                    "-new",
                    "-time",
                    &TLS_SECS.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl s_time")
        })
        .collect();
    let mut rate = 0.0;
    let mut errors = 0;
    for c in clients {
        let out = c.wait_with_output().expect("s_time output");
        let text = String::from_utf8_lossy(&out.stdout);
        // "1234 connections in 6 real seconds, 0 bytes read per connection"
        let parsed = text.lines().find_map(|l| {
            let (n, rest) = l.split_once(" connections in ")?;
            let secs = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            rest.contains("real seconds")
                .then(|| n.trim().parse::<f64>().ok().map(|n| n / secs))?
        });
        match parsed {
            Some(r) if out.status.success() => rate += r,
            _ => errors += 1,
        }
    }
    (rate, errors)
}

/// Opens `IDLE_CONNECTIONS` connections through the engine from the client namespace and
/// returns the engine's RSS growth per connection, in bytes.
fn idle_memory(t: &Topo, pid: u32) -> f64 {
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid);
    let exe = std::env::current_exe().expect("bench binary");
    let mut hold = t
        .client
        .cmd(&[
            "sh",
            "-c",
            &format!(
                "ulimit -n $(ulimit -Hn); exec {} --hold 192.0.2.1:7003 {IDLE_CONNECTIONS}",
                exe.display()
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("holder");
    let mut line = String::new();
    BufReader::new(hold.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("holder reports");
    assert_eq!(line.trim(), "ready", "holder: {line}");
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid);
    drop(hold.stdin.take());
    let _ = hold.wait();
    (after.saturating_sub(before) * 1024) as f64 / IDLE_CONNECTIONS as f64
}

/// `--hold ADDR N`: open N connections, say "ready", keep them until stdin closes.
fn hold(addr: &str, n: usize) {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect(addr) {
            Ok(c) => conns.push(c),
            Err(e) => {
                eprintln!("connect {addr}: {e}");
                std::process::exit(1);
            }
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

struct Round {
    throughput: f64,
    conns: f64,
    handshakes: f64,
    idle_bytes: f64,
    errors: u64,
}

fn measure(t: &Topo, engine: Engine, dir: &Path) -> Round {
    let child = start(t, engine, dir);
    let pid = child.id();
    let throughput = iperf(&t.client, "192.0.2.1", 7001, IPERF_SECS);
    std::thread::sleep(Duration::from_secs(2));
    let (conns, wrk_errors) = wrk(&t.client, "http://192.0.2.1:7002/", WRK_SECS);
    std::thread::sleep(Duration::from_secs(2));
    let (handshakes, tls_errors) = handshakes(t);
    let idle_bytes = idle_memory(t, pid);
    stop(child);
    let alerts = std::fs::read_to_string(dir.join("haproxy.log"))
        .map(|l| l.lines().filter(|l| l.contains("ALERT")).count() as u64)
        .unwrap_or(0);
    let errors = wrk_errors + tls_errors + if engine == Engine::Haproxy { alerts } else { 0 };
    eprintln!(
        "  {}: {throughput:.2} Gbit/s, {conns:.0} conn/s, {handshakes:.0} handshakes/s, {idle_bytes:.0} B/idle conn, errors {errors}",
        engine.name()
    );
    Round {
        throughput,
        conns,
        handshakes,
        idle_bytes,
        errors,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--hold") {
        let addr = args.get(i + 1).expect("--hold ADDR N");
        let n = args.get(i + 2).and_then(|n| n.parse().ok()).unwrap_or(1000);
        hold(addr, n);
        return;
    }
    let needed = ["ip", "iperf3", "wrk", "nginx", "openssl", "haproxy", "ss"];
    let missing: Vec<&str> = needed.iter().copied().filter(|c| !have(c)).collect();
    let root = ok(Command::new("id").arg("-u")).trim() == "0";
    if !root || !missing.is_empty() {
        eprintln!("serve bench not run: needs root and {needed:?}; missing {missing:?}");
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=bench.example.test",
        "-keyout",
        &d.join("key.pem").display().to_string(),
        "-out",
        &d.join("cert.pem").display().to_string(),
    ]));
    let combined = [
        std::fs::read_to_string(d.join("cert.pem")).expect("cert"),
        std::fs::read_to_string(d.join("key.pem")).expect("key"),
    ]
    .concat();
    std::fs::write(d.join("combined.pem"), combined).expect("combined pem");
    std::fs::write(d.join("routes.toml"), routes_toml(d)).expect("routes");
    std::fs::write(d.join("haproxy.cfg"), haproxy_cfg(d)).expect("haproxy.cfg");

    let mut t = topology();
    // The gateway is the engines' client toward the backend: tuned as one would tune a
    // proxy host (both engines alike), so that ports and TIME_WAIT do not decide the rate.
    t.gateway.exec_ok(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ]);
    let ndir = d.join("nginx");
    std::fs::create_dir_all(&ndir).expect("nginx dir");
    let conf = nginx_conf(&ndir);
    t.backend.spawn(&["iperf3", "-s", "-p", "5201"]);
    t.backend.spawn(&[
        "nginx",
        "-c",
        conf.to_str().expect("utf-8"),
        "-g",
        "daemon off;",
    ]);
    wait_port(&t.backend, 5201);
    wait_port(&t.backend, 80);

    let mut rounds: Vec<(Round, Round)> = Vec::new();
    for k in 0..ROUNDS {
        eprintln!("round {k}:");
        let order = if k % 2 == 0 {
            [Engine::Smartproxy, Engine::Haproxy]
        } else {
            [Engine::Haproxy, Engine::Smartproxy]
        };
        let mut sp = None;
        let mut ha = None;
        for engine in order {
            let r = measure(&t, engine, d);
            match engine {
                Engine::Smartproxy => sp = Some(r),
                Engine::Haproxy => ha = Some(r),
            }
            std::thread::sleep(Duration::from_secs(3));
        }
        rounds.push((sp.expect("smartproxy round"), ha.expect("haproxy round")));
    }

    let col = |f: fn(&Round) -> f64, which: usize| -> Vec<f64> {
        rounds
            .iter()
            .map(|(s, h)| if which == 0 { f(s) } else { f(h) })
            .collect()
    };
    let ratio =
        |f: fn(&Round) -> f64| -> Vec<f64> { rounds.iter().map(|(s, h)| f(s) / f(h)).collect() };
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.2}–{hi:.2}")
    };
    let errors: u64 = rounds.iter().map(|(s, h)| s.errors + h.errors).sum();
    println!(
        "machine: {} cores; HAProxy: {}",
        ok(&mut Command::new("nproc")).trim(),
        ok(Command::new("haproxy").arg("-v"))
            .lines()
            .next()
            .unwrap_or("?")
    );
    println!(
        "\n| Measurement | smartproxy serve | HAProxy | ratio (median of rounds) | range | Goal |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    type Get = fn(&Round) -> f64;
    let rows: [(&str, Get, &str, f64, bool); 4] = [
        (
            "TCP throughput (iperf3), Gbit/s",
            |r| r.throughput,
            "≥ 1.0×",
            1.0,
            true,
        ),
        (
            "new connections/s (wrk `Connection: close`)",
            |r| r.conns,
            "≥ 1.0×",
            1.0,
            true,
        ),
        (
            "TLS-terminate handshakes/s (`openssl s_time -new` ×2)",
            |r| r.handshakes,
            "≥ 0.8×",
            0.8,
            true,
        ),
        (
            "memory per idle connection at 5,000, bytes",
            |r| r.idle_bytes,
            "< 16 KiB",
            16.0 * 1024.0,
            false,
        ),
    ];
    for (what, get, goal, target, higher_is_better) in rows {
        let (s, h, r) = (median(&col(get, 0)), median(&col(get, 1)), ratio(get));
        let met = if higher_is_better {
            median(&r) >= target
        } else {
            s < target
        };
        println!(
            "| {what} | {s:.2} | {h:.2} | {:.2}× | {} | {goal}: {} |",
            median(&r),
            range(&r),
            if errors > 0 {
                "INVALID (errors)"
            } else if met {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    println!(
        "\nErrors over all rounds (wrk, s_time, HAProxy alerts): {errors}. Total bench time {:.0} s.",
        started.elapsed().as_secs_f64()
    );
}
