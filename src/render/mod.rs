//! Model -> nftables: the text script through the minijinja template in `templates/`,
//! and the same ruleset as nftables JSON (`json`).
//!
//! Pure: no clock, no environment, no hash order. The only user text that reaches the
//! output is the comment, sanitised by [`sanitize_comment`]; names were validated to
//! `[a-z][a-z0-9_-]` and are always behind a prefix, so they cannot be keywords.

pub mod json;

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::config::{ByteRate, Rate, L4};
use crate::model::{Family, KernelPort, KernelRoute, KernelTarget, Model, Snat, Spread};

const TEMPLATE: &str = include_str!("../../templates/ruleset.nft.j2");

/// Words nft 1.0.6 refuses as a table name (each tried with `nft -c`).
const NFT_KEYWORDS: &[&str] = &[
    "accept",
    "add",
    "ah",
    "all",
    "and",
    "arp",
    "bridge",
    "cgroup",
    "chain",
    "comment",
    "comp",
    "constant",
    "continue",
    "counter",
    "cpu",
    "create",
    "ct",
    "day",
    "dccp",
    "define",
    "delete",
    "describe",
    "device",
    "devices",
    "dnat",
    "drop",
    "dst",
    "dup",
    "dynamic",
    "ecn",
    "element",
    "elements",
    "esp",
    "ether",
    "exists",
    "expires",
    "export",
    "exthdr",
    "fib",
    "flags",
    "flow",
    "flowtable",
    "flush",
    "frag",
    "fwd",
    "get",
    "goto",
    "handle",
    "hbh",
    "hook",
    "hour",
    "ibriport",
    "ibrname",
    "icmp",
    "icmpv6",
    "igmp",
    "iif",
    "iifgroup",
    "iifname",
    "iiftype",
    "import",
    "include",
    "index",
    "inet",
    "insert",
    "interval",
    "ip",
    "ip6",
    "ipsec",
    "jhash",
    "jump",
    "limit",
    "list",
    "log",
    "lt",
    "map",
    "mark",
    "masquerade",
    "meta",
    "meter",
    "mh",
    "missing",
    "monitor",
    "ne",
    "netdev",
    "nftrace",
    "not",
    "notrack",
    "numgen",
    "obriport",
    "obrname",
    "offload",
    "oif",
    "oifgroup",
    "oifname",
    "oiftype",
    "or",
    "osf",
    "pkttype",
    "policy",
    "position",
    "priority",
    "queue",
    "quota",
    "random",
    "redefine",
    "redirect",
    "reject",
    "rename",
    "replace",
    "reset",
    "return",
    "rt",
    "rt0",
    "rt2",
    "rtclassid",
    "rule",
    "ruleset",
    "sctp",
    "secmark",
    "set",
    "size",
    "skgid",
    "skuid",
    "snat",
    "socket",
    "srh",
    "symhash",
    "synproxy",
    "table",
    "tcp",
    "th",
    "time",
    "timeout",
    "tproxy",
    "type",
    "typeof",
    "udp",
    "udplite",
    "undefine",
    "update",
    "vlan",
    "vmap",
    "xt",
];

pub fn is_nft_keyword(word: &str) -> bool {
    NFT_KEYWORDS.binary_search(&word).is_ok()
}

/// Makes free text safe inside an nft comment: no `"`, no `\\`, no control characters,
/// at most 128 bytes (cut on a character boundary).
pub fn sanitize_comment(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(128));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == '"' || c == '\\' {
            continue;
        }
        if out.len() + c.len_utf8() > 128 {
            break;
        }
        out.push(c);
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template error: {0}")]
    Template(#[from] minijinja::Error),
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}

/// The nft script for a model: `nft -f` ready, byte-identical for the same model.
pub fn render_script(model: &Model) -> Result<String, RenderError> {
    let mut env = minijinja::Environment::new();
    env.set_keep_trailing_newline(true);
    env.add_template("ruleset.nft", TEMPLATE)?;
    let view = View::new(model);
    let text = env.get_template("ruleset.nft")?.render(&view)?;
    Ok(text)
}

// ---- the view: what the template needs, precomputed and escaped --------------------------

#[derive(Serialize)]
struct View<'a> {
    table: &'a str,
    mask: String,
    keep_mask: String,
    log_group: u16,
    routes: Vec<RouteView<'a>>,
    masquerade: bool,
    masquerade_random: bool,
    qos_classes: Vec<u8>,
    maps: Vec<MapView>,
}

