//! serve under load on its side channels (issue 10, items 3, 7 and 8): 250 concurrent
//! `/metrics` scrapes share one kernel collection (at most one `nft` and one `conntrack`
//! at a time, threads and memory flat), the status socket is 0660 whatever the umask (and
//! in the group of `--socket-group`), and a reload of a file with thousands of errors logs
//! a bounded summary. Real serve processes in throw-away network namespaces (root).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{serve_args, Serve};
use common::Netns;

/// How serve is started: extra arguments and environment, and the umask it inherits.
struct Start<'a> {
    args: &'a [&'a str],
    env: &'a [(&'a str, String)],
    umask: &'a str,
}

/// A serve process in a namespace of its own (only `lo`).
impl Serve {
    fn spawn(ns: &Netns, routes: &Path, state: &Path, how: &Start<'_>) -> Serve {
        let metrics = 9100;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("umask {} && exec \"$@\"", how.umask), "sh"])
            .args(["ip", "netns", "exec", &ns.name, "env"])
            .args(how.env.iter().map(|(k, v)| format!("{k}={v}")))
            .arg(env!("CARGO_BIN_EXE_smartproxy"))
            .args(serve_args(routes, metrics))
            .args(["--health-interval", "0"])
            .args(how.args)
            .env("SMARTPROXY_STATE_DIR", state)
            .env("NO_COLOR", "1");
        Serve::from_command(
            cmd,
            routes.with_extension("stderr"),
            Some(&ns.name),
            metrics,
        )
    }

    /// Spawns serve and waits until it serves and its metrics answer.
    fn start(ns: &Netns, routes: &Path, state: &Path, how: &Start<'_>) -> Serve {
        let mut serve = Serve::spawn(ns, routes, state, how);
        serve.wait_up(Duration::from_secs(20));
        serve
    }

    /// A field of /proc/PID/status (kB for the Vm* ones).
    fn proc_status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("serve's /proc status");
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {text}"))
    }
}

fn netns(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
    ns
}

fn kernel_route(name: &str, port: u16) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\n[routes.match]\nports = {port}\n\
         [routes.action]\nforwarding_engine = \"nftables\"\n\
         targets = [{{ host = \"198.51.100.2\", port = 80 }}]\n"
    )
}

fn userspace_route(name: &str, port: u16) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\n[routes.match]\nports = {port}\naddresses = [\"127.0.0.1\"]\n\
         [routes.action]\nforwarding_engine = \"userspace\"\n\
         targets = [{{ host = \"127.0.0.1\", port = 9 }}]\n"
    )
}

