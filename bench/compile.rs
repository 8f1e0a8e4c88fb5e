//! Compile benchmark: how long `smartproxy compile` takes for 1k, 10k and 50k routes, next
//! to how long `nft -c -f` takes to check the same output.
//!
//! Run with `cargo bench --bench compile` (release profile). It prints a Markdown table to
//! paste into `BENCHMARKS.md`. `nft -c` runs inside a throw-away network namespace, so it
//! needs root, `ip` and `nft`; without them (or with `--no-nft`) that column reads "not run".
//! `nft -c` of the 50k script takes minutes, so it runs only with `--nft-50k`, and once.
//!
//! `cargo bench --bench compile -- --generate DIR [N]` only writes the route files of N
//! routes (default 1000) to DIR, to diff the rendered output before and after a change.
//!
//! The route set: a settings file with a 16-bit mark mask (more than 255 kernel routes need
//! more than the default 8 bits), one route carrying a 10,000-address block list, and routes
//! spread over files of 500 with a realistic mix: one or several weighted targets, source
//! affinity, allow and block lists, inline lists, connection and rate limits, byte-rate caps,
//! QoS, logging, UDP and dual-protocol routes, block routes, port ranges mapped 1:1, and
//! virtual hosts that share port 443 with one local address each. No two routes conflict
//! (`conflicts` in src/config/validate/conflicts.rs): they differ in port or in address.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smartproxy::lower::{lower, StaticResolver};
use smartproxy::render::render_script;

/// The binary's allocator (src/main.rs), so that in-process figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Routes, timed iterations (compile and `nft -c` alike), and whether `nft -c` runs by
/// default. Each size also runs one untimed warm-up compile. `nft -c` of the 50k script
/// took 12 minutes on the reference machine (see BENCHMARKS.md): it runs only with
/// `--nft-50k`, and then once.
const SIZES: &[Size] = &[
    Size {
        routes: 1_000,
        iterations: 10,
        nft_by_default: true,
    },
    Size {
        routes: 10_000,
        iterations: 10,
        nft_by_default: true,
    },
    Size {
        routes: 50_000,
        iterations: 3,
        nft_by_default: false,
    },
];

struct Size {
    routes: usize,
    iterations: usize,
    nft_by_default: bool,
}

const ROUTES_PER_FILE: usize = 500;
const BLOCK_LIST_LEN: usize = 10_000;

// ---- route files ---------------------------------------------------------------------------

/// The local address of the i-th virtual host on port 443: documentation IPv4 ranges first
/// (768 addresses), then IPv6 in 2001:db8:100::/48.
fn vhost_address(j: usize) -> String {
    const V4: [&str; 3] = ["198.51.100", "203.0.113", "192.0.2"];
    if j < 768 {
        format!("{}.{}", V4[j / 256], j % 256)
    } else {
        format!("2001:db8:100::{:x}", j - 768 + 1)
    }
}

