//! The numbers and words the text script and the JSON document write alike: marks, family
//! keywords, set elements, rates and their buckets, target slots.

use std::fmt::Write as _;

use ipnet::IpNet;

use crate::model::{Family, KernelRoute, Spread};
use crate::types::{ByteRate, Rate, L4};

pub(crate) fn hex(v: u32) -> String {
    format!("0x{v:08x}")
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

/// Interval-set element text: a host as an address, a network as a CIDR.
pub(crate) fn net_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
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
