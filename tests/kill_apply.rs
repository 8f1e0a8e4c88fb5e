//! Issue 10, items 1 and 6: the kernel seam never commits half a change, never outlives
//! smartproxy, never hangs (root, network namespaces).
//!
//! - 100 × `kill -9` of `apply` during a 700-route change (some with an nft slowed by a
//!   wrapper): once the lock is free the table is exactly the old or the new one, and no
//!   commit follows (the ruleset generation stays put for 5 s).
//! - A hung nft: `apply --kernel-timeout 2` fails naming the command and the flag, leaves
//!   no process behind and frees the lock.
//! - serve with an nft that hangs after start-up: SIGTERM still exits within the drain
//!   timeout + 2 s.
//!
//! `KILL_APPLY_RUNS` (default 100) and `KILL_APPLY_SEED` (default: the clock; printed)
//! replay a run.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::cli::{self, s, show, Serve};
use common::Netns;

const TABLE: &str = "ka";
const WORKERS: usize = 4;

/// splitmix64: a seeded, printed, replayable sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` routes `{prefix}00001..` on ports `base + i`, each its own chains and counter.
fn routes(prefix: &str, base: u32, n: u32) -> String {
    let mut out = format!("[settings]\ntable = \"{TABLE}\"\nct_mark_mask = \"0xffff0000\"\n");
    for i in 1..=n {
        out.push_str(&format!(
            "\n[[routes]]\nname = \"{prefix}{i:05}\"\n[routes.match]\nports = {}\n[routes.action]\ntargets = [{{ host = \"198.51.100.2\", port = 9090 }}]\n",
            base + i
        ));
    }
    out
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// An executable shell script (written before any test thread forks, or in a directory
/// nothing else executes from: no "text file busy").
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = write(dir, name, &format!("#!/bin/sh\n{body}"));
    let ok = Command::new("chmod")
        .arg("+x")
        .arg(&p)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "chmod +x {}", p.display());
    p
}

/// `smartproxy ARGS` in `ns` with state in `state`, with `nft` as its nft (None: the one on
/// PATH) and no pause before the commit.
fn sp_cmd(ns: &Netns, state: &Path, args: &[&str], nft: Option<&Path>) -> Command {
    let nft = nft.map(|p| ("SMARTPROXY_NFT", s(p)));
    let mut cmd = cli::sp_cmd_in(ns, state, args, nft.as_slice());
    cmd.env_remove("SMARTPROXY_TEST_PAUSE_BEFORE_COMMIT_MS");
    cmd
}

fn apply_ok(ns: &Netns, state: &Path, routes: &Path) {
    let o = sp_cmd(ns, state, &["apply", "--auto-approve", s(routes)], None)
        .output()
        .expect("smartproxy runs");
    assert!(o.status.success(), "apply failed:\n{}", show(&o));
}

fn listing(ns: &Netns) -> String {
    ns.nft_ok(&["-s", "list", "table", "inet", TABLE], None)
}

fn generation(ns: &Netns) -> u32 {
    ns.run_in(smartproxy::kernel::generation::current)
        .expect("NFT_MSG_GETGEN answers")
}

/// Waits (at most `limit`) until the table's lock in `state` can be taken; whether it could.
fn lock_free(state: &Path, limit: Duration) -> bool {
    let path = state.join(format!("{TABLE}.lock"));
    common::wait_until(limit, || {
        let Ok(file) = File::options().read(true).open(&path) else {
            // No lock file: no smartproxy ever got as far as taking it.
            return !path.exists();
        };
        file.try_lock().is_ok()
    })
}

/// Pids of live processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()) && *pid != me)
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.contains(") Z ")
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .is_ok_and(|c| c.contains(needle))
        })
        .collect()
}

fn seed() -> u64 {
    std::env::var("KILL_APPLY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| u64::try_from(d.as_nanos() % (1 << 63)).unwrap_or(1))
        })
}