/// A wrapper for `real` that counts how many copies of itself run at once (under flock, so
/// no overlap is missed): each start appends the number running to `DIR/NAME.log`.
fn counting_wrapper(dir: &Path, name: &str, real: &str, delay: &str) -> PathBuf {
    let path = dir.join(name);
    let (lock, count, log) = (
        dir.join(format!("{name}.lock")),
        dir.join(format!("{name}.count")),
        dir.join(format!("{name}.log")),
    );
    let (lock, count, log) = (lock.display(), count.display(), log.display());
    let script = format!(
        "#!/bin/sh\n\
         flock {lock} sh -c 'n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; echo $n >> {log}'\n\
         sleep {delay}\n\
         {real} \"$@\"\n\
         rc=$?\n\
         flock {lock} sh -c 'n=$(cat {count}); echo $((n-1)) > {count}'\n\
         exit $rc\n"
    );
    std::fs::write(&path, script).expect("wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// (most copies at once, runs) from a wrapper's log.
fn concurrency(dir: &Path, name: &str) -> (u64, usize) {
    let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let counts: Vec<u64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    (counts.iter().copied().max().unwrap_or(0), counts.len())
}

/// One `GET /metrics` with a timeout: the status code (0: no answer).
fn scrape_status(port: u16) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    ) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return 0;
    }
    let mut answer = Vec::new();
    if s.read_to_end(&mut answer).is_err() {
        return 0;
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

// See: issue 10, item 8 (250 concurrent scrapes: 224 threads, 80 children, 48 → 484 MB).
#[test]
fn concurrent_scrapes_share_one_kernel_collection_and_keep_threads_and_memory_flat() {
    if !common::netns_available("concurrent_scrapes_share_one_kernel_collection") {
        return;
    }
    let ns = netns("mlm");
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    // Slowed a little, so that concurrent scrapes meet a collection under way.
    let nft = counting_wrapper(&bin, "nft", "/usr/sbin/nft", "0.2");
    counting_wrapper(&bin, "conntrack", "/usr/sbin/conntrack", "0.1");
    let mut text = "[settings]\ntable = \"ml\"\n".to_owned();
    for i in 0..4u16 {
        text += &kernel_route(&format!("k{i}"), 8000 + i);
    }
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, text).expect("routes");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [
        ("SMARTPROXY_NFT", nft.display().to_string()),
        ("PATH", path),
    ];
    let serve = Serve::start(
        &ns,
        &routes,
        &dir.path().join("state"),
        &Start {
            args: &["--nftables", "on"],
            env: &env,
            umask: "022",
        },
    );
    assert!(
        ns.nft(&["list", "table", "inet", "ml"], None)
            .status
            .success(),
        "serve provisioned its kernel routes:\n{}",
        serve.log()
    );
    // From here on only scrapes run nft and conntrack.
    for name in ["nft", "conntrack"] {
        let _ = std::fs::remove_file(bin.join(format!("{name}.log")));
    }
    let rss_before = serve.proc_status("VmRSS");
    let threads_before = serve.proc_status("Threads");

    let port = serve.metrics;
    let started = Instant::now();
    let codes = common::run_in_netns(&ns.name, move || {
        let barrier = std::sync::Barrier::new(250);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..250)
                .map(|_| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        scrape_status(port)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .collect::<Vec<u16>>()
        })
    });
    let took = started.elapsed();
    let rss_peak = serve.proc_status("VmHWM");
    let threads_after = serve.proc_status("Threads");

    let ok = codes.iter().filter(|&&c| c == 200).count();
    let busy = codes.iter().filter(|&&c| c == 503).count();
    let (nft_most, nft_runs) = concurrency(&bin, "nft");
    let (ct_most, ct_runs) = concurrency(&bin, "conntrack");
    eprintln!(
        "250 scrapes in {took:?}: {ok} × 200, {busy} × 503; nft {nft_runs} runs (at most \
         {nft_most} at once), conntrack {ct_runs} ({ct_most}); RSS {rss_before} kB -> peak \
         {rss_peak} kB; threads {threads_before} -> {threads_after}"
    );
    assert_eq!(
        ok + busy,
        250,
        "every scrape is answered 200 or 503: {codes:?}\n{}",
        serve.log()
    );
    assert!(ok >= 225, "most scrapes get their metrics: {ok} of 250");
    assert!(nft_runs >= 1, "the scrapes read the kernel's counters");
    assert_eq!(nft_most, 1, "nft listings at once ({nft_runs} runs)");
    assert_eq!(ct_most, 1, "conntrack listings at once ({ct_runs} runs)");
    // At most one collection per second of scraping (and one under way when it started).
    let bound = usize::try_from(took.as_secs()).unwrap_or(usize::MAX) + 2;
    assert!(nft_runs <= bound, "{nft_runs} nft runs in {took:?}");
    assert!(
        rss_peak < rss_before + 50 * 1024,
        "RSS {rss_before} kB -> peak {rss_peak} kB"
    );
    assert!(
        threads_after <= threads_before + 4,
        "threads {threads_before} -> {threads_after}"
    );
    // The answers carry the kernel's counters.
    let body = common::run_in_netns(&ns.name, move || common::metrics_body(port));
    assert!(
        body.contains("smartproxy_kernel_packets_total{route=\"k0\"}"),
        "{body}"
    );
}

/// The mode bits and group of `path`.
fn mode_and_gid(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).expect("exists");
    (meta.permissions().mode() & 0o7777, meta.gid())
}

/// The GID of a group other than root's that /etc/group lists.
fn some_group() -> (String, u32) {
    let text = std::fs::read_to_string("/etc/group").expect("/etc/group");
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.to_owned();
            let gid = f.nth(1)?.parse().ok()?;
            Some((name, gid))
        })
        .find(|(_, gid)| *gid != 0)
        .expect("a group besides root")
}

