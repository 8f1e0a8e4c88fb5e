//! Routes that claim the same port on the same addresses, found by one sweep over the
//! port ranges.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::IpAddr;

use crate::config::{Engine, PortRange, Route, L4};
use crate::diag::Diagnostic;

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
pub(super) fn conflicts(routes: &[Route], diags: &mut Vec<Diagnostic>) {
    let mut entries: Vec<(L4, PortRange, usize)> = Vec::new();
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

fn conflict(routes: &[Route], l4: L4, range: PortRange, i: usize, claim: &Meeting) -> Diagnostic {
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
    l4: Option<L4>,
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
    fn expire(&mut self, l4: L4, first: u16) {
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
