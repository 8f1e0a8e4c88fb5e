//! The same route carried by the kernel and by the userspace engine: one TCP route, gateway
//! port 7001 to the backend's iperf3 server, once as an nftables table (`smartproxy apply`
//! in the gateway namespace) and once by `smartproxy serve` (the same route with
//! `forwarding_engine = "userspace"`). Measured per engine: iperf3 throughput, and CPU
//! seconds per GB transferred: machine-wide busy CPU from `/proc/stat` (the kernel's
//! forwarding runs in softirq, in no process of its own: its time lands in whatever task
//! or idle CPU it interrupts, so this is the figure both engines can be compared on; it
//! includes iperf3's own client and server work in both cases) and, for serve, its own utime + stime from `/proc/PID/stat`. A plain routed run
//! (client to 198.51.100.2:5201 through the gateway, no table, no serve) is measured in the
//! same rounds, so that each engine's cost above plain routing can be given as well.
//!
//! Two checks on the CPU figure, reported beside it: the CPU of the run's own processes
//! (iperf3 client and server, serve, ksoftirqd: utime + stime), which leaves other tenants'
//! processes out (on a kernel without IRQ time accounting, softirq work done in a process's
//! context, where veth forwarding mostly runs, is in that process's time; softirq work on an
//! otherwise idle CPU is missed); and a second run per path at a fixed 3 Gbit/s, which serve
//! can carry too: as fast as it goes, a run keeps about the same share of the machine busy
//! whatever carries it, so CPU per GB there is largely the inverse of throughput.
//!
//! Run with `cargo bench --bench engines` as root, with `ip`, `nft`, `unshare`, `iperf3`,
//! `ss` and `getconf` (Debian: `apt-get install iperf3`). Five rounds; the kernel and serve
//! alternate which goes first (the plain run's place rotates); every ratio is computed per
//! round and the median of the per-round ratios is reported, with the per-round figures.
//! Everything runs in network namespaces the bench creates and deletes (documentation
//! addresses only); the host's ruleset is never touched. Before measuring, each path is
//! checked to forward (and, with neither engine up, that nothing answers on :7001); a
//! kernel run whose route counter did not see the bytes, or a serve run where serve is not
//! the listener, panics.
//!
//! ```text
//!  client 192.0.2.2 --- 192.0.2.1 gateway 198.51.100.1 --- 198.51.100.2 backend
//!                       :7001 (nftables DNAT             iperf3 :5201
//!                        or smartproxy serve)
//! ```

#[path = "common.rs"]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{have, median, ok, run, smartproxy_bin, stop, topology, wait_port, Netns, Topo};

/// Rounds (`-- --rounds N` for a quick check of the bench itself, at most 20).
const ROUNDS: usize = 5;
const IPERF_SECS: u32 = 4;
/// Pause between two measured paths (connections and TIME_WAIT settle).
const PAUSE: Duration = Duration::from_secs(2);
/// Pause between the two runs of one path.
const PAUSE_SAME: Duration = Duration::from_secs(1);
/// The fixed-rate runs (`iperf3 -b`): below what serve carries, so that no run saturates
/// the machine and CPU per GB is not just the inverse of throughput.
const FIXED_RATE: &str = "3G";
/// iperf3's pacing period for the fixed-rate runs, µs. /proc/stat's user/system/softirq
/// are sampled at the scheduler tick (4 ms at HZ=250, without VIRT_CPU_ACCOUNTING): with
/// iperf3's default 1000 µs the bursts lock to the tick, and the same run read 0.05 to
/// 2.8 s/GB depending on the phase (by hand: 15 to 258 ticks). 1009 µs sweeps the phase
/// (152–156 ticks, = the processes' own time).
const PACING_US: &str = "1009";
const FIXED_GBITS: f64 = 3.0;
/// Busy CPU of the machine with no traffic, measured for this long per round.
const IDLE_SAMPLE: Duration = Duration::from_secs(2);
const TABLE: &str = "bench_engines";
const PORT: u16 = 7001;
/// Goals: kernel throughput ≥ 2× serve, kernel CPU per GB ≤ 0.3× serve.
const GOAL_THROUGHPUT: f64 = 2.0;
const GOAL_CPU: f64 = 0.3;