/// One namespace's share of the kill runs: (runs, runs that ended at the new table).
fn kill_runs(worker: usize, runs: usize, seed: u64, dir: &Path) -> Result<(usize, usize), String> {
    let ns = Netns::new(&format!("ka{worker}"));
    let state = tempfile::tempdir().expect("state dir");
    let state = state.path();
    let files = [dir.join("a.toml"), dir.join("b.toml")];
    let wrapper = dir.join(format!("slow-nft-{worker}.sh"));
    let delay = dir.join(format!("delay-{worker}"));
    std::fs::write(&delay, "0").expect("write delay");
    let inode = ns.exec_ok(&["readlink", "/proc/self/ns/net"]);
    std::fs::write(dir.join(format!("netns-{worker}")), inode.trim()).expect("write netns");
    // The old and the new table, as they list once each was reached from the other.
    apply_ok(&ns, state, &files[0]);
    apply_ok(&ns, state, &files[1]);
    let b = listing(&ns);
    apply_ok(&ns, state, &files[0]);
    let a = listing(&ns);
    assert_ne!(a, b);
    let listings = [a, b];
    let mut at = 0usize;
    let mut rng = Rng(seed ^ (worker as u64).wrapping_mul(0x1234_5678_9abc_def1));
    let mut reached_new = 0;
    for run in 0..runs {
        let to = 1 - at;
        let slow = rng.below(3) == 0;
        let delay_ms = rng.below(1000);
        let kill_ms = rng.below(2001);
        std::fs::write(
            &delay,
            format!("{}.{:03}", delay_ms / 1000, delay_ms % 1000),
        )
        .expect("write delay");
        let what = format!(
            "worker {worker} run {run} (seed {seed}): {} -> {}, kill at {kill_ms} ms, {}",
            ["a", "b"][at],
            ["a", "b"][to],
            if slow {
                format!("nft slowed by {delay_ms} ms")
            } else {
                "plain nft".to_owned()
            }
        );
        let mut child: Child = sp_cmd(
            &ns,
            state,
            &["apply", "--auto-approve", s(&files[to])],
            slow.then_some(wrapper.as_path()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smartproxy starts");
        std::thread::sleep(Duration::from_millis(kill_ms));
        // SIGKILL to smartproxy itself (`ip netns exec` exec'd it: same pid).
        let _ = child.kill();
        let _ = child.wait();
        if !lock_free(state, Duration::from_secs(30)) {
            return Err(format!("{what}: the lock stayed held 30 s after the kill"));
        }
        let generation_then = generation(&ns);
        std::thread::sleep(Duration::from_secs(5));
        let generation_now = generation(&ns);
        if generation_now != generation_then {
            return Err(format!(
                "{what}: a commit after the kill (generation {generation_then} -> {generation_now})"
            ));
        }
        let now = listing(&ns);
        match listings.iter().position(|l| *l == now) {
            Some(i) => {
                if i == to {
                    reached_new += 1;
                }
                at = i;
            }
            None => {
                let path = dir.join(format!("half-{worker}-{run}.txt"));
                let _ = std::fs::write(&path, &now);
                return Err(format!(
                    "{what}: the table is neither the old nor the new one ({} bytes, old {}, new {}; saved in {})",
                    now.len(),
                    listings[at].len(),
                    listings[to].len(),
                    path.display()
                ));
            }
        }
    }
    Ok((runs, reached_new))
}

#[test]
fn a_killed_apply_leaves_the_old_or_the_new_table_and_nothing_commits_after() {
    if !common::netns_available("a_killed_apply_leaves_the_old_or_the_new_table") {
        return;
    }
    let runs: usize = std::env::var("KILL_APPLY_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed = seed();
    eprintln!("kill_apply: {runs} runs, KILL_APPLY_SEED={seed}");
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path().to_path_buf();
    write(&dir, "a.toml", &routes("a", 10_000, 700));
    write(&dir, "b.toml", &routes("b", 20_000, 700));
    // The wrappers exist before any thread forks (no "text file busy"). Only a load into
    // our own namespace is slowed: the commit, not the normalisation in a throw-away one.
    for w in 0..WORKERS {
        let (delay, netns) = (
            dir.join(format!("delay-{w}")),
            dir.join(format!("netns-{w}")),
        );
        script(
            &dir,
            &format!("slow-nft-{w}.sh"),
            &format!(
                "if [ \"$1\" = \"-f\" ] && [ \"$(readlink /proc/self/ns/net)\" = \"$(cat {})\" ]; then sleep \"$(cat {})\"; fi\nexec nft \"$@\"\n",
                netns.display(),
                delay.display()
            ),
        );
    }
    let start = Instant::now();
    let results: Vec<Result<(usize, usize), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let share = runs / WORKERS + usize::from(w < runs % WORKERS);
                let dir = dir.clone();
                scope.spawn(move || kill_runs(w, share, seed, &dir))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("worker panicked".to_owned()))
            })
            .collect()
    });
    let mut done = 0;
    let mut new = 0;
    for r in &results {
        match r {
            Ok((n, reached)) => {
                done += n;
                new += reached;
            }
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!(
        "kill_apply: {done} runs in {:?}: {new} ended at the new table, {} at the old",
        start.elapsed(),
        done - new
    );
    assert_eq!(done, runs);
}

#[test]
fn a_hung_nft_times_out_names_the_command_and_frees_the_lock() {
    if !common::netns_available("a_hung_nft_times_out") {
        return;
    }
    let ns = Netns::new("kt");
    let state = tempfile::tempdir().expect("state dir");
    let dir = tempfile::tempdir().expect("temp dir");
    let routes = write(dir.path(), "r.toml", &routes("r", 10_000, 3));
    let mark = format!("1000.{}", std::process::id());
    let inode = ns.exec_ok(&["readlink", "/proc/self/ns/net"]);
    // Hangs in our namespace only (nft's normalisation in a throw-away one still works),
    // in a child of the wrapper: the whole process group must go.
    let hung = script(
        dir.path(),
        "hung-nft.sh",
        &format!(
            "if [ \"$1\" = \"-f\" ] && [ \"$(readlink /proc/self/ns/net)\" = \"{}\" ]; then sleep {mark}; exit 1; fi\nexec nft \"$@\"\n",
            inode.trim()
        ),
    );
    let start = Instant::now();
    let o = sp_cmd(
        &ns,
        state.path(),
        &[
            "apply",
            "--auto-approve",
            "--kernel-timeout",
            "2",
            s(&routes),
        ],
        Some(&hung),
    )
    .output()
    .expect("smartproxy runs");
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        took < Duration::from_secs(8),
        "took {took:?}:\n{}",
        show(&o)
    );
    assert!(
        err.contains(&format!("`{} -f -`", hung.display())),
        "names the command:\n{}",
        show(&o)
    );
    assert!(
        err.contains("within 2 s") && err.contains("--kernel-timeout"),
        "names the timeout and the flag:\n{}",
        show(&o)
    );
    // SIGKILLed with its group; it may take a moment to be gone from /proc.
    common::wait_until(Duration::from_secs(2), || processes_with(&mark).is_empty());
    assert!(
        processes_with(&mark).is_empty(),
        "the hung nft's sleep was left running: {:?}",
        processes_with(&mark)
    );
    assert!(
        processes_with(s(&hung)).is_empty(),
        "the wrapper was left running"
    );
    assert!(
        ns.nft(&["list", "table", "inet", TABLE], None)
            .status
            .code()
            != Some(0),
        "nothing was committed"
    );
    // The lock is free at once.
    let o = sp_cmd(
        &ns,
        state.path(),
        &["plan", "--lock-timeout", "0", s(&routes)],
        None,
    )
    .output()
    .expect("smartproxy runs");
    assert!(o.status.success(), "plan after the timeout:\n{}", show(&o));
}