#[derive(Serialize)]
struct RouteView<'a> {
    name: &'a str,
    comment: &'a str,
    mark: String,
    sets: Vec<SetView>,
    nat: Vec<NatView>,
    block_all: bool,
    filter: Vec<FilterView>,
    max_connections: Option<u32>,
    rate: Option<String>,
    max_rate: Option<String>,
    refuses: bool,
    log: Option<String>,
}

#[derive(Serialize)]
struct SetView {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    dynamic: bool,
    timeout: Option<u64>,
    elements: String,
}

#[derive(Serialize)]
struct NatView {
    chain: String,
    selector: String,
    total: u32,
    targets: Vec<TargetView>,
}

#[derive(Serialize)]
struct TargetView {
    chain: String,
    slots: String,
    stmt: String,
}

#[derive(Serialize)]
struct FilterView {
    ip: &'static str,
    nfproto: &'static str,
    block: Option<String>,
    allow: Option<String>,
    conn: Option<String>,
    rate: Option<String>,
}

#[derive(Serialize)]
struct MapView {
    name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    interval: bool,
    elements: Vec<String>,
}

pub(crate) fn hex(v: u32) -> String {
    format!("0x{v:08x}")
}

pub(crate) fn fam_n(f: Family) -> &'static str {
    match f {
        Family::V4 => "4",
        Family::V6 => "6",
    }
}

