//! Which route a connection takes: the listeners the userspace routes need, and per listener
//! the choice by SNI (exact name, then wildcard, then higher `priority`, then file order),
//! with the listener's route without `domains` as the default for clients without SNI or
//! with a name no route claims.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::config::{ActionKind, Protocol};
use crate::model::UserspaceRoute;

/// Where serve listens: an address and a port.
pub type ListenAddr = SocketAddr;

/// All routes of one listener, in the order they are tried.
#[derive(Debug, Default)]
pub struct Listener {
    /// Routes with `domains`, best first for equal matches (priority, then file order).
    pub by_domain: Vec<Arc<UserspaceRoute>>,
    /// The route without `domains` on this address and port, if any.
    pub default: Option<Arc<UserspaceRoute>>,
    /// Peers whose connections start with a PROXY v2 header (front load balancers): the
    /// union of the listener's routes' `accept_proxy_protocol`.
    pub accept_proxy_from: Vec<ipnet::IpNet>,
}

impl Listener {
    /// Whether connections need their TLS ClientHello read first: to choose a route by
    /// SNI, or because the only route terminates TLS.
    pub fn needs_hello(&self) -> bool {
        let terminates = self.default.as_ref().is_some_and(|r| {
            r.tls
                .as_ref()
                .is_some_and(|t| t.mode != crate::config::TlsMode::Passthrough)
        });
        !self.by_domain.is_empty() || terminates
    }

    /// The route for a client that sent `sni` (or none).
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<UserspaceRoute>> {
        let Some(name) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.as_ref();
        };
        let exact = self
            .by_domain
            .iter()
            .find(|r| r.domains.iter().any(|d| d.eq_ignore_ascii_case(&name)));
        let wildcard = || {
            self.by_domain
                .iter()
                .find(|r| r.domains.iter().any(|d| wildcard_matches(d, &name)))
        };
        exact.or_else(wildcard).or(self.default.as_ref())
    }
}

/// `*.example.com` matches `a.example.com` (one label), not `example.com` or `a.b.example.com`.
fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    let Some((label, rest)) = name.split_once('.') else {
        return false;
    };
    !label.is_empty() && rest.eq_ignore_ascii_case(suffix)
}

/// The listeners for a set of userspace routes (TCP only: the userspace engine proxies
/// streams). A route without `addresses` listens on every address, IPv4 and IPv6.
pub fn listeners(routes: &[UserspaceRoute]) -> BTreeMap<ListenAddr, Listener> {
    let mut out: BTreeMap<ListenAddr, Listener> = BTreeMap::new();
    let mut sorted: Vec<Arc<UserspaceRoute>> = routes
        .iter()
        .filter(|r| r.protocol != Protocol::Udp)
        .cloned()
        .map(Arc::new)
        .collect();
    sorted.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.order.cmp(&b.order)));
    for route in sorted {
        let addrs: Vec<IpAddr> = if route.addresses.is_empty() {
            vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ]
        } else {
            route.addresses.clone()
        };
        for range in &route.ports {
            for port in range.first..=range.last {
                for addr in &addrs {
                    let l = out.entry(SocketAddr::new(*addr, port)).or_default();
                    for net in &route.accept_proxy_protocol {
                        if !l.accept_proxy_from.contains(net) {
                            l.accept_proxy_from.push(*net);
                        }
                    }
                    if route.domains.is_empty() {
                        if l.default.is_none() {
                            l.default = Some(route.clone());
                        }
                    } else {
                        l.by_domain.push(route.clone());
                    }
                }
            }
        }
    }
    out
}

/// What a route does with a connection, in the words of the logs and metrics.
pub fn describe(route: &UserspaceRoute) -> &'static str {
    match (route.kind, route.tls.as_ref().map(|t| t.mode)) {
        (ActionKind::Redirect, _) => "redirect",
        (ActionKind::Block, _) => "block",
        (ActionKind::Forward, Some(crate::config::TlsMode::Passthrough)) => "passthrough",
        (ActionKind::Forward, Some(crate::config::TlsMode::Terminate)) => "terminate",
        (ActionKind::Forward, Some(crate::config::TlsMode::TerminateAndReencrypt)) => {
            "terminate-and-reencrypt"
        }
        (ActionKind::Forward, None) => "tcp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, order: usize, priority: i64, domains: &[&str]) -> UserspaceRoute {
        UserspaceRoute::bare(name, order, priority, domains)
    }

    #[test]
    fn exact_beats_wildcard_then_priority_then_file_order() {
        let routes = vec![
            route("wild", 0, 0, &["*.example.test"]),
            route("exact", 1, 0, &["www.example.test"]),
            route("wild-high", 2, 5, &["*.example.test"]),
            route("fallback", 3, 0, &[]),
            route("first", 4, 0, &["dup.test"]),
            route("second", 5, 0, &["dup.test"]),
        ];
        let all = listeners(&routes);
        let l = &all[&"0.0.0.0:443".parse().expect("addr")];
        let pick = |sni: Option<&str>| l.select(sni).map(|r| r.name.clone());
        assert_eq!(pick(Some("www.example.test")).as_deref(), Some("exact"));
        assert_eq!(pick(Some("WWW.Example.Test.")).as_deref(), Some("exact"));
        assert_eq!(pick(Some("api.example.test")).as_deref(), Some("wild-high"));
        assert_eq!(pick(Some("a.b.example.test")).as_deref(), Some("fallback"));
        assert_eq!(pick(Some("example.test")).as_deref(), Some("fallback"));
        assert_eq!(pick(None).as_deref(), Some("fallback"));
        assert_eq!(pick(Some("dup.test")).as_deref(), Some("first"));
        assert!(all.contains_key(&"[::]:443".parse().expect("addr")));
    }

    #[test]
    fn without_a_default_unknown_names_have_no_route() {
        let all = listeners(&[route("only", 0, 0, &["a.test"])]);
        let l = &all[&"0.0.0.0:443".parse().expect("addr")];
        assert!(l.select(Some("b.test")).is_none());
        assert!(l.select(None).is_none());
        assert!(l.needs_hello());
    }
}
