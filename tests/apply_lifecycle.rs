//! The plan/apply lifecycle against a real kernel (root, network namespaces): scale as
//! seen by `nft monitor trace`, plan exit codes, JSON and drift, counters and connections
//! that survive an incremental apply, atomicity and foreign tables, the confirm watchdog,
//! stale plans and the lock, preflight warnings, and the exit codes of SPEC §3.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cli::{code, our_table, route, s, show, sp, sp_cmd, stderr, stdout};
use common::topo::{self, Server, Topology};

// ---------------------------------------------------------------- helpers

/// Writes a route file into the topology's state directory.
fn write_routes(t: &Topology, name: &str, text: &str) -> PathBuf {
    let p = t.state.path().join(name);
    std::fs::write(&p, text).expect("write routes");
    p
}

fn apply_ok(t: &Topology, file: &std::path::Path) -> Output {
    let o = sp(t, &["apply", "--auto-approve", s(file)], &[]);
    assert_eq!(code(&o), 0, "apply failed:\n{}", show(&o));
    o
}

/// `nft -s list ...` in the gateway (counter values left out).
fn listing(t: &Topology, what: &[&str]) -> String {
    let mut args = vec!["-s", "list"];
    args.extend_from_slice(what);
    t.gateway.nft_ok(&args, None)
}

fn ruleset(t: &Topology) -> String {
    listing(t, &["ruleset"])
}

/// `n` routes `r00001..`, route i on port `base + i` to backend 1 port 9090.
fn many_routes(n: usize, base: usize) -> String {
    let mut out = String::from("[settings]\nct_mark_mask = \"0xffff0000\"\n");
    for i in 1..=n {
        out.push_str(&route(
            &format!("r{i:05}"),
            u32::try_from(base + i).expect("port"),
            topo::B1_4,
            9090,
        ));
    }
    out
}

/// A foreign table with rules and a set, the way an admin's or docker's would look.
const FOREIGN: &str = "table ip admin {
	set trusted {
		type ipv4_addr
		flags interval
		elements = { 192.0.2.0/28, 203.0.113.7 }
	}

	chain input {
		type filter hook input priority 10; policy accept;
		ip saddr @trusted tcp dport 22 counter accept
		tcp dport 2222 counter drop
	}

	chain forward {
		type filter hook forward priority 5; policy accept;
		ct state established,related counter accept
	}
}
";

// ---------------------------------------------------------------- 1. scale, by trace

/// Per trace id, the rules of table inet smartproxy the packet was evaluated against.
fn rules_per_trace(lines: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in lines {
        let Some(rest) = l.strip_prefix("trace id ") else {
            continue;
        };
        let mut words = rest.splitn(5, ' ');
        let (Some(id), Some(family), Some(table), Some(chain), Some(tail)) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            continue;
        };
        let entry = out.entry(id.to_owned()).or_default();
        if family == "inet" && table == "smartproxy" && tail.starts_with("rule ") {
            entry.push(format!("{chain}: {tail}"));
        }
    }
    out
}

/// The id of the first trace whose packet line shows `dport PORT`.
fn trace_of_port(lines: &[String], port: u32) -> Option<String> {
    lines.iter().find_map(|l| {
        let rest = l.strip_prefix("trace id ")?;
        (l.contains(" packet: ") && l.contains(&format!("dport {port} ")))
            .then(|| rest.split(' ').next().unwrap_or_default().to_owned())
    })
}

