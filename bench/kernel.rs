//! Kernel data-plane benchmark (plan/apply): how long `smartproxy plan` and `apply` take at
//! 1k and 10k routes, how long a one-route change takes (the kernel transaction alone and
//! the whole `apply` command), and what a 10k-route table costs the traffic it forwards
//! (iperf3 throughput, connections per second under churn), each divided by plain routing
//! on the same topology in the same run.
//!
//! Run with `cargo bench --bench kernel` as root, with `ip`, `nft`, `iperf3`, `wrk` and
//! `nginx` (Debian: `apt-get install iperf3 wrk nginx-light`). It prints a Markdown table
//! for `BENCHMARKS.md`. Everything runs in network namespaces it creates and deletes
//! (documentation addresses only); the host's ruleset is never touched.
//!
//! Topology of the traffic part:
//!
//! ```text
//!  client 192.0.2.2 --- 192.0.2.1 gateway 198.51.100.1 --- 198.51.100.2 backend
//!         2001:db8:c::2  2001:db8:c::1  2001:db8:1::1        2001:db8:1::2
//! ```
//!
//! Through smartproxy the client connects to the gateway (192.0.2.1:PORT), which DNATs to
//! the backend and masquerades. Plain routing: the client connects to the backend directly
//! through the gateway, with no nftables table in the gateway at all. Hand-written: the
//! smallest table doing the same NAT (two DNAT rules, `ct status dnat masquerade`), to
//! show what NAT itself costs on this machine. The three rotate, six rounds; the figures
//! are medians of the per-round ratios.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;

use common::{
    have, iperf, median, ms, nginx_conf, ok, smartproxy_bin, spread, topology, wait_port, wrk,
    Netns, Topo,
};
use smartproxy::kernel::nft::NftKernel;
use smartproxy::kernel::Kernel;

/// Timed repetitions of the one-route change (apply command and transaction alike).
const CHANGE_RUNS: usize = 5;
/// Timed repetitions of a whole-table apply and of plan.
const PLAN_RUNS: usize = 3;
/// Traffic rounds (a smartproxy run, a plain run and a hand-written-NAT run each).
const TRAFFIC_PAIRS: usize = 6;
const IPERF_SECS: u32 = 4;
const WRK_SECS: u32 = 5;
const BLOCK_LIST_LEN: usize = 10_000;
/// Port of route i is BASE_PORT + i (1-based).
const BASE_PORT: usize = 10_000;

// ---- route files -----------------------------------------------------------------------

/// 10,000 source addresses that do not aggregate into ranges (odd hosts only): odd hosts of
/// 192.0.2.0/24 (the client, .2, is even: its packets are looked up and pass), of
/// 203.0.113.0/24 and of 198.51.100.128/25, then odd IPv6 hosts in 2001:db8::/32.
fn block_list() -> Vec<String> {
    let mut list: Vec<String> = Vec::with_capacity(BLOCK_LIST_LEN);
    for h in (1..256).step_by(2) {
        list.push(format!("\"192.0.2.{h}\""));
        list.push(format!("\"203.0.113.{h}\""));
    }
    for h in (129..256).step_by(2) {
        list.push(format!("\"198.51.100.{h}\""));
    }
    let mut n = 0u32;
    while list.len() < BLOCK_LIST_LEN {
        list.push(format!(
            "\"2001:db8:{:x}::{:x}\"",
            0x100 + n / 2048,
            (n % 2048) * 2 + 1
        ));
        n += 1;
    }
    list
}

/// Routes 1..=n on ports 10001..; route 1 (iperf3, backend port 5201) and route n (HTTP,
/// backend port 80) are dual-stack and carry the 10k block list, the others forward to
/// 198.51.100.x:8080 (`bump` changes route n/2's target port: a one-route change).
fn route_file(n: usize, block: &[String], bump: bool) -> String {
    let mut out = String::from("[settings]\nct_mark_mask = \"0xffff0000\"\n");
    let list = block.join(", ");
    for i in 1..=n {
        let _ = write!(
            out,
            "\n[[routes]]\nname = \"r{i:05}\"\n[routes.match]\nports = {}\n[routes.action]\n",
            BASE_PORT + i
        );
        if i == 1 || i == n {
            let port = if i == 1 { 5201 } else { 80 };
            let _ = writeln!(
                out,
                "targets = [{{ host = \"198.51.100.2\", port = {port} }}, {{ host = \"2001:db8:1::2\", port = {port} }}]"
            );
            let _ = write!(out, "[routes.action.security]\nip_block_list = [{list}]\n");
        } else {
            let port = if bump && i == n / 2 { 8081 } else { 8080 };
            let _ = writeln!(
                out,
                "targets = [{{ host = \"198.51.100.{}\", port = {port} }}]",
                3 + i % 60
            );
        }
    }
    out
}

