//! serve's kernel side: which engine carries the file's nftables routes, and their table.
//!
//! With nftables available (`--nftables auto` asks the kernel seam whether `nft` and
//! CAP_NET_ADMIN are there; `on` insists), serve provisions the kernel routes through
//! [`super::provision`] on start (adopting a table of the same name), changes them
//! incrementally on reload and when a target's health changes, and removes the table on
//! stop. Without it (`auto` falling back, or `off`), the kernel routes are served in
//! userspace; the routes userspace cannot serve (UDP, `preserve_source_ip`) make start-up
//! fail, named.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{Config, Engine, Protocol, TargetPort, L4};
use crate::model::{Family, KernelAction, KernelPort, KernelTarget, Model, Snat};

/// `serve --nftables`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Use nftables when `nft` is installed and this process holds CAP_NET_ADMIN; else
    /// serve the kernel routes in userspace, with a warning.
    Auto,
    /// Use nftables, or fail.
    On,
    /// Serve every route in userspace.
    Off,
}

/// Who carries the kernel routes, as decided at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    Kernel,
    /// nftables was wanted (`auto`) but is not available.
    Fallback,
    Off,
}

impl Carrier {
    pub fn as_str(self) -> &'static str {
        match self {
            Carrier::Kernel => "on",
            Carrier::Fallback => "fallback",
            Carrier::Off => "off",
        }
    }
}

/// Decides who carries the kernel routes, given whether this process can change nftables
/// here (the kernel's `capability`), and why nftables is not available, for the fallback's
/// warning; `Err` for `on` without nftables.
pub fn choose(
    mode: Mode,
    capability: Result<(), String>,
) -> Result<(Carrier, Option<String>), String> {
    match (mode, capability) {
        (Mode::Off, _) => Ok((Carrier::Off, None)),
        (_, Ok(())) => Ok((Carrier::Kernel, None)),
        (Mode::On, Err(why)) => Err(format!(
            "--nftables on: {why}; install nftables and run as root (or with CAP_NET_ADMIN), or use --nftables auto to serve the kernel routes in userspace"
        )),
        (Mode::Auto, Err(why)) => Ok((Carrier::Fallback, Some(why))),
    }
}

/// Moves the kernel routes of `config` to the userspace engine; their names. The routes
/// userspace cannot serve are an error naming each.
pub fn to_userspace(config: &mut Config) -> Result<Vec<String>, String> {
    let mut cannot = Vec::new();
    let mut moved = Vec::new();
    for r in config.routes.iter_mut().filter(|r| r.enabled) {
        if r.engine != Engine::Nftables {
            continue;
        }
        let why = if r.protocol != Protocol::Tcp {
            Some(match r.protocol {
                Protocol::Udp => "protocol `udp`".to_owned(),
                _ => "protocol `all` includes UDP".to_owned(),
            })
        } else if r.nftables.preserve_source_ip {
            Some("`preserve_source_ip = true`".to_owned())
        } else {
            None
        };
        match why {
            Some(why) => cannot.push(format!("route `{}` ({why})", r.name)),
            None => {
                r.engine = Engine::Userspace;
                moved.push(r.name.clone());
            }
        }
    }
    if cannot.is_empty() {
        Ok(moved)
    } else {
        Err(format!(
            "without nftables the userspace engine cannot serve {}: it proxies TCP only and cannot show the client's address to a target",
            cannot.join(", ")
        ))
    }
}

/// The targets of every route that can be health-checked: TCP, on a fixed port (a UDP
/// service answers no connect; a target that keeps the client's port has no one port).
pub fn checked_targets(model: &Model) -> BTreeSet<SocketAddr> {
    let mut out = BTreeSet::new();
    for r in &model.userspace {
        for t in &r.targets {
            if let TargetPort::Fixed { port } = t.port {
                out.extend(t.addrs.iter().map(|a| SocketAddr::new(*a, port)));
            }
        }
    }
    for r in model.kernel.iter().filter(|r| r.l4.contains(&L4::Tcp)) {
        if let KernelAction::Forward { v4, v6 } = &r.action {
            for (spread, family) in [(v4, Family::V4), (v6, Family::V6)] {
                let targets = spread.iter().flat_map(|s| &s.targets);
                out.extend(targets.filter_map(|t| checked_addr(t, family)));
            }
        }
    }
    out
}

/// Where a kernel target of `family` is health-checked: its address (a local target on
/// loopback) and fixed port; `None` for a target that keeps the client's port.
fn checked_addr(t: &KernelTarget, family: Family) -> Option<SocketAddr> {
    let KernelPort::Fixed { port } = t.port else {
        return None;
    };
    let local = match family {
        Family::V4 => IpAddr::from(Ipv4Addr::LOCALHOST),
        Family::V6 => IpAddr::from(Ipv6Addr::LOCALHOST),
    };
    Some(SocketAddr::new(t.addr.unwrap_or(local), port))
}

/// The kernel routes as they must be with the targets in `down` out of their spread; a
/// route with no target left refuses its connections (TCP reset) instead of sending them
/// nowhere.
pub fn without_down(model: &Model, down: &BTreeSet<SocketAddr>) -> Model {
    let mut model = model.clone();
    if down.is_empty() {
        return model;
    }
    for r in model.kernel.iter_mut().filter(|r| r.l4.contains(&L4::Tcp)) {
        let KernelAction::Forward { v4, v6 } = &mut r.action else {
            continue;
        };
        for (spread, family) in [(v4, Family::V4), (v6, Family::V6)] {
            if let Some(s) = spread {
                s.targets
                    .retain(|t| checked_addr(t, family).is_none_or(|a| !down.contains(&a)));
                if s.targets.is_empty() {
                    *spread = None;
                }
            }
        }
        if matches!(&r.action, KernelAction::Forward { v4: None, v6: None }) {
            r.action = KernelAction::Block;
            r.snat = Snat::None;
        }
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_carrier_follows_the_mode_and_the_capability() {
        let missing = || Err("`nft` is not installed (not found in PATH)".to_owned());
        assert_eq!(choose(Mode::Auto, Ok(())), Ok((Carrier::Kernel, None)));
        assert_eq!(choose(Mode::On, Ok(())), Ok((Carrier::Kernel, None)));
        assert_eq!(choose(Mode::Off, Ok(())), Ok((Carrier::Off, None)));
        assert_eq!(choose(Mode::Off, missing()), Ok((Carrier::Off, None)));
        let (carrier, why) = choose(Mode::Auto, missing()).expect("falls back");
        assert_eq!(carrier, Carrier::Fallback);
        assert!(why.is_some_and(|w| w.contains("not installed")));
        let refused = choose(Mode::On, missing()).expect_err("on insists");
        assert!(
            refused.starts_with("--nftables on: `nft` is not installed"),
            "{refused}"
        );
    }
}
