//! Raw route files -> one [`Config`], collecting every error.
//!
//! Checks meaning: name syntax and uniqueness, ports and ranges, hosts, CIDRs, rates, enum
//! values, certificate files, engine rules, conflicts between routes. It never resolves a
//! name and never touches the kernel. Each finding is a [`Diagnostic`] with a stable code;
//! the codes are listed in `docs/diagnostics.md`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::parse::{RawFile, RawPort, RawRoute, RawSettings};
use super::{
    ActionKind, Affinity, ByteRate, Config, Engine, EngineChoice, Host, NftOptions, PortRange,
    Protocol, Rate, Redirect, Route, Security, Settings, SizeUnit, Target, TargetPort, TimeUnit,
    Tls, TlsMode,
};
use crate::diag::{Diagnostic, FileId, Sp, Span};

/// Validates all parsed files together; `dir` is each file's folder (certificate paths are
/// relative to it).
pub fn validate(files: &[(FileId, PathBuf, RawFile)], diags: &mut Vec<Diagnostic>) -> Config {
    let settings = settings(files, diags);
    // Routes are checked one file per thread; `order` is set once they are joined.
    let per_file = super::in_parallel(files, |(_, dir, raw)| {
        let mut file_diags = Vec::new();
        let mut routes = Vec::with_capacity(raw.routes.len());
        routes.extend(
            raw.routes
                .iter()
                .filter_map(|raw_route| route(raw_route, dir, &settings, &mut file_diags)),
        );
        (routes, file_diags)
    });
    let mut routes = Vec::with_capacity(per_file.iter().map(|(r, _)| r.len()).sum());
    for (file_routes, file_diags) in per_file {
        diags.extend(file_diags);
        for mut route in file_routes {
            route.order = routes.len();
            routes.push(route);
        }
    }
    unique_names(&routes, diags);
    conflicts(&routes, diags);
    shadowed(&routes, diags);
    mark_capacity(&settings, &routes, diags);
    Config { settings, routes }
}

// ---- settings ---------------------------------------------------------------------------

fn settings(files: &[(FileId, PathBuf, RawFile)], diags: &mut Vec<Diagnostic>) -> Settings {
    let mut found: Vec<&RawSettings> = files
        .iter()
        .filter_map(|(_, _, f)| f.settings.as_ref())
        .collect();
    let Some(first) = found.first().copied() else {
        return Settings::default();
    };
    for other in found.drain(1..) {
        diags.push(
            Diagnostic::error("E006", other.span, "`[settings]` is defined more than once")
                .label("second `[settings]` here")
                .also(first.span, "first `[settings]` here")
                .help("keep `[settings]` in one file only (e.g. `00-settings.toml`)"),
        );
    }
    let mut s = Settings {
        span: Some(first.span),
        ..Settings::default()
    };
    if let Some(table) = &first.table {
        if table_name_ok(&table.value) {
            s.table.clone_from(&table.value);
        } else {
            diags.push(
                Diagnostic::error(
                    "E027",
                    table.span,
                    format!("invalid table name `{}`", table.value),
                )
                .label(table_name_problem(&table.value))
                .help("use [a-z][a-z0-9_]{0,31}, not an nft keyword (e.g. `smartproxy`)"),
            );
        }
    }
    if let Some(engine) = &first.default_engine {
        if let Some(e) = engine_choice(engine, "default engine", diags) {
            s.default_engine = e;
            s.default_engine_span = Some(engine.span);
        }
    }
    if let Some(mask) = &first.ct_mark_mask {
        match parse_mask(&mask.value) {
            Ok(m) => {
                s.ct_mark_mask = m;
                s.ct_mark_mask_span = Some(mask.span);
            }
            Err(why) => diags.push(
                Diagnostic::error("E026", mask.span, format!("invalid `ct_mark_mask`: {why}"))
                    .label("not a usable mark mask")
                    .help("give one contiguous run of bits as hex, e.g. \"0x00ff0000\""),
            ),
        }
    }
    if let Some(group) = &first.log_group {
        match u16::try_from(group.value) {
            Ok(g) => s.log_group = g,
            Err(_) => diags.push(out_of_range(group.span, "log_group", 0, 65535)),
        }
    }
    s
}

fn table_name_ok(name: &str) -> bool {
    name_syntax_ok(name) && !name.contains('-') && !crate::nft::keywords::is_nft_keyword(name)
}

/// Why a table name is refused, for the label of E027.
fn table_name_problem(name: &str) -> String {
    if name_syntax_ok(name) && crate::nft::keywords::is_nft_keyword(name) {
        format!("`{name}` is an nft keyword")
    } else if name.contains('-') && name_syntax_ok(name) {
        "`-` is not allowed in a table name".to_owned()
    } else {
        // The route-name wording, less the `-` a table name may not hold.
        name_problem(name).replace("digits, `_`, `-`)", "digits, `_`)")
    }
}

/// The one rule for a table name, wherever it comes from (`settings.table`, `--table`,
/// a saved plan, a state file's name): `Err` says why it is refused.
pub fn table_name(name: &str) -> Result<(), String> {
    if table_name_ok(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid table name `{}`: {}; use [a-z][a-z0-9_]{{0,31}}, not an nft keyword",
            crate::diag::escape(name),
            crate::diag::escape(&table_name_problem(name))
        ))
    }
}

/// `0x00ff0000`, `0o…`, `0b…` or decimal, `_` allowed between digits (as in a TOML
/// integer); one contiguous run of set bits.
fn parse_mask(text: &str) -> Result<u32, &'static str> {
    let text: String = text.trim().chars().filter(|c| *c != '_').collect();
    let lower = text.to_ascii_lowercase();
    let (digits, radix) = if let Some(hex) = lower.strip_prefix("0x") {
        (hex, 16)
    } else if let Some(oct) = lower.strip_prefix("0o") {
        (oct, 8)
    } else if let Some(bin) = lower.strip_prefix("0b") {
        (bin, 2)
    } else {
        (lower.as_str(), 10)
    };
    let value = u32::from_str_radix(digits, radix)
        .ok()
        .filter(|_| !digits.starts_with(['+', '-']))
        .ok_or("not a 32-bit hexadecimal or decimal number")?;
    if value == 0 {
        return Err("the mask is zero");
    }
    // Shifted down to bit 0, a contiguous run is 2^n - 1: adding one clears every bit.
    let shifted = value >> value.trailing_zeros();
    if shifted & shifted.wrapping_add(1) != 0 {
        return Err("the bits are not contiguous");
    }
    Ok(value)
}

