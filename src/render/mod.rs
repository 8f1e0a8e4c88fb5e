//! Model -> nftables: the text script through the minijinja templates in `templates/`,
//! and the same ruleset as nftables JSON (`json`).
//!
//! Pure: no clock, no environment, no hash order. Large scripts are rendered on several
//! threads; the text does not depend on how many. The only user text that reaches the
//! output is the comment, sanitised by [`crate::nft::comment::sanitize`]; names were validated to
//! `[a-z][a-z0-9_-]` and are always behind a prefix, so they cannot be keywords.

pub mod json;

use std::fmt::Write as _;
use std::net::IpAddr;

use std::sync::Arc;

use ipnet::IpNet;
use minijinja::value::{Object, ObjectRepr, Value};
use serde::Serialize;

use crate::model::{Family, KernelPort, KernelRoute, KernelTarget, Model, Snat, Spread};
use crate::nft::names::{self, SetKind};
use crate::types::{ByteRate, Rate, L4};

const TEMPLATE: &str = include_str!("../../templates/ruleset.nft.j2");
const ROUTE_OBJECTS_TEMPLATE: &str = include_str!("../../templates/route-objects.nft.j2");
const ROUTE_CHAINS_TEMPLATE: &str = include_str!("../../templates/route-chains.nft.j2");

/// The templates, for caches of rendered-and-normalised output: another template text is
/// another output.
pub(crate) fn template_texts() -> String {
    [TEMPLATE, ROUTE_OBJECTS_TEMPLATE, ROUTE_CHAINS_TEMPLATE].concat()
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template error: {0}")]
    Template(#[from] minijinja::Error),
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}

/// The nft script for a model: `nft -f` ready, byte-identical for the same model.
///
/// Routes are rendered in slices, on as many threads as the machine offers, and the
/// slices are joined in route order: the text never depends on the number of threads.
pub fn render_script(model: &Model) -> Result<String, RenderError> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let slices = threads
        .min(model.kernel.len() / MIN_ROUTES_PER_SLICE)
        .max(1);
    render_in_slices(model, slices)
}

/// Below this many routes a slice (and its thread) costs more than it saves.
const MIN_ROUTES_PER_SLICE: usize = 512;

fn render_in_slices(model: &Model, slices: usize) -> Result<String, RenderError> {
    let env = environment()?;
    let keep_mask = hex(!model.mark_mask);
    let slices = render_route_slices(&env, model, &keep_mask, slices)?;
    let view = View::new(model, slices);
    Ok(env.get_template(RULESET)?.render(&view)?)
}

const RULESET: &str = "ruleset.nft";
const ROUTE_OBJECTS: &str = "route-objects.nft";
const ROUTE_CHAINS: &str = "route-chains.nft";

fn environment() -> Result<minijinja::Environment<'static>, RenderError> {
    let mut env = minijinja::Environment::new();
    env.set_keep_trailing_newline(true);
    env.add_template(RULESET, TEMPLATE)?;
    env.add_template(ROUTE_OBJECTS, ROUTE_OBJECTS_TEMPLATE)?;
    env.add_template(ROUTE_CHAINS, ROUTE_CHAINS_TEMPLATE)?;
    Ok(env)
}