#[test]
fn route_1_and_route_10000_pass_the_same_number_of_rules() {
    if !common::netns_available("route_1_and_route_10000_pass_the_same_number_of_rules") {
        return;
    }
    let t = Topology::new("tr");
    let _srv = Server::start(&t.b1, "b1", "198.51.100.2:9090");
    let routes = write_routes(&t, "scale.toml", &many_routes(10_000, 10_000));
    apply_ok(&t, &routes);
    // Trace only the client's initial SYNs, from a table of our own at -400.
    t.gateway.nft_ok(
        &["-f", "-"],
        Some(
            "table ip sptrace {\n\tchain pre {\n\t\ttype filter hook prerouting priority -400; policy accept;\n\t\tiifname \"c0\" tcp flags & (syn | ack) == syn tcp dport { 10001, 20000 } meta nftrace set 1\n\t}\n}\n",
        ),
    );
    let mut monitor = Command::new("ip")
        .args(["netns", "exec", &t.gateway.name, "nft", "monitor", "trace"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nft monitor runs");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let out = monitor.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(l);
            }
        })
    };
    // `nft monitor` subscribes a moment after it starts (longer on a busy host): connect
    // again until the SYN shows up in the trace, at most 10 times per route.
    let mut seen = true;
    for port in [10_001, 20_000] {
        let traced = (0..10).any(|_| {
            let greeting = topo::hello(
                &t.client,
                &format!("{}:{port}", topo::GW4),
                Duration::from_secs(3),
            );
            assert!(greeting.is_ok(), "route on {port} connects: {greeting:?}");
            common::wait_until(Duration::from_secs(1), || {
                trace_of_port(&lines.lock().expect("lines"), port).is_some()
            })
        });
        seen &= traced;
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = monitor.kill();
    let _ = monitor.wait();
    let _ = reader.join();
    let lines = lines.lock().expect("lines").clone();
    assert!(seen, "both SYNs traced:\n{}", lines.join("\n"));
    let per = rules_per_trace(&lines);
    let first = &per[&trace_of_port(&lines, 10_001).expect("route 1 traced")];
    let last = &per[&trace_of_port(&lines, 20_000).expect("route 10000 traced")];
    assert!(!first.is_empty(), "{}", lines.join("\n"));
    eprintln!(
        "rules passed in table inet smartproxy: route 1: {}, route 10000: {}\n{}\n--\n{}",
        first.len(),
        last.len(),
        first.join("\n"),
        last.join("\n")
    );
    assert_eq!(
        first.len(),
        last.len(),
        "route 1:\n{}\nroute 10000:\n{}",
        first.join("\n"),
        last.join("\n")
    );
}

// ---------------------------------------------------------------- 2. plan, JSON, drift

/// (add, change, destroy) from the text's last line.
fn summary_line(text: &str) -> Option<(u64, u64, u64)> {
    let line = text.lines().rev().find(|l| l.starts_with("Plan: "))?;
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums.as_slice() {
        [a, c, d] => Some((*a, *c, *d)),
        _ => None,
    }
}

/// Units named in the text's block headers (`  + route "x" {`).
fn text_units(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("  ") && l.ends_with(" {") && !l.starts_with("    "))
        .filter_map(|l| {
            let l = l.trim();
            let (_, rest) = l.split_once(' ')?;
            let rest = rest.trim_end_matches(" {");
            Some(match rest.strip_prefix("route \"") {
                Some(r) => r.trim_end_matches('"').to_owned(),
                None => "(table)".to_owned(),
            })
        })
        .collect();
    out.sort();
    out
}

