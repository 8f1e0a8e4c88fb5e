//! A confirm window that cannot be lost silently (issue 10, item 5), against a real kernel
//! (root, network namespaces): a killed watchdog is reported by status, plan and apply and
//! ended by `confirm` or `rollback`; deleting the state directory still rolls back at the
//! deadline; a confirm timeout under 5 s is a usage error.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{code, our_table, route, s, show, sp, stderr, stdout};
use common::topo::{self, Topology};

/// What status, plan and apply say once the watchdog is gone.
const NOTICE: &str = "pending confirm for table inet smartproxy, watchdog not running: run `smartproxy confirm` to keep or `smartproxy rollback` to restore";

/// Route files outside the state directory (one test deletes that): one route, two routes.
struct Files {
    _dir: tempfile::TempDir,
    one: PathBuf,
    two: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = route("web", 80, topo::B1_4, 9090);
    let two = format!("{one}{}", route("api", 81, topo::B2_4, 9090));
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write routes");
        p
    };
    Files {
        one: write("one.toml", &one),
        two: write("two.toml", &two),
        _dir: dir,
    }
}

fn apply_ok(t: &Topology, args: &[&str]) {
    let mut all = vec!["apply", "--auto-approve"];
    all.extend_from_slice(args);
    let o = sp(t, &all, &[]);
    assert_eq!(code(&o), 0, "apply {args:?}:\n{}", show(&o));
}

/// `status --format json`'s `pending_confirm` (JSON null when none), and status's stderr.
fn pending(t: &Topology) -> (serde_json::Value, String) {
    let o = sp(t, &["status", "--format", "json"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status JSON");
    (json["pending_confirm"].clone(), stderr(&o))
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit(") ").next().is_some_and(|r| r.starts_with('Z'))
    })
}

/// `apply --confirm-timeout 30` of `two` over `one`, then `kill -9` of its watchdog.
/// Returns the table before and after the apply.
fn apply_then_kill_the_watchdog(t: &Topology, f: &Files) -> (String, String) {
    apply_ok(t, &[s(&f.one)]);
    let before = our_table(t).expect("table");
    apply_ok(t, &["--confirm-timeout", "30", s(&f.two)]);
    let applied = our_table(t).expect("table");
    assert!(applied.contains("f_api"), "{applied}");

    let (p, err) = pending(t);
    assert_eq!(p["watchdog_running"], true, "{p}");
    assert!(
        err.contains("pending confirm for table inet smartproxy: rolled back in"),
        "{err}"
    );
    let pid = p["watchdog_pid"].as_u64().expect("the watchdog's pid");
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    assert!(
        common::wait_until(Duration::from_secs(5), || gone(pid)),
        "watchdog {pid} is gone"
    );

    // status, plan and apply each tell, and apply changes nothing.
    let (p, err) = pending(t);
    assert_eq!(p["watchdog_running"], false, "{p}");
    assert_eq!(p["notice"], NOTICE, "{p}");
    assert!(err.contains(NOTICE), "status:\n{err}");
    let o = sp(t, &["plan", s(&f.one)], &[]);
    assert_eq!(code(&o), 0, "plan still plans:\n{}", show(&o));
    assert!(stderr(&o).contains(NOTICE), "plan:\n{}", show(&o));
    assert!(stdout(&o).contains("api"), "{}", show(&o));
    let o = sp(t, &["apply", "--auto-approve", s(&f.one)], &[]);
    assert_eq!(code(&o), 1, "apply is refused:\n{}", show(&o));
    assert!(stderr(&o).contains(NOTICE), "apply:\n{}", show(&o));
    assert!(stderr(&o).contains("nothing was applied"), "{}", show(&o));
    assert_eq!(our_table(t).as_deref(), Some(applied.as_str()), "unchanged");
    (before, applied)
}

#[test]
fn a_killed_watchdog_is_reported_and_rollback_restores_the_previous_table() {
    if !common::netns_available(
        "a_killed_watchdog_is_reported_and_rollback_restores_the_previous_table",
    ) {
        return;
    }
    let t = Topology::new("wk");
    let f = files();
    let (before, _) = apply_then_kill_the_watchdog(&t, &f);

    let o = sp(&t, &["rollback"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(
        our_table(&t).as_deref(),
        Some(before.as_str()),
        "exactly as before"
    );
    let o = sp(&t, &["rollback"], &[]);
    assert_eq!(code(&o), 1, "nothing left to roll back:\n{}", show(&o));
    assert!(stderr(&o).contains("nothing to roll back"), "{}", show(&o));
    let o = sp(&t, &["confirm"], &[]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        stderr(&o).contains("table inet smartproxy was rolled back by `smartproxy rollback`"),
        "{}",
        show(&o)
    );
    let (p, err) = pending(&t);
    assert!(p.is_null(), "{p}");
    assert!(!err.contains("pending confirm"), "{err}");
    // The applied record went back too: no drift, nothing to do.
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f.one)], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(!stderr(&o).contains("pending confirm"), "{}", show(&o));
}