/// Renders the routes in at most `slices` consecutive slices, one thread each, returned in
/// route order.
fn render_route_slices(
    env: &minijinja::Environment<'static>,
    model: &Model,
    keep_mask: &str,
    slices: usize,
) -> Result<Vec<RouteSlice>, RenderError> {
    let routes = &model.kernel;
    let log_group = model.log_group;
    if slices <= 1 || routes.len() <= 1 {
        return Ok(vec![RouteSlice::render(env, routes, keep_mask, log_group)?]);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = routes
            .chunks(routes.len().div_ceil(slices))
            .map(|slice| scope.spawn(move || RouteSlice::render(env, slice, keep_mask, log_group)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Consecutive routes, rendered: their counters and sets, their chains, and their elements
/// of the dispatch maps.
struct RouteSlice {
    objects: String,
    chains: String,
    maps: MapElements,
}

/// What a slice of routes adds to the maps and helper chains after the route chains.
#[derive(Default)]
struct MapElements {
    /// `[v4 ports, v4 ranges, v6 ports, v6 ranges]`: single ports go to hash maps, ranges
    /// to interval maps (nft backs those with pipapo, whose lookup grows with its size).
    dnat: [Vec<String>; 4],
    dnat_addr: [Vec<String>; 4],
    filter: Vec<String>,
    snat: Vec<String>,
    qos: Vec<String>,
    qos_classes: Vec<u8>,
    masquerade: bool,
    masquerade_random: bool,
}

impl RouteSlice {
    fn render(
        env: &minijinja::Environment<'static>,
        routes: &[KernelRoute],
        keep_mask: &str,
        log_group: u16,
    ) -> Result<Self, RenderError> {
        let mut maps = MapElements::default();
        let routes: Value = routes
            .iter()
            .map(|r| {
                let mark = hex(r.mark);
                maps.add(r, &mark);
                Value::from_object(RouteView::new(r, mark))
            })
            .collect();
        maps.sort();
        let view = minijinja::context! { routes, keep_mask, log_group };
        Ok(RouteSlice {
            objects: env.get_template(ROUTE_OBJECTS)?.render(&view)?,
            chains: env.get_template(ROUTE_CHAINS)?.render(&view)?,
            maps,
        })
    }
}

impl MapElements {
    fn add(&mut self, r: &KernelRoute, mark: &str) {
        for f in r.families() {
            for l4 in &r.l4 {
                for p in &r.ports {
                    let i = 2 * usize::from(f == Family::V6) + usize::from(p.first != p.last);
                    if r.addresses.is_empty() {
                        self.dnat[i].push(format!(
                            "{} . {p} : jump {}",
                            l4.as_str(),
                            names::nat_chain(f, &r.name)
                        ));
                    }
                    for a in r.addresses.iter().filter(|a| Family::of(a) == f) {
                        self.dnat_addr[i].push(format!(
                            "{a} . {} . {p} : jump {}",
                            l4.as_str(),
                            names::nat_chain(f, &r.name)
                        ));
                    }
                }
            }
        }
        self.filter
            .push(format!("{mark} : jump {}", names::filter_chain(&r.name)));
        match r.snat {
            Snat::None => {}
            Snat::Masquerade => {
                self.masquerade = true;
                self.snat
                    .push(format!("{mark} : jump {}", names::masquerade_chain(false)));
            }
            Snat::MasqueradeRandom => {
                self.masquerade_random = true;
                self.snat
                    .push(format!("{mark} : jump {}", names::masquerade_chain(true)));
            }
        }
        if let Some(q) = r.qos {
            self.qos
                .push(format!("{mark} : jump {}", names::qos_chain(q)));
            self.qos_classes.push(q);
        }
    }

    /// Sorts each map's elements in this slice, so that sorting the joined slices (by a
    /// sort that merges sorted runs) is cheap and happens on the worker threads.
    fn sort(&mut self) {
        let lists = self.dnat.iter_mut().chain(&mut self.dnat_addr);
        for list in lists.chain([&mut self.filter, &mut self.snat, &mut self.qos]) {
            list.sort();
        }
    }

    fn append(&mut self, other: MapElements) {
        let pairs = self.dnat.iter_mut().chain(&mut self.dnat_addr);
        for (mine, theirs) in pairs.zip(other.dnat.into_iter().chain(other.dnat_addr)) {
            mine.extend(theirs);
        }
        self.filter.extend(other.filter);
        self.snat.extend(other.snat);
        self.qos.extend(other.qos);
        self.qos_classes.extend(other.qos_classes);
        self.masquerade |= other.masquerade;
        self.masquerade_random |= other.masquerade_random;
    }
}

// ---- the view: what the template needs, precomputed and escaped --------------------------

#[derive(Serialize)]
struct View<'a> {
    table: &'a str,
    mask: String,
    route_objects: Vec<String>,
    route_chains: Vec<String>,
    masquerade: bool,
    masquerade_random: bool,
    qos_classes: Vec<u8>,
    maps: Vec<MapView>,
}

/// What the route templates read of one route. The views are minijinja objects whose
/// attributes are looked up by name when the template reads them: serialising them into
/// minijinja values first cost a seventh of the render (see BENCHMARKS.md).
#[derive(Debug)]
struct RouteView {
    name: String,
    comment: String,
    mark: String,
    sets: Value,
    nat: Value,
    block_all: bool,
    filter: Value,
    max_connections: Option<u32>,
    rate: Option<String>,
    max_rate: Option<String>,
    refuses: bool,
    log: Option<String>,
}

#[derive(Debug)]
struct SetView {
    name: String,
    kind: &'static str,
    dynamic: bool,
    timeout: Option<u64>,
    elements: String,
}

#[derive(Debug)]
struct NatView {
    chain: String,
    selector: String,
    total: u32,
    targets: Value,
}

#[derive(Debug)]
struct TargetView {
    chain: String,
    slots: String,
    stmt: String,
}

#[derive(Debug)]
struct FilterView {
    ip: &'static str,
    nfproto: &'static str,
    block: Option<String>,
    allow: Option<String>,
    conn: Option<String>,
    /// The set of sources that closed a connection of the route within the last
    /// [`CLOSED_TIMEOUT`] seconds (with `conn`).
    closed: Option<String>,
    rate: Option<String>,
}

/// A view field as the template sees it. Short strings are stored inline in the value.
trait TemplateField {
    fn value(&self) -> Value;
}

impl TemplateField for String {
    fn value(&self) -> Value {
        Value::from(self.as_str())
    }
}

impl TemplateField for &'static str {
    fn value(&self) -> Value {
        Value::from(*self)
    }
}

impl TemplateField for Value {
    fn value(&self) -> Value {
        self.clone()
    }
}

impl<T: TemplateField> TemplateField for Option<T> {
    fn value(&self) -> Value {
        self.as_ref().map_or(Value::from(()), TemplateField::value)
    }
}

macro_rules! copy_fields {
    ($($ty:ty),*) => {$(
        impl TemplateField for $ty {
            fn value(&self) -> Value {
                Value::from(*self)
            }
        }
    )*};
}
copy_fields!(bool, u32, u64);

/// Makes a view struct a template object whose attributes are the listed fields.
macro_rules! template_object {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl Object for $ty {
            fn repr(self: &Arc<Self>) -> ObjectRepr {
                ObjectRepr::Plain
            }

            fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
                self.get_value_by_str(key.as_str()?)
            }

            fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
                match key {
                    $(stringify!($field) => Some(self.$field.value()),)*
                    _ => None,
                }
            }
        }
    };
}