#[test]
fn plan_exit_codes_json_and_drift() {
    if !common::netns_available("plan_exit_codes_json_and_drift") {
        return;
    }
    let t = Topology::new("pl");
    let one = route("web", 80, topo::B1_4, 9090);
    let two = format!("{one}{}", route("api", 81, topo::B2_4, 9090));
    let f1 = write_routes(&t, "one.toml", &one);
    let f2 = write_routes(&t, "two.toml", &two);

    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f1)], &[]);
    assert_eq!(code(&o), 2, "no table yet: changes\n{}", show(&o));
    apply_ok(&t, &f1);
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f1)], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(stdout(&o).contains("No changes."), "{}", show(&o));
    let o = sp(&t, &["plan", s(&f2)], &[]);
    assert_eq!(code(&o), 0, "without --detailed-exitcode: 0\n{}", show(&o));

    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f2)], &[]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    let text = stdout(&o);
    assert!(
        text.trim_end()
            .ends_with("Plan: 1 to add, 0 to change, 0 to destroy."),
        "{text}"
    );
    assert_eq!(text_units(&text), ["api"], "{text}");

    let o = sp(
        &t,
        &["plan", "--format", "json", "--detailed-exitcode", s(&f2)],
        &[],
    );
    assert_eq!(code(&o), 2, "{}", show(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("plan JSON parses");
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["table"], "smartproxy");
    assert_eq!(json["table_exists"], true);
    assert_eq!(json["replace_table"], false);
    let sm = &json["summary"];
    assert_eq!(
        (
            sm["add"].as_u64(),
            sm["change"].as_u64(),
            sm["destroy"].as_u64()
        ),
        (Some(1), Some(0), Some(0)),
        "{json}"
    );
    assert_eq!(summary_line(&text), Some((1, 0, 0)));
    let mut units: Vec<String> = json["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["unit"].as_str().expect("unit").to_owned())
        .collect();
    units.sort();
    assert_eq!(units, text_units(&text));
    assert_eq!(json["changes"][0]["action"], "create");
    assert!(json["drift"].as_array().expect("drift").is_empty());
    assert!(json["fingerprints"]["live"]
        .as_str()
        .is_some_and(|f| f.starts_with("sha256:")));

    // A rule added by hand is drift, and the next apply repairs it.
    t.gateway.nft_ok(
        &[
            "add",
            "rule",
            "inet",
            "smartproxy",
            "f_web",
            "ip",
            "saddr",
            "192.0.2.9",
            "drop",
        ],
        None,
    );
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f1)], &[]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    let text = stdout(&o);
    assert!(text.contains("Drift:"), "{text}");
    assert!(text.contains("+ \tip saddr 192.0.2.9 drop"), "{text}");
    assert!(
        text.trim_end()
            .ends_with("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{text}"
    );
    let o = sp(&t, &["plan", "--format", "json", s(&f1)], &[]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("plan JSON parses");
    assert_eq!(json["drift"][0]["unit"], "web", "{json}");
    assert_eq!(summary_line(&text), Some((0, 1, 0)));
    apply_ok(&t, &f1);
    assert!(!our_table(&t).expect("table").contains("192.0.2.9"));
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f1)], &[]);
    assert_eq!(code(&o), 0, "repaired:\n{}", show(&o));

    // A stray chain by a name smartproxy uses for shared chains is repaired too.
    t.gateway
        .nft_ok(&["add", "chain", "inet", "smartproxy", "qos_cs7"], None);
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f1)], &[]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    apply_ok(&t, &f1);
    assert!(!our_table(&t).expect("table").contains("qos_cs7"));
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f1)], &[]);
    assert_eq!(code(&o), 0, "repaired:\n{}", show(&o));
}

// ---------------------------------------------------------------- 3. counters, connections

/// `nft list counters table inet smartproxy` -> name -> "packets N bytes M".
fn counters(t: &Topology) -> BTreeMap<String, String> {
    let text = t
        .gateway
        .nft_ok(&["list", "counters", "table", "inet", "smartproxy"], None);
    let mut out = BTreeMap::new();
    let mut name = None;
    for l in text.lines().map(str::trim) {
        if let Some(n) = l.strip_prefix("counter ") {
            name = n.strip_suffix(" {").map(str::to_owned);
        } else if l.starts_with("packets ") {
            if let Some(n) = name.take() {
                out.insert(n, l.to_owned());
            }
        }
    }
    out
}

fn send_and_close(ns: &common::Netns, to: &str) {
    let to: std::net::SocketAddr = to.parse().expect("address");
    ns.run_in(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("connects");
        s.write_all(&[7u8; 3000]).expect("send");
        let mut b = [0u8; 64];
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = s.read(&mut b);
    });
}