// See: issue 10, item 3 (with `umask 000` the status socket was 0777).
#[test]
fn the_status_socket_is_0660_whatever_the_umask_and_in_the_socket_group() {
    if !common::netns_available("the_status_socket_is_0660_whatever_the_umask") {
        return;
    }
    let ns = netns("mls");
    let dir = tempfile::tempdir().expect("temp dir");
    let routes = dir.path().join("routes.toml");
    let text = "[settings]\ntable = \"mls\"\n".to_owned() + &userspace_route("u", 8100);
    std::fs::write(&routes, text).expect("routes");
    let state = dir.path().join("state");
    let socket = state.join("mls.sock");
    let no_env: [(&str, String); 0] = [];

    let serve = Serve::start(
        &ns,
        &routes,
        &state,
        &Start {
            args: &["--nftables", "off"],
            env: &no_env,
            umask: "000",
        },
    );
    let (mode, _) = mode_and_gid(&socket);
    assert_eq!(mode, 0o660, "socket mode {mode:o}");
    // It still answers `status`.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(env!("CARGO_BIN_EXE_smartproxy"))
        .args(["status", "--table", "mls", "--format", "json"])
        .env("SMARTPROXY_STATE_DIR", &state)
        .output()
        .expect("status runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"pid\""), "asked serve: {stdout}");
    drop(serve);

    let (group, gid) = some_group();
    let serve = Serve::start(
        &ns,
        &routes,
        &state,
        &Start {
            args: &["--nftables", "off", "--socket-group", &group],
            env: &no_env,
            umask: "000",
        },
    );
    assert_eq!(mode_and_gid(&socket), (0o660, gid), "socket of {group}");
    assert_eq!(
        mode_and_gid(&state),
        (0o710, gid),
        "the group may traverse the state directory"
    );
    drop(serve);

    // By number too; an unknown group stops serve before it starts.
    let serve = Serve::start(
        &ns,
        &routes,
        &state,
        &Start {
            args: &["--nftables", "off", "--socket-group", &gid.to_string()],
            env: &no_env,
            umask: "000",
        },
    );
    assert_eq!(mode_and_gid(&socket), (0o660, gid));
    drop(serve);
    let mut serve = Serve::spawn(
        &ns,
        &routes,
        &state,
        &Start {
            args: &["--nftables", "off", "--socket-group", "no-such-group-x"],
            env: &no_env,
            umask: "000",
        },
    );
    assert_eq!(serve.exit_code(Duration::from_secs(10)), 1);
    assert!(
        serve.log().contains("`no-such-group-x`"),
        "the error names the group:\n{}",
        serve.log()
    );
}

// See: issue 10, item 7 (a reload of a 500-route file added 27 MB of log).
#[test]
fn a_reload_of_a_file_with_5000_conflicts_logs_a_bounded_summary() {
    if !common::netns_available("a_reload_of_a_file_with_5000_conflicts") {
        return;
    }
    let ns = netns("mlr");
    let dir = tempfile::tempdir().expect("temp dir");
    let routes = dir.path().join("routes.toml");
    let good = "[settings]\ntable = \"mlr\"\n".to_owned() + &userspace_route("u", 8100);
    std::fs::write(&routes, &good).expect("routes");
    let no_env: [(&str, String); 0] = [];
    let mut serve = Serve::start(
        &ns,
        &routes,
        &dir.path().join("state"),
        &Start {
            args: &["--nftables", "off"],
            env: &no_env,
            umask: "022",
        },
    );
    let before = serve.log_len();

    // 5,000 pairs of kernel routes, each pair on a port of its own: 5,000 conflicts and
    // nothing else wrong (the mark mask is wide enough for 10,000 routes).
    let mut bad = "[settings]\ntable = \"mlr\"\nct_mark_mask = \"0xffff0000\"\n".to_owned()
        + &userspace_route("u", 8100);
    for i in 0..5000u16 {
        bad += &kernel_route(&format!("a{i}"), 10_000 + i);
        bad += &kernel_route(&format!("b{i}"), 10_000 + i);
    }
    std::fs::write(&routes, bad).expect("routes");
    let ok = Command::new("kill")
        .args(["-HUP", &serve.child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -HUP");
    let refused = common::wait_until(Duration::from_secs(60), || {
        serve.log().contains("the running configuration stays")
    });
    assert!(refused, "the reload was refused:\n{}", serve.log());
    let grown = serve.log_len() - before;
    assert!(grown < 100 * 1024, "the log grew by {grown} bytes");
    let log = serve.log();
    assert!(
        log.contains("and 4980 more") && log.contains("smartproxy check"),
        "the summary says how many more:\n{log}"
    );
    // serve keeps running on the old configuration.
    assert!(serve.child.try_wait().ok().flatten().is_none());
}
