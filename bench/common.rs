//! What the benches share: network namespaces joined by veth pairs, commands run in them,
//! medians, and the traffic tools (iperf3, wrk against nginx). Included by `#[path]`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The table smartproxy's benches load.
pub const TABLE: &str = "smartproxy";

// ---- processes and namespaces ----------------------------------------------------------

pub fn smartproxy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smartproxy"))
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} does not run: {e}"))
}

pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

pub struct Netns {
    pub name: String,
    pub children: Vec<Child>,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("spb-{tag}-{}", std::process::id());
        ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            name,
            children: Vec::new(),
        };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    pub fn exec_ok(&self, args: &[&str]) -> String {
        ok(&mut self.cmd(args))
    }

    pub fn spawn(&mut self, args: &[&str]) {
        let child = self
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in namespace");
        self.children.push(child);
    }

    pub fn nft_file(&self, path: &Path) -> Duration {
        let t = Instant::now();
        self.exec_ok(&["nft", "-f", path.to_str().expect("utf-8 path")]);
        t.elapsed()
    }

    pub fn has_table(&self) -> bool {
        run(&mut self.cmd(&["nft", "list", "table", "inet", TABLE]))
            .status
            .success()
    }

    pub fn delete_table(&self) {
        if self.has_table() {
            self.exec_ok(&["nft", "delete", "table", "inet", TABLE]);
        }
    }

    /// `smartproxy ARGS` in this namespace with its own state directory; the wall time.
    pub fn smartproxy(&self, state: &Path, args: &[&str]) -> Duration {
        let bin = smartproxy_bin();
        let mut c = self.cmd(&[bin.to_str().expect("utf-8 path")]);
        c.args(args)
            .env("SMARTPROXY_STATE_DIR", state)
            .env("NO_COLOR", "1");
        let t = Instant::now();
        ok(&mut c);
        t.elapsed()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master then stops its workers (SIGKILL would orphan them).
        for c in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn link(a: &Netns, a_if: &str, b: &Netns, b_if: &str, tag: &str) {
    let (ta, tb) = (format!("spba{tag}"), format!("spbb{tag}"));
    ok(Command::new("ip").args(["link", "add", &ta, "type", "veth", "peer", "name", &tb]));
    ok(Command::new("ip").args(["link", "set", &ta, "netns", &a.name, "name", a_if]));
    ok(Command::new("ip").args(["link", "set", &tb, "netns", &b.name, "name", b_if]));
    a.exec_ok(&["ip", "link", "set", a_if, "up"]);
    b.exec_ok(&["ip", "link", "set", b_if, "up"]);
}

pub fn addr(ns: &Netns, dev: &str, cidr: &str) {
    let mut args = vec!["ip", "addr", "add", cidr, "dev", dev];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ns.exec_ok(&args);
}

// ---- statistics ------------------------------------------------------------------------

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

pub fn ms(v: &[Duration]) -> Vec<f64> {
    v.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

pub fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.0}–{hi:.0}")
}

pub fn nginx_conf(dir: &Path) -> PathBuf {
    let conf = dir.join("nginx.conf");
    let text = format!(
        "worker_processes 1;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  client_header_timeout 120s;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n\
           fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n\
           server {{\n    listen 80 backlog=4096;\n    listen [::]:80 backlog=4096;\n\
             location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(&conf, text).expect("write nginx.conf");
    conf
}

/// iperf3 from `client` for `secs` (after a 1 s warm-up that is not counted): Gbit/s.
pub fn iperf(client: &Netns, host: &str, port: u16, secs: u32) -> f64 {
    let out = client.exec_ok(&[
        "timeout",
        "30",
        "iperf3",
        "-J",
        "-c",
        host,
        "-p",
        &port.to_string(),
        "-t",
        &secs.to_string(),
        "-O",
        "1",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("iperf3 result")
        / 1e9
}

/// Requests per second and socket errors + non-2xx responses reported by wrk.
pub fn wrk(client: &Netns, url: &str, secs: u32) -> (f64, u64) {
    let out = client.exec_ok(&[
        "timeout",
        "60",
        "wrk",
        "-t2",
        "-c50",
        &format!("-d{secs}s"),
        "-H",
        "Connection: close",
        url,
    ]);
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("wrk output without Requests/sec:\n{out}"));
    let mut errors = 0u64;
    for l in out.lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    (rps, errors)
}

pub fn wait_port(ns: &Netns, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = run(&mut ns.cmd(&["ss", "-Hltn", &format!("sport = :{port}")]));
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port} in {}", ns.name);
}

/// client 192.0.2.2 — 192.0.2.1 gateway 198.51.100.1 — 198.51.100.2 backend (and the
/// 2001:db8:c::/64, 2001:db8:1::/64 twins).
pub struct Topo {
    pub client: Netns,
    pub gateway: Netns,
    pub backend: Netns,
}

pub fn topology() -> Topo {
    let client = Netns::new("cl");
    let gateway = Netns::new("gw");
    let backend = Netns::new("be");
    let pid = std::process::id() % 100_000;
    link(&client, "eth0", &gateway, "c0", &format!("c{pid}"));
    link(&backend, "eth0", &gateway, "b0", &format!("b{pid}"));
    addr(&client, "eth0", "192.0.2.2/24");
    addr(&client, "eth0", "2001:db8:c::2/64");
    addr(&gateway, "c0", "192.0.2.1/24");
    addr(&gateway, "c0", "2001:db8:c::1/64");
    addr(&gateway, "b0", "198.51.100.1/26");
    addr(&gateway, "b0", "2001:db8:1::1/64");
    addr(&backend, "eth0", "198.51.100.2/26");
    addr(&backend, "eth0", "2001:db8:1::2/64");
    client.exec_ok(&["ip", "route", "add", "default", "via", "192.0.2.1"]);
    client.exec_ok(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:c::1",
    ]);
    backend.exec_ok(&["ip", "route", "add", "default", "via", "198.51.100.1"]);
    backend.exec_ok(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:1::1",
    ]);
    gateway.exec_ok(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    client.exec_ok(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ]);
    backend.exec_ok(&["sysctl", "-qw", "net.core.somaxconn=4096"]);
    Topo {
        client,
        gateway,
        backend,
    }
}

/// Stops an engine: SIGTERM, up to 10 s to exit (it drains), then SIGKILL.
pub fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