const KERNEL_ROUTES: &str = r#"[settings]
table = "bench_engines"

[[routes]]
name = "bulk"
[routes.match]
ports = 7001
[routes.action]
forwarding_engine = "nftables"
targets = [{ host = "198.51.100.2", port = 5201 }]
"#;

const SERVE_ROUTES: &str = r#"[settings]
table = "bench_engines"

[[routes]]
name = "bulk"
[routes.match]
ports = 7001
addresses = ["192.0.2.1"]
[routes.action]
forwarding_engine = "userspace"
targets = [{ host = "198.51.100.2", port = 5201 }]
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path3 {
    Kernel,
    Serve,
    Plain,
}

// ---- CPU accounting --------------------------------------------------------------------

/// The `cpu` line of /proc/stat, in ticks.
#[derive(Clone, Copy)]
struct Ticks {
    /// user + nice + system + irq + softirq. Idle and iowait are not work; guest and
    /// guest_nice are already inside user and nice (proc(5)); steal (time the hypervisor
    /// gave to other guests while this one wanted to run) is no work done here either: it
    /// is kept apart and reported.
    busy: u64,
    steal: u64,
}

fn machine_ticks() -> Ticks {
    let text = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .expect("cpu line in /proc/stat");
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().expect("/proc/stat field"))
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Ticks {
        busy: at(0) + at(1) + at(2) + at(5) + at(6),
        steal: at(7),
    }
}

/// Fields of a /proc/PID/stat line, numbered as in proc(5) (1-based; 3 is the state).
fn stat_fields(text: &str) -> Vec<u64> {
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &text[text.rfind(')').expect("comm in a stat line") + 1..];
    let mut f = vec![0, 0]; // pid and comm
    f.extend(
        rest.split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0)),
    );
    f.insert(0, 0);
    f
}

/// utime + stime of a process (all its threads), in ticks; 0 once it is gone.
fn process_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|t| {
            let f = stat_fields(&t);
            f[14] + f[15]
        })
        .unwrap_or(0)
}

/// The kernel threads that run softirq work when it is deferred (their time is theirs,
/// not the softirq field's).
fn ksoftirqd_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.starts_with("ksoftirqd/") {
            pids.push(pid);
        }
    }
    pids
}

fn clk_tck() -> f64 {
    ok(Command::new("getconf").arg("CLK_TCK"))
        .trim()
        .parse()
        .expect("CLK_TCK")
}

// ---- iperf3 ------------------------------------------------------------------------------

struct Transfer {
    gbits: f64,
    /// The bytes of the whole run: the receiver's counted bytes plus what the client sent
    /// in the omitted warm-up second (the CPU window covers it too).
    bytes: f64,
    /// CPU of the iperf3 client (and `timeout`), in ticks.
    client_ticks: u64,
}

/// `iperf3 -J -t secs -O 1` from the client: the receiver's Gbit/s over the counted
/// seconds (as `common::iperf`), the bytes of the whole run, omitted second included, and
/// the client's CPU.
fn iperf_json(client: &Netns, host: &str, port: u16, secs: u32, rate: Option<&str>) -> Transfer {
    let (port, secs) = (port.to_string(), secs.to_string());
    // The shell reports its own stat line after iperf3 exits: cutime + cstime are then the
    // CPU of the client (the children it waited for).
    let mut args = vec![
        "sh",
        "-c",
        "timeout 30 iperf3 \"$@\"; rc=$?; read -r l < /proc/$$/stat; echo \"$l\" >&2; exit $rc",
        "sh",
        "-J",
        "-c",
        host,
        "-p",
        &port,
        "-t",
        &secs,
        "-O",
        "1",
    ];
    if let Some(rate) = rate {
        args.extend(["-b", rate, "--pacing-timer", PACING_US]);
    }
    let res = run(&mut client.cmd(&args));
    let out = String::from_utf8_lossy(&res.stdout);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        res.status.success(),
        "iperf3 to {host}:{port} failed: {out}{err}"
    );
    let shell = stat_fields(err.lines().last().expect("the shell's stat line"));
    let client_ticks = shell[16] + shell[17];
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let end = &v["end"]["sum_received"];
    let gbits = end["bits_per_second"].as_f64().expect("iperf3 result") / 1e9;
    let counted = end["bytes"].as_f64().expect("iperf3 bytes");
    let omitted: f64 = v["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["sum"]["omitted"].as_bool() == Some(true))
                .filter_map(|i| i["sum"]["bytes"].as_f64())
                .sum()
        })
        .unwrap_or(0.0);
    assert!(counted > 0.0, "iperf3 through {host}:{port} moved no bytes");
    Transfer {
        gbits,
        bytes: counted + omitted,
        client_ticks,
    }
}