struct Row {
    what: String,
    median: String,
    range: String,
    goal: String,
}

fn row(rows: &mut Vec<Row>, what: &str, values: &[f64], unit: &str, goal: String) {
    let line = Row {
        what: what.to_owned(),
        median: format!("{:.0} {unit}", median(values)),
        range: format!("{} {unit}", spread(values)),
        goal,
    };
    eprintln!(
        "  {}: {} (range {}) {}",
        line.what, line.median, line.range, line.goal
    );
    rows.push(line);
}

// ---- plan / apply ----------------------------------------------------------------------

struct Sizes {
    /// Median kernel transaction of a one-route change, per size.
    tx_ms: Vec<(usize, f64)>,
    /// The 10k rendered script (for the traffic part) and the files.
    script_10k: String,
}

/// The transaction `apply` would run to go from what is loaded in `ns` to `file`: the
/// same library calls as `make_plan` (normalise in a throw-away namespace, list the live
/// table, plan, transaction).
fn transaction_for(ns: &Netns, file: &Path) -> String {
    let loaded = smartproxy::config::load(&[file.to_path_buf()]);
    let cfg = loaded.config.as_ref().expect("route file loads");
    let model = smartproxy::lower::lower(cfg, &smartproxy::lower::SystemResolver)
        .unwrap_or_else(|_| panic!("route file lowers"));
    let script = smartproxy::render::render_script(&model).expect("renders");
    let listing = NftKernel::default()
        .normalise(&script, &model.table)
        .expect("nft accepts the script");
    let live = ns.exec_ok(&["nft", "-s", "list", "table", "inet", &model.table]);
    let plan = smartproxy::plan::plan(&model.table, script, listing, Some(live), None, Vec::new());
    assert!(
        !plan.replace_table,
        "a one-route change must not reload the table"
    );
    assert_eq!(plan.changes.len(), 1, "exactly one route changes");
    smartproxy::apply::transaction(&plan)
}

