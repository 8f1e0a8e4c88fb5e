//! `smartproxy status`: per route, what the kernel counted (the named counter `c_<route>`),
//! the connections open now (conntrack entries carrying the route's mark) and, when
//! `smartproxy serve` runs, its own counters and target health, asked over its local socket.
//!
//! The kernel side is read-only and costs two commands whatever the number of routes: one
//! `nft -j list table inet NAME` (counters, the `route_filter` map that ties each mark to
//! `f_<route>`, and the mark mask of the filter rules) and one `conntrack -L`. These two
//! listings are run here rather than through [`crate::kernel::Kernel`], which has no JSON
//! listing and never reads conntrack.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::StatusFormat;
use crate::config::{self, TargetPort};
use crate::diag;
use crate::lower;
use crate::model::{KernelAction, KernelPort, KernelTarget, Model, UserspaceTarget};
use crate::state;
use crate::{EXIT_ERROR, EXIT_OK};

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelCounts {
    pub packets: u64,
    pub bytes: u64,
    pub active: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServeCounts {
    pub connections_total: u64,
    pub active: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: u64,
    pub refused: u64,
    pub tls_handshakes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetStatus {
    /// `198.51.100.2:80`, `[2001:db8::2]:80`; `ADDR:*` keeps the client's port, `ADDR:A-B`
    /// maps a range.
    pub target: String,
    /// `None`: not health-checked.
    pub up: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteStatus {
    pub name: String,
    /// `nftables` or `userspace`.
    pub engine: String,
    pub kernel: Option<KernelCounts>,
    pub serve: Option<ServeCounts>,
    pub targets: Vec<TargetStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServeInfo {
    pub pid: u32,
    /// `on`, `fallback` or `off`.
    pub nftables: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub table: String,
    pub serve: Option<ServeInfo>,
    /// Sorted by name.
    pub routes: Vec<RouteStatus>,
    /// An `apply --confirm-timeout` not confirmed yet (read from the state directory).
    #[serde(default)]
    pub pending_confirm: Option<crate::confirm::PendingConfirm>,
}

const ENGINE_NFTABLES: &str = "nftables";
const ENGINE_USERSPACE: &str = "userspace";

// ---------------------------------------------------------------- kernel side

/// What `nft -j list table` tells about the routes: counter values, each route's mark and
/// the mask the filter rules apply before looking the mark up.
#[derive(Debug, Default, PartialEq, Eq)]
struct TableListing {
    /// Route name -> (packets, bytes).
    counters: BTreeMap<String, (u64, u64)>,
    /// Route name -> its mark (already inside the mask).
    marks: BTreeMap<String, u32>,
    /// `None` when no filter rule looks up `@route_filter` (a table not made by smartproxy).
    mask: Option<u32>,
}

/// Per route of `inet <table>` (by route name): its named counter `c_<route>` (packets,
/// bytes) and the conntrack entries whose mark, under the table's mark mask, is the route's
/// mark (active). Ok(empty map) when the table does not exist.
pub fn kernel_counts(table: &str) -> Result<BTreeMap<String, KernelCounts>, String> {
    Ok(read_kernel(table)?.unwrap_or_default())
}

/// [`kernel_counts`], telling an absent table (`None`) from an empty one.
fn read_kernel(table: &str) -> Result<Option<BTreeMap<String, KernelCounts>>, String> {
    let Some(json) = list_table_json(table)? else {
        return Ok(None);
    };
    let listing = parse_table(&json)?;
    let active = if listing.marks.is_empty() {
        BTreeMap::new()
    } else {
        conntrack_listing()
            .map(|text| count_active(&text, listing.mask.unwrap_or(u32::MAX), &listing.marks))
            .unwrap_or_default()
    };
    let mut out = BTreeMap::new();
    for (name, &(packets, bytes)) in &listing.counters {
        out.insert(
            name.clone(),
            KernelCounts {
                packets,
                bytes,
                active: active.get(name).copied().unwrap_or(0),
            },
        );
    }
    Ok(Some(out))
}

/// `nft -j list table inet NAME` (`$SMARTPROXY_NFT` as for plan and apply); `None` when the
/// table does not exist.
fn list_table_json(table: &str) -> Result<Option<String>, String> {
    let nft = std::env::var("SMARTPROXY_NFT").unwrap_or_else(|_| "nft".to_owned());
    let out = crate::kernel::exec::output(&nft, &["-j", "list", "table", "inet", table])
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No such file or directory") {
        return Ok(None);
    }
    Err(format!(
        "`{nft} -j list table inet {table}` failed ({}): {}",
        out.status,
        stderr.trim()
    ))
}

/// `conntrack -L` of this network namespace; `None` when conntrack-tools is missing or
/// fails (then nothing counts as active).
fn conntrack_listing() -> Option<String> {
    let out = crate::kernel::exec::output("conntrack", &["-L"]).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A number in nft's JSON: a JSON number, or a string in decimal or `0x` hex.
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

fn as_u32(v: &Value) -> Option<u32> {
    as_u64(v).and_then(|n| u32::try_from(n).ok())
}

/// Parses `nft -j list table inet NAME`.
fn parse_table(json: &str) -> Result<TableListing, String> {
    let doc: Value =
        serde_json::from_str(json).map_err(|e| format!("cannot read nft's JSON listing: {e}"))?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("cannot read nft's JSON listing: no `nftables` array")?;
    let mut out = TableListing::default();
    for obj in objects {
        if let Some(c) = obj.get("counter") {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if let Some(route) = crate::nft::names::route_of_counter(name) {
                let get = |k| c.get(k).and_then(as_u64).unwrap_or(0);
                out.counters
                    .insert(route.to_owned(), (get("packets"), get("bytes")));
            }
        } else if let Some(m) = obj.get("map") {
            if m.get("name").and_then(Value::as_str) == Some("route_filter") {
                for elem in m
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some((route, mark)) = filter_element(elem) {
                        out.marks.insert(route, mark);
                    }
                }
            }
        } else if let Some(r) = obj.get("rule") {
            let chain = r.get("chain").and_then(Value::as_str);
            if matches!(chain, Some("filter_forward" | "filter_input")) && out.mask.is_none() {
                out.mask = r
                    .get("expr")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find_map(route_filter_mask);
            }
        }
    }
    Ok(out)
}

/// One `route_filter` element, `[MARK, {"jump": {"target": "f_<route>"}}]` (the key may
/// come wrapped as `{"elem": {"val": MARK, …}}`) -> (route, mark).
fn filter_element(elem: &Value) -> Option<(String, u32)> {
    let pair = elem.as_array()?;
    let key = pair.first()?;
    let key = key.get("elem").and_then(|e| e.get("val")).unwrap_or(key);
    let mark = as_u32(key)?;
    let target = pair.get(1)?.get("jump")?.get("target")?.as_str()?;
    Some((
        crate::nft::names::route_of_filter_chain(target)?.to_owned(),
        mark,
    ))
}

/// The mask of `ct mark & MASK vmap @route_filter`; `ct mark vmap @route_filter` (no `&`)
/// is the whole mark.
fn route_filter_mask(expr: &Value) -> Option<u32> {
    let vmap = expr.get("vmap")?;
    if vmap.get("data")?.as_str()? != "@route_filter" {
        return None;
    }
    let key = vmap.get("key")?;
    match key.get("&").and_then(Value::as_array) {
        Some(and) => and.iter().find_map(as_u32),
        None => key.get("ct").map(|_| u32::MAX),
    }
}

/// Counts, per route, the `conntrack -L` entries whose `mark=N` under `mask` is the route's
/// mark. Entries in TIME_WAIT or CLOSE are connections already over (kept only to absorb
/// late packets), so they are not active; every other state is (half-closed ones too, and
/// UDP entries, which have no state, until they time out).
fn count_active(
    conntrack: &str,
    mask: u32,
    marks: &BTreeMap<String, u32>,
) -> BTreeMap<String, u64> {
    let by_mark: BTreeMap<u32, &str> = marks
        .iter()
        .map(|(route, &mark)| (mark, route.as_str()))
        .collect();
    let mut out = BTreeMap::new();
    for line in conntrack.lines() {
        let mut mark = None;
        let mut over = false;
        for word in line.split_whitespace() {
            if let Some(v) = word.strip_prefix("mark=") {
                mark = v.parse::<u32>().ok();
            } else if word == "TIME_WAIT" || word == "CLOSE" {
                over = true;
            }
        }
        let Some(mark) = mark else { continue };
        if over || mark & mask == 0 {
            continue;
        }
        if let Some(route) = by_mark.get(&(mark & mask)) {
            *out.entry((*route).to_owned()).or_insert(0) += 1;
        }
    }
    out
}

// ---------------------------------------------------------------- serve's socket

/// The local socket a running serve answers status on: state::path(table, "sock").
pub fn socket_path(table: &str) -> PathBuf {
    state::path(table, "sock")
}

/// How long a running serve has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read from the socket (a status of 100,000 routes is ~30 MB).
const ANSWER_MAX: usize = 64 * 1024 * 1024;

/// Asks a running serve (connect to socket_path, write "status\n", read a JSON Status to
/// EOF); None when none answers within ~2 s.
pub fn ask_serve(table: &str) -> Option<Status> {
    let deadline = Instant::now() + ASK_TIMEOUT;
    let mut stream = std::os::unix::net::UnixStream::connect(socket_path(table)).ok()?;
    stream.set_write_timeout(Some(ASK_TIMEOUT)).ok()?;
    stream.write_all(b"status\n").ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if answer.len() + n > ANSWER_MAX => return None,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    serde_json::from_slice(&answer).ok()
}

// ---------------------------------------------------------------- building a Status

/// A target as status shows it (see [`TargetStatus::target`]).
fn target_text(addr: IpAddr, port: &str) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn kernel_target(t: &KernelTarget, local: IpAddr) -> String {
    let addr = t.addr.unwrap_or(local);
    match t.port {
        KernelPort::Fixed { port } => SocketAddr::new(addr, port).to_string(),
        KernelPort::Preserve => target_text(addr, "*"),
        KernelPort::Map { from, to_first } => {
            let last = u32::from(to_first) + from.len() - 1;
            target_text(addr, &format!("{to_first}-{last}"))
        }
    }
}

fn userspace_targets(t: &UserspaceTarget) -> impl Iterator<Item = String> + '_ {
    t.addrs.iter().map(move |&addr| match t.port {
        TargetPort::Fixed { port } => SocketAddr::new(addr, port).to_string(),
        TargetPort::Preserve => target_text(addr, "*"),
        TargetPort::Range { first, last } => target_text(addr, &format!("{first}-{last}")),
    })
}

fn unchecked(targets: impl IntoIterator<Item = String>) -> Vec<TargetStatus> {
    let mut seen: Vec<String> = targets.into_iter().collect();
    seen.sort();
    seen.dedup();
    seen.into_iter()
        .map(|target| TargetStatus { target, up: None })
        .collect()
}

/// The status of the model's routes from the kernel's counts, plus any route the table
/// counts that the model no longer has (drift: `plan` would destroy it).
pub fn from_model(model: &Model, mut counts: BTreeMap<String, KernelCounts>) -> Status {
    let userspace: BTreeSet<&str> = model.userspace.iter().map(|r| r.name.as_str()).collect();
    let mut routes = Vec::new();
    // A kernel route named like a userspace route is that route's kernel part (its
    // connections go on to serve): it is listed once, as the userspace route.
    for r in model
        .kernel
        .iter()
        .filter(|r| !userspace.contains(r.name.as_str()))
    {
        let targets = if let KernelAction::Forward { v4, v6 } = &r.action {
            let v4 = v4.iter().flat_map(|s| &s.targets);
            let v6 = v6.iter().flat_map(|s| &s.targets);
            unchecked(
                v4.map(|t| kernel_target(t, Ipv4Addr::LOCALHOST.into()))
                    .chain(v6.map(|t| kernel_target(t, Ipv6Addr::LOCALHOST.into()))),
            )
        } else {
            Vec::new()
        };
        routes.push(RouteStatus {
            name: r.name.clone(),
            engine: ENGINE_NFTABLES.to_owned(),
            kernel: counts.remove(&r.name),
            serve: None,
            targets,
        });
    }
    for r in &model.userspace {
        routes.push(RouteStatus {
            name: r.name.clone(),
            engine: ENGINE_USERSPACE.to_owned(),
            kernel: counts.remove(&r.name),
            serve: None,
            targets: unchecked(r.targets.iter().flat_map(userspace_targets)),
        });
    }
    let mut status = from_counts(&model.table, counts);
    status.routes.extend(routes);
    status.routes.sort_by(|a, b| a.name.cmp(&b.name));
    status
}

/// One route per counter of the table.
fn from_counts(table: &str, counts: BTreeMap<String, KernelCounts>) -> Status {
    Status {
        table: table.to_owned(),
        serve: None,
        pending_confirm: None,
        routes: counts
            .into_iter()
            .map(|(name, k)| RouteStatus {
                name,
                engine: ENGINE_NFTABLES.to_owned(),
                kernel: Some(k),
                serve: None,
                targets: Vec::new(),
            })
            .collect(),
    }
}

/// Loads and lowers the route files; prints their diagnostics when they are invalid.
fn load_model(paths: &[PathBuf], color: bool) -> Result<Model, i32> {
    let loaded = config::load(paths);
    let report = |diags: &[diag::Diagnostic]| {
        let color = color && std::io::stderr().is_terminal();
        let text = diag::render(&loaded.sources, diags, diag::Format::Text, color);
        let _ = std::io::stderr().write_all(text.as_bytes());
    };
    let Some(cfg) = loaded.config.as_ref().filter(|_| !loaded.has_errors()) else {
        report(&loaded.diagnostics);
        return Err(EXIT_ERROR);
    };
    lower::lower(cfg, &lower::SystemResolver).map_err(|diags| {
        report(&diags);
        EXIT_ERROR
    })
}

/// `smartproxy status [PATH...] [--table NAME] [--format F]`: exit 0, also when the table
/// does not exist; 1 when the route files are invalid or `nft` fails.
pub fn run(paths: &[PathBuf], table: Option<&str>, format: StatusFormat, color: bool) -> i32 {
    let model = if paths.is_empty() {
        None
    } else {
        match load_model(paths, color) {
            Ok(m) => Some(m),
            Err(code) => return code,
        }
    };
    let table = table
        .map(str::to_owned)
        .or_else(|| model.as_ref().map(|m| m.table.clone()))
        .unwrap_or_else(|| "smartproxy".to_owned());
    let (mut status, absent) = match ask_serve(&table) {
        Some(s) => (s, false),
        None => match read_kernel(&table) {
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_ERROR;
            }
            Ok(None) => (from_counts(&table, BTreeMap::new()), true),
            Ok(Some(counts)) => match &model {
                Some(m) => {
                    let mut s = from_model(m, counts);
                    s.table.clone_from(&table);
                    (s, false)
                }
                None => (from_counts(&table, counts), false),
            },
        },
    };
    status.pending_confirm = crate::confirm::pending(&table);
    if let Some(p) = crate::confirm::pending(&table) {
        eprintln!("warning: {}", p.notice);
    }
    let out = match format {
        StatusFormat::Text if absent => format!(
            "table inet {table} does not exist in this network namespace (nothing applied)\n"
        ),
        StatusFormat::Text => render_text(&status),
        StatusFormat::Json => render_json(&status),
        StatusFormat::Prometheus => render_prometheus(&status, true),
    };
    let _ = std::io::stdout().write_all(out.as_bytes());
    EXIT_OK
}

// ---------------------------------------------------------------- rendering

fn opt<T>(v: Option<&T>, f: impl FnOnce(&T) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

fn targets_text(targets: &[TargetStatus]) -> String {
    if targets.is_empty() {
        return "-".to_owned();
    }
    targets
        .iter()
        .map(|t| match t.up {
            None => t.target.clone(),
            Some(true) => format!("{} up", t.target),
            Some(false) => format!("{} DOWN", t.target),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A readable table: route, engine, kernel packets/bytes/active, serve connections (total
/// and active) and bytes (in/out), targets with their health. `-` where an engine has no
/// value.
pub fn render_text(s: &Status) -> String {
    let mut out = format!("table inet {}", s.table);
    match &s.serve {
        Some(serve) => {
            let _ = writeln!(
                out,
                " (serve pid {}, nftables {})",
                serve.pid, serve.nftables
            );
        }
        None => out.push_str(" (serve not running)\n"),
    }
    if s.routes.is_empty() {
        out.push_str("no routes\n");
        return out;
    }
    let header = [
        "ROUTE",
        "ENGINE",
        "PACKETS",
        "BYTES",
        "ACTIVE",
        "SERVE CONNS",
        "SERVE ACTIVE",
        "SERVE IN/OUT",
        "TARGETS",
    ];
    let mut rows: Vec<[String; 9]> = vec![header.map(str::to_owned)];
    for r in &s.routes {
        let k = r.kernel.as_ref();
        let v = r.serve.as_ref();
        rows.push([
            r.name.clone(),
            r.engine.clone(),
            opt(k, |k| k.packets.to_string()),
            opt(k, |k| k.bytes.to_string()),
            opt(k, |k| k.active.to_string()),
            opt(v, |v| v.connections_total.to_string()),
            opt(v, |v| v.active.to_string()),
            opt(v, |v| format!("{}/{}", v.bytes_in, v.bytes_out)),
            targets_text(&r.targets),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            match i {
                0 | 1 => {
                    let _ = write!(line, "{cell:<w$}  ");
                }
                8 => line.push_str(cell),
                _ => {
                    let _ = write!(line, "{cell:>w$}  ");
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `serde_json` pretty form of [`Status`]; fields in declaration order, absent values `null`.
pub fn render_json(s: &Status) -> String {
    // A Status is strings, numbers and options: serialising it cannot fail.
    let mut out = serde_json::to_string_pretty(s).unwrap_or_default();
    out.push('\n');
    out
}

/// A metric family over the routes: name, type, help, and the value of a route (none: the
/// route has no sample).
type RouteFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&RouteStatus) -> Option<u64>,
);

const KERNEL_FAMILIES: [RouteFamily; 3] = [
    (
        "smartproxy_kernel_packets_total",
        "counter",
        "packets counted by the route's nftables counter (both directions)",
        |r| r.kernel.as_ref().map(|k| k.packets),
    ),
    (
        "smartproxy_kernel_bytes_total",
        "counter",
        "bytes counted by the route's nftables counter (both directions)",
        |r| r.kernel.as_ref().map(|k| k.bytes),
    ),
    (
        "smartproxy_kernel_active_connections",
        "gauge",
        "conntrack entries with the route's mark, not in TIME_WAIT or CLOSE",
        |r| r.kernel.as_ref().map(|k| k.active),
    ),
];

/// The values of serve's families, in the order of its `/metrics`
/// ([`crate::serve::metrics::ROUTE_FAMILIES`], names, types and help).
const SERVE_VALUES: [fn(&RouteStatus) -> Option<u64>; 7] = [
    |r| r.serve.as_ref().map(|v| v.connections_total),
    |r| r.serve.as_ref().map(|v| v.active),
    |r| r.serve.as_ref().map(|v| v.bytes_in),
    |r| r.serve.as_ref().map(|v| v.bytes_out),
    |r| r.serve.as_ref().map(|v| v.errors),
    |r| r.serve.as_ref().map(|v| v.refused),
    |r| r.serve.as_ref().map(|v| v.tls_handshakes),
];

/// Prometheus text exposition. `with_serve`: also the serve counters (serve's own /metrics
/// already exports those, under the names in src/serve/metrics.rs, so it passes false).
pub fn render_prometheus(s: &Status, with_serve: bool) -> String {
    let mut out = String::new();
    let serve: Vec<RouteFamily> = crate::serve::metrics::ROUTE_FAMILIES
        .iter()
        .zip(SERVE_VALUES)
        .filter(|_| with_serve)
        .map(|(&(name, kind, help), value)| (name, kind, help, value))
        .collect();
    for (name, kind, help, value) in KERNEL_FAMILIES.iter().chain(&serve) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for r in &s.routes {
            if let Some(v) = value(r) {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\"}} {v}",
                    crate::serve::metrics::escape_label(&r.name)
                );
            }
        }
    }
    let name = "smartproxy_target_up";
    let _ = writeln!(
        out,
        "# HELP {name} whether the target passed its last health check (1) or not (0)"
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for r in &s.routes {
        for t in &r.targets {
            if let Some(up) = t.up {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\",target=\"{}\"}} {}",
                    crate::serve::metrics::escape_label(&r.name),
                    crate::serve::metrics::escape_label(&t.target),
                    u8::from(up)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `nft -j list table inet stx` (nftables 1.0.6) after applying two routes
    /// with the default mask, trimmed to the objects status reads plus a few it must skip.
    const NFT_SAMPLE: &str = r#"{"nftables": [
{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"table": {"family": "inet", "name": "stx", "handle": 2}},
{"counter": {"family": "inet", "name": "c_api-v2", "table": "stx", "handle": 15, "comment": "api-v2", "packets": 7, "bytes": 420}},
{"counter": {"family": "inet", "name": "c_web", "table": "stx", "handle": 16, "comment": "web", "packets": 12, "bytes": 1337}},
{"map": {"family": "inet", "name": "dnat4", "table": "stx", "type": ["inet_proto", "inet_service"], "handle": 17, "map": "verdict", "elem": [[{"concat": ["tcp", 8080]}, {"jump": {"target": "n4_web"}}]]}},
{"map": {"family": "inet", "name": "route_filter", "table": "stx", "type": "mark", "handle": 25, "map": "verdict", "elem": [[2818048, {"jump": {"target": "f_api-v2"}}], [3670016, {"jump": {"target": "f_web"}}]]}},
{"map": {"family": "inet", "name": "route_snat", "table": "stx", "type": "mark", "handle": 26, "map": "verdict", "elem": [[2818048, {"jump": {"target": "masq"}}]]}},
{"rule": {"family": "inet", "table": "stx", "chain": "f_web", "handle": 40, "expr": [{"counter": "c_web"}]}},
{"rule": {"family": "inet", "table": "stx", "chain": "nat_postrouting", "handle": 54, "expr": [{"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "original"}}, {"vmap": {"key": {"&": [{"ct": {"key": "mark"}}, 16711680]}, "data": "@route_snat"}}]}},
{"rule": {"family": "inet", "table": "stx", "chain": "filter_input", "handle": 55, "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iif"}}, "right": "lo"}}, {"vmap": {"key": {"&": [{"ct": {"key": "mark"}}, 16711680]}, "data": "@route_filter"}}]}},
{"rule": {"family": "inet", "table": "stx", "chain": "filter_forward", "handle": 56, "expr": [{"vmap": {"key": {"&": [{"ct": {"key": "mark"}}, 16711680]}, "data": "@route_filter"}}]}}
]}"#;

    fn marks() -> BTreeMap<String, u32> {
        [
            ("api-v2".to_owned(), 0x002b_0000),
            ("web".to_owned(), 0x0038_0000),
        ]
        .into()
    }

    #[test]
    fn status_parses_counters_marks_and_mask_of_a_captured_listing() {
        let l = parse_table(NFT_SAMPLE).expect("parses");
        assert_eq!(
            l.counters,
            [
                ("api-v2".to_owned(), (7, 420)),
                ("web".to_owned(), (12, 1337))
            ]
            .into()
        );
        assert_eq!(l.marks, marks());
        assert_eq!(l.mask, Some(0x00ff_0000));
    }

    #[test]
    fn status_reads_wrapped_elements_hex_strings_and_an_unmasked_lookup() {
        let json = r#"{"nftables": [
{"map": {"name": "route_filter", "elem": [[{"elem": {"val": "0x10", "comment": "x"}}, {"jump": {"target": "f_a"}}], [5, {"goto": {"target": "f_b"}}], [6, {"jump": {"target": "masq"}}]]}},
{"rule": {"chain": "filter_forward", "expr": [{"vmap": {"key": {"ct": {"key": "mark"}}, "data": "@route_filter"}}]}}
]}"#;
        let l = parse_table(json).expect("parses");
        assert_eq!(l.marks, [("a".to_owned(), 0x10)].into());
        assert_eq!(l.mask, Some(u32::MAX));
    }

    #[test]
    fn status_refuses_what_is_not_an_nft_listing() {
        assert!(parse_table("not json").is_err());
        assert!(parse_table(r#"{"other": []}"#).is_err());
        assert_eq!(
            parse_table(r#"{"nftables": []}"#).expect("empty"),
            TableListing::default()
        );
    }

    #[test]
    fn status_counts_conntrack_entries_by_masked_mark_and_skips_closed_ones() {
        // Bits outside the mask (0xff000000, 0x0000ffff: other software's) do not matter.
        let web = 0x0038_0000u32;
        let lines = [
            format!("tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=192.0.2.1 sport=40000 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=40000 [ASSURED] mark={web} use=1"),
            format!("tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=192.0.2.1 sport=40001 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=40001 [ASSURED] mark={} use=1", web | 0x0100_0001),
            format!("tcp      6 119 TIME_WAIT src=192.0.2.2 dst=192.0.2.1 sport=40002 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=40002 [ASSURED] mark={web} use=1"),
            format!("tcp      6 9 CLOSE src=192.0.2.2 dst=192.0.2.1 sport=40003 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=40003 mark={web} use=1"),
            format!("tcp      6 59 CLOSE_WAIT src=192.0.2.2 dst=192.0.2.1 sport=40004 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=40004 [ASSURED] mark={web} use=1"),
            format!("udp      17 29 src=192.0.2.2 dst=192.0.2.1 sport=5353 dport=53 src=198.51.100.3 dst=192.0.2.2 sport=53 dport=5353 mark={} use=1", 0x002b_0000),
            "tcp      6 431999 ESTABLISHED src=192.0.2.9 dst=192.0.2.1 sport=22 dport=50000 src=192.0.2.1 dst=192.0.2.9 sport=50000 dport=22 [ASSURED] mark=0 use=1".to_owned(),
            format!("tcp      6 431999 ESTABLISHED src=192.0.2.9 dst=192.0.2.1 sport=1 dport=2 src=192.0.2.1 dst=192.0.2.9 sport=2 dport=1 [ASSURED] mark={} use=1", 0x0011_0000),
            "conntrack v1.4.7 (conntrack-tools): 8 flow entries have been shown.".to_owned(),
        ];
        let counted = count_active(&lines.join("\n"), 0x00ff_0000, &marks());
        assert_eq!(
            counted,
            [("api-v2".to_owned(), 1), ("web".to_owned(), 3)].into()
        );
        // Under the whole mark, the entry with foreign bits is another mark.
        let whole = count_active(&lines.join("\n"), u32::MAX, &marks());
        assert_eq!(whole.get("web"), Some(&2));
    }

    fn sample() -> Status {
        Status {
            table: "edge".into(),
            pending_confirm: None,
            serve: Some(ServeInfo {
                pid: 42,
                nftables: "on".into(),
            }),
            routes: vec![
                RouteStatus {
                    name: "sni \"x\"".into(),
                    engine: ENGINE_USERSPACE.into(),
                    kernel: None,
                    serve: Some(ServeCounts {
                        connections_total: 9,
                        active: 2,
                        bytes_in: 100,
                        bytes_out: 2000,
                        errors: 1,
                        refused: 3,
                        tls_handshakes: 8,
                    }),
                    targets: vec![
                        TargetStatus {
                            target: "198.51.100.2:443".into(),
                            up: Some(true),
                        },
                        TargetStatus {
                            target: "198.51.100.3:443".into(),
                            up: Some(false),
                        },
                    ],
                },
                RouteStatus {
                    name: "web".into(),
                    engine: ENGINE_NFTABLES.into(),
                    kernel: Some(KernelCounts {
                        packets: 12,
                        bytes: 1337,
                        active: 1,
                    }),
                    serve: None,
                    targets: vec![TargetStatus {
                        target: "198.51.100.2:80".into(),
                        up: None,
                    }],
                },
            ],
        }
    }

    #[test]
    fn status_text_aligns_columns_and_marks_health() {
        let text = render_text(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "table inet edge (serve pid 42, nftables on)");
        assert!(lines[1].starts_with("ROUTE"), "{text}");
        assert!(
            lines[2].contains("9") && lines[2].contains("100/2000"),
            "{text}"
        );
        assert!(
            lines[2].ends_with("198.51.100.2:443 up, 198.51.100.3:443 DOWN"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("web ") && lines[3].contains("1337"),
            "{text}"
        );
        assert_eq!(lines[1].find("ENGINE"), lines[3].find("nftables"), "{text}");
    }

    #[test]
    fn status_json_round_trips() {
        let s = sample();
        let back: Status = serde_json::from_str(&render_json(&s)).expect("parses");
        assert_eq!(back, s);
    }

    #[test]
    fn status_prometheus_escapes_labels_and_leaves_serve_to_serve() {
        let s = sample();
        let with = render_prometheus(&s, true);
        assert!(with.contains("smartproxy_kernel_packets_total{route=\"web\"} 12\n"));
        assert!(with.contains("smartproxy_kernel_active_connections{route=\"web\"} 1\n"));
        assert!(with.contains("smartproxy_serve_connections_active{route=\"sni \\\"x\\\"\"} 2\n"));
        assert!(with.contains(
            "smartproxy_target_up{route=\"sni \\\"x\\\"\",target=\"198.51.100.3:443\"} 0\n"
        ));
        assert!(
            !with.contains("target=\"198.51.100.2:80\""),
            "unchecked target"
        );
        let without = render_prometheus(&s, false);
        assert!(!without.contains("smartproxy_serve_"));
        assert!(without.contains("smartproxy_target_up{"));
    }

    #[test]
    fn status_socket_lives_in_the_state_directory() {
        let p = socket_path("edge");
        assert_eq!(p.parent(), Some(state::dir().as_path()));
        assert_eq!(p.file_name().and_then(|n| n.to_str()), Some("edge.sock"));
    }
}