impl Serve {
    /// Starts serve with `nft` as its nft (one that hangs once a marker exists); waits
    /// until it serves.
    fn start(ns: &Netns, state: &Path, routes: &Path, nft: &Path) -> Serve {
        let cmd = sp_cmd(
            ns,
            state,
            &[
                "serve",
                s(routes),
                "--nftables",
                "on",
                "--watch-interval",
                "0",
                "--drain-timeout",
                "1",
            ],
            Some(nft),
        );
        let serve = Serve::from_command(cmd, routes.with_extension("log"), Some(&ns.name), 0);
        let up = common::wait_until(Duration::from_secs(20), || serve.log().contains("serving"));
        assert!(up, "serve did not come up:\n{}", serve.log());
        serve
    }

    /// SIGTERM; how long until it exited (panics after 10 s).
    fn stop(&mut self) -> Duration {
        let start = Instant::now();
        self.signal("TERM");
        let exited = common::wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        assert!(exited, "serve ignored SIGTERM for 10 s:\n{}", self.log());
        start.elapsed()
    }
}

#[test]
fn serve_stops_within_its_drain_timeout_whatever_nft_does() {
    if !common::netns_available("serve_stops_within_its_drain_timeout") {
        return;
    }
    let ns = Netns::new("ks");
    let state = tempfile::tempdir().expect("state dir");
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("hang");
    let mark = format!("1001.{}", std::process::id());
    // `exec sleep`: the hung process is serve's own child, as a hung nft would be.
    let nft = script(
        dir.path(),
        "nft.sh",
        &format!(
            "if [ -e {} ]; then exec sleep {mark}; fi\nexec nft \"$@\"\n",
            marker.display()
        ),
    );
    let routes_path = write(dir.path(), "r.toml", &routes("r", 10_000, 3));
    let limit = Duration::from_secs(3); // --drain-timeout 1 + 2 s

    // 1. nft hangs while a reload changes the table: SIGTERM abandons the reload, and the
    //    removal (its lock held by the abandoned change) is given up in time.
    let mut serve = Serve::start(&ns, state.path(), &routes_path, &nft);
    assert!(ns
        .nft(&["list", "table", "inet", TABLE], None)
        .status
        .success());
    std::fs::write(&routes_path, routes("r", 10_000, 4)).expect("write routes");
    std::fs::write(&marker, "").expect("marker");
    serve.signal("HUP");
    let hung = common::wait_until(Duration::from_secs(5), || !processes_with(&mark).is_empty());
    assert!(hung, "the reload never reached nft:\n{}", serve.log());
    let took = serve.stop();
    assert!(took <= limit, "stopping took {took:?}:\n{}", serve.log());
    assert!(serve.log().contains("abandoned"), "{}", serve.log());
    let gone = common::wait_until(Duration::from_secs(2), || processes_with(&mark).is_empty());
    assert!(
        gone,
        "the hung nft outlived serve: {:?}",
        processes_with(&mark)
    );
    drop(serve);

    // 2. nft hangs only when serve removes its table on stop.
    std::fs::remove_file(&marker).expect("remove marker");
    let mut serve = Serve::start(&ns, state.path(), &routes_path, &nft);
    std::fs::write(&marker, "").expect("marker");
    let took = serve.stop();
    assert!(took <= limit, "stopping took {took:?}:\n{}", serve.log());
    assert!(
        serve.log().contains("did not remove table inet ka"),
        "{}",
        serve.log()
    );
    let gone = common::wait_until(Duration::from_secs(2), || processes_with(&mark).is_empty());
    assert!(
        gone,
        "the hung nft outlived serve: {:?}",
        processes_with(&mark)
    );
}

#[test]
fn the_confirm_watchdog_does_not_hold_the_lock() {
    if !common::netns_available("the_confirm_watchdog_does_not_hold_the_lock") {
        return;
    }
    let ns = Netns::new("kw");
    let state = tempfile::tempdir().expect("state dir");
    let dir = tempfile::tempdir().expect("temp dir");
    let routes = write(dir.path(), "r.toml", &routes("r", 10_000, 3));
    let sp = |args: &[&str]| {
        sp_cmd(&ns, state.path(), args, None)
            .output()
            .expect("smartproxy runs")
    };
    let o = sp(&[
        "apply",
        "--auto-approve",
        "--confirm-timeout",
        "60",
        s(&routes),
    ]);
    assert!(o.status.success(), "{}", show(&o));
    // The detached watchdog waits for the deadline; the lock is free meanwhile.
    assert!(lock_free(state.path(), Duration::ZERO), "the lock is held");
    let o = sp(&["plan", "--lock-timeout", "0", s(&routes)]);
    assert!(o.status.success(), "{}", show(&o));
    let o = sp(&["confirm"]);
    assert!(o.status.success(), "{}", show(&o));
}