template_object!(RouteView {
    name,
    comment,
    mark,
    sets,
    nat,
    block_all,
    filter,
    max_connections,
    rate,
    max_rate,
    refuses,
    log,
});
template_object!(SetView {
    name,
    kind,
    dynamic,
    timeout,
    elements
});
template_object!(NatView {
    chain,
    selector,
    total,
    targets
});
template_object!(TargetView { chain, slots, stmt });
template_object!(FilterView {
    ip,
    nfproto,
    block,
    allow,
    conn,
    closed,
    rate
});

/// A sequence of views, as the template iterates it.
fn objects<T: Object + 'static>(views: Vec<T>) -> Value {
    views.into_iter().map(Value::from_object).collect()
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
    names::family_digit(f)
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

/// Bytes per time unit. The kernel's byte bucket already holds one unit of time's worth
/// (`tokens_max = unit * (rate + burst) / rate`), the "burst 1 s" of a per-second cap, so
/// the burst only tops it up to [`MIN_BYTE_BUCKET`]. An explicit burst of one second's
/// worth doubled the bucket: UDP sent at twice a 2 MiB/s cap for 10 s arrived at 1.17x the
/// cap; without it, 1.07x.
pub(crate) fn byte_rate_text(r: &ByteRate) -> String {
    let rate = format!("{} {}/{}", r.amount, r.size.as_str(), r.unit.as_str());
    match byte_burst(r) {
        0 => rate,
        burst => format!("{rate} burst {burst} bytes"),
    }
}