#[test]
fn changing_one_of_1000_routes_keeps_other_counters_and_connections() {
    if !common::netns_available("changing_one_of_1000_routes_keeps_other_counters_and_connections")
    {
        return;
    }
    let t = Topology::new("ct");
    let srv = Server::start(&t.b1, "b1", "198.51.100.2:9090");
    let _srv2 = Server::start(&t.b2, "b2", "198.51.100.66:9090");
    // Route 7 also keeps per-client state: a connection count and a rate meter.
    let r7 = route("r00007", 20_007, topo::B1_4, 9090);
    let before = many_routes(1000, 20_000).replace(
        &r7,
        &format!(
            "{r7}[routes.action.security]\nmax_connections = 10\nrate_limit = \"100/second\"\n"
        ),
    );
    assert!(before.contains("max_connections"));
    let f1 = write_routes(&t, "a.toml", &before);
    apply_ok(&t, &f1);
    for i in [1, 2, 250, 500, 999, 1000] {
        send_and_close(&t.client, &format!("{}:{}", topo::GW4, 20_000 + i));
    }
    // A long-lived connection through route 7, which does not change.
    let to: std::net::SocketAddr = format!("{}:20007", topo::GW4).parse().expect("addr");
    let mut conn = t.client.run_in(move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("long-lived connects")
    });
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut greeting = [0u8; 4];
    conn.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting, b"b1 1");
    conn.write_all(&[1u8; 1000]).expect("send before");
    assert!(common::wait_until(Duration::from_secs(3), || srv
        .received
        .load(std::sync::atomic::Ordering::Relaxed)
        >= 1000 + 6 * 3000));
    std::thread::sleep(Duration::from_millis(200));

    let c0 = counters(&t);
    assert_eq!(c0.len(), 1000, "one counter per route");
    let busy: Vec<&String> = c0
        .iter()
        .filter(|(_, v)| !v.starts_with("packets 0 "))
        .map(|(k, _)| k)
        .collect();
    assert!(busy.len() >= 7, "traffic counted: {busy:?}");
    assert!(!c0["c_r00500"].starts_with("packets 0 "));

    // Route 500 moves to backend 2.
    let after = before.replace(
        &route("r00500", 20_500, topo::B1_4, 9090),
        &route("r00500", 20_500, topo::B2_4, 9090),
    );
    assert_ne!(after, before);
    let f2 = write_routes(&t, "b.toml", &after);
    let o = apply_ok(&t, &f2);
    assert!(
        stdout(&o).contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{}",
        show(&o)
    );
    let c1 = counters(&t);
    for set in ["conn4_r00007", "rate4_r00007"] {
        let text = t
            .gateway
            .nft_ok(&["list", "set", "inet", "smartproxy", set], None);
        assert!(
            text.contains(topo::CLIENT4),
            "{set} keeps the client's entry:\n{text}"
        );
    }
    let differ: Vec<&String> = c0
        .keys()
        .filter(|k| c0.get(*k) != c1.get(*k))
        .collect::<Vec<_>>();
    assert!(
        differ.iter().all(|k| k.as_str() == "c_r00500"),
        "counters of unchanged routes changed: {differ:?}"
    );
    // The connection through route 7 still carries data.
    let before_bytes = srv.received.load(std::sync::atomic::Ordering::Relaxed);
    conn.write_all(&[2u8; 1000]).expect("send after apply");
    assert!(
        common::wait_until(Duration::from_secs(3), || srv
            .received
            .load(std::sync::atomic::Ordering::Relaxed)
            >= before_bytes + 1000),
        "the long-lived connection survived the apply"
    );
    let hello = topo::hello(
        &t.client,
        &format!("{}:20500", topo::GW4),
        Duration::from_secs(3),
    )
    .expect("changed route connects");
    assert!(
        hello.starts_with("b2 "),
        "route 500 now goes to b2: {hello}"
    );
}

// ---------------------------------------------------------------- 4. atomicity, foreign tables

/// An `nft` wrapper that, in the gateway's namespace only (normalisation runs in a
/// throw-away one), appends `line` to every `-f -` transaction.
fn failing_nft(t: &Topology, line: &str) -> PathBuf {
    let inode = t.gateway.exec_ok(&["readlink", "/proc/self/ns/net"]);
    let path = t.state.path().join("nft-wrapper.sh");
    let script = format!(
        "#!/bin/sh\nif [ \"$1 $2\" = \"-f -\" ] && [ \"$(readlink /proc/self/ns/net)\" = \"{}\" ]; then\n  {{ cat; printf '%s\\n' '{line}'; }} | nft -f -\n  exit $?\nfi\nexec nft \"$@\"\n",
        inode.trim()
    );
    std::fs::write(&path, script).expect("write wrapper");
    let _ = Command::new("chmod").arg("+x").arg(&path).status();
    path
}