fn bench_sizes(dir: &Path, rows: &mut Vec<Row>) -> Sizes {
    let block = block_list();
    let mut tx_ms = Vec::new();
    let mut script_10k = String::new();
    for n in [1_000usize, 10_000] {
        eprintln!("{n} routes:");
        let a = dir.join(format!("routes-{n}-a.toml"));
        let b = dir.join(format!("routes-{n}-b.toml"));
        std::fs::write(&a, route_file(n, &block, false)).expect("write routes");
        std::fs::write(&b, route_file(n, &block, true)).expect("write routes");
        let (a_s, b_s) = (
            a.to_str().expect("utf-8").to_owned(),
            b.to_str().expect("utf-8").to_owned(),
        );

        // Whole-table: plan and apply against an empty kernel, each in a fresh namespace.
        let (mut plan_new, mut apply_new) = (Vec::new(), Vec::new());
        for k in 0..PLAN_RUNS {
            let ns = Netns::new(&format!("p{n}-{k}"));
            let state = tempfile::tempdir().expect("state dir");
            plan_new.push(ns.smartproxy(state.path(), &["plan", &a_s]));
            apply_new.push(ns.smartproxy(state.path(), &["apply", "--auto-approve", &a_s]));
        }
        row(
            rows,
            &format!("{n} routes: `plan`, empty kernel"),
            &ms(&plan_new),
            "ms",
            String::new(),
        );
        row(
            rows,
            &format!("{n} routes: `apply` (creates the table)"),
            &ms(&apply_new),
            "ms",
            String::new(),
        );

        // Incremental: one namespace with the table loaded.
        let ns = Netns::new(&format!("c{n}"));
        let state = tempfile::tempdir().expect("state dir");
        ns.smartproxy(state.path(), &["apply", "--auto-approve", &a_s]);
        let mut plan_same = Vec::new();
        let mut plan_one = Vec::new();
        for _ in 0..PLAN_RUNS {
            plan_same.push(ns.smartproxy(state.path(), &["plan", &a_s]));
            plan_one.push(ns.smartproxy(state.path(), &["plan", &b_s]));
        }
        row(
            rows,
            &format!("{n} routes: `plan`, no change"),
            &ms(&plan_same),
            "ms",
            String::new(),
        );
        row(
            rows,
            &format!("{n} routes: `plan`, one route changed"),
            &ms(&plan_one),
            "ms",
            String::new(),
        );

        // The transaction alone: A -> B and B -> A scripts, run alternately with `nft -f`.
        let tx_ab = dir.join(format!("tx-{n}-ab.nft"));
        let tx_ba = dir.join(format!("tx-{n}-ba.nft"));
        std::fs::write(&tx_ab, transaction_for(&ns, &b)).expect("write tx");
        ns.nft_file(&tx_ab);
        std::fs::write(&tx_ba, transaction_for(&ns, &a)).expect("write tx");
        ns.nft_file(&tx_ba);
        let mut tx = Vec::new();
        for k in 0..CHANGE_RUNS * 2 {
            tx.push(ns.nft_file(if k % 2 == 0 { &tx_ab } else { &tx_ba }));
        }
        // `ip netns exec` itself (a process + setns), included in the figures above.
        let mut overhead = Vec::new();
        for _ in 0..CHANGE_RUNS {
            let t = Instant::now();
            ns.exec_ok(&["true"]);
            overhead.push(t.elapsed());
        }
        let tx_median = median(&ms(&tx));
        tx_ms.push((n, tx_median));
        let goal = if n == 10_000 {
            let one_k = tx_ms.first().map_or(f64::NAN, |x| x.1);
            let met = tx_median < 100.0 && tx_median <= 2.0 * one_k;
            format!(
                "< 100 ms and ≤ 2× 1k ({:.2}×): {}",
                tx_median / one_k,
                if met { "met" } else { "MISSED" }
            )
        } else {
            String::new()
        };
        row(
            rows,
            &format!(
                "{n} routes: one-route change, kernel transaction alone (`nft -f`, {} lines)",
                std::fs::read_to_string(&tx_ab)
                    .map(|t| t.lines().count())
                    .unwrap_or(0)
            ),
            &ms(&tx),
            "ms",
            goal,
        );
        row(
            rows,
            "  (of which `ip netns exec true`)",
            &ms(&overhead),
            "ms",
            String::new(),
        );

        // The whole apply command, alternating B and A.
        let mut apply_one = Vec::new();
        for k in 0..CHANGE_RUNS * 2 {
            let f = if k % 2 == 0 { &b_s } else { &a_s };
            apply_one.push(ns.smartproxy(state.path(), &["apply", "--auto-approve", f]));
        }
        let v = ms(&apply_one);
        let goal = if n == 10_000 {
            format!(
                "< 1500 ms: {}",
                if median(&v) < 1500.0 { "met" } else { "MISSED" }
            )
        } else {
            String::new()
        };
        row(
            rows,
            &format!("{n} routes: one-route change, whole `apply --auto-approve`"),
            &v,
            "ms",
            goal,
        );

        // The same after another program committed something in the namespace: the
        // remembered live table no longer counts (src/cache.rs) and apply lists it.
        let mut apply_listed = Vec::new();
        for k in 0..CHANGE_RUNS * 2 {
            let bump = if k % 2 == 0 { "add" } else { "delete" };
            ns.exec_ok(&["nft", bump, "table", "inet", "bench_other"]);
            let f = if k % 2 == 0 { &b_s } else { &a_s };
            apply_listed.push(ns.smartproxy(state.path(), &["apply", "--auto-approve", f]));
        }
        row(
            rows,
            &format!(
                "{n} routes: one-route change, whole `apply` after another program's commit (live table listed)"
            ),
            &ms(&apply_listed),
            "ms",
            String::new(),
        );
        if n == 10_000 {
            script_10k = ok(Command::new(smartproxy_bin()).args(["compile", &a_s]));
        }
    }
    Sizes { tx_ms, script_10k }
}

// ---- traffic -----------------------------------------------------------------------------

