//! What the route templates read of one route, precomputed and escaped: its sets, NAT and
//! target chains, filter rules and refusal.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use minijinja::value::{Object, ObjectRepr, Value};

use super::values::{
    byte_rate_text, fam_ip, fam_nfproto, l4_match, net_text, port_map_text, rate_text,
    rate_timeout, refuses, selector, slot_text, slots, CLOSED_TIMEOUT,
};
use crate::model::{Family, KernelPort, KernelRoute, KernelTarget};
use crate::nft::names::{self, SetKind};
use crate::types::L4;

/// What the route templates read of one route. The views are minijinja objects whose
/// attributes are looked up by name when the template reads them: serialising them into
/// minijinja values first cost a seventh of the render (see BENCHMARKS.md).
#[derive(Debug)]
pub(super) struct RouteView {
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

fn join_elements(items: &[String]) -> String {
    if items.len() <= 4 {
        items.join(", ")
    } else {
        items.join(",\n\t\t\t     ")
    }
}

fn addr_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
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

impl RouteView {
    pub(super) fn new(r: &KernelRoute, mark: String) -> Self {
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