#[test]
fn a_refused_transaction_changes_nothing_and_foreign_tables_stay_identical() {
    if !common::netns_available(
        "a_refused_transaction_changes_nothing_and_foreign_tables_stay_identical",
    ) {
        return;
    }
    let t = Topology::new("at");
    t.gateway.nft_ok(&["-f", "-"], Some(FOREIGN));
    let foreign = || listing(&t, &["table", "ip", "admin"]);
    let foreign0 = foreign();
    let one = route("web", 80, topo::B1_4, 9090);
    let two = format!("{one}{}", route("api", 81, topo::B2_4, 9090));
    let f1 = write_routes(&t, "one.toml", &one);
    let f2 = write_routes(&t, "two.toml", &two);

    // A new table (full script), refused: nothing at all changes.
    let before = ruleset(&t);
    let bad = failing_nft(&t, "add rule inet smartproxy f_web jump f_web");
    let o = sp(
        &t,
        &["apply", "--auto-approve", s(&f1)],
        &[("SMARTPROXY_NFT", s(&bad))],
    );
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("nothing was changed"), "{}", show(&o));
    assert_eq!(ruleset(&t), before);

    apply_ok(&t, &f1);
    assert_eq!(foreign(), foreign0, "after apply");

    // An incremental transaction, refused by the kernel (a jump loop): nothing changes.
    let before = ruleset(&t);
    let o = sp(
        &t,
        &["apply", "--auto-approve", s(&f2)],
        &[("SMARTPROXY_NFT", s(&bad))],
    );
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert_eq!(ruleset(&t), before);
    // ... and refused by nft's parser.
    let bad = failing_nft(&t, "this is not nftables");
    let o = sp(
        &t,
        &["apply", "--auto-approve", s(&f2)],
        &[("SMARTPROXY_NFT", s(&bad))],
    );
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert_eq!(ruleset(&t), before);
    // ... and with a confirm timeout: no confirm is left pending, no rollback follows.
    let o = sp(
        &t,
        &["apply", "--auto-approve", "--confirm-timeout", "5", s(&f2)],
        &[("SMARTPROXY_NFT", s(&bad))],
    );
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert_eq!(ruleset(&t), before);
    let o = sp(&t, &["confirm"], &[]);
    assert_eq!(code(&o), 1, "nothing pending:\n{}", show(&o));
    std::thread::sleep(Duration::from_millis(5500));
    assert_eq!(ruleset(&t), before);
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f1)], &[]);
    assert_eq!(code(&o), 0, "still the first state:\n{}", show(&o));

    apply_ok(&t, &f2);
    assert_eq!(foreign(), foreign0, "after incremental apply");
    let o = sp(&t, &["destroy", "--auto-approve"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(our_table(&t).is_none(), "our table is gone");
    assert_eq!(foreign(), foreign0, "after destroy");
}

// ---------------------------------------------------------------- 5. confirm, stale, lock

/// Starts `apply --confirm-timeout` in its own process group; returns once it printed the
/// confirm hint, then SIGKILLs the whole group (the watchdog must live on).
fn apply_with_confirm_then_kill(t: &Topology, file: &std::path::Path, secs: &str) -> Instant {
    let mut child = sp_cmd(
        t,
        &[
            "apply",
            "--auto-approve",
            "--confirm-timeout",
            secs,
            s(file),
        ],
        &[],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .process_group(0)
    .spawn()
    .expect("apply spawns");
    let pgid = child.id();
    let out = child.stdout.take().expect("piped");
    let mut printed = String::new();
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("smartproxy confirm") {
            break;
        }
    }
    let at = Instant::now();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
    let _ = child.wait();
    assert!(printed.contains("smartproxy confirm"), "{printed}");
    at
}

#[test]
fn confirm_timeout_rolls_back_unless_confirmed() {
    if !common::netns_available("confirm_timeout_rolls_back_unless_confirmed") {
        return;
    }
    let t = Topology::new("cf");
    let o = sp(&t, &["confirm"], &[]);
    assert_eq!(code(&o), 1, "nothing pending:\n{}", show(&o));

    let _srv = Server::start(&t.b1, "b1", "198.51.100.2:9090");
    let one = format!(
        "{}[routes.action.security]\nrate_limit = \"100/second\"\n",
        route("web", 80, topo::B1_4, 9090)
    );
    let two = format!("{one}{}", route("api", 81, topo::B2_4, 9090));
    let f1 = write_routes(&t, "one.toml", &one);
    let f2 = write_routes(&t, "two.toml", &two);
    apply_ok(&t, &f1);
    send_and_close(&t.client, &format!("{}:80", topo::GW4));
    std::thread::sleep(Duration::from_millis(200));
    // With the client's entry in the rate meter (listed by `nft -s` too).
    let state1 = our_table(&t).expect("table");
    assert!(state1.contains(topo::CLIENT4), "{state1}");
    let counters1 = counters(&t);
    assert!(
        !counters1["c_web"].starts_with("packets 0 "),
        "{counters1:?}"
    );

    // Not confirmed, and the apply is SIGKILLed with its process group: back within 5 + 2 s.
    let at = apply_with_confirm_then_kill(&t, &f2, "5");
    assert!(
        our_table(&t).is_some_and(|x| x.contains("f_api")),
        "applied"
    );
    assert!(
        common::wait_until(Duration::from_secs(7), || our_table(&t).as_deref()
            == Some(state1.as_str())),
        "rolled back within 7 s (took {:?}): {:?}",
        at.elapsed(),
        our_table(&t)
    );
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f1)], &[]);
    assert_eq!(code(&o), 0, "no drift after rollback:\n{}", show(&o));
    let o = sp(&t, &["confirm"], &[]);
    assert_eq!(code(&o), 1, "nothing pending after rollback:\n{}", show(&o));
    assert!(
        stderr(&o).contains("table inet smartproxy was rolled back"),
        "{}",
        show(&o)
    );
    // Only the change was undone: the unchanged route kept its counter and its meter.
    assert_eq!(counters(&t)["c_web"], counters1["c_web"]);
    let meter = t
        .gateway
        .nft_ok(&["list", "set", "inet", "smartproxy", "rate4_web"], None);
    assert!(meter.contains(topo::CLIENT4), "{meter}");

    // Table-level settings change: the rollback reloads the table as it was.
    let mask = write_routes(
        &t,
        "mask.toml",
        &format!("[settings]\nct_mark_mask = \"0x0000ff00\"\n{one}"),
    );
    apply_with_confirm_then_kill(&t, &mask, "5");
    assert!(
        common::wait_until(Duration::from_secs(8), || our_table(&t)
            .is_some_and(|x| x.contains("& 0x00ff0000"))),
        "the whole table is restored: {:?}",
        our_table(&t)
    );
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f1)], &[]);
    assert_eq!(code(&o), 0, "as it was:\n{}", show(&o));
    assert_eq!(
        counters(&t)["c_web"],
        counters1["c_web"],
        "with its counters"
    );

    // A hand edit after the apply: undoing only the change would not arrive at the old
    // state, so the watchdog reloads the table as it was.
    let o = sp(
        &t,
        &["apply", "--auto-approve", "--confirm-timeout", "5", s(&f2)],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    t.gateway
        .nft_ok(&["add", "chain", "inet", "smartproxy", "zz_by_hand"], None);
    assert!(
        common::wait_until(Duration::from_secs(8), || our_table(&t)
            .is_some_and(|x| !x.contains("zz_by_hand") && !x.contains("f_api"))),
        "{:?}",
        our_table(&t)
    );
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f1)], &[]);
    assert_eq!(code(&o), 0, "as it was:\n{}", show(&o));

    // From no table at all: the rollback removes it.
    let o = sp(&t, &["destroy", "--auto-approve"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    apply_with_confirm_then_kill(&t, &f1, "5");
    assert!(
        common::wait_until(Duration::from_secs(8), || our_table(&t).is_none()),
        "the new table is removed again"
    );
    apply_ok(&t, &f1);

    // Confirmed in time: it stays.
    let o = sp(
        &t,
        &["apply", "--auto-approve", "--confirm-timeout", "5", s(&f2)],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let state2 = our_table(&t).expect("table");
    let o = sp(&t, &["confirm"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(our_table(&t).as_deref(), Some(state2.as_str()), "kept");
    let o = sp(&t, &["confirm"], &[]);
    assert_eq!(code(&o), 1, "{}", show(&o));
}

#[test]
fn a_stale_saved_plan_is_refused() {
    if !common::netns_available("a_stale_saved_plan_is_refused") {
        return;
    }
    let t = Topology::new("st");
    let one = route("web", 80, topo::B1_4, 9090);
    let two = format!("{one}{}", route("api", 81, topo::B2_4, 9090));
    let three = format!("{one}{}", route("db", 82, topo::B2_4, 9090));
    let f1 = write_routes(&t, "one.toml", &one);
    let f2 = write_routes(&t, "two.toml", &two);
    let f3 = write_routes(&t, "three.toml", &three);
    apply_ok(&t, &f1);
    let saved = t.state.path().join("saved.plan");
    let o = sp(&t, &["plan", "--out", s(&saved), s(&f2)], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    // The table changes after the plan was made.
    apply_ok(&t, &f3);
    let before = ruleset(&t);
    let o = sp(&t, &["apply", "--auto-approve", "--plan", s(&saved)], &[]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("stale"), "{}", show(&o));
    assert_eq!(ruleset(&t), before, "nothing changed");

    // A fresh saved plan applies exactly.
    let o = sp(&t, &["plan", "--out", s(&saved), s(&f2)], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let o = sp(&t, &["apply", "--auto-approve", "--plan", s(&saved)], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f2)], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));

    // A hand edit also makes a saved plan stale.
    let o = sp(&t, &["plan", "--out", s(&saved), s(&f1)], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    t.gateway.nft_ok(
        &[
            "add",
            "rule",
            "inet",
            "smartproxy",
            "f_web",
            "ip",
            "saddr",
            "192.0.2.9",
            "drop",
        ],
        None,
    );
    let before = ruleset(&t);
    let o = sp(&t, &["apply", "--auto-approve", "--plan", s(&saved)], &[]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert_eq!(ruleset(&t), before, "nothing changed");
}

/// Waits until some process holds the table's lock (`flock -n` fails), then a little more.
fn wait_for_lock_holder(t: &Topology) {
    let lock = t.state.path().join("smartproxy.lock");
    let held = common::wait_until(Duration::from_secs(10), || {
        lock.exists()
            && Command::new("flock")
                .args(["-n", s(&lock), "true"])
                .status()
                .is_ok_and(|st| !st.success())
    });
    assert!(held, "the first apply takes the lock");
}

#[test]
fn concurrent_applies_wait_for_the_lock_or_fail() {
    if !common::netns_available("concurrent_applies_wait_for_the_lock_or_fail") {
        return;
    }
    let t = Topology::new("lk");
    let one = route("web", 80, topo::B1_4, 9090);
    let two = format!("{one}{}", route("api", 81, topo::B2_4, 9090));
    let three = format!("{one}{}", route("db", 82, topo::B2_4, 9090));
    let f1 = write_routes(&t, "one.toml", &one);
    let f2 = write_routes(&t, "two.toml", &two);
    let f3 = write_routes(&t, "three.toml", &three);
    apply_ok(&t, &f1);

    // An nft that takes 2.5 s over every script it loads (`-f`, whatever the file): the
    // apply holds the lock meanwhile.
    let wrapper = t.state.path().join("slow-nft.sh");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\ncase \" $* \" in *\" -f \"*) sleep 2.5;; esac\nexec nft \"$@\"\n",
    )
    .expect("write wrapper");
    let _ = Command::new("chmod").arg("+x").arg(&wrapper).status();
    let slow = |file: &std::path::Path| {
        sp_cmd(
            &t,
            &["apply", "--auto-approve", s(file)],
            &[("SMARTPROXY_NFT", s(&wrapper))],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apply spawns")
    };
    // A second apply with --lock-timeout 1 fails with "lock held".
    let first = slow(&f2);
    wait_for_lock_holder(&t);
    let o = sp(
        &t,
        &["apply", "--auto-approve", "--lock-timeout", "1", s(&f3)],
        &[],
    );
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("lock held"), "{}", show(&o));
    let first = first.wait_with_output().expect("first apply");
    assert_eq!(code(&first), 0, "{}", show(&first));
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f2)], &[]);
    assert_eq!(
        code(&o),
        0,
        "the end state is the first input:\n{}",
        show(&o)
    );

    // A second apply with the default timeout waits, then applies on the new state.
    let first = slow(&f1);
    wait_for_lock_holder(&t);
    let started = Instant::now();
    let o = sp(&t, &["apply", "--auto-approve", s(&f3)], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "it waited for the lock"
    );
    let first = first.wait_with_output().expect("first apply");
    assert_eq!(code(&first), 0, "{}", show(&first));
    let o = sp(&t, &["plan", "--detailed-exitcode", s(&f3)], &[]);
    assert_eq!(
        code(&o),
        0,
        "the end state is the second input:\n{}",
        show(&o)
    );
}

// ---------------------------------------------------------------- 6. preflight

#[test]
fn preflight_warns_before_harm() {
    if !common::netns_available("preflight_warns_before_harm") {
        return;
    }
    let t = Topology::new("pf");
    let routes = format!(
        "{}{}{}",
        route("web", 80, topo::B1_4, 9090),
        route("local", 8081, topo::B1_4, 9090),
        route("ssh", 22, topo::B1_4, 9090)
    );
    let f = write_routes(&t, "routes.toml", &routes);
    let boot = t.state.path().join("nftables.conf");
    std::fs::write(
        &boot,
        "#!/usr/sbin/nft -f\n\nflush ruleset\n\ntable inet filter {\n}\n",
    )
    .expect("boot conf");

    // A clean host: no warnings.
    let o = sp(&t, &["plan", s(&f)], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(!stdout(&o).contains("Warning:"), "{}", show(&o));
    let json: serde_json::Value =
        serde_json::from_slice(&sp(&t, &["plan", "--format", "json", s(&f)], &[]).stdout)
            .expect("json");
    assert_eq!(json["warnings"], serde_json::json!([]));

    t.gateway
        .exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    t.gateway.nft_ok(
        &["-f", "-"],
        Some("table ip guard {\n\tchain forward_drop {\n\t\ttype filter hook forward priority 0; policy drop;\n\t}\n}\n"),
    );
    let _listener = Server::start(&t.gateway, "gw", "0.0.0.0:8081");
    let o = sp(
        &t,
        &["plan", s(&f)],
        &[
            ("SMARTPROXY_BOOT_CONF", s(&boot)),
            ("SSH_CONNECTION", "192.0.2.9 5555 192.0.2.1 22"),
        ],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let text = stdout(&o);
    let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("Warning:")).collect();
    let has = |needle: &str| warnings.iter().any(|w| w.contains(needle));
    assert!(
        has("IP forwarding is off (net.ipv4.ip_forward = 0)"),
        "{text}"
    );
    assert!(has("table ip guard") && has("policy drop"), "{text}");
    assert!(has("flush ruleset") && has(s(&boot)), "{text}");
    assert!(
        has("route `local` takes port 8081/tcp on which a local process listens"),
        "{text}"
    );
    assert!(
        has("route `ssh` takes port 22/tcp of the SSH connection"),
        "{text}"
    );
    assert_eq!(warnings.len(), 5, "{text}");
    let o = sp(
        &t,
        &["plan", "--format", "json", s(&f)],
        &[
            ("SMARTPROXY_BOOT_CONF", s(&boot)),
            ("SSH_CONNECTION", "192.0.2.9 5555 192.0.2.1 22"),
        ],
    );
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(json["warnings"].as_array().map(Vec::len), Some(5), "{json}");
}

// ---------------------------------------------------------------- 7. exit codes

#[test]
fn exit_codes_of_apply_and_destroy() {
    if !common::netns_available("exit_codes_of_apply_and_destroy") {
        return;
    }
    let t = Topology::new("ex");
    let f = write_routes(&t, "one.toml", &route("web", 80, topo::B1_4, 9090));
    t.gateway.nft_ok(&["-f", "-"], Some(FOREIGN));
    let before = ruleset(&t);

    let o = sp(&t, &["apply", s(&f)], &[]);
    assert_eq!(code(&o), 1, "no TTY, no --auto-approve:\n{}", show(&o));
    assert!(stderr(&o).contains("--auto-approve"), "{}", show(&o));
    assert_eq!(ruleset(&t), before, "nothing changed");

    let o = sp(&t, &["destroy"], &[]);
    assert_eq!(code(&o), 0, "nothing to destroy:\n{}", show(&o));
    let o = sp(&t, &["destroy", "--auto-approve", "--table", "nosuch"], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(ruleset(&t), before);

    apply_ok(&t, &f);
    let o = sp(&t, &["apply", "--auto-approve", s(&f)], &[]);
    assert_eq!(code(&o), 0, "nothing to do:\n{}", show(&o));
    let o = sp(&t, &["destroy", s(&f)], &[]);
    assert_eq!(code(&o), 1, "no TTY, no --auto-approve:\n{}", show(&o));
    assert!(our_table(&t).is_some());
    let o = sp(&t, &["destroy", "--auto-approve", s(&f)], &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(ruleset(&t), before, "only our table went");
    let o = sp(&t, &["plan", "--detailed-exitcode", "nosuch.toml"], &[]);
    assert_eq!(code(&o), 1, "an error is 1, not 2:\n{}", show(&o));
    let o = sp(&t, &["apply", "--auto-approve", "--no-such-flag"], &[]);
    assert_eq!(code(&o), 1, "usage error:\n{}", show(&o));
}
