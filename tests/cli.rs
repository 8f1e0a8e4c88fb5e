//! The command line end to end: examples compile and nft accepts them, output is
//! byte-stable, hostile text cannot inject, only our table is touched, usage errors exit 1,
//! checked-in completions are current.

mod common;

use std::path::{Path, PathBuf};

use common::{run, Netns};

/// Every route file and directory in `examples/`.
fn examples() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(common::repo().join("examples"))
        .expect("examples/ exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml")
                || p.is_dir() && p.join("00-settings.toml").exists()
        })
        .collect();
    out.sort();
    assert!(out.len() >= 7, "examples/ holds the scenarios of the issue");
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(common::repo())
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_example_checks_without_findings() {
    for ex in examples() {
        let (code, out, _) = run(&["check", "--deny-warnings", &rel(&ex)]);
        assert_eq!(code, 0, "{}: {out}", ex.display());
        assert!(out.starts_with("ok: "), "{}: {out}", ex.display());
    }
}

#[test]
fn every_example_compiles_and_nft_accepts_it() {
    if !common::netns_available("every_example_compiles_and_nft_accepts_it") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for ex in examples() {
        let (code, script, err) = run(&["compile", &rel(&ex)]);
        assert_eq!(code, 0, "{}: {err}", ex.display());
        let file = dir.path().join("out.nft");
        std::fs::write(&file, &script).expect("write");
        let ns = Netns::new("ex");
        let check = ns.nft(&["-c", "-f", file.to_str().expect("utf-8")], None);
        assert!(
            check.status.success(),
            "{}: nft -c: {}",
            ex.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let load = ns.load_file(&file, false);
        assert!(
            load.status.success(),
            "{}: nft -f: {}",
            ex.display(),
            String::from_utf8_lossy(&load.stderr)
        );
        // Loading the same script again replaces the table (one transaction, idempotent).
        let before = ns.nft_ok(&["-s", "list", "ruleset"], None);
        assert!(ns.load_file(&file, false).status.success());
        assert_eq!(
            before,
            ns.nft_ok(&["-s", "list", "ruleset"], None),
            "{}: reload changed the ruleset",
            ex.display()
        );
    }
}

#[test]
fn the_smartproxy_scenario_redirects_5000_to_4000_for_local_and_remote_clients() {
    let (code, script, err) = run(&["compile", "examples/smartproxy-scenario.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        script.contains("tcp . 5000 : jump n4_local-5000"),
        "{script}"
    );
    assert!(
        script.contains("meta l4proto tcp redirect to :4000"),
        "{script}"
    );
    assert!(
        script.contains("chain nat_output {\n\t\ttype nat hook output priority -100;"),
        "{script}"
    );
}

#[test]
fn output_is_byte_identical_across_runs_and_file_creation_order() {
    let (_, first, _) = run(&["compile", "examples/routes.d"]);
    for _ in 0..3 {
        assert_eq!(first, run(&["compile", "examples/routes.d"]).1);
    }
    // The same files created in the opposite order in two fresh directories.
    let names = ["00-settings.toml", "10-web.toml", "20-mail.toml"];
    let mut outputs = Vec::new();
    for order in [names.to_vec(), names.iter().rev().copied().collect()] {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in order {
            std::fs::copy(
                common::repo().join("examples/routes.d").join(name),
                dir.path().join(name),
            )
            .expect("copy");
        }
        outputs.push(run(&["compile", dir.path().to_str().expect("utf-8")]).1);
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0], first);
    // JSON too.
    let (_, j1, _) = run(&[
        "compile",
        "--format",
        "json",
        "examples/security-limits.toml",
    ]);
    let (_, j2, _) = run(&[
        "compile",
        "--format",
        "json",
        "examples/security-limits.toml",
    ]);
    assert_eq!(j1, j2);
}

const HOSTILE: &str = r#"
[[routes]]
name = "fwd"
description = "evil \" } ; flush ruleset\n} table inet x { chain y { type filter hook input priority 0; policy drop; }\\ \u0007 comment \"x"

[routes.match]
ports = 8001

[routes.action]
targets = [{ host = "198.51.100.2", port = 80 }]

[[routes]]
name = "ip"
description = "'; delete table inet foreign; #"

[routes.match]
ports = 8002

[routes.action]
targets = [{ host = "198.51.100.2", port = 80 }]

[[routes]]
name = "counter"
description = "}}}}}}{{{{ \\\\\\ \"\"\" ;;;; flush ruleset"

[routes.match]
ports = 8003

[routes.action]
type = "block"
"#;

const FOREIGN: &str = "table inet foreign {
	set admins {
		type ipv4_addr
		elements = { 192.0.2.1, 192.0.2.2 }
	}
	chain input {
		type filter hook input priority 0; policy accept;
		ip saddr @admins counter accept
		tcp dport 22 accept
	}
}
";