pub(crate) fn fam_ip(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

pub(crate) fn fam_nfproto(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

fn fam_addr_type(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

fn in_family(net: &IpNet, f: Family) -> bool {
    matches!(
        (net, f),
        (IpNet::V4(_), Family::V4) | (IpNet::V6(_), Family::V6)
    )
}

/// Interval-set element text: a host as an address, a network as a CIDR.
pub(crate) fn net_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

fn join_elements(items: &[String]) -> String {
    if items.len() <= 4 {
        items.join(", ")
    } else {
        items.join(",\n\t\t\t     ")
    }
}

pub(crate) fn rate_text(r: &Rate) -> String {
    format!("{}/{} burst {} packets", r.count, r.unit.as_str(), r.burst)
}

/// Bytes per time unit, burst one second's worth (in bytes, at least 1).
pub(crate) fn byte_rate_text(r: &ByteRate) -> String {
    let unit_bytes: u64 = match r.size {
        crate::config::SizeUnit::Bytes => 1,
        crate::config::SizeUnit::Kbytes => 1024,
        crate::config::SizeUnit::Mbytes => 1024 * 1024,
    };
    let burst = (r.amount * unit_bytes / r.unit.seconds()).max(1);
    format!(
        "{} {}/{} burst {burst} bytes",
        r.amount,
        r.size.as_str(),
        r.unit.as_str()
    )
}

/// Dynamic sets forget a source after twice the rate period, at least a minute.
pub(crate) fn rate_timeout(r: &Rate) -> u64 {
    (r.unit.seconds() * 2).max(60)
}

pub(crate) fn l4_match(l4: &[L4]) -> String {
    match l4 {
        [one] => format!("meta l4proto {}", one.as_str()),
        many => format!(
            "meta l4proto {{ {} }}",
            many.iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn addr_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

pub(crate) fn port_map_text(from: crate::config::PortRange, to_first: u16) -> String {
    let mut out = String::from("th dport map { ");
    for (i, p) in (from.first..=from.last).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let to = u32::from(to_first) + u32::try_from(i).unwrap_or(0);
        let _ = write!(out, "{p} : {to}");
    }
    out.push_str(" }");
    out
}

/// The NAT statement that sends a connection to one target.
fn target_stmt(l4: &[L4], family: Family, t: &KernelTarget) -> String {
    let proto = l4_match(l4);
    let ip = fam_ip(family);
    match (t.addr, t.port) {
        (None, KernelPort::Fixed { port }) => format!("{proto} redirect to :{port}"),
        (None, KernelPort::Preserve) => format!("{proto} redirect"),
        (None, KernelPort::Map { from, to_first }) => {
            format!("{proto} redirect to : {}", port_map_text(from, to_first))
        }
        (Some(a), KernelPort::Fixed { port }) => {
            format!("{proto} dnat {ip} to {}", addr_port(a, port))
        }
        (Some(a), KernelPort::Preserve) => match a {
            IpAddr::V4(_) => format!("{proto} dnat {ip} to {a}"),
            IpAddr::V6(_) => format!("{proto} dnat {ip} to [{a}]"),
        },
        (Some(a), KernelPort::Map { from, to_first }) => {
            let a = match a {
                IpAddr::V4(_) => a.to_string(),
                IpAddr::V6(_) => format!("[{a}]"),
            };
            format!(
                "{proto} dnat {ip} to {a} : {}",
                port_map_text(from, to_first)
            )
        }
    }
}

/// Weighted slots for `numgen`/`jhash ... mod total vmap`: target i owns
/// `[start, start + weight)`, written `a` or `a-b`.
pub(crate) fn slots(spread: &Spread) -> (u32, Vec<(u32, u32)>) {
    let mut start = 0;
    let mut out = Vec::with_capacity(spread.targets.len());
    for t in &spread.targets {
        out.push((start, start + t.weight - 1));
        start += t.weight;
    }
    (start, out)
}

pub(crate) fn slot_text((a, b): (u32, u32)) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

pub(crate) fn selector(spread: &Spread, family: Family) -> String {
    match spread.affinity {
        crate::config::Affinity::None => "numgen random".to_owned(),
        crate::config::Affinity::Source => format!("jhash {} saddr", fam_ip(family)),
    }
}

/// Does the route need a refusal chain (`x_<name>`)?
pub(crate) fn refuses(r: &KernelRoute) -> bool {
    matches!(r.action, crate::model::KernelAction::Block)
        || r.allow.is_some()
        || !r.block.is_empty()
        || r.max_connections.is_some()
        || r.rate_limit.is_some()
}

/// Set names of a route per family; the JSON renderer uses the same names.
pub(crate) fn set_name(kind: &str, family: Family, route: &str) -> String {
    format!("{kind}{}_{route}", fam_n(family))
}

impl<'a> View<'a> {
    fn new(model: &'a Model) -> Self {
        let mut dnat = [Vec::new(), Vec::new()];
        let mut dnat_addr = [Vec::new(), Vec::new()];
        let mut routes_map = Vec::new();
        let mut snat = Vec::new();
        let mut qos = Vec::new();
        let mut qos_classes = Vec::new();
        let mut masquerade = false;
        let mut masquerade_random = false;
        let routes = model
            .kernel
            .iter()
            .map(|r| {
                let mark = hex(r.mark);
                for f in r.families() {
                    let i = usize::from(f == Family::V6);
                    for l4 in &r.l4 {
                        for p in &r.ports {
                            if r.addresses.is_empty() {
                                dnat[i].push(format!(
                                    "{} . {p} : jump n{}_{}",
                                    l4.as_str(),
                                    fam_n(f),
                                    r.name
                                ));
                            }
                            for a in r.addresses.iter().filter(|a| Family::of(a) == f) {
                                dnat_addr[i].push(format!(
                                    "{a} . {} . {p} : jump n{}_{}",
                                    l4.as_str(),
                                    fam_n(f),
                                    r.name
                                ));
                            }
                        }
                    }
                }
                routes_map.push(format!("{mark} : jump f_{}", r.name));
                match r.snat {
                    Snat::None => {}
                    Snat::Masquerade => {
                        masquerade = true;
                        snat.push(format!("{mark} : jump masq"));
                    }
                    Snat::MasqueradeRandom => {
                        masquerade_random = true;
                        snat.push(format!("{mark} : jump masq_random"));
                    }
                }
                if let Some(q) = r.qos {
                    qos.push(format!("{mark} : jump qos_cs{q}"));
                    qos_classes.push(q);
                }
                RouteView::new(r, mark)
            })
            .collect();
        qos_classes.sort_unstable();
        qos_classes.dedup();
        let [dnat4, dnat6] = dnat;
        let [dnat4_addr, dnat6_addr] = dnat_addr;
        let maps = vec![
            MapView {
                name: "dnat4",
                kind: "inet_proto . inet_service : verdict",
                interval: true,
                elements: dnat4,
            },
            MapView {
                name: "dnat4_addr",
                kind: "ipv4_addr . inet_proto . inet_service : verdict",
                interval: true,
                elements: dnat4_addr,
            },
            MapView {
                name: "dnat6",
                kind: "inet_proto . inet_service : verdict",
                interval: true,
                elements: dnat6,
            },
            MapView {
                name: "dnat6_addr",
                kind: "ipv6_addr . inet_proto . inet_service : verdict",
                interval: true,
                elements: dnat6_addr,
            },
            MapView {
                name: "route_filter",
                kind: "mark : verdict",
                interval: false,
                elements: routes_map,
            },
            MapView {
                name: "route_snat",
                kind: "mark : verdict",
                interval: false,
                elements: snat,
            },
            MapView {
                name: "route_qos",
                kind: "mark : verdict",
                interval: false,
                elements: qos,
            },
        ]
        .into_iter()
        .map(|mut m| {
            m.elements.sort();
            if m.elements.len() > 4 {
                m.elements = vec![m.elements.join(",\n\t\t\t     ")];
            }
            m
        })
        .collect();
        View {
            table: &model.table,
            mask: hex(model.mark_mask),
            keep_mask: hex(!model.mark_mask),
            log_group: model.log_group,
            routes,
            masquerade,
            masquerade_random,
            qos_classes,
            maps,
        }
    }
}

impl<'a> RouteView<'a> {
    fn new(r: &'a KernelRoute, mark: String) -> Self {
        let families = r.families();
        let mut sets = Vec::new();
        let mut filter = Vec::new();
        for &f in &families {
            let ip = fam_ip(f);
            let elements = |list: &[IpNet]| -> Vec<String> {
                list.iter()
                    .filter(|n| in_family(n, f))
                    .map(net_text)
                    .collect()
            };
            let block_elems = elements(&r.block);
            let block = if block_elems.is_empty() {
                None
            } else if r.use_ip_sets {
                let name = set_name("block", f, &r.name);
                sets.push(SetView {
                    name: name.clone(),
                    kind: fam_addr_type(f),
                    dynamic: false,
                    timeout: None,
                    elements: join_elements(&block_elems),
                });
                Some(format!("@{name}"))
            } else {
                Some(format!("{{ {} }}", block_elems.join(", ")))
            };
            let allow = r.allow.as_ref().map(|list| {
                let elems = elements(list);
                if r.use_ip_sets {
                    let name = set_name("allow", f, &r.name);
                    sets.push(SetView {
                        name: name.clone(),
                        kind: fam_addr_type(f),
                        dynamic: false,
                        timeout: None,
                        elements: join_elements(&elems),
                    });
                    format!("{ip} saddr != @{name}")
                } else if elems.is_empty() {
                    format!("meta nfproto {}", fam_nfproto(f))
                } else {
                    format!("{ip} saddr != {{ {} }}", elems.join(", "))
                }
            });
            let conn = r.max_connections.map(|_| {
                let name = set_name("conn", f, &r.name);
                sets.push(SetView {
                    name: name.clone(),
                    kind: fam_addr_type(f),
                    dynamic: true,
                    timeout: None,
                    elements: String::new(),
                });
                name
            });
            let rate = r.rate_limit.as_ref().map(|rl| {
                let name = set_name("rate", f, &r.name);
                sets.push(SetView {
                    name: name.clone(),
                    kind: fam_addr_type(f),
                    dynamic: true,
                    timeout: Some(rate_timeout(rl)),
                    elements: String::new(),
                });
                name
            });
            filter.push(FilterView {
                ip,
                nfproto: fam_nfproto(f),
                block,
                allow,
                conn,
                rate,
            });
        }
        let nat = families
            .iter()
            .map(|&f| {
                let chain = format!("n{}_{}", fam_n(f), r.name);
                match r.spread(f) {
                    None => NatView {
                        chain,
                        selector: String::new(),
                        total: 0,
                        targets: Vec::new(),
                    },
                    Some(spread) => {
                        let (total, slot_list) = slots(spread);
                        let targets = spread
                            .targets
                            .iter()
                            .zip(slot_list)
                            .enumerate()
                            .map(|(i, (t, s))| TargetView {
                                chain: format!("t{}_{}_{i}", fam_n(f), r.name),
                                slots: slot_text(s),
                                stmt: target_stmt(&r.l4, f, t),
                            })
                            .collect();
                        NatView {
                            chain,
                            selector: selector(spread, f),
                            total,
                            targets,
                        }
                    }
                }
            })
            .collect();
        RouteView {
            name: &r.name,
            comment: &r.comment,
            mark,
            sets,
            nat,
            block_all: matches!(r.action, crate::model::KernelAction::Block),
            filter,
            max_connections: r.max_connections,
            rate: r.rate_limit.as_ref().map(rate_text),
            max_rate: r.max_rate.as_ref().map(byte_rate_text),
            refuses: refuses(r),
            log: r.log.then(|| format!("smartproxy {} refused: ", r.name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_sorted_for_binary_search() {
        assert!(NFT_KEYWORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(is_nft_keyword("ip") && is_nft_keyword("counter") && !is_nft_keyword("smartproxy"));
    }

    #[test]
    fn comments_lose_quotes_backslashes_and_control_characters() {
        assert_eq!(
            sanitize_comment("a \"b\" \\c\nflush ruleset;}"),
            "a b c flush ruleset;}"
        );
        let long = "é".repeat(100);
        let cut = sanitize_comment(&long);
        assert!(cut.len() <= 128 && cut.chars().all(|c| c == 'é'));
    }
}