// ---- engines -----------------------------------------------------------------------------

/// serve without health checks: its probes (a TCP connect every 2 s) reach iperf3's server
/// as aborted tests, and the kernel route has none either.
fn start_serve(t: &Topo, dir: &Path) -> Child {
    let child = t
        .gateway
        .cmd(&[
            "sh",
            "-c",
            &format!(
                "exec {} serve {} --watch-interval 0 --health-interval 0 2>{}",
                smartproxy_bin().display(),
                dir.join("serve.toml").display(),
                dir.join("serve.log").display()
            ),
        ])
        .env("SMARTPROXY_STATE_DIR", dir.join("state"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("serve starts");
    wait_port(&t.gateway, PORT);
    // `ip netns exec` and `sh -c exec` both exec: the child's pid is serve's.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap_or_default();
    assert_eq!(comm.trim(), "smartproxy", "serve's pid is the child's");
    child
}

fn listeners(ns: &Netns, port: u16) -> String {
    let out = run(&mut ns.cmd(&["ss", "-Hltnp", &format!("sport = :{port}")]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn has_table(ns: &Netns) -> bool {
    run(&mut ns.cmd(&["nft", "list", "table", "inet", TABLE]))
        .status
        .success()
}

/// Bytes counted by the route's counter (`c_bulk`): every forwarded packet of the route.
fn route_counter_bytes(ns: &Netns) -> f64 {
    let out = ns.exec_ok(&["nft", "-j", "list", "counter", "inet", TABLE, "c_bulk"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("nft JSON");
    v["nftables"]
        .as_array()
        .and_then(|a| a.iter().find_map(|o| o["counter"]["bytes"].as_f64()))
        .expect("counter c_bulk")
}

/// Neither engine up: nothing may answer on 192.0.2.1:7001.
fn assert_nothing_forwards(t: &Topo) {
    assert!(!has_table(&t.gateway), "table {TABLE} still loaded");
    assert!(
        listeners(&t.gateway, PORT).is_empty(),
        "something listens on :{PORT}"
    );
    let out = run(&mut t.client.cmd(&[
        "timeout",
        "10",
        "iperf3",
        "-c",
        "192.0.2.1",
        "-p",
        "7001",
        "-t",
        "1",
    ]));
    assert!(
        !out.status.success(),
        "iperf3 to 192.0.2.1:7001 succeeded with neither engine up"
    );
}

#[derive(Clone, Copy, Default)]
struct Run {
    gbits: f64,
    gb: f64,
    /// Wall time of the iperf3 run (the CPU window).
    wall_s: f64,
    /// Machine-wide busy CPU seconds over the iperf3 run.
    machine_s: f64,
    steal_s: f64,
    /// serve's own utime + stime over the run (serve only).
    process_s: f64,
    /// CPU of the run's own processes: the iperf3 client and server, serve (if any) and
    /// ksoftirqd; other tenants' work is left out.
    attributed_s: f64,
}

impl Run {
    fn machine_per_gb(&self) -> f64 {
        self.machine_s / self.gb
    }
    fn process_per_gb(&self) -> f64 {
        self.process_s / self.gb
    }
    fn attributed_per_gb(&self) -> f64 {
        self.attributed_s / self.gb
    }
    /// Share of all cores busy during the run (1.0: the machine was saturated).
    fn busy(&self, cores: f64) -> f64 {
        self.machine_s / (self.wall_s * cores)
    }
}

/// One path's runs in a round: as fast as it goes, then at the fixed rate.
#[derive(Clone, Copy, Default)]
struct Runs {
    max: Run,
    fixed: Run,
}

/// What the CPU of one run is sampled from.
struct Probe {
    tck: f64,
    /// The backend's iperf3 server and the ksoftirqd threads.
    always: Vec<u32>,
}

/// One iperf3 run with the CPU sampled around it; `pid` is the engine's process, if any.
fn measured(
    t: &Topo,
    host: &str,
    port: u16,
    rate: Option<&str>,
    pid: Option<u32>,
    probe: &Probe,
) -> Run {
    let sum = |pids: &[u32]| pids.iter().map(|p| process_ticks(*p)).sum::<u64>();
    let p0 = pid.map(process_ticks);
    let a0 = sum(&probe.always);
    let m0 = machine_ticks();
    let t0 = Instant::now();
    let x = iperf_json(&t.client, host, port, IPERF_SECS, rate);
    let wall_s = t0.elapsed().as_secs_f64();
    let m1 = machine_ticks();
    let a1 = sum(&probe.always);
    let p1 = pid.map(process_ticks);
    let tck = probe.tck;
    let process = match (p0, p1) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    Run {
        gbits: x.gbits,
        gb: x.bytes / 1e9,
        wall_s,
        machine_s: (m1.busy - m0.busy) as f64 / tck,
        steal_s: (m1.steal - m0.steal) as f64 / tck,
        process_s: process as f64 / tck,
        attributed_s: (x.client_ticks + a1.saturating_sub(a0) + process) as f64 / tck,
    }
}

/// Both runs of one path (`fixed`: also the fixed-rate run), the engine set up before and
/// taken down after, each run checked to have gone through the engine under test.
fn measure(t: &Topo, path: Path3, dir: &Path, probe: &Probe, fixed: bool) -> Runs {
    let state = dir.join("state");
    let kernel_file = dir.join("kernel.toml");
    let kernel_file = kernel_file.to_str().expect("utf-8 path");
    let rates: &[Option<&str>] = if fixed {
        &[None, Some(FIXED_RATE)]
    } else {
        &[None]
    };
    let mut got = Runs::default();
    let mut keep = |i: usize, r: Run| {
        if i == 0 {
            got.max = r;
        } else {
            got.fixed = r;
        }
    };
    match path {
        Path3::Kernel => {
            assert!(listeners(&t.gateway, PORT).is_empty(), "serve still up");
            t.gateway
                .smartproxy(&state, &["apply", "--auto-approve", kernel_file]);
            assert!(has_table(&t.gateway), "apply loaded no table {TABLE}");
            for (i, rate) in rates.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(PAUSE_SAME);
                }
                let before = route_counter_bytes(&t.gateway);
                let r = measured(t, "192.0.2.1", PORT, *rate, None, probe);
                let counted = route_counter_bytes(&t.gateway) - before;
                assert!(
                    counted >= 0.9 * r.gb * 1e9,
                    "the route's counter saw {counted} bytes of {} moved: not the kernel's route",
                    r.gb * 1e9
                );
                keep(i, r);
            }
            t.gateway
                .smartproxy(&state, &["destroy", "--table", TABLE, "--auto-approve"]);
        }
        Path3::Serve => {
            assert!(!has_table(&t.gateway), "kernel table still loaded");
            let mut child = start_serve(t, dir);
            let who = listeners(&t.gateway, PORT);
            assert!(
                who.contains("smartproxy"),
                "serve is not the listener on :{PORT}: {who}"
            );
            for (i, rate) in rates.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(PAUSE_SAME);
                }
                keep(
                    i,
                    measured(t, "192.0.2.1", PORT, *rate, Some(child.id()), probe),
                );
            }
            assert!(
                matches!(child.try_wait(), Ok(None)),
                "serve exited during the run"
            );
            // serve loads a table of its own for kernel routes; this file has none.
            let rules = t.gateway.exec_ok(&["nft", "list", "ruleset"]);
            assert!(
                rules.trim().is_empty(),
                "serve's run had nftables rules in the gateway: {rules}"
            );
            stop(child);
        }
        Path3::Plain => {
            assert!(!has_table(&t.gateway), "plain routing has no table");
            for (i, rate) in rates.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(PAUSE_SAME);
                }
                keep(i, measured(t, "198.51.100.2", 5201, *rate, None, probe));
            }
        }
    }
    got
}

/// Busy CPU seconds per second of the machine with no traffic of ours.
fn idle_rate(tck: f64) -> f64 {
    let b0 = machine_ticks().busy;
    let t = Instant::now();
    std::thread::sleep(IDLE_SAMPLE);
    let b1 = machine_ticks().busy;
    (b1 - b0) as f64 / tck / t.elapsed().as_secs_f64()
}

fn range2(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.2}–{hi:.2}")
}