fn bench_traffic(dir: &Path, script_10k: &str, rows: &mut Vec<Row>) {
    eprintln!("traffic (10k routes, 10k block list on the measured routes):");
    let mut t = topology();
    let script = dir.join("table-10k.nft");
    std::fs::write(&script, script_10k).expect("write script");
    let ndir = dir.join("nginx");
    std::fs::create_dir_all(&ndir).expect("nginx dir");
    let conf = nginx_conf(&ndir);
    let conf_s = conf.to_str().expect("utf-8").to_owned();
    t.backend.spawn(&["iperf3", "-s", "-p", "5201"]);
    t.backend
        .spawn(&["nginx", "-c", &conf_s, "-g", "daemon off;"]);
    wait_port(&t.backend, 5201);
    wait_port(&t.backend, 80);
    let last_port = u16::try_from(BASE_PORT + 10_000).expect("port fits");
    let first_port = u16::try_from(BASE_PORT + 1).expect("port fits");

    // The smallest hand-written table that does the same for the two measured ports:
    // DNAT in prerouting, masquerade of DNATed connections. What NAT itself costs.
    let hand = dir.join("hand.nft");
    std::fs::write(
        &hand,
        format!(
            "table inet hand {{\n\tchain pre {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\ttcp dport {last} dnat ip to 198.51.100.2:80\n\
             \t\ttcp dport {first} dnat ip to 198.51.100.2:5201\n\t}}\n\
             \tchain post {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tct status dnat masquerade\n\t}}\n}}\n",
            last = BASE_PORT + 10_000,
            first = BASE_PORT + 1
        ),
    )
    .expect("write hand.nft");
    let load = |t: &Topo| t.gateway.nft_file(&script);
    // Warm-up (and a check that both paths forward).
    load(&t);
    iperf(&t.client, "192.0.2.1", first_port, IPERF_SECS);
    wrk(
        &t.client,
        &format!("http://192.0.2.1:{last_port}/"),
        WRK_SECS,
    );
    t.gateway.delete_table();
    iperf(&t.client, "198.51.100.2", 5201, IPERF_SECS);

    let (mut tp_sp, mut tp_plain, mut tp_ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cps_sp, mut cps_plain, mut cps_ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tp_hand, mut cps_hand, mut tp_vs_hand, mut cps_vs_hand, mut cps_hand_ratio) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut wrk_errors = 0u64;
    #[derive(Clone, Copy)]
    enum Via {
        Smartproxy,
        Plain,
        Hand,
    }
    for k in 0..TRAFFIC_PAIRS {
        // Rotate which path goes first.
        let mut order = [Via::Smartproxy, Via::Plain, Via::Hand];
        order.rotate_left(k % 3);
        let (mut sp, mut plain, mut by_hand) = ((0.0, 0.0), (0.0, 0.0), (0.0, 0.0));
        for path in order {
            match path {
                Via::Smartproxy | Via::Hand => {
                    if matches!(path, Via::Smartproxy) {
                        load(&t);
                    } else {
                        t.gateway.nft_file(&hand);
                    }
                    let g = iperf(&t.client, "192.0.2.1", first_port, IPERF_SECS);
                    std::thread::sleep(Duration::from_secs(3));
                    let (r, e) = wrk(
                        &t.client,
                        &format!("http://192.0.2.1:{last_port}/"),
                        WRK_SECS,
                    );
                    wrk_errors += e;
                    if matches!(path, Via::Smartproxy) {
                        sp = (g, r);
                        t.gateway.delete_table();
                    } else {
                        by_hand = (g, r);
                        t.gateway
                            .exec_ok(&["nft", "delete", "table", "inet", "hand"]);
                    }
                }
                Via::Plain => {
                    assert!(!t.gateway.has_table(), "plain routing has no table");
                    let g = iperf(&t.client, "198.51.100.2", 5201, IPERF_SECS);
                    std::thread::sleep(Duration::from_secs(3));
                    let (r, e) = wrk(&t.client, "http://198.51.100.2/", WRK_SECS);
                    wrk_errors += e;
                    plain = (g, r);
                }
            }
            std::thread::sleep(Duration::from_secs(3));
        }
        eprintln!(
            "  round {k}: iperf3 {:.2} / {:.2} / {:.2} Gbit/s, wrk {:.0} / {:.0} / {:.0} req/s (smartproxy / plain / hand-written)",
            sp.0, plain.0, by_hand.0, sp.1, plain.1, by_hand.1
        );
        tp_sp.push(sp.0);
        tp_plain.push(plain.0);
        tp_ratio.push(sp.0 / plain.0);
        cps_sp.push(sp.1);
        cps_plain.push(plain.1);
        cps_ratio.push(sp.1 / plain.1);
        tp_hand.push(by_hand.0);
        cps_hand.push(by_hand.1);
        tp_vs_hand.push(sp.0 / by_hand.0);
        cps_vs_hand.push(sp.1 / by_hand.1);
        cps_hand_ratio.push(by_hand.1 / plain.1);
    }
    let nginx_errors = std::fs::read_to_string(ndir.join("error.log"))
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0);

    let f2 = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (format!("{:.2}", median(v)), format!("{lo:.2}–{hi:.2}"))
    };
    let push = |rows: &mut Vec<Row>, what: &str, v: &[f64], unit: &str, goal: String| {
        let (m, r) = f2(v);
        eprintln!("  {what}: {m}{unit} ({r}) {goal}");
        rows.push(Row {
            what: what.to_owned(),
            median: format!("{m}{unit}"),
            range: format!("{r}{unit}"),
            goal,
        });
    };
    push(
        rows,
        "iperf3 TCP through route 1 (10k routes, 10k block list)",
        &tp_sp,
        " Gbit/s",
        String::new(),
    );
    push(
        rows,
        "iperf3 TCP, plain routing",
        &tp_plain,
        " Gbit/s",
        String::new(),
    );
    let r = median(&tp_ratio);
    push(
        rows,
        "throughput ratio (smartproxy / plain, per round)",
        &tp_ratio,
        "×",
        format!("≥ 0.95: {}", if r >= 0.95 { "met" } else { "MISSED" }),
    );
    row(
        rows,
        "wrk `Connection: close` through route 10000 (10k block list)",
        &cps_sp,
        "req/s",
        String::new(),
    );
    row(
        rows,
        "wrk `Connection: close`, plain routing",
        &cps_plain,
        "req/s",
        String::new(),
    );
    push(
        rows,
        "iperf3 TCP, hand-written DNAT + masquerade (2 rules)",
        &tp_hand,
        " Gbit/s",
        String::new(),
    );
    push(
        rows,
        "throughput ratio (smartproxy / hand-written, per round)",
        &tp_vs_hand,
        "×",
        String::new(),
    );
    row(
        rows,
        "wrk `Connection: close`, hand-written DNAT + masquerade (2 rules)",
        &cps_hand,
        "req/s",
        String::new(),
    );
    push(
        rows,
        "new connections/s ratio (hand-written / plain, per round): what NAT itself costs",
        &cps_hand_ratio,
        "×",
        String::new(),
    );
    push(
        rows,
        "new connections/s ratio (smartproxy / hand-written, per round)",
        &cps_vs_hand,
        "×",
        String::new(),
    );
    let r = median(&cps_ratio);
    push(
        rows,
        "new connections/s ratio (smartproxy / plain, per round)",
        &cps_ratio,
        "×",
        format!(
            "≥ 0.95: {}; wrk errors {wrk_errors}, nginx error.log lines {nginx_errors}",
            if r >= 0.95 { "met" } else { "MISSED" }
        ),
    );
}