/// 10,000 source addresses that neither overlap nor aggregate into CIDRs (odd hosts only,
/// so no two are the two halves of a /31).
fn block_list() -> String {
    (0..BLOCK_LIST_LEN)
        .map(|k| {
            format!(
                "\"10.{}.{}.{}\"",
                k / 16_384,
                (k / 128) % 128,
                (k % 128) * 2 + 1
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn target(host: &str, port: &str, weight: u32) -> String {
    if weight == 1 {
        format!("{{ host = \"{host}\", port = {port} }}")
    } else {
        format!("{{ host = \"{host}\", port = {port}, weight = {weight} }}")
    }
}

/// One route in TOML. Route i listens on its own port 1000 + i, except the virtual hosts
/// (i % 10 == 3) that share 443 with an address each and the range routes (i % 97 == 10)
/// that take four ports of their own above 52000.
fn route(i: usize) -> String {
    let mut out = String::new();
    let backend4 = format!("198.51.100.{}", 2 + i % 200);
    let backend6 = format!("2001:db8:1::{:x}", 2 + i % 200);
    let _ = write!(
        out,
        "\n[[routes]]\nname = \"r{i:05}\"\ndescription = \"generated route {i}\"\n"
    );
    if i % 19 == 7 {
        out.push_str("log = true\n");
    }
    out.push_str("\n[routes.match]\n");
    let vhost = i % 10 == 3;
    let range = !vhost && i % 97 == 10;
    let mut v6 = false;
    if vhost {
        let address = vhost_address(i / 10);
        v6 = address.contains(':');
        let _ = writeln!(out, "ports = 443\naddresses = [\"{address}\"]");
    } else if range {
        let first = 52_000 + (i / 97) * 4;
        let _ = writeln!(out, "ports = \"{first}-{}\"", first + 3);
    } else {
        let _ = writeln!(out, "ports = {}", 1000 + i);
        match i % 13 {
            5 => out.push_str("protocol = \"all\"\n"),
            6 => out.push_str("protocol = \"udp\"\n"),
            _ => {}
        }
    }
    out.push_str("\n[routes.action]\n");
    if !vhost && !range && i % 17 == 6 {
        out.push_str("type = \"block\"\n");
        return out;
    }
    if i % 11 == 4 {
        out.push_str("affinity = \"source\"\n");
    }
    let targets = if range {
        vec![target(&backend4, "\"9000-9003\"", 1)]
    } else if vhost {
        let mut t = vec![
            target(&backend4, "443", 1),
            target(&backend4.replace("198.51.100", "203.0.113"), "443", 2),
        ];
        if v6 {
            t.push(target(&backend6, "443", 1));
        }
        t
    } else if i.is_multiple_of(7) {
        vec![
            target(&backend4, "8080", 1),
            target(&format!("198.51.100.{}", 2 + (i + 1) % 200), "8080", 2),
            target(&format!("198.51.100.{}", 2 + (i + 2) % 200), "8080", 3),
        ]
    } else if i.is_multiple_of(9) {
        vec![
            target(&backend4, "\"preserve\"", 1),
            target(&backend6, "\"preserve\"", 1),
        ]
    } else {
        vec![target(&backend4, "8080", 1)]
    };
    let _ = writeln!(out, "targets = [{}]", targets.join(", "));

    let allow = i % 5 == 1;
    let block = i % 8 == 2;
    let limits = i % 25 == 2;
    if allow || block || limits {
        out.push_str("\n[routes.action.security]\n");
        if allow {
            let _ = writeln!(
                out,
                "ip_allow_list = [\"192.0.2.0/24\", \"10.{}.0.0/16\", \"2001:db8:{:x}::/48\"]",
                i % 256,
                i % 65_536
            );
        }
        if block {
            let _ = writeln!(
                out,
                "ip_block_list = [\"192.0.2.{}\", \"203.0.113.0/25\", \"2001:db8:ffff::{:x}\"]",
                i % 256,
                i % 65_536 + 1
            );
        }
        if limits {
            let _ = writeln!(
                out,
                "max_connections = {}\nrate_limit = \"{}/second burst {}\"",
                100 + i % 900,
                10 + i % 90,
                20 + i % 180
            );
        }
    }
    let inline = block && i.is_multiple_of(3);
    let nft = i % 19 == 7 || i % 31 == 11 || inline;
    if nft {
        out.push_str("\n[routes.action.nftables]\n");
        if i % 19 == 7 {
            let _ = writeln!(
                out,
                "max_rate = \"{} mbytes/second\"\npriority = {}",
                1 + i % 100,
                i % 8
            );
        }
        if i % 31 == 11 {
            out.push_str("preserve_source_ip = true\n");
        }
        if inline {
            out.push_str("use_ip_sets = false\nuse_advanced_nat = true\n");
        }
    }
    out
}

/// Writes the route files of `n` routes (route 0 carries the big block list) into `dir`.
fn write_route_set(dir: &Path, n: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("00-settings.toml"),
        "[settings]\ntable = \"smartproxy\"\nct_mark_mask = \"0xffff0000\"\nlog_group = 5\n",
    )?;
    let big = format!(
        "[[routes]]\nname = \"blocklist\"\ndescription = \"{BLOCK_LIST_LEN}-address block list\"\n\n\
         [routes.match]\nports = [80, 81]\n\n[routes.action]\n\
         targets = [{{ host = \"198.51.100.80\", port = \"preserve\" }}]\n\n\
         [routes.action.security]\nip_block_list = [{}]\n",
        block_list()
    );
    std::fs::write(dir.join("05-blocklist.toml"), big)?;
    for (file, start) in (1..n).step_by(ROUTES_PER_FILE).enumerate() {
        let end = (start + ROUTES_PER_FILE).min(n);
        let mut text = String::from("# generated by bench/compile.rs\n");
        for i in start..end {
            text.push_str(&route(i));
        }
        std::fs::write(dir.join(format!("10-routes-{file:04}.toml")), text)?;
    }
    Ok(())
}

// ---- timing ---------------------------------------------------------------------------------

#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    fn median_ms(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_unstable();
        let n = v.len();
        let mid = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        };
        ms(mid)
    }

    fn min_ms(&self) -> f64 {
        self.0.iter().min().map_or(f64::NAN, |d| ms(*d))
    }

    fn cell(&self) -> String {
        if self.0.is_empty() {
            "not run".to_owned()
        } else {
            format!("{:.1} / {:.1}", self.median_ms(), self.min_ms())
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Default)]
struct Phases {
    load: Samples,
    lower: Samples,
    render: Samples,
    whole: Samples,
}

/// One in-process compile, phase by phase; returns the script.
fn compile_once(paths: &[PathBuf], phases: Option<&mut Phases>) -> String {
    let t0 = Instant::now();
    let loaded = smartproxy::config::load(paths);
    let t1 = Instant::now();
    let cfg = loaded
        .config
        .as_ref()
        .unwrap_or_else(|| panic!("generated routes are valid: {:#?}", loaded.diagnostics));
    let model = lower(cfg, &StaticResolver::default()).expect("targets are address literals");
    let t2 = Instant::now();
    let script = render_script(&model).expect("the template renders");
    let t3 = Instant::now();
    if let Some(p) = phases {
        p.load.push(t1 - t0);
        p.lower.push(t2 - t1);
        p.render.push(t3 - t2);
        p.whole.push(t3 - t0);
    }
    script
}

/// A network namespace for `nft -c`, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Option<Netns> {
        let name = format!("spbench{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Netns(name))
    }

    /// `nft -c -f file` inside the namespace; panics if nft refuses the script.
    fn check(&self, file: &Path) -> Duration {
        let t = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-c", "-f"])
            .arg(file)
            .output()
            .expect("ip netns exec runs");
        let elapsed = t.elapsed();
        assert!(
            out.status.success(),
            "nft -c refused {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        elapsed
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

/// The 1-minute load average, to tell a quiet run from a busy one.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

struct Row {
    routes: usize,
    iterations: usize,
    bytes: usize,
    phases: Phases,
    nft: Samples,
    binary: Option<Samples>,
}

fn bench_size(root: &Path, size: &Size, nft_runs: usize, netns: Option<&Netns>) -> Row {
    let dir = root.join(format!("routes-{}", size.routes));
    write_route_set(&dir, size.routes).expect("the temp dir is writable");
    let paths = vec![dir.clone()];
    let script = compile_once(&paths, None);
    let out = root.join(format!("ruleset-{}.nft", size.routes));
    std::fs::write(&out, &script).expect("the temp dir is writable");
    let mut phases = Phases::default();
    for _ in 0..size.iterations {
        compile_once(&paths, Some(&mut phases));
    }
    // Before `nft -c`, which leaves the kernel busy freeing sets for a while.
    let binary = (size.routes == BINARY_ROUTES).then(|| binary_runs(&dir, &out));
    let mut nft = Samples::default();
    if let Some(ns) = netns {
        for _ in 0..nft_runs {
            nft.push(ns.check(&out));
        }
    }
    Row {
        routes: size.routes,
        iterations: size.iterations,
        bytes: script.len(),
        phases,
        nft,
        binary: binary.flatten(),
    }
}

/// The size whose compile the release binary also runs, end to end.
const BINARY_ROUTES: usize = 10_000;

/// Runs of the release binary after one untimed run (which pays for loading the new
/// binary from disk).
const BINARY_RUNS: usize = 5;

/// The release binary end to end, [`BINARY_RUNS`] times; `None` if a run failed or wrote
/// another script than the library.
fn binary_runs(dir: &Path, expected: &Path) -> Option<Samples> {
    binary_once(dir, expected)?;
    let mut samples = Samples::default();
    for _ in 0..BINARY_RUNS {
        samples.push(binary_once(dir, expected)?);
    }
    Some(samples)
}

/// The release binary end to end (process start, file reads, system resolver, writing the
/// output), once; `None` if it failed or wrote another script than the library.
fn binary_once(dir: &Path, expected: &Path) -> Option<Duration> {
    let out = expected.with_extension("binary.nft");
    let t = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_smartproxy"))
        .arg("compile")
        .arg(dir)
        .arg("-o")
        .arg(&out)
        .status()
        .ok()?;
    let elapsed = t.elapsed();
    let same = std::fs::read(&out).ok()? == std::fs::read(expected).ok()?;
    (status.success() && same).then_some(elapsed)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let [flag, dir, rest @ ..] = args.as_slice() {
        if flag == "--generate" {
            let n = rest.first().and_then(|n| n.parse().ok()).unwrap_or(1000);
            write_route_set(Path::new(dir), n).expect("the directory is writable");
            return;
        }
    }

    let load_before = load_average();
    let no_nft = args.iter().any(|a| a == "--no-nft");
    let nft_50k = args.iter().any(|a| a == "--nft-50k");
    let root = tempfile::tempdir().expect("a temp dir");
    let netns = if no_nft { None } else { Netns::new() };
    if netns.is_none() && !no_nft {
        eprintln!("note: cannot create a network namespace (root and `ip` needed): nft -c skipped");
    }
    let rows: Vec<Row> = SIZES
        .iter()
        .map(|size| {
            let nft_runs = match (&netns, size.nft_by_default, nft_50k) {
                (None, _, _) | (Some(_), false, false) => 0,
                (Some(_), true, _) => size.iterations,
                (Some(_), false, true) => 1,
            };
            eprintln!(
                "benchmarking {} routes: {} compiles, {nft_runs} nft -c runs",
                size.routes, size.iterations
            );
            bench_size(root.path(), size, nft_runs, netns.as_ref())
        })
        .collect();
    drop(netns);

    println!(
        "machine: {} cores, kernel {}, {}",
        command_output("nproc", &[]),
        command_output("uname", &["-r"]),
        command_output("nft", &["--version"])
    );
    println!(
        "load average (1 min) before / after: {load_before} / {} (other work on the machine skews the figures)",
        load_average()
    );
    println!();
    println!(
        "Times in ms, median / min over the runs; compile = load+validate + lower + render \
         (in process, dropping the results not timed)."
    );
    println!();
    println!(
        "| routes | runs (compile / nft) | script | load+validate | lower | render | compile | `nft -c` | compile / nft |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let ratio = if r.nft.0.is_empty() {
            "n/a".to_owned()
        } else {
            format!("{:.3}", r.phases.whole.median_ms() / r.nft.median_ms())
        };
        println!(
            "| {} | {} / {} | {:.1} MB | {} | {} | {} | {} | {} | {ratio} |",
            r.routes,
            r.iterations,
            r.nft.0.len(),
            r.bytes as f64 / 1e6,
            r.phases.load.cell(),
            r.phases.lower.cell(),
            r.phases.render.cell(),
            r.phases.whole.cell(),
            r.nft.cell(),
        );
    }
    println!();
    match rows.iter().find(|r| r.routes == BINARY_ROUTES) {
        Some(Row {
            binary: Some(runs), ..
        }) => println!(
            "`smartproxy compile routes-{BINARY_ROUTES}/ -o FILE` (release binary, end to end, \
             {BINARY_RUNS} runs after one untimed): {} ms",
            runs.cell()
        ),
        _ => println!("release binary run: failed or wrote another script"),
    }
    if let Some(r) = rows.iter().find(|r| r.routes == 10_000) {
        let whole = r.phases.whole.median_ms();
        let goal_time = whole < 100.0;
        let goal_ratio = !r.nft.0.is_empty() && whole < 0.5 * r.nft.median_ms();
        println!(
            "goal at 10k: compile < 100 ms: {}; compile < 0.5 x nft -c: {}",
            if goal_time { "met" } else { "MISSED" },
            if r.nft.0.is_empty() {
                "not measured"
            } else if goal_ratio {
                "met"
            } else {
                "MISSED"
            }
        );
    }
}