fn engine_choice(
    value: &Sp<String>,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<EngineChoice> {
    one_of(
        value,
        what,
        &[
            ("auto", EngineChoice::Auto),
            ("nftables", EngineChoice::Nftables),
            ("userspace", EngineChoice::Userspace),
            ("node", EngineChoice::Userspace),
        ],
        diags,
    )
}

/// Maps a string to one of a closed set of values, or reports E019 naming `what` was
/// expected and the choices.
fn one_of<T: Copy>(
    value: &Sp<String>,
    what: &str,
    choices: &[(&str, T)],
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    if let Some((_, v)) = choices.iter().find(|(k, _)| *k == value.value) {
        return Some(*v);
    }
    let names: Vec<String> = choices
        .iter()
        .filter(|(k, _)| *k != "node")
        .map(|(k, _)| format!("`{k}`"))
        .collect();
    let suggestion = choices
        .iter()
        .map(|(k, _)| (strsim::jaro_winkler(&value.value.to_lowercase(), k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let help = match suggestion {
        Some((_, k)) => format!("did you mean `{k}`? expected one of {}", names.join(", ")),
        None => format!("expected one of {}", names.join(", ")),
    };
    diags.push(
        Diagnostic::error(
            "E019",
            value.span,
            format!("unknown {what} `{}`", value.value),
        )
        .label("not one of the allowed values")
        .help(help),
    );
    None
}

// ---- one route --------------------------------------------------------------------------

fn missing(span: Span, what: &str, help: &str) -> Diagnostic {
    Diagnostic::error("E005", span, format!("missing {what}"))
        .label(format!("{what} is required here"))
        .help(help.to_owned())
}

fn out_of_range(span: Span, what: &str, min: i64, max: i64) -> Diagnostic {
    Diagnostic::error(
        "E031",
        span,
        format!("`{what}` must be between {min} and {max}"),
    )
    .label("out of range")
    .help(format!("use a value from {min} to {max}"))
}

/// Why a name fails [`name_syntax_ok`], for a label: the first rule it breaks.
fn name_problem(name: &str) -> String {
    let count = name.chars().count();
    match name.chars().next() {
        None => return "the name is empty".to_owned(),
        Some('a'..='z') => {}
        Some(c) => return format!("starts with `{c}`, not a lowercase letter"),
    }
    if let Some(c) = name.chars().find(|c| crate::diag::is_unsafe_char(*c)) {
        return format!(
            "holds `{c}`, a control, bidi or invisible character (lowercase letters, digits, `_`, `-`)"
        );
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
    {
        return format!("`{c}` is not allowed (lowercase letters, digits, `_`, `-`)");
    }
    if name.len() > 32 {
        return format!("{count} characters, at most 32");
    }
    "must match [a-z][a-z0-9_-]{0,31}".to_owned()
}

fn name_syntax_ok(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 32
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

#[allow(clippy::too_many_lines)]
fn route(
    raw: &RawRoute,
    dir: &Path,
    settings: &Settings,
    diags: &mut Vec<Diagnostic>,
) -> Option<Route> {
    let before = diags.iter().filter(|d| d.is_error()).count();
    let name = match &raw.name {
        None if raw.rejected.contains("name") => None,
        None => {
            diags.push(missing(
                raw.span,
                "route `name`",
                "add `name = \"my-route\"` to the route",
            ));
            None
        }
        Some(n) if !name_syntax_ok(&n.value) => {
            diags.push(
                Diagnostic::error("E010", n.span, format!("invalid route name `{}`", n.value))
                    .label(name_problem(&n.value))
                    .help("start with a lowercase letter; use lowercase letters, digits, `_` and `-`; at most 32 characters"),
            );
            None
        }
        Some(n) => Some(n.clone()),
    };
    let Some(m) = &raw.matcher else {
        if !raw.rejected.contains("match") {
            diags.push(missing(
                raw.span,
                "`[routes.match]`",
                "add a `[routes.match]` table with at least `ports`",
            ));
        }
        return None;
    };
    let protocol = m
        .protocol
        .as_ref()
        .map_or(Some(Protocol::Tcp), |p| {
            one_of(
                p,
                "protocol",
                &[
                    ("tcp", Protocol::Tcp),
                    ("udp", Protocol::Udp),
                    ("all", Protocol::All),
                ],
                diags,
            )
        })
        .unwrap_or(Protocol::Tcp);
    // A port already reported (here or by the parser) leaves the route's ports unknown:
    // checks that depend on the whole list (range mapping) are then skipped.
    let ports_rejected = m.rejected.contains("ports");
    let (ports, ports_span) = match &m.ports {
        None if ports_rejected => (Vec::new(), m.span),
        None => {
            diags.push(missing(
                m.span,
                "`ports`",
                "add e.g. `ports = [80, \"8000-8010\"]`",
            ));
            (Vec::new(), m.span)
        }
        Some(list) if list.value.is_empty() && ports_rejected => (Vec::new(), list.span),
        Some(list) if list.value.is_empty() => {
            diags.push(
                Diagnostic::error("E036", list.span, "`ports` is empty")
                    .label("no port listed")
                    .help("list at least one port or \"from-to\" range"),
            );
            (Vec::new(), list.span)
        }
        Some(list) => (
            list.value
                .iter()
                .filter_map(|p| port_range(p, diags).map(|r| Sp::new(r, p.span)))
                .collect(),
            list.span,
        ),
    };
    let ports_known = !ports_rejected
        && m.ports
            .as_ref()
            .is_some_and(|l| l.value.len() == ports.len());
    let domains: Vec<String> = m
        .domains
        .iter()
        .flatten()
        .filter_map(|d| domain(d, diags))
        .collect();
    let addresses: Vec<Sp<IpAddr>> = m
        .addresses
        .iter()
        .flatten()
        .filter_map(|a| match a.value.parse::<IpAddr>() {
            Ok(ip) => Some(Sp::new(ip, a.span)),
            Err(_) => {
                diags.push(
                    Diagnostic::error("E017", a.span, format!("invalid address `{}`", a.value))
                        .label("not an IPv4 or IPv6 address")
                        .help("give a local address literal such as \"203.0.113.10\" or \"2001:db8::10\""),
                );
                None
            }
        })
        .collect();

    let Some(action) = &raw.action else {
        if !raw.rejected.contains("action") {
            diags.push(missing(
                raw.span,
                "`[routes.action]`",
                "add a `[routes.action]` table, e.g. `type = \"forward\"` with `targets`",
            ));
        }
        return None;
    };
    // `None`: an unknown type, already reported; the checks that depend on it are skipped.
    let kind = if action.rejected.contains("type") {
        None
    } else {
        action.kind.as_ref().map_or(Some(ActionKind::Forward), |k| {
            one_of(
                k,
                "action type",
                &[
                    ("forward", ActionKind::Forward),
                    ("block", ActionKind::Block),
                    ("redirect", ActionKind::Redirect),
                ],
                diags,
            )
        })
    };
    let choice = action
        .forwarding_engine
        .as_ref()
        .map_or(Some(settings.default_engine), |e| {
            engine_choice(e, "forwarding engine", diags)
        })
        .unwrap_or(settings.default_engine);
    let affinity = action
        .affinity
        .as_ref()
        .map_or(Some(Affinity::None), |a| {
            one_of(
                a,
                "affinity",
                &[("none", Affinity::None), ("source", Affinity::Source)],
                diags,
            )
        })
        .unwrap_or(Affinity::None);

    // Userspace needs: the first reason wins the message.
    let needs_userspace = if !domains.is_empty() {
        m.domains.as_ref().and_then(|d| d.first()).map(|d| {
            (
                d.span,
                "it matches `domains` (SNI), which only the userspace engine can read",
            )
        })
    } else if let Some(tls) = &action.tls {
        Some((
            tls.span,
            "it has a `[routes.action.tls]` section, which only the userspace engine can serve",
        ))
    } else if kind == Some(ActionKind::Redirect) {
        action.kind.as_ref().map(|k| {
            (
                k.span,
                "an HTTP redirect is answered by the userspace engine",
            )
        })
    } else {
        action.userspace.as_ref().map(|u| {
            (
                u.span,
                "it has a `[routes.action.userspace]` section (PROXY protocol), which only the userspace engine speaks",
            )
        })
    };
    let engine = match (choice, needs_userspace) {
        (EngineChoice::Nftables, Some((why_span, why))) => {
            diags.push(forced_to_kernel(
                action.forwarding_engine.as_ref().map(|e| e.span),
                settings.default_engine_span,
                why_span,
                why,
            ));
            Engine::Nftables
        }
        (EngineChoice::Userspace, _) | (EngineChoice::Auto, Some(_)) => Engine::Userspace,
        (EngineChoice::Nftables | EngineChoice::Auto, None) => Engine::Nftables,
    };
    if engine == Engine::Userspace && protocol != Protocol::Tcp {
        let at = m.protocol.as_ref().map_or(m.span, |p| p.span);
        diags.push(
            Diagnostic::error("E033", at, "the userspace engine serves TCP only")
                .label(format!("protocol `{}` here", protocol_name(protocol)))
                .help("use `protocol = \"tcp\"`, or let the kernel serve the route (no domains, tls or redirect)"),
        );
    }

    let matched = if ports_known {
        match ports.as_slice() {
            [only] if only.value.len() > 1 => MatchedPorts::OneRange(only.value),
            _ => MatchedPorts::Other,
        }
    } else {
        MatchedPorts::Unknown
    };
    let targets = targets(action, kind, matched, diags);
    let security = action
        .security
        .as_ref()
        .map(|s| security(s, diags))
        .unwrap_or_default();
    let nftables = action
        .nftables
        .as_ref()
        .map(|n| nft_options(n, diags))
        .unwrap_or_default();
    let tls = action.tls.as_ref().and_then(|t| tls(t, dir, diags));
    let redirect = redirect(action, kind, diags);
    let userspace = action
        .userspace
        .as_ref()
        .map(|u| crate::config::UserspaceOptions {
            send_proxy_protocol: u.send_proxy_protocol.as_ref().is_some_and(|b| b.value),
            accept_proxy_protocol: u
                .accept_proxy_protocol
                .as_deref()
                .map(|list| ip_list(list, "accept_proxy_protocol", diags))
                .unwrap_or_default(),
        })
        .unwrap_or_default();

    if kind == Some(ActionKind::Forward) && engine == Engine::Nftables {
        address_families(&addresses, &targets, diags);
    }

    let enabled = raw.enabled.as_ref().is_none_or(|e| e.value);
    let errors_now = diags.iter().filter(|d| d.is_error()).count();
    let name = name?;
    let kind = kind?;
    if errors_now > before {
        return None;
    }
    Some(Route {
        name: name.value,
        name_span: name.span,
        description: raw
            .description
            .as_ref()
            .map(|d| d.value.clone())
            .unwrap_or_default(),
        enabled,
        priority: raw.priority.as_ref().map_or(0, |p| p.value),
        log: raw.log.as_ref().is_some_and(|l| l.value),
        // Its position among the routes of all files, set once they are joined.
        order: 0,
        protocol,
        ports: ports.iter().map(|p| p.value).collect(),
        ports_span,
        domains,
        addresses: addresses.into_iter().map(|a| a.value).collect(),
        kind,
        engine,
        targets,
        affinity,
        security,
        nftables,
        tls,
        redirect,
        userspace,
    })
}

/// E022: a route that needs the userspace engine is forced to the kernel, by its own
/// `forwarding_engine` or else by `[settings] default_engine`.
fn forced_to_kernel(
    route_choice: Option<Span>,
    default_choice: Option<Span>,
    why_span: Span,
    why: &str,
) -> Diagnostic {
    let message = "route is forced to the nftables engine but needs the userspace engine";
    match route_choice {
        Some(at) => Diagnostic::error("E022", at, message)
            .label("`nftables` chosen here")
            .also(why_span, "needs userspace because of this")
            .help(format!(
                "the kernel cannot serve this route because {why}; use `forwarding_engine = \"auto\"` or \"userspace\""
            )),
        None => {
            let mut d = Diagnostic::error("E022", why_span, message)
                .label("needs the userspace engine");
            if let Some(default) = default_choice {
                d = d.also(default, "`nftables` is the default engine here");
            }
            d.help(format!(
                "the kernel cannot serve this route because {why}; set `forwarding_engine = \"userspace\"` on the route, or `default_engine = \"auto\"`"
            ))
        }
    }
}

/// What the route matches, for a target port range mapped 1:1 from it.
#[derive(Clone, Copy)]
enum MatchedPorts {
    /// Exactly one range of more than one port.
    OneRange(PortRange),
    /// Anything else: single ports, several entries.
    Other,
    /// Some port was invalid and is already reported.
    Unknown,
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::All => "all",
    }
}

fn port_number(value: i64, span: Span, diags: &mut Vec<Diagnostic>) -> Option<u16> {
    match u16::try_from(value) {
        Ok(p) if p >= 1 => Some(p),
        _ => {
            diags.push(
                Diagnostic::error("E013", span, format!("port `{value}` is out of range"))
                    .label("not in 1..=65535")
                    .help("ports are 1 to 65535"),
            );
            None
        }
    }
}

/// `80`, `"80"` or `"8000-8010"`.
fn port_range(port: &Sp<RawPort>, diags: &mut Vec<Diagnostic>) -> Option<PortRange> {
    match &port.value {
        RawPort::Int(n) => {
            port_number(*n, port.span, diags).map(|p| PortRange { first: p, last: p })
        }
        RawPort::Str(s) => parse_range_text(s, port.span, diags),
    }
}

fn parse_range_text(s: &str, span: Span, diags: &mut Vec<Diagnostic>) -> Option<PortRange> {
    let bad = |diags: &mut Vec<Diagnostic>| {
        diags.push(
            Diagnostic::error("E014", span, format!("invalid port range `{s}`"))
                .label("expected a port or \"from-to\"")
                .help("write a port like 80 or a range like \"8000-8010\" with from <= to"),
        );
        None
    };
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) else {
        return bad(diags);
    };
    let first = port_number(a, span, diags)?;
    let last = port_number(b, span, diags)?;
    if first > last {
        diags.push(
            Diagnostic::error("E014", span, format!("port range `{s}` runs backwards"))
                .label(format!("{first} is greater than {last}"))
                .help(format!("write \"{last}-{first}\"")),
        );
        return None;
    }
    Some(PortRange { first, last })
}

fn domain(d: &Sp<String>, diags: &mut Vec<Diagnostic>) -> Option<String> {
    let lower = d.value.to_ascii_lowercase();
    let body = lower.strip_prefix("*.").unwrap_or(&lower);
    if is_dns_name(body) {
        return Some(lower);
    }
    diags.push(
        Diagnostic::error("E032", d.span, format!("invalid domain `{}`", d.value))
            .label("not a DNS name")
            .help("use a name like \"example.com\" or a wildcard like \"*.example.com\" (the `*` only as the first label)"),
    );
    None
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn targets(
    action: &super::parse::RawAction,
    kind: Option<ActionKind>,
    matched: MatchedPorts,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Target> {
    let rejected = action.rejected.contains("targets");
    match (&action.targets, kind) {
        (None, Some(ActionKind::Forward)) if !rejected => {
            diags.push(
                Diagnostic::error(
                    "E024",
                    action.span,
                    "a forward route needs at least one target",
                )
                .label("no `targets` in this action")
                .help("add `targets = [{ host = \"198.51.100.2\", port = 8080 }]`"),
            );
            return Vec::new();
        }
        (Some(t), Some(ActionKind::Forward)) if t.value.is_empty() && !rejected => {
            diags.push(
                Diagnostic::error("E024", t.span, "a forward route needs at least one target")
                    .label("empty list")
                    .help("add `{ host = \"198.51.100.2\", port = 8080 }`"),
            );
            return Vec::new();
        }
        (Some(t), Some(ActionKind::Block | ActionKind::Redirect)) => {
            diags.push(
                Diagnostic::error(
                    "E030",
                    t.span,
                    "`targets` has no effect on a route that does not forward",
                )
                .label("ignored targets")
                .help("remove `targets`, or use `type = \"forward\"`"),
            );
            return Vec::new();
        }
        (None, _) => return Vec::new(),
        // Forward, or an unknown type (already reported): still check each target.
        (Some(_), Some(ActionKind::Forward) | None) => {}
    }
    let Some(list) = &action.targets else {
        return Vec::new();
    };
    list.value
        .iter()
        .filter_map(|t| {
            let host = match &t.host {
                None if t.rejected.contains("host") => None,
                None => {
                    diags.push(missing(t.span, "target `host`", "add `host = \"198.51.100.2\"` (an address or a name)"));
                    None
                }
                Some(h) => host(h, diags),
            };
            let port = match &t.port {
                None => Some(TargetPort::Preserve),
                Some(p) => target_port(p, matched, diags),
            };
            let weight = match &t.weight {
                None => Some(1),
                Some(w) => match u32::try_from(w.value) {
                    Ok(v @ 1..=1000) => Some(v),
                    _ => {
                        diags.push(
                            Diagnostic::error("E025", w.span, format!("weight `{}` is out of range", w.value))
                                .label("not in 1..=1000")
                                .help("weights are whole numbers from 1 to 1000; leave a target out to give it none"),
                        );
                        None
                    }
                },
            };
            Some(Target {
                host: host?,
                port: port?,
                weight: weight?,
            })
        })
        .collect()
}

fn host(h: &Sp<String>, diags: &mut Vec<Diagnostic>) -> Option<Sp<Host>> {
    let text = h.value.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(Sp::new(Host::Ip(ip), h.span));
    }
    let lower = h.value.to_ascii_lowercase();
    let looks_numeric = lower.chars().all(|c| c.is_ascii_digit() || c == '.');
    if is_dns_name(lower.trim_end_matches('.')) && !looks_numeric {
        return Some(Sp::new(Host::Name(lower), h.span));
    }
    diags.push(
        Diagnostic::error("E016", h.span, format!("invalid host `{}`", h.value))
            .label("neither an IP address nor a DNS name")
            .help("give an IPv4/IPv6 literal (\"198.51.100.2\", \"2001:db8::2\") or a name (\"backend.example\")"),
    );
    None
}

fn target_port(
    p: &Sp<RawPort>,
    matched: MatchedPorts,
    diags: &mut Vec<Diagnostic>,
) -> Option<TargetPort> {
    match &p.value {
        RawPort::Int(n) => port_number(*n, p.span, diags).map(|port| TargetPort::Fixed { port }),
        RawPort::Str(s) if s == "preserve" => Some(TargetPort::Preserve),
        RawPort::Str(s) => {
            let range = parse_range_text(s, p.span, diags)?;
            if range.len() == 1 {
                return Some(TargetPort::Fixed { port: range.first });
            }
            match matched {
                MatchedPorts::OneRange(matched) if matched.len() == range.len() => {
                    Some(TargetPort::Range {
                        first: range.first,
                        last: range.last,
                    })
                }
                MatchedPorts::Unknown => None,
                MatchedPorts::OneRange(matched) => {
                    diags.push(
                        Diagnostic::error("E015", p.span, format!("target range `{s}` has {} ports but the matched range `{matched}` has {}", range.len(), matched.len()))
                            .label("length differs")
                            .help("ports map 1:1 by offset: make both ranges the same length"),
                    );
                    None
                }
                MatchedPorts::Other => {
                    diags.push(
                        Diagnostic::error("E015", p.span, format!("target range `{s}` needs the route to match exactly one port range"))
                            .label("nothing to map from")
                            .help("match one range of the same length (`ports = \"8000-8010\"`), or use a single port or \"preserve\""),
                    );
                    None
                }
            }
        }
    }
}

/// An `addresses` entry of a family no literal target serves can never match (no NAT46).
/// Named targets are resolved later, so routes with names are not judged here.
fn address_families(addresses: &[Sp<IpAddr>], targets: &[Target], diags: &mut Vec<Diagnostic>) {
    let mut has4 = false;
    let mut has6 = false;
    for t in targets {
        match &t.host.value {
            Host::Ip(IpAddr::V4(_)) => has4 = true,
            Host::Ip(IpAddr::V6(_)) => has6 = true,
            Host::Name(_) => return,
        }
    }
    for a in addresses {
        let (ok, fam, other) = match a.value {
            IpAddr::V4(_) => (has4, "IPv4", "IPv6"),
            IpAddr::V6(_) => (has6, "IPv6", "IPv4"),
        };
        if !ok {
            diags.push(
                Diagnostic::error("E023", a.span, format!("{fam} address `{}` but the route has no {fam} target", a.value))
                    .label(format!("{fam} traffic here could not be forwarded"))
                    .help(format!("add an {fam} target, or remove this address (there is no translation from {fam} to {other})")),
            );
        }
    }
}

fn security(s: &super::parse::RawSecurity, diags: &mut Vec<Diagnostic>) -> Security {
    let allow = s
        .ip_allow_list
        .as_deref()
        .map(|l| ip_list(l, "ip_allow_list", diags))
        .unwrap_or_default();
    let block = s
        .ip_block_list
        .as_deref()
        .map(|l| ip_list(l, "ip_block_list", diags))
        .unwrap_or_default();
    let max_connections = s
        .max_connections
        .as_ref()
        .and_then(|m| match u32::try_from(m.value) {
            Ok(v @ 1..=1_000_000) => Some(v),
            _ => {
                diags.push(out_of_range(m.span, "max_connections", 1, 1_000_000));
                None
            }
        });
    let rate_limit = s.rate_limit.as_ref().and_then(|r| rate(r, diags));
    Security {
        allow_set: !allow.is_empty(),
        allow,
        block,
        max_connections,
        rate_limit,
    }
}

/// Parses a list of addresses and CIDRs, normalises host bits (with a warning) and merges
/// overlapping entries (with a warning): nft interval sets refuse overlaps.
fn ip_list(list: &[Sp<String>], what: &str, diags: &mut Vec<Diagnostic>) -> Vec<IpNet> {
    let mut nets: Vec<Sp<IpNet>> = Vec::with_capacity(list.len());
    let mut host_bits: Vec<Diagnostic> = Vec::new();
    let mut overlaps: Vec<Diagnostic> = Vec::new();
    for entry in list {
        let text = entry.value.trim();
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => {
                let trunc = net.trunc();
                if trunc != net {
                    host_bits.push(
                        Diagnostic::warning(
                            "W003",
                            entry.span,
                            format!("`{net}` has host bits set; using `{trunc}`"),
                        )
                        .label("host bits set")
                        .help(format!("write \"{trunc}\"")),
                    );
                }
                nets.push(Sp::new(trunc, entry.span));
            }
            Err(_) => diags.push(
                Diagnostic::error(
                    "E017",
                    entry.span,
                    format!("invalid address or CIDR `{}` in `{what}`", entry.value),
                )
                .label("not an address or CIDR")
                .help(
                    "use an address (\"192.0.2.7\", \"2001:db8::7\") or a CIDR (\"192.0.2.0/24\")",
                ),
            ),
        }
    }
    // Sorted by network start, widest first: an entry overlaps the previous widest one iff
    // it starts inside it.
    let mut order: Vec<&Sp<IpNet>> = nets.iter().collect();
    order.sort_by(|a, b| {
        (
            matches!(a.value, IpNet::V6(_)),
            a.value.network(),
            a.value.prefix_len(),
        )
            .cmp(&(
                matches!(b.value, IpNet::V6(_)),
                b.value.network(),
                b.value.prefix_len(),
            ))
    });
    let mut cover: Option<&Sp<IpNet>> = None;
    for net in order {
        match cover {
            Some(c) if c.value.contains(&net.value.network()) => {
                overlaps.push(
                    Diagnostic::warning(
                        "W001",
                        net.span,
                        format!("`{}` overlaps `{}` in `{what}`; merged", net.value, c.value),
                    )
                    .label("overlaps another entry")
                    .also(c.span, "this entry covers it")
                    .help("remove the narrower entry"),
                );
            }
            _ => cover = Some(net),
        }
    }
    overlaps.sort_by_key(|d| d.primary.span);
    summarised(host_bits, "with host bits set", what, diags);
    summarised(overlaps, "overlapping others", what, diags);
    IpNet::aggregate(&nets.iter().map(|n| n.value).collect())
}

/// Warnings of one kind on one list: the first as it is, the others only counted in it
/// (5,000 duplicate entries give one warning, not 5,000 quotes of the line).
fn summarised(found: Vec<Diagnostic>, kind: &str, what: &str, diags: &mut Vec<Diagnostic>) {
    let more = found.len().saturating_sub(1);
    let Some(mut first) = found.into_iter().next() else {
        return;
    };
    if more > 0 {
        let s = if more == 1 { "y" } else { "ies" };
        first.message = format!(
            "{} (and {more} more entr{s} {kind} in this `{what}`)",
            first.message
        );
    }
    diags.push(first);
}

/// `20/second` or `20/second burst 40` (burst default 5).
fn rate(r: &Sp<String>, diags: &mut Vec<Diagnostic>) -> Option<Rate> {
    let parsed = (|| {
        let mut words = r.value.split_whitespace();
        let (count, unit) = words.next()?.split_once('/')?;
        let count: u64 = count.parse().ok().filter(|c| *c >= 1)?;
        let unit = time_unit(unit)?;
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => 5,
            (Some("burst"), Some(b), None) => b.parse().ok().filter(|b| *b >= 1)?,
            _ => return None,
        };
        Some(Rate { count, unit, burst })
    })();
    match parsed {
        None => diags.push(
            Diagnostic::error("E018", r.span, format!("invalid rate `{}`", r.value))
                .label("expected `N/unit` or `N/unit burst M`")
                .help("write e.g. \"20/second\" or \"20/second burst 40\" (units: second, minute, hour, day)"),
        ),
        Some(rate) if rate.count > NFT_MAX || rate.burst > NFT_MAX => {
            diags.push(
                Diagnostic::error("E018", r.span, format!("rate `{}` is too large", r.value))
                    .label("more than nftables can count")
                    .help(format!("nftables holds a rate and its burst in 32 bits: at most {NFT_MAX} each")),
            );
            return None;
        }
        Some(_) => {}
    }
    parsed
}

/// The largest count or burst that an nftables `limit` holds (32 bits).
const NFT_MAX: u64 = u32::MAX as u64;

fn time_unit(s: &str) -> Option<TimeUnit> {
    match s {
        "second" => Some(TimeUnit::Second),
        "minute" => Some(TimeUnit::Minute),
        "hour" => Some(TimeUnit::Hour),
        "day" => Some(TimeUnit::Day),
        _ => None,
    }
}

/// `10 mbytes/second` (units bytes, kbytes, mbytes).
fn byte_rate(r: &Sp<String>, diags: &mut Vec<Diagnostic>) -> Option<ByteRate> {
    let parsed = (|| {
        let text = r.value.trim();
        let split = text.find(|c: char| !c.is_ascii_digit())?;
        let amount: u64 = text[..split].parse().ok().filter(|a| *a >= 1)?;
        let (size, unit) = text[split..].trim().split_once('/')?;
        let size = match size.trim() {
            "bytes" => SizeUnit::Bytes,
            "kbytes" => SizeUnit::Kbytes,
            "mbytes" => SizeUnit::Mbytes,
            _ => return None,
        };
        Some(ByteRate {
            amount,
            size,
            unit: time_unit(unit.trim())?,
        })
    })();
    let Some(rate) = parsed else {
        diags.push(
            Diagnostic::error("E018", r.span, format!("invalid byte rate `{}`", r.value))
                .label("expected `N bytes|kbytes|mbytes/unit`")
                .help("write e.g. \"10 mbytes/second\""),
        );
        return None;
    };
    // The kernel's byte bucket holds one second's worth; nft keeps it in 32 bits.
    let unit_bytes: u64 = match rate.size {
        SizeUnit::Bytes => 1,
        SizeUnit::Kbytes => 1024,
        SizeUnit::Mbytes => 1024 * 1024,
    };
    let burst = rate
        .amount
        .checked_mul(unit_bytes)
        .map(|b| b / rate.unit.seconds());
    let too_large = if rate.amount > NFT_MAX {
        Some("more than nftables can count")
    } else if burst.is_none_or(|b| b > NFT_MAX) {
        Some("one second's worth exceeds 4 GiB")
    } else {
        None
    };
    if let Some(why) = too_large {
        diags.push(
            Diagnostic::error(
                "E018",
                r.span,
                format!("byte rate `{}` is too large", r.value),
            )
            .label(why)
            .help(format!("nftables holds the amount and the byte bucket (one second's worth) in 32 bits: at most {NFT_MAX} and 4095 mbytes/second")),
        );
        return None;
    }
    Some(rate)
}

fn nft_options(n: &super::parse::RawNftables, diags: &mut Vec<Diagnostic>) -> NftOptions {
    let priority = n
        .priority
        .as_ref()
        .and_then(|p| match u8::try_from(p.value) {
            Ok(v @ 0..=7) => Some(v),
            _ => {
                diags.push(out_of_range(p.span, "priority", 0, 7));
                None
            }
        });
    NftOptions {
        preserve_source_ip: n.preserve_source_ip.as_ref().is_some_and(|b| b.value),
        max_rate: n.max_rate.as_ref().and_then(|r| byte_rate(r, diags)),
        priority,
        use_ip_sets: n.use_ip_sets.as_ref().is_none_or(|b| b.value),
        use_advanced_nat: n.use_advanced_nat.as_ref().is_some_and(|b| b.value),
    }
}

fn tls(t: &super::parse::RawTls, dir: &Path, diags: &mut Vec<Diagnostic>) -> Option<Tls> {
    let Some(mode_text) = &t.mode else {
        if t.rejected.contains("mode") {
            return None;
        }
        diags.push(missing(
            t.span,
            "tls `mode`",
            "add `mode = \"passthrough\"`, \"terminate\" or \"terminate-and-reencrypt\"",
        ));
        return None;
    };
    let mode = one_of(
        mode_text,
        "TLS mode",
        &[
            ("passthrough", TlsMode::Passthrough),
            ("terminate", TlsMode::Terminate),
            ("terminate-and-reencrypt", TlsMode::TerminateAndReencrypt),
        ],
        diags,
    )?;
    let (cert, key) = match (&t.certificate, mode) {
        (None, TlsMode::Passthrough) => (None, None),
        (None, _) => {
            diags.push(
                Diagnostic::error(
                    "E028",
                    mode_text.span,
                    "a terminating TLS mode needs a certificate",
                )
                .label("terminates TLS here")
                .help(
                    "add `certificate = { cert = \"certs/site.pem\", key = \"certs/site.key\" }`",
                ),
            );
            return None;
        }
        (Some(c), _) => {
            let cert = pem_file(c, "cert", dir, PemKind::Certificate, diags);
            let key = pem_file(c, "key", dir, PemKind::Key, diags);
            (cert, key)
        }
    };
    let insecure_skip_verify = t.insecure_skip_verify.as_ref().is_some_and(|b| b.value);
    let ca = match &t.ca {
        Some(ca) if mode == TlsMode::TerminateAndReencrypt => {
            pem_at(ca, dir, PemKind::Certificate, diags)
        }
        _ => None,
    };
    if mode != TlsMode::TerminateAndReencrypt {
        let ignored = [
            t.ca.as_ref().map(|c| (c.span, "ca")),
            t.insecure_skip_verify
                .as_ref()
                .map(|b| (b.span, "insecure_skip_verify")),
        ];
        for (span, key) in ignored.into_iter().flatten() {
            diags.push(
                Diagnostic::error(
                    "E030",
                    span,
                    format!("`{key}` has no effect: only `terminate-and-reencrypt` talks TLS to the targets"),
                )
                .label("ignored")
                .help("remove it, or use `mode = \"terminate-and-reencrypt\"`"),
            );
        }
    }
    Some(Tls {
        mode,
        cert,
        key,
        ca,
        insecure_skip_verify,
    })
}

#[derive(Clone, Copy)]
enum PemKind {
    Certificate,
    Key,
}

fn pem_file(
    certificate: &super::parse::RawCertificate,
    field: &str,
    dir: &Path,
    kind: PemKind,
    diags: &mut Vec<Diagnostic>,
) -> Option<PathBuf> {
    let path = match kind {
        PemKind::Certificate => certificate.cert.as_ref(),
        PemKind::Key => certificate.key.as_ref(),
    };
    let Some(path) = path else {
        if certificate.rejected.contains(field) {
            return None;
        }
        diags.push(missing(
            certificate.span,
            &format!("certificate `{field}`"),
            "give both `cert` and `key` paths (relative to the route file)",
        ));
        return None;
    };
    pem_at(path, dir, kind, diags)
}

/// Checks that `path` (relative to `dir`) is a readable PEM file of `kind`.
fn pem_at(
    path: &Sp<String>,
    dir: &Path,
    kind: PemKind,
    diags: &mut Vec<Diagnostic>,
) -> Option<PathBuf> {
    let full = dir.join(&path.value);
    let bytes = match std::fs::read(&full) {
        Ok(b) => b,
        Err(err) => {
            diags.push(
                Diagnostic::error(
                    "E020",
                    path.span,
                    format!("cannot read `{}`: {err}", full.display()),
                )
                .label("file not readable")
                .help("paths are relative to the route file's folder"),
            );
            return None;
        }
    };
    let ok = match kind {
        PemKind::Certificate => {
            let certs: Vec<_> = rustls_pemfile::certs(&mut bytes.as_slice()).collect();
            !certs.is_empty() && certs.iter().all(Result::is_ok)
        }
        PemKind::Key => matches!(
            rustls_pemfile::private_key(&mut bytes.as_slice()),
            Ok(Some(_))
        ),
    };
    if !ok {
        let (what, help) = match kind {
            PemKind::Certificate => (
                "a PEM certificate",
                "`cert` takes a PEM file with `-----BEGIN CERTIFICATE-----` blocks (leaf first)",
            ),
            PemKind::Key => (
                "a PEM private key",
                "`key` takes a PEM file with a `-----BEGIN PRIVATE KEY-----` block (PKCS#8, RSA or EC)",
            ),
        };
        diags.push(
            Diagnostic::error(
                "E021",
                path.span,
                format!("`{}` is not {what}", full.display()),
            )
            .label(format!("expected {what}"))
            .help(help),
        );
        return None;
    }
    Some(full)
}

fn redirect(
    action: &super::parse::RawAction,
    kind: Option<ActionKind>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Redirect> {
    match (&action.redirect, kind) {
        (None, Some(ActionKind::Redirect)) if !action.rejected.contains("redirect") => {
            diags.push(
                Diagnostic::error(
                    "E029",
                    action.span,
                    "a redirect route needs `[routes.action.redirect]` with `to`",
                )
                .label("no redirect target")
                .help("add `redirect = { to = \"https://{host}{path}\", status = 301 }`"),
            );
            None
        }
        (Some(r), Some(ActionKind::Forward | ActionKind::Block)) => {
            diags.push(
                Diagnostic::error(
                    "E030",
                    r.span,
                    "`[routes.action.redirect]` on a route whose type is not `redirect`",
                )
                .label("ignored section")
                .help("set `type = \"redirect\"` or remove the section"),
            );
            None
        }
        (None, _) | (Some(_), None) => None,
        (Some(r), Some(ActionKind::Redirect)) => {
            let to = match &r.to {
                Some(to) if !to.value.trim().is_empty() => Some(to.value.clone()),
                Some(to) => {
                    diags.push(
                        Diagnostic::error("E005", to.span, "redirect `to` is empty")
                            .label("nothing to redirect to")
                            .help("set `to = \"https://{host}{path}\"`"),
                    );
                    None
                }
                None if r.rejected.contains("to") => None,
                None => {
                    diags.push(missing(
                        r.span,
                        "redirect `to`",
                        "add `to = \"https://{host}{path}\"`",
                    ));
                    None
                }
            };
            let status = match &r.status {
                None => Some(301),
                Some(s) if matches!(s.value, 301 | 302 | 303 | 307 | 308) => {
                    u16::try_from(s.value).ok()
                }
                Some(s) => {
                    diags.push(
                        Diagnostic::error(
                            "E029",
                            s.span,
                            format!("redirect status `{}` is not a redirect", s.value),
                        )
                        .label("not 301, 302, 303, 307 or 308")
                        .help("use 301 (permanent) or 302/307 (temporary)"),
                    );
                    None
                }
            };
            Some(Redirect {
                to: to?,
                status: status?,
            })
        }
    }
}

// ---- across routes ----------------------------------------------------------------------

/// Routes are visited in order, so the diagnostics do not depend on the map's (hash)
/// order; a hash map is several times faster than a `BTreeMap` of 50,000 names.
fn unique_names(routes: &[Route], diags: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<&str, Span> = HashMap::with_capacity(routes.len());
    for r in routes {
        if let Some(first) = seen.get(r.name.as_str()) {
            diags.push(
                Diagnostic::error(
                    "E011",
                    r.name_span,
                    format!("route name `{}` is used twice", r.name),
                )
                .label("second use")
                .also(*first, "first used here")
                .help("route names are unique across all files; rename one"),
            );
        } else {
            seen.insert(&r.name, r.name_span);
        }
    }
}

/// Routes on the same protocol whose ports overlap and whose addresses intersect conflict
/// when at least one of them is a kernel route (the kernel would take all the traffic).
///
/// Each route is reported once, at its first claim (in sweep order: protocol, port range
/// start, file order) that meets earlier claims: it names the first of them and counts the
/// other routes claiming that port, so N routes on one port give N-1 errors, not N^2/2. A
/// claim that meets exactly one other route is reported at whichever is later in the files.
/// The sweep over port ranges sorted by start keeps the ranges that can still meet the
/// next one ([`Active`]) with per-engine counts of distinct routes, so the common cases
/// (one port range and at most one address per route) cost a logarithmic step per claim
/// however many routes share the port.
fn conflicts(routes: &[Route], diags: &mut Vec<Diagnostic>) {
    let mut entries: Vec<(super::L4, PortRange, usize)> = Vec::new();
    for (i, r) in routes.iter().enumerate().filter(|(_, r)| r.enabled) {
        for l4 in r.protocol.l4() {
            for p in &r.ports {
                entries.push((*l4, *p, i));
            }
        }
    }
    entries.sort();
    let addresses: Vec<Vec<IpAddr>> = routes
        .iter()
        .map(|r| {
            let mut a = r.addresses.clone();
            a.sort_unstable();
            a.dedup();
            a
        })
        .collect();
    let mut reported = vec![false; routes.len()];
    let mut active = Active::new(routes, &addresses);
    for (seq, &(l4, range, i)) in entries.iter().enumerate() {
        active.expire(l4, range.first);
        if !reported[i] {
            if let Some(claim) = active.meet(i) {
                // A lone pair is reported at the later route in file order, as one reads
                // the files; a crowd at the later claim in sweep order.
                let j = claim.route;
                if claim.others == 0 && j > i && !reported[j] {
                    reported[j] = true;
                    let turned = Meeting {
                        range,
                        route: i,
                        others: 0,
                    };
                    diags.push(conflict(routes, l4, claim.range, j, &turned));
                } else {
                    reported[i] = true;
                    diags.push(conflict(routes, l4, range, i, &claim));
                }
            }
        }
        active.insert(seq, range, i);
    }
}

/// What a claim meets: the first earlier claim of another route (its range and route) and
/// how many other routes' claims it meets besides.
struct Meeting {
    range: PortRange,
    route: usize,
    others: usize,
}

fn conflict(
    routes: &[Route],
    l4: super::L4,
    range: PortRange,
    i: usize,
    claim: &Meeting,
) -> Diagnostic {
    let (a, b) = (&routes[claim.route], &routes[i]);
    let shared = PortRange {
        first: range.first.max(claim.range.first),
        last: range.last.min(claim.range.last),
    };
    let shared_address = a.addresses.iter().find(|x| b.addresses.contains(x));
    let help = if a.engine != b.engine {
        "a kernel route takes every packet of its port before the userspace engine sees it; use distinct ports or `addresses`".to_owned()
    } else if let Some(addr) = shared_address {
        format!("both routes list address `{addr}`; give them distinct `addresses` or ports")
    } else if a.addresses.is_empty() && b.addresses.is_empty() {
        "neither route has `addresses`, so both claim the port on every local address; give them distinct `addresses`, or use distinct ports".to_owned()
    } else {
        let open = if a.addresses.is_empty() { a } else { b };
        format!("route `{}` has no `addresses`, so it claims the port on every local address; give it `addresses` that the other route does not list, or use distinct ports", open.name)
    };
    let others = match claim.others {
        0 => String::new(),
        1 => " and 1 other route".to_owned(),
        n => format!(" and {n} other routes"),
    };
    Diagnostic::error(
        "E012",
        b.ports_span,
        format!(
            "port `{shared}/{}` is already claimed by route `{}`{others}",
            l4.as_str(),
            a.name
        ),
    )
    .label(format!("claimed again here by route `{}`", b.name))
    .also(
        a.ports_span,
        format!("first claimed here by route `{}`", a.name),
    )
    .help(help)
}

/// An active claim: sweep position -> (range, route index).
type Claims = BTreeMap<usize, (PortRange, usize)>;

/// The sweep's earlier claims that may still overlap the next one (same protocol, not
/// ended before its start; a sorted sweep makes every such claim overlap it), split by
/// engine (0 kernel, 1 userspace) and by the routes' addresses, with counts of the distinct
/// routes behind them (a route may have several active claims).
struct Active<'a> {
    routes: &'a [Route],
    addresses: &'a [Vec<IpAddr>],
    l4: Option<super::L4>,
    /// (last port, sweep position, route), smallest first: the next to expire.
    ends: BinaryHeap<Reverse<(u16, usize, usize)>>,
    all: [Claims; 2],
    /// The claims of routes without `addresses`.
    open: [Claims; 2],
    by_address: BTreeMap<IpAddr, [Claims; 2]>,
    /// Active claims per route.
    claims: Vec<u32>,
    distinct_all: [usize; 2],
    distinct_open: [usize; 2],
    distinct_by_address: BTreeMap<IpAddr, [usize; 2]>,
}

fn engine_slot(engine: Engine) -> usize {
    match engine {
        Engine::Nftables => 0,
        Engine::Userspace => 1,
    }
}

impl<'a> Active<'a> {
    fn new(routes: &'a [Route], addresses: &'a [Vec<IpAddr>]) -> Self {
        Self {
            routes,
            addresses,
            l4: None,
            ends: BinaryHeap::new(),
            all: Default::default(),
            open: Default::default(),
            by_address: BTreeMap::new(),
            claims: vec![0; routes.len()],
            distinct_all: [0; 2],
            distinct_open: [0; 2],
            distinct_by_address: BTreeMap::new(),
        }
    }

    /// Drops the claims that end before `first`, or all of them on another protocol.
    fn expire(&mut self, l4: super::L4, first: u16) {
        if self.l4 != Some(l4) {
            self.l4 = Some(l4);
            while let Some(Reverse((_, seq, i))) = self.ends.pop() {
                self.remove(seq, i);
            }
        }
        while let Some(&Reverse((last, seq, i))) = self.ends.peek() {
            if last >= first {
                break;
            }
            self.ends.pop();
            self.remove(seq, i);
        }
    }

    fn insert(&mut self, seq: usize, range: PortRange, i: usize) {
        let e = engine_slot(self.routes[i].engine);
        self.ends.push(Reverse((range.last, seq, i)));
        self.all[e].insert(seq, (range, i));
        let addresses = &self.addresses[i];
        if addresses.is_empty() {
            self.open[e].insert(seq, (range, i));
        }
        for a in addresses {
            self.by_address.entry(*a).or_default()[e].insert(seq, (range, i));
        }
        self.claims[i] += 1;
        if self.claims[i] == 1 {
            self.distinct_all[e] += 1;
            if addresses.is_empty() {
                self.distinct_open[e] += 1;
            }
            for a in addresses {
                self.distinct_by_address.entry(*a).or_default()[e] += 1;
            }
        }
    }

    fn remove(&mut self, seq: usize, i: usize) {
        let e = engine_slot(self.routes[i].engine);
        self.all[e].remove(&seq);
        let addresses = &self.addresses[i];
        if addresses.is_empty() {
            self.open[e].remove(&seq);
        }
        for a in addresses {
            if let Some(sets) = self.by_address.get_mut(a) {
                sets[e].remove(&seq);
                if sets.iter().all(BTreeMap::is_empty) {
                    self.by_address.remove(a);
                }
            }
        }
        self.claims[i] -= 1;
        if self.claims[i] == 0 {
            self.distinct_all[e] -= 1;
            if addresses.is_empty() {
                self.distinct_open[e] -= 1;
            }
            for a in addresses {
                if let Some(counts) = self.distinct_by_address.get_mut(a) {
                    counts[e] -= 1;
                    if counts.iter().all(|c| *c == 0) {
                        self.distinct_by_address.remove(a);
                    }
                }
            }
        }
    }

    /// The active claims of other routes that the next claim of route `i` conflicts with:
    /// the first (in sweep order) and how many other routes besides. A userspace route
    /// meets only kernel routes; a route with `addresses` meets the routes without any and
    /// those sharing an address.
    fn meet(&self, i: usize) -> Option<Meeting> {
        let mine = engine_slot(self.routes[i].engine);
        let engines: &[usize] = if mine == 1 { &[0] } else { &[0, 1] };
        let addresses = &self.addresses[i];
        let maps: Vec<&Claims> = if addresses.is_empty() {
            engines.iter().map(|&e| &self.all[e]).collect()
        } else {
            let mut maps: Vec<&Claims> = engines.iter().map(|&e| &self.open[e]).collect();
            for a in addresses {
                if let Some(sets) = self.by_address.get(a) {
                    maps.extend(engines.iter().map(|&e| &sets[e]));
                }
            }
            maps
        };
        let (_, (range, route)) = maps
            .iter()
            .filter_map(|m| m.iter().find(|(_, (_, j))| *j != i))
            .min_by_key(|(seq, _)| **seq)?;
        let own = usize::from(self.claims[i] > 0 && engines.contains(&mine));
        let routes = match addresses.as_slice() {
            [] => engines.iter().map(|&e| self.distinct_all[e]).sum::<usize>() - own,
            [a] => {
                let by_address = self.distinct_by_address.get(a).copied().unwrap_or_default();
                engines
                    .iter()
                    .map(|&e| self.distinct_open[e] + by_address[e])
                    .sum::<usize>()
                    - own
            }
            // Several addresses: a route may share more than one of them, so count the
            // routes themselves (a few, unless many routes list the same addresses).
            _ => {
                let open: usize = engines.iter().map(|&e| self.distinct_open[e]).sum();
                let shared: std::collections::HashSet<usize> = maps[engines.len()..]
                    .iter()
                    .flat_map(|m| m.values().map(|(_, j)| *j))
                    .filter(|j| *j != i)
                    .collect();
                open + shared.len()
            }
        };
        Some(Meeting {
            range: *range,
            route: *route,
            others: routes.saturating_sub(1),
        })
    }
}

/// A userspace route that can never be chosen: an earlier-ranked route covers all its
/// ports, addresses and domains. A winner over a route with domains lists its first domain,
/// and one over a route without domains has none: only those are tried (thousands of
/// virtual hosts on one port cost one lookup each, not a scan of all the others).
fn shadowed(routes: &[Route], diags: &mut Vec<Diagnostic>) {
    let users: Vec<&Route> = routes
        .iter()
        .filter(|r| r.enabled && r.engine == Engine::Userspace)
        .collect();
    let mut by_domain: HashMap<&str, Vec<&Route>> = HashMap::new();
    let mut without_domains: Vec<&Route> = Vec::new();
    for r in &users {
        if r.domains.is_empty() {
            without_domains.push(r);
        }
        let mut domains: Vec<&str> = r.domains.iter().map(String::as_str).collect();
        domains.sort_unstable();
        domains.dedup();
        for d in domains {
            by_domain.entry(d).or_default().push(r);
        }
    }
    for b in &users {
        let candidates = match b.domains.first() {
            Some(d) => by_domain.get(d.as_str()).map_or(&[][..], Vec::as_slice),
            None => without_domains.as_slice(),
        };
        let winner = candidates.iter().find(|a| {
            a.name != b.name
                && (a.priority, std::cmp::Reverse(a.order))
                    > (b.priority, std::cmp::Reverse(b.order))
                && b.ports
                    .iter()
                    .all(|p| a.ports.iter().any(|q| q.contains(*p)))
                && (a.addresses.is_empty()
                    || (!b.addresses.is_empty()
                        && b.addresses.iter().all(|x| a.addresses.contains(x))))
                && ((a.domains.is_empty() && b.domains.is_empty())
                    || (!b.domains.is_empty() && b.domains.iter().all(|d| a.domains.contains(d))))
        });
        if let Some(a) = winner {
            diags.push(
                Diagnostic::warning(
                    "W002",
                    b.name_span,
                    format!(
                        "route `{}` is shadowed by route `{}` and never matches",
                        b.name, a.name
                    ),
                )
                .label("never chosen")
                .also(a.name_span, "this route wins every match")
                .help("give it a higher `priority`, other domains or ports, or remove it"),
            );
        }
    }
}

/// Every kernel route needs an id in the mark bits: 2^bits - 1 ids are available.
fn mark_capacity(settings: &Settings, routes: &[Route], diags: &mut Vec<Diagnostic>) {
    let kernel: Vec<&Route> = routes
        .iter()
        .filter(|r| r.enabled && r.engine == Engine::Nftables)
        .collect();
    let bits = settings.ct_mark_mask.count_ones();
    let capacity = if bits >= 32 {
        u32::MAX as usize
    } else {
        (1usize << bits) - 1
    };
    if kernel.len() <= capacity {
        return;
    }
    let needed = usize::BITS - kernel.len().leading_zeros();
    let at = settings
        .ct_mark_mask_span
        .or(settings.span)
        .unwrap_or(kernel[capacity].name_span);
    diags.push(
        Diagnostic::error(
            "E026",
            at,
            format!(
                "{} kernel routes need {needed} mark bits but `ct_mark_mask` has {bits}",
                kernel.len()
            ),
        )
        .label("too few conntrack-mark bits")
        .help(format!(
            "widen `ct_mark_mask` to at least {needed} contiguous bits, e.g. \"0xffff0000\""
        )),
    );
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    /// Thousands of virtual hosts on one port, each on its own address: only the route
    /// that reuses an address and the one without `addresses` conflict, each reported once
    /// with a count of the other routes it meets.
    #[test]
    fn conflicts_on_a_shared_port_follow_the_addresses() {
        // More than 255 kernel routes need more than the default 8 mark bits.
        let mut text = String::from("[settings]\nct_mark_mask = \"0xffff0000\"\n\n");
        for i in 0..3000 {
            let address = format!("addresses = [\"10.0.{}.{}\"]", i / 256, i % 256);
            route(&mut text, &format!("v{i}"), "443", &address);
        }
        route(&mut text, "again", "443", "addresses = [\"10.0.0.5\"]");
        route(&mut text, "open", "443", "");
        let loaded = load_text(&text);
        assert_eq!(
            conflicts(&loaded),
            [
                "port `443/tcp` is already claimed by route `v5`",
                "port `443/tcp` is already claimed by route `v0` and 3000 other routes",
            ],
            "{:#?}",
            loaded.diagnostics
        );
        assert_eq!(loaded.diagnostics.len(), 2);
    }

    /// N routes on one port: N-1 errors (one per route, naming the first), not N(N-1)/2.
    #[test]
    fn conflicts_are_reported_once_per_route() {
        let mut text = String::from("[settings]\nct_mark_mask = \"0xffff0000\"\n\n");
        for i in 0..2000 {
            route(&mut text, &format!("r{i}"), "443", "");
        }
        let loaded = load_text(&text);
        let found = conflicts(&loaded);
        assert_eq!(found.len(), 1999);
        assert_eq!(found[0], "port `443/tcp` is already claimed by route `r0`");
        assert_eq!(
            found[1998],
            "port `443/tcp` is already claimed by route `r0` and 1998 other routes"
        );
    }

    /// A route's own ranges do not count, a route counts once however many of its ranges
    /// are active, and a userspace route meets only kernel routes.
    #[test]
    fn conflict_counts_are_of_distinct_other_routes() {
        let mut text = String::new();
        route(&mut text, "wide", "[\"400-500\", 443]", "");
        route(&mut text, "narrow", "443", "");
        route(
            &mut text,
            "both",
            "[443, 444]",
            "addresses = [\"192.0.2.1\", \"192.0.2.2\"]",
        );
        let loaded = load_text(&text);
        assert_eq!(
            conflicts(&loaded),
            [
                "port `443/tcp` is already claimed by route `wide`",
                "port `443/tcp` is already claimed by route `wide` and 1 other route",
            ],
            "{:#?}",
            loaded.diagnostics
        );
    }

    fn route(text: &mut String, name: &str, ports: &str, addresses: &str) {
        let _ = write!(
            text,
            "[[routes]]\nname = \"{name}\"\n[routes.match]\nports = {ports}\n{addresses}\n\
             [routes.action]\ntargets = [{{ host = \"198.51.100.2\", port = 8443 }}]\n\n"
        );
    }

    fn load_text(text: &str) -> crate::config::Loaded {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("routes.toml");
        std::fs::write(&file, text).expect("the temp dir is writable");
        crate::config::load(&[file])
    }

    fn conflicts(loaded: &crate::config::Loaded) -> Vec<&str> {
        loaded
            .diagnostics
            .iter()
            .filter(|d| d.code == "E012")
            .map(|d| d.message.as_str())
            .collect()
    }
}