#[test]
fn hostile_names_and_descriptions_cannot_inject_and_the_foreign_table_is_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = dir.path().join("hostile.toml");
    std::fs::write(&routes, HOSTILE).expect("write");
    let (code, script, err) = run(&["compile", routes.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    // Rendered text: names only behind prefixes, comments without quotes or newlines.
    for line in script.lines().filter(|l| l.contains("comment")) {
        assert_eq!(
            line.matches('"').count(),
            2,
            "one quoted comment per line: {line}"
        );
    }
    let outside_comments = |text: &str| -> String {
        text.lines()
            .filter(|l| !l.trim_start().starts_with("comment \""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        !outside_comments(&script).contains("policy drop"),
        "nothing of the description became a rule"
    );
    if !common::netns_available("hostile_names_and_descriptions_cannot_inject") {
        return;
    }
    let ns = Netns::new("hostile");
    ns.nft_ok(&["-f", "-"], Some(FOREIGN));
    let foreign_before = ns.nft_ok(&["-s", "list", "table", "inet", "foreign"], None);
    let file = dir.path().join("out.nft");
    std::fs::write(&file, &script).expect("write");
    let load = ns.load_file(&file, false);
    assert!(
        load.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&load.stderr)
    );
    let tables = ns.nft_ok(&["list", "tables"], None);
    assert_eq!(tables, "table inet foreign\ntable inet smartproxy\n");
    assert_eq!(
        foreign_before,
        ns.nft_ok(&["-s", "list", "table", "inet", "foreign"], None)
    );
    // Our table holds exactly the three routes' chains and nothing else hooked.
    let ours = ns.nft_ok(&["-s", "list", "table", "inet", "smartproxy"], None);
    for chain in ["f_fwd", "f_ip", "f_counter"] {
        assert!(ours.contains(&format!("chain {chain} {{")), "{ours}");
    }
    assert!(!outside_comments(&ours).contains("policy drop"));
    assert!(
        ours.contains("flush ruleset"),
        "the text survives inside a comment: {ours}"
    );
    // The JSON form is as harmless.
    let (code, json, err) = run(&[
        "compile",
        "--format",
        "json",
        routes.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{err}");
    let jfile = dir.path().join("out.json");
    std::fs::write(&jfile, &json).expect("write");
    let ns2 = Netns::new("hostilej");
    ns2.nft_ok(&["-f", "-"], Some(FOREIGN));
    let load = ns2.load_file(&jfile, true);
    assert!(
        load.status.success(),
        "nft -j -f: {}",
        String::from_utf8_lossy(&load.stderr)
    );
    assert_eq!(
        ns2.nft_ok(&["list", "tables"], None),
        "table inet foreign\ntable inet smartproxy\n"
    );
    assert_eq!(
        foreign_before,
        ns2.nft_ok(&["-s", "list", "table", "inet", "foreign"], None)
    );
    // What nft lists back reloads (the admin's backups keep working).
    let listed = ns.nft_ok(&["list", "ruleset"], None);
    let ns3 = Netns::new("hostiler");
    ns3.nft_ok(&["-f", "-"], Some(&listed));
}

#[test]
fn compile_writes_to_a_file_with_dash_o() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("ruleset.nft");
    let (code, stdout, err) = run(&[
        "compile",
        "examples/weighted.toml",
        "-o",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&out).expect("written"),
        run(&["compile", "examples/weighted.toml"]).1
    );
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    for args in [
        vec!["frobnicate"],
        vec!["check"],
        vec!["compile", "--format", "yaml", "x.toml"],
        vec![],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(!err.is_empty());
    }
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("check") && out.contains("compile"));
    let (code, _, err) = run(&["compile", "no/such/file.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no/such/file.toml") && err.contains("E007"),
        "{err}"
    );
}

#[test]
fn check_reports_userspace_and_kernel_counts() {
    let (code, out, _) = run(&["check", "examples/tls-sni.toml", "examples/weighted.toml"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "ok: 5 routes (2 nftables, 3 userspace, 0 disabled), 0 warnings\n"
    );
}

#[test]
fn checked_in_completions_are_current() {
    use clap_complete::Shell;
    for (shell, file) in [
        (Shell::Bash, "smartproxy.bash"),
        (Shell::Zsh, "_smartproxy"),
        (Shell::Fish, "smartproxy.fish"),
        (Shell::Elvish, "smartproxy.elv"),
        (Shell::PowerShell, "_smartproxy.ps1"),
    ] {
        let mut expected = Vec::new();
        smartproxy::write_completions(shell, &mut expected);
        let path = common::repo().join("completions").join(file);
        if std::env::var_os("UPDATE_COMPLETIONS").is_some() {
            std::fs::write(&path, &expected).expect("write completions");
        }
        let actual = std::fs::read(&path).unwrap_or_default();
        assert!(
            actual == expected,
            "completions/{file} is stale: run `UPDATE_COMPLETIONS=1 cargo test --test cli checked_in_completions_are_current`"
        );
        let (code, out, _) = run(&["completions", &shell.to_string()]);
        assert_eq!(code, 0);
        assert_eq!(out.as_bytes(), expected.as_slice());
    }
}

// Issue 12, item 4: serve's log carries ANSI escapes only when asked for or on a terminal.
#[test]
fn serve_logs_without_escapes_unless_stderr_is_a_terminal_or_color_is_always() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[routes]]\nname = \"web\"\n").expect("write");
    let serve = |color: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_smartproxy"))
            .args(["--color", color, "serve", "--nftables", "off"])
            .arg(&bad)
            .env_remove("NO_COLOR")
            .env("SMARTPROXY_STATE_DIR", dir.path().join("state"))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("smartproxy runs");
        assert_eq!(out.status.code(), Some(1));
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(log.contains("serve did not start"), "{log}");
        log
    };
    for color in ["auto", "never"] {
        let log = serve(color);
        assert!(!log.contains('\x1b'), "--color {color}: {log:?}");
    }
    assert!(
        serve("always").contains('\x1b'),
        "--color always colours the log"
    );
}
