//! Shared test helpers: the binary, and throw-away network namespaces for `nft`.
//!
//! Namespace tests need root and `nft`. Without them they skip with a loud message; under
//! `CI=true` a skip is a failure, so CI can never pass by skipping.
#![allow(dead_code)]

pub mod cli;
pub mod pki;
pub mod seal;
pub mod topo;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub fn smartproxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smartproxy"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs smartproxy with args from the repository root; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = smartproxy()
        .args(args)
        .current_dir(repo())
        .env("NO_COLOR", "1")
        .output()
        .expect("the smartproxy binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// True when namespace tests can run. Otherwise prints a loud skip, or panics under CI.
pub fn netns_available(test: &str) -> bool {
    if is_root() && have("ip") && have("nft") {
        return true;
    }
    skip(test, "needs root, `ip` and `nft`");
    false
}

/// Skips `test` loudly: a failure under `CI=true`; otherwise printed, and recorded in the
/// file `$SMARTPROXY_TEST_SKIPS` names (if set), so that `scripts/test` counts it in its
/// closing line (the harness itself counts a skipped test as passed).
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("SKIP IS FAILURE UNDER CI: {test} {why}");
    }
    eprintln!("\n!!!!!!!! SKIPPED {test}: {why} !!!!!!!!\n");
    if let Some(file) = std::env::var_os("SMARTPROXY_TEST_SKIPS") {
        use std::io::Write as _;
        let record = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file)
            .and_then(|mut f| writeln!(f, "{test}: {why}"));
        if let Err(e) = record {
            eprintln!("cannot record the skip of {test}: {e}");
        }
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("spt-{tag}-{}-{n}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip runs")
            .success();
        assert!(ok, "ip netns add {name}");
        Netns { name }
    }

    /// `ip netns exec NAME nft ARGS` with optional stdin.
    pub fn nft(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "nft"]).args(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("nft runs");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin is piped")
                .write_all(input.as_bytes())
                .expect("write to nft");
        }
        child.wait_with_output().expect("nft finishes")
    }

    /// Runs nft and panics with its stderr unless it succeeds; returns stdout.
    pub fn nft_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.nft(args, stdin);
        assert!(
            out.status.success(),
            "nft {args:?} failed in {}:\n{}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Loads a script from a file path (so nft error messages carry line numbers).
    pub fn load_file(&self, path: &Path, json: bool) -> Output {
        let p = path.to_string_lossy().into_owned();
        if json {
            self.nft(&["-j", "-f", &p], None)
        } else {
            self.nft(&["-f", &p], None)
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

impl Netns {
    /// `ip netns exec NAME CMD...`, waiting for it.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec runs")
    }

    /// Like `exec` but panics unless it succeeds; returns stdout.
    pub fn exec_ok(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} failed in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a long-running process in the namespace (kill it, or let `Topology` do it).
    pub fn spawn(&self, cmd: &[&str]) -> std::process::Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip netns exec spawns")
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created there stay in
    /// the namespace and can be used from any thread afterwards.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in_netns(&self.name, f)
    }
}

/// Runs `f` on a thread that has entered the network namespace `name`.
pub fn run_in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file opens");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread finishes")
}

/// The samples of a Prometheus text exposition, parsed by `prometheus-parse`:
/// (name, `route` label, `target` label, value).
pub fn scrape(text: &str) -> Vec<(String, Option<String>, Option<String>, f64)> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            let label = |k: &str| s.labels.get(k).map(str::to_owned);
            (s.metric.clone(), label("route"), label("target"), v)
        })
        .collect()
}

/// The body of `GET /metrics` from 127.0.0.1:`port`.
pub fn metrics_body(port: u16) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// Polls `f` every 50 ms until it holds (true) or `limit` passes (false).
pub fn wait_until(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

impl Netns {
    /// `nft list counter inet TABLE NAME` -> (packets, bytes).
    pub fn counter(&self, table: &str, name: &str) -> (u64, u64) {
        let text = self.nft_ok(&["list", "counter", "inet", table, name], None);
        let words: Vec<&str> = text.split_whitespace().collect();
        let after = |key: &str| -> u64 {
            let i = words
                .iter()
                .position(|w| *w == key)
                .unwrap_or_else(|| panic!("no {key} in {text}"));
            words[i + 1].parse().expect("a number")
        };
        (after("packets"), after("bytes"))
    }
}