#[test]
fn a_killed_watchdog_can_still_be_confirmed() {
    if !common::netns_available("a_killed_watchdog_can_still_be_confirmed") {
        return;
    }
    let t = Topology::new("wc");
    let f = files();
    let (before, applied) = apply_then_kill_the_watchdog(&t, &f);

    let o = sp(&t, &["confirm"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(our_table(&t).as_deref(), Some(applied.as_str()), "kept");
    let (p, _) = pending(&t);
    assert!(p.is_null(), "{p}");
    let o = sp(&t, &["rollback"], &[]);
    assert_eq!(code(&o), 1, "nothing pending:\n{}", show(&o));
    assert_eq!(our_table(&t).as_deref(), Some(applied.as_str()), "kept");
    // Later applies work again.
    apply_ok(&t, &[s(&f.one)]);
    assert_eq!(our_table(&t).as_deref(), Some(before.as_str()));
}

#[test]
fn deleting_the_state_directory_still_rolls_back_at_the_deadline() {
    if !common::netns_available("deleting_the_state_directory_still_rolls_back_at_the_deadline") {
        return;
    }
    let t = Topology::new("wd");
    let f = files();
    apply_ok(&t, &[s(&f.one)]);
    let before = our_table(&t).expect("table");
    apply_ok(&t, &["--confirm-timeout", "5", s(&f.two)]);
    let at = Instant::now();
    assert!(our_table(&t).is_some_and(|x| x.contains("f_api")));

    // `rm -rf` of the state directory. The watchdog may write its record back while the
    // directory is being emptied ("Directory not empty"): delete again, as a user would.
    assert!(
        common::wait_until(Duration::from_secs(2), || {
            std::fs::remove_dir_all(t.state.path()).is_ok()
        }),
        "rm -rf the state directory"
    );
    // The watchdog writes its record back: the window stays visible and blocks applies.
    assert!(
        common::wait_until(Duration::from_secs(2), || {
            t.state.path().join("smartproxy.pending").exists()
        }),
        "the pending record is back"
    );
    let (p, _) = pending(&t);
    assert_eq!(p["watchdog_running"], true, "{p}");
    let o = sp(&t, &["apply", "--auto-approve", s(&f.one)], &[]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        our_table(&t).is_some_and(|x| x.contains("f_api")),
        "not rolled back before the deadline"
    );

    assert!(
        common::wait_until(Duration::from_secs(9), || our_table(&t).as_deref()
            == Some(before.as_str())),
        "rolled back after the 5 s deadline (took {:?}): {:?}",
        at.elapsed(),
        our_table(&t)
    );
    assert!(at.elapsed() >= Duration::from_secs(4), "{:?}", at.elapsed());
    let o = sp(&t, &["confirm"], &[]);
    assert_eq!(code(&o), 1, "too late:\n{}", show(&o));
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f.one)], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
}

#[test]
fn a_confirm_timeout_under_five_seconds_is_a_usage_error() {
    if !common::netns_available("a_confirm_timeout_under_five_seconds_is_a_usage_error") {
        return;
    }
    let t = Topology::new("wt");
    let f = files();
    for secs in ["0", "4"] {
        let o = sp(
            &t,
            &[
                "apply",
                "--auto-approve",
                "--confirm-timeout",
                secs,
                s(&f.one),
            ],
            &[],
        );
        assert_eq!(code(&o), 1, "{secs}:\n{}", show(&o));
        assert!(stderr(&o).contains("at least 5"), "{}", show(&o));
        assert!(our_table(&t).is_none(), "nothing applied with {secs}");
        assert!(!t.state.path().join("smartproxy.pending").exists());
    }
    apply_ok(&t, &["--confirm-timeout", "5", s(&f.one)]);
    assert!(our_table(&t).is_some(), "5 is accepted");
    let o = sp(&t, &["confirm"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
}