/// The smallest bucket a byte cap gets. A packet larger than the bucket can never pass:
/// GRO and GSO hand the filter chains packets of up to 64 KiB, and conntrack reassembles
/// fragmented datagrams before them (10,000-byte datagrams under a `4 kbytes/second` cap
/// never arrived).
const MIN_BYTE_BUCKET: u64 = 128 * 1024;

/// The burst that tops the kernel's bucket of one unit's worth up to [`MIN_BYTE_BUCKET`]
/// bytes; 0 (none) for caps of at least that much per unit.
pub(crate) fn byte_burst(r: &ByteRate) -> u64 {
    let unit_bytes: u64 = match r.size {
        crate::types::SizeUnit::Bytes => 1,
        crate::types::SizeUnit::Kbytes => 1024,
        crate::types::SizeUnit::Mbytes => 1024 * 1024,
    };
    MIN_BYTE_BUCKET.saturating_sub(r.amount.saturating_mul(unit_bytes))
}

/// How long (seconds) a source stays in `closed4_<route>` / `closed6_<route>` after a
/// connection of the route from it closed (a FIN or RST seen in either direction).
///
/// `max_connections` is `ct count`, whose per-source list forgets finished connections
/// only when it is garbage-collected, and the kernel does that at most once per jiffy
/// (4 ms at HZ=250): every connection opened after the first in the same jiffy is counted,
/// closed or not (300 strictly sequential connections at a limit of 5: 245-270 refused).
/// So an over-limit count is trusted only from a source that closed nothing in the last
/// second: it is refused with a reset. From one that did, the count may still hold
/// connections that are gone: the SYN is dropped, and its retransmission (1 s later) is
/// counted again. A source never gets more than the limit; a client opening and closing
/// connections one at a time is never refused (at worst it waits for a retransmission).
/// JSON set timeouts are whole seconds on nft 1.0.6, so this is one.
pub(crate) const CLOSED_TIMEOUT: u64 = 1;

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