fn main() {
    // `cargo bench --bench kernel -- --generate DIR` only writes the route files (10k
    // routes, and the same with route 5000 changed) to DIR, to profile plan/apply by hand.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--generate") {
        let dir = PathBuf::from(args.get(i + 1).expect("--generate DIR"));
        std::fs::create_dir_all(&dir).expect("create DIR");
        let block = block_list();
        for (name, bump) in [
            ("routes-10000-a.toml", false),
            ("routes-10000-b.toml", true),
        ] {
            std::fs::write(dir.join(name), route_file(10_000, &block, bump)).expect("write");
        }
        return;
    }
    let needed = ["ip", "nft", "unshare", "iperf3", "wrk", "nginx", "ss"];
    let missing: Vec<&str> = needed.iter().copied().filter(|c| !have(c)).collect();
    let root = ok(Command::new("id").arg("-u")).trim() == "0";
    if !root || !missing.is_empty() {
        eprintln!("kernel bench not run: needs root and {needed:?}; missing {missing:?}");
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rows = Vec::new();
    let sizes = bench_sizes(dir.path(), &mut rows);
    bench_traffic(dir.path(), &sizes.script_10k, &mut rows);

    let mut out = String::new();
    let _ = writeln!(out, "\n| Measurement | Median | Range | Goal |");
    let _ = writeln!(out, "|---|---:|---:|---|");
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            r.what, r.median, r.range, r.goal
        );
    }
    let _ = writeln!(
        out,
        "\nTransaction medians: {}. Total bench time {:.0} s.",
        sizes
            .tx_ms
            .iter()
            .map(|(n, m)| format!("{n} routes {m:.0} ms"))
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stdout().write_all(out.as_bytes());
}
