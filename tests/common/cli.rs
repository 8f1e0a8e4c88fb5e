//! Running smartproxy from the tests: one-shot commands in a namespace, their output, the
//! route snippets they are fed, and a `serve` process with its stderr in a file.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::topo::Topology;
use super::Netns;

/// `smartproxy ARGS` in `ns` with its state in `state`: no colour, an empty boot
/// configuration (the host's own must not leak into the warnings), no SSH session, the nft
/// on PATH, stdin from /dev/null, plus `env`. `ip netns exec` execs smartproxy, so the
/// child's pid is smartproxy's.
pub fn sp_cmd_in(ns: &Netns, state: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    sp_cmd_via(ns, &[], state, args, env)
}

/// Like [`sp_cmd_in`], with smartproxy started by `wrapper` (say a shell that sets a umask
/// and `exec "$0" "$@"`), which gets smartproxy's path and `args` as its arguments.
pub fn sp_cmd_via(
    ns: &Netns,
    wrapper: &[&str],
    state: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .args(wrapper)
        .arg(env!("CARGO_BIN_EXE_smartproxy"))
        .args(args)
        .env("SMARTPROXY_STATE_DIR", state)
        .env("NO_COLOR", "1")
        .env("SMARTPROXY_BOOT_CONF", "/dev/null")
        .env_remove("SSH_CONNECTION")
        .env_remove("SMARTPROXY_NFT")
        .current_dir(super::repo())
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs [`sp_cmd_in`] to the end.
pub fn sp_in(ns: &Netns, state: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    sp_cmd_in(ns, state, args, env)
        .output()
        .expect("smartproxy runs")
}

/// [`sp_cmd_in`] in the topology's gateway with the topology's state directory.
pub fn sp_cmd(t: &Topology, args: &[&str], env: &[(&str, &str)]) -> Command {
    sp_cmd_in(&t.gateway, t.state.path(), args, env)
}

/// Runs [`sp_cmd`] to the end.
pub fn sp(t: &Topology, args: &[&str], env: &[(&str, &str)]) -> Output {
    sp_cmd(t, args, env).output().expect("smartproxy runs")
}

/// The exit code (-1: killed by a signal).
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit status, stdout and stderr, for an assertion message.
pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `nft -s list table inet smartproxy` in the gateway; `None` when there is no table.
pub fn our_table(t: &Topology) -> Option<String> {
    let out = t
        .gateway
        .nft(&["-s", "list", "table", "inet", "smartproxy"], None);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One route forwarding tcp `port` to `target`:`target_port`.
pub fn route(name: &str, port: u32, target: &str, target_port: u32) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\n[routes.match]\nports = {port}\n[routes.action]\ntargets = [{{ host = \"{target}\", port = {target_port} }}]\n"
    )
}

/// The arguments every test's serve starts with: `serve ROUTES`, metrics on
/// 127.0.0.1:`metrics`, no file watching.
pub fn serve_args(routes: &Path, metrics: u16) -> Vec<String> {
    vec![
        "serve".to_owned(),
        routes.to_str().expect("utf-8").to_owned(),
        "--metrics".to_owned(),
        format!("127.0.0.1:{metrics}"),
        "--watch-interval".to_owned(),
        "0".to_owned(),
    ]
}

/// A running serve with its stderr in a file; killed on drop.
pub struct Serve {
    pub child: Child,
    /// Where its stderr goes.
    pub stderr: PathBuf,
    /// The network namespace it runs in (`None`: this one).
    pub ns: Option<String>,
    /// Its metrics port on 127.0.0.1 (0: none).
    pub metrics: u16,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// Spawns `cmd` with stdin and stdout from and to /dev/null and stderr into `stderr`.
    pub fn from_command(
        mut cmd: Command,
        stderr: PathBuf,
        ns: Option<&str>,
        metrics: u16,
    ) -> Serve {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        Serve {
            child: cmd.spawn().expect("serve starts"),
            stderr,
            ns: ns.map(str::to_owned),
            metrics,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.stderr).map_or(0, |m| m.len())
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig}");
    }

    /// Whether 127.0.0.1:`port` accepts a connection in serve's namespace.
    pub fn listens(&self, port: u16) -> bool {
        let connect = move || TcpStream::connect(("127.0.0.1", port)).is_ok();
        match &self.ns {
            Some(ns) => super::run_in_netns(ns, connect),
            None => connect(),
        }
    }

    /// Waits (at most 10 s) until serve listens on `port`.
    pub fn wait_for(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.listens(port) {
            assert!(
                Instant::now() < deadline,
                "serve does not listen on {port}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most `limit`) until serve says it serves (after provisioning the kernel
    /// routes) and its metrics answer; panics if it exits first.
    pub fn wait_up(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.log().contains("listeners=") && self.listens(self.metrics) {
                return;
            }
            assert!(
                self.child.try_wait().ok().flatten().is_none(),
                "serve exited:\n{}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "serve did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit; its code.
    pub fn exit_code(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "serve did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its metrics, parsed: (name, `route` label, `target` label, value).
    pub fn metrics(&self) -> Vec<(String, Option<String>, Option<String>, f64)> {
        let port = self.metrics;
        let body = match &self.ns {
            Some(ns) => super::run_in_netns(ns, move || super::metrics_body(port)),
            None => super::metrics_body(port),
        };
        super::scrape(&body)
    }
}