pub(crate) fn port_map_text(from: crate::types::PortRange, to_first: u16) -> String {
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
        crate::types::Affinity::None => "numgen random".to_owned(),
        crate::types::Affinity::Source => format!("jhash {} saddr", fam_ip(family)),
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

impl<'a> View<'a> {
    fn new(model: &'a Model, slices: Vec<RouteSlice>) -> Self {
        let mut elements = MapElements::default();
        let mut route_objects = Vec::with_capacity(slices.len());
        let mut route_chains = Vec::with_capacity(slices.len());
        for slice in slices {
            route_objects.push(slice.objects);
            route_chains.push(slice.chains);
            elements.append(slice.maps);
        }
        let MapElements {
            dnat: [dnat4, dnat4_range, dnat6, dnat6_range],
            dnat_addr: [dnat4_addr, dnat4_addr_range, dnat6_addr, dnat6_addr_range],
            filter,
            snat,
            qos,
            mut qos_classes,
            masquerade,
            masquerade_random,
        } = elements;
        qos_classes.sort_unstable();
        qos_classes.dedup();
        let ports = "inet_proto . inet_service : verdict";
        let v4 = "ipv4_addr . inet_proto . inet_service : verdict";
        let v6 = "ipv6_addr . inet_proto . inet_service : verdict";
        let dispatch = |name, kind, interval, elements| MapView {
            name,
            kind,
            interval,
            elements,
        };
        let maps = vec![
            dispatch("dnat4", ports, false, dnat4),
            dispatch("dnat4_range", ports, true, dnat4_range),
            dispatch("dnat4_addr", v4, false, dnat4_addr),
            dispatch("dnat4_addr_range", v4, true, dnat4_addr_range),
            dispatch("dnat6", ports, false, dnat6),
            dispatch("dnat6_range", ports, true, dnat6_range),
            dispatch("dnat6_addr", v6, false, dnat6_addr),
            dispatch("dnat6_addr_range", v6, true, dnat6_addr_range),
            MapView {
                name: names::ROUTE_FILTER,
                kind: "mark : verdict",
                interval: false,
                elements: filter,
            },
            MapView {
                name: names::ROUTE_SNAT,
                kind: "mark : verdict",
                interval: false,
                elements: snat,
            },
            MapView {
                name: names::ROUTE_QOS,
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
            route_objects,
            route_chains,
            masquerade,
            masquerade_random,
            qos_classes,
            maps,
        }
    }
}

impl RouteView {
    fn new(r: &KernelRoute, mark: String) -> Self {
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
                let name = names::set(SetKind::Block, f, &r.name);
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
                    let name = names::set(SetKind::Allow, f, &r.name);
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
                let name = names::set(SetKind::Conn, f, &r.name);
                sets.push(SetView {
                    name: name.clone(),
                    kind: fam_addr_type(f),
                    dynamic: true,
                    timeout: None,
                    elements: String::new(),
                });
                name
            });
            let closed = r.max_connections.map(|_| {
                let name = names::set(SetKind::Closed, f, &r.name);
                sets.push(SetView {
                    name: name.clone(),
                    kind: fam_addr_type(f),
                    dynamic: true,
                    timeout: Some(CLOSED_TIMEOUT),
                    elements: String::new(),
                });
                name
            });
            let rate = r.rate_limit.as_ref().map(|rl| {
                let name = names::set(SetKind::Rate, f, &r.name);
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
                closed,
                rate,
            });
        }
        let nat = families
            .iter()
            .map(|&f| {
                let chain = names::nat_chain(f, &r.name);
                match r.spread(f) {
                    None => NatView {
                        chain,
                        selector: String::new(),
                        total: 0,
                        targets: objects::<TargetView>(Vec::new()),
                    },
                    Some(spread) => {
                        let (total, slot_list) = slots(spread);
                        let targets = spread
                            .targets
                            .iter()
                            .zip(slot_list)
                            .enumerate()
                            .map(|(i, (t, s))| TargetView {
                                chain: names::target_chain(f, &r.name, i),
                                slots: slot_text(s),
                                stmt: target_stmt(&r.l4, f, t),
                            })
                            .collect();
                        NatView {
                            chain,
                            selector: selector(spread, f),
                            total,
                            targets: objects(targets),
                        }
                    }
                }
            })
            .collect();
        RouteView {
            name: r.name.clone(),
            comment: r.comment.clone(),
            mark,
            sets: objects(sets),
            nat: objects(nat),
            block_all: matches!(r.action, crate::model::KernelAction::Block),
            filter: objects(filter),
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
    fn the_script_does_not_depend_on_how_many_slices_render_it() {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/json/everything.toml"
        );
        let loaded = crate::config::load(&[std::path::PathBuf::from(fixture)]);
        let config = loaded.config.expect("the fixture is valid");
        let model = crate::lower::lower(&config, &crate::lower::StaticResolver::default())
            .expect("the fixture names only local hosts");
        let whole = render_in_slices(&model, 1).expect("renders");
        for slices in 2..=model.kernel.len() + 1 {
            let sliced = render_in_slices(&model, slices).expect("renders");
            assert!(sliced == whole, "{slices} slices render differently");
        }
        assert_eq!(render_script(&model).expect("renders"), whole);
    }
}
