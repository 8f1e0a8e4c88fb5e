//! The lowered model: what the kernel and the userspace engine must do, as plain sorted
//! data. It is the single input of rendering (text and JSON), and later of plan and serve.
//! No I/O here, and nothing in it depends on file order or hash order.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

pub use crate::types::Family;
use crate::types::{ActionKind, Affinity, ByteRate, PortRange, Protocol, Rate, Redirect, Tls, L4};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Model {
    pub table: String,
    pub mark_mask: u32,
    pub log_group: u16,
    /// Kernel routes, sorted by name.
    pub kernel: Vec<KernelRoute>,
    /// Userspace routes, in selection order (file order).
    pub userspace: Vec<UserspaceRoute>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelRoute {
    pub name: String,
    /// Name and description, already safe for an nft comment.
    pub comment: String,
    /// This route's value inside the mark mask (`ct mark & mask == mark`).
    pub mark: u32,
    pub l4: Vec<L4>,
    pub ports: Vec<PortRange>,
    /// Local destination addresses; empty = any local address.
    pub addresses: Vec<IpAddr>,
    pub action: KernelAction,
    /// Merged allow list; `None` = everyone.
    pub allow: Option<Vec<IpNet>>,
    pub block: Vec<IpNet>,
    pub max_connections: Option<u32>,
    pub rate_limit: Option<Rate>,
    pub max_rate: Option<ByteRate>,
    pub snat: Snat,
    pub qos: Option<u8>,
    pub log: bool,
    pub use_ip_sets: bool,
}

impl KernelRoute {
    /// The address families this route matches: a forward route only those it has targets
    /// for (there is no NAT46), a block route both.
    pub fn families(&self) -> Vec<Family> {
        match &self.action {
            KernelAction::Block => vec![Family::V4, Family::V6],
            KernelAction::Shield if self.addresses.is_empty() => vec![Family::V4, Family::V6],
            KernelAction::Shield => {
                let mut f: Vec<Family> = self.addresses.iter().map(Family::of).collect();
                f.dedup();
                f
            }
            KernelAction::Forward { v4, v6 } => {
                let mut f = Vec::new();
                if v4.is_some() {
                    f.push(Family::V4);
                }
                if v6.is_some() {
                    f.push(Family::V6);
                }
                f
            }
        }
    }

    pub fn spread(&self, family: Family) -> Option<&Spread> {
        match (&self.action, family) {
            (KernelAction::Forward { v4, .. }, Family::V4) => v4.as_ref(),
            (KernelAction::Forward { v6, .. }, Family::V6) => v6.as_ref(),
            (KernelAction::Block | KernelAction::Shield, _) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelAction {
    /// Per family: the targets to spread over (None = the family is not served).
    Forward {
        v4: Option<Spread>,
        v6: Option<Spread>,
    },
    /// Refuse every connection.
    Block,
    /// The connections go on to `smartproxy serve` on this host: a userspace route's
    /// kernel shield. Marked, counted and filtered (allow, block, limits), not translated.
    Shield,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Snat {
    /// The target sees the client address.
    None,
    Masquerade,
    /// `masquerade fully-random,persistent`.
    MasqueradeRandom,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Spread {
    pub affinity: Affinity,
    /// Sorted by (address, port); never empty.
    pub targets: Vec<KernelTarget>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct KernelTarget {
    /// `None`: a service on this host, reached by `redirect`.
    pub addr: Option<IpAddr>,
    pub port: KernelPort,
    pub weight: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum KernelPort {
    Fixed {
        port: u16,
    },
    Preserve,
    /// `from.first + i` -> `to_first + i`.
    Map {
        from: PortRange,
        to_first: u16,
    },
}

/// A route for `smartproxy serve`, with its names resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserspaceRoute {
    pub name: String,
    pub order: usize,
    pub priority: i64,
    pub protocol: Protocol,
    pub ports: Vec<PortRange>,
    pub addresses: Vec<IpAddr>,
    pub domains: Vec<String>,
    pub kind: ActionKind,
    pub targets: Vec<UserspaceTarget>,
    pub affinity: Affinity,
    pub allow: Option<Vec<IpNet>>,
    pub block: Vec<IpNet>,
    pub max_connections: Option<u32>,
    pub rate_limit: Option<Rate>,
    pub tls: Option<Tls>,
    pub redirect: Option<Redirect>,
    /// PROXY protocol v2 toward the targets, and from these front load balancers.
    pub send_proxy_protocol: bool,
    pub accept_proxy_protocol: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserspaceTarget {
    /// As written in the route file.
    pub host: String,
    pub addrs: Vec<IpAddr>,
    pub port: crate::types::TargetPort,
    pub weight: u32,
}

#[cfg(test)]
impl UserspaceRoute {
    /// A TCP forward route on port 443 with nothing else set, for tests to adjust.
    pub(crate) fn bare(name: &str, order: usize, priority: i64, domains: &[&str]) -> Self {
        UserspaceRoute {
            name: name.into(),
            order,
            priority,
            protocol: crate::types::Protocol::Tcp,
            ports: vec![crate::types::PortRange {
                first: 443,
                last: 443,
            }],
            addresses: Vec::new(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            kind: crate::types::ActionKind::Forward,
            targets: Vec::new(),
            affinity: crate::types::Affinity::None,
            allow: None,
            block: Vec::new(),
            max_connections: None,
            rate_limit: None,
            tls: None,
            redirect: None,
            send_proxy_protocol: false,
            accept_proxy_protocol: Vec::new(),
        }
    }
}