fn main() {
    let needed = ["ip", "nft", "unshare", "iperf3", "ss", "getconf"];
    let missing: Vec<&str> = needed.iter().copied().filter(|c| !have(c)).collect();
    let root = ok(Command::new("id").arg("-u")).trim() == "0";
    if !root || !missing.is_empty() {
        eprintln!("engines bench not run: needs root and {needed:?}; missing {missing:?}");
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let rounds_n = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1)?.parse::<usize>().ok())
        .unwrap_or(ROUNDS)
        .clamp(1, 20);
    let started = Instant::now();
    let tck = clk_tck();
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    std::fs::create_dir_all(d.join("state")).expect("state dir");
    std::fs::write(d.join("kernel.toml"), KERNEL_ROUTES).expect("write kernel.toml");
    std::fs::write(d.join("serve.toml"), SERVE_ROUTES).expect("write serve.toml");

    let mut t = topology();
    // As bench/serve.rs: the gateway tuned as a proxy host (it does not matter to the
    // kernel path, which opens no sockets there).
    t.gateway.exec_ok(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ]);
    t.backend.spawn(&["iperf3", "-s", "-p", "5201"]);
    wait_port(&t.backend, 5201);
    // `ip netns exec` execs: the child's pid is the iperf3 server's.
    let server = t.backend.children[0].id();
    let comm = std::fs::read_to_string(format!("/proc/{server}/comm")).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "iperf3",
        "the iperf3 server's pid is the child's"
    );
    let mut always = ksoftirqd_pids();
    always.push(server);
    let probe = Probe { tck, always };

    // Every path forwards (and is the path it claims to be), with a warm-up run each.
    eprintln!("checking the paths:");
    assert_nothing_forwards(&t);
    for path in [Path3::Kernel, Path3::Serve, Path3::Plain] {
        let r = measure(&t, path, d, &probe, false);
        eprintln!("  {path:?} forwards: {:.2} Gbit/s", r.max.gbits);
        std::thread::sleep(PAUSE);
    }
    assert_nothing_forwards(&t);

    let cores: f64 = ok(&mut Command::new("nproc"))
        .trim()
        .parse()
        .expect("nproc");
    let mut rounds: Vec<[Runs; 3]> = Vec::new();
    let mut orders: Vec<String> = Vec::new();
    let mut idle = Vec::new();
    for k in 0..rounds_n {
        // Kernel and serve alternate which goes first; plain routing's place rotates.
        let mut order = if k % 2 == 0 {
            vec![Path3::Kernel, Path3::Serve]
        } else {
            vec![Path3::Serve, Path3::Kernel]
        };
        order.insert(k % 3, Path3::Plain);
        idle.push(idle_rate(tck));
        let mut got = [Runs::default(); 3];
        for path in &order {
            got[*path as usize] = measure(&t, *path, d, &probe, true);
            std::thread::sleep(PAUSE);
        }
        let [kr, sr, pr] = got;
        eprintln!(
            "round {k} ({order:?}): kernel {:.2} Gbit/s {:.3} s/GB | serve {:.2} Gbit/s {:.3} s/GB (process {:.3}) | plain {:.2} Gbit/s {:.3} s/GB | at {FIXED_RATE}: {:.3} / {:.3} / {:.3} s/GB | idle {:.2} CPU",
            kr.max.gbits,
            kr.max.machine_per_gb(),
            sr.max.gbits,
            sr.max.machine_per_gb(),
            sr.max.process_per_gb(),
            pr.max.gbits,
            pr.max.machine_per_gb(),
            kr.fixed.machine_per_gb(),
            sr.fixed.machine_per_gb(),
            pr.fixed.machine_per_gb(),
            idle[k]
        );
        orders.push(
            order
                .iter()
                .map(|p| match p {
                    Path3::Kernel => 'K',
                    Path3::Serve => 'S',
                    Path3::Plain => 'P',
                })
                .collect(),
        );
        rounds.push(got);
    }
    assert_nothing_forwards(&t);
    let serve_log = std::fs::read_to_string(d.join("serve.log")).unwrap_or_default();

    type Pick = fn(&Runs) -> Run;
    let max: Pick = |r| r.max;
    let fixed: Pick = |r| r.fixed;
    let col = |which: Pick, p: Path3, f: &dyn Fn(&Run) -> f64| -> Vec<f64> {
        rounds.iter().map(|r| f(&which(&r[p as usize]))).collect()
    };
    // Kernel / serve per round.
    let ratio = |which: Pick, f: &dyn Fn(&Run) -> f64| -> Vec<f64> {
        rounds
            .iter()
            .map(|r| f(&which(&r[0])) / f(&which(&r[1])))
            .collect()
    };
    let above = |which: Pick, p: Path3| -> Vec<f64> {
        rounds
            .iter()
            .map(|r| which(&r[p as usize]).machine_per_gb() - which(&r[2]).machine_per_gb())
            .collect()
    };
    let above_ratio = |which: Pick| -> Vec<f64> {
        let (k, s) = (above(which, Path3::Kernel), above(which, Path3::Serve));
        k.iter().zip(&s).map(|(k, s)| k / s).collect()
    };
    let (k, s, p) = (Path3::Kernel, Path3::Serve, Path3::Plain);
    let gbits = |r: &Run| r.gbits;
    let cpu = |r: &Run| r.machine_per_gb();
    let attributed = |r: &Run| r.attributed_per_gb();
    let proc_cpu = |r: &Run| r.process_per_gb();
    let busy = |r: &Run| r.busy(cores) * 100.0;
    let tp_ratio = ratio(max, &gbits);
    let cpu_ratio = ratio(max, &cpu);
    let (tp_m, cpu_m) = (median(&tp_ratio), median(&cpu_ratio));
    let steal: f64 = rounds
        .iter()
        .flatten()
        .map(|r| r.max.steal_s + r.fixed.steal_s)
        .sum();
    let slow_fixed = rounds
        .iter()
        .flatten()
        .filter(|r| r.fixed.gbits < 0.95 * FIXED_GBITS)
        .count();
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let m3 = |v: &[f64]| format!("{:.3}", median(v));
    // The rows both tables end with; `goal_column`: the table has a Goal column (left empty).
    let shared_rows = |which: Pick, goal_column: bool| {
        let end = if goal_column { "  |" } else { "" };
        let own = ratio(which, &attributed);
        println!(
            "| CPU s per GB of the run's own processes (check) | {} | {} | {} | {:.2}× | {} |{end}",
            m3(&col(which, k, &attributed)),
            m3(&col(which, s, &attributed)),
            m3(&col(which, p, &attributed)),
            median(&own),
            range2(&own)
        );
        let above_plain = above_ratio(which);
        println!(
            "| machine CPU s per GB above plain routing | {} | {} | — | {:.2}× | {} |{end}",
            m3(&above(which, k)),
            m3(&above(which, s)),
            median(&above_plain),
            range2(&above_plain)
        );
        println!(
            "| serve process CPU s per GB (utime + stime) | — | {} | — | — | {} |{end}",
            m3(&col(which, s, &proc_cpu)),
            range2(&col(which, s, &proc_cpu))
        );
        println!(
            "| machine busy during the run, % of {cores} cores | {:.0} | {:.0} | {:.0} | — | — |{end}",
            median(&col(which, k, &busy)),
            median(&col(which, s, &busy)),
            median(&col(which, p, &busy))
        );
    };

    println!(
        "machine: {cores} cores, CLK_TCK {tck}; busy CPU with no traffic of ours (before each round) {:.2} CPUs (range {}); steal over all measured runs {steal:.2} s",
        median(&idle),
        range2(&idle)
    );
    println!("\nAs fast as it goes (`iperf3 -t {IPERF_SECS} -O 1`):\n");
    println!("| Measurement | kernel (nftables) | serve | plain routing | kernel / serve (median of rounds) | range | Goal |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    println!(
        "| TCP throughput, Gbit/s | {:.2} | {:.2} | {:.2} | **{tp_m:.2}×** | {} | ≥ {GOAL_THROUGHPUT}×: {} |",
        median(&col(max, k, &gbits)),
        median(&col(max, s, &gbits)),
        median(&col(max, p, &gbits)),
        range2(&tp_ratio),
        verdict(tp_m >= GOAL_THROUGHPUT)
    );
    println!(
        "| machine-wide busy CPU s per GB (the goal's figure) | {} | {} | {} | **{cpu_m:.2}×** | {} | ≤ {GOAL_CPU}×: {} |",
        m3(&col(max, k, &cpu)),
        m3(&col(max, s, &cpu)),
        m3(&col(max, p, &cpu)),
        range2(&cpu_ratio),
        verdict(cpu_m <= GOAL_CPU)
    );
    shared_rows(max, true);
    println!("\nAt a fixed rate (`iperf3 -b {FIXED_RATE} --pacing-timer {PACING_US}`, same rounds; context, not a goal):\n");
    println!("| Measurement | kernel (nftables) | serve | plain routing | kernel / serve (median of rounds) | range |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| TCP throughput, Gbit/s | {:.2} | {:.2} | {:.2} | — | — |",
        median(&col(fixed, k, &gbits)),
        median(&col(fixed, s, &gbits)),
        median(&col(fixed, p, &gbits))
    );
    let fr = ratio(fixed, &cpu);
    println!(
        "| machine-wide busy CPU s per GB | {} | {} | {} | {:.2}× | {} |",
        m3(&col(fixed, k, &cpu)),
        m3(&col(fixed, s, &cpu)),
        m3(&col(fixed, p, &cpu)),
        median(&fr),
        range2(&fr)
    );
    shared_rows(fixed, false);
    println!("\nPer round, as fast as it goes (kernel / serve / plain):\n");
    println!("| round | order | Gbit/s | machine CPU s/GB | own-processes CPU s/GB | serve process CPU s/GB | GB moved | busy % | throughput ratio | CPU ratio | above-plain ratio | idle CPUs before |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, r) in rounds.iter().enumerate() {
        let [kr, sr, pr] = [r[0].max, r[1].max, r[2].max];
        println!(
            "| {i} | {} | {:.2} / {:.2} / {:.2} | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} | {:.3} | {:.1} / {:.1} / {:.1} | {:.0} / {:.0} / {:.0} | {:.2}× | {:.2}× | {:.2}× | {:.2} |",
            orders[i],
            kr.gbits,
            sr.gbits,
            pr.gbits,
            kr.machine_per_gb(),
            sr.machine_per_gb(),
            pr.machine_per_gb(),
            kr.attributed_per_gb(),
            sr.attributed_per_gb(),
            pr.attributed_per_gb(),
            sr.process_per_gb(),
            kr.gb,
            sr.gb,
            pr.gb,
            busy(&kr),
            busy(&sr),
            busy(&pr),
            tp_ratio[i],
            cpu_ratio[i],
            above_ratio(max)[i],
            idle[i]
        );
    }
    println!("\nPer round, at {FIXED_RATE} (kernel / serve / plain):\n");
    println!("| round | Gbit/s | machine CPU s/GB | own-processes CPU s/GB | serve process CPU s/GB | busy % | CPU ratio | above-plain ratio |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, r) in rounds.iter().enumerate() {
        let [kr, sr, pr] = [r[0].fixed, r[1].fixed, r[2].fixed];
        println!(
            "| {i} | {:.2} / {:.2} / {:.2} | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} | {:.3} | {:.0} / {:.0} / {:.0} | {:.2}× | {:.2}× |",
            kr.gbits,
            sr.gbits,
            pr.gbits,
            kr.machine_per_gb(),
            sr.machine_per_gb(),
            pr.machine_per_gb(),
            kr.attributed_per_gb(),
            sr.attributed_per_gb(),
            pr.attributed_per_gb(),
            sr.process_per_gb(),
            busy(&kr),
            busy(&sr),
            busy(&pr),
            fr[i],
            above_ratio(fixed)[i]
        );
    }
    if slow_fixed > 0 {
        println!(
            "\nWARNING: {slow_fixed} fixed-rate run(s) stayed below 95 % of {FIXED_RATE}bit/s."
        );
    }
    let log_lines = serve_log.lines().filter(|l| !l.trim().is_empty()).count();
    println!(
        "\nserve's log (last run) has {log_lines} line(s). Total bench time {:.0} s.",
        started.elapsed().as_secs_f64()
    );
}
