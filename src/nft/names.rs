//! The one spelling of the object names a route owns, both ways: route -> name for the
//! renderers, name -> route ([`owner`]) for the listing parser, plan and status.
//!
//! Route names are `[a-z][a-z0-9_-]*` and always sit behind a prefix, so a name never
//! collides with an nft keyword or with the shared objects (`masq`, `qos_csN`, the maps).
//! The templates in `templates/` spell the same names; the render snapshots keep them equal.

use crate::types::Family;

/// The family digit in per-family names (`n4_web`, `dnat6`).
pub fn family_digit(f: Family) -> &'static str {
    match f {
        Family::V4 => "4",
        Family::V6 => "6",
    }
}

/// `c_<route>`: the route's named counter.
pub fn counter(route: &str) -> String {
    format!("c_{route}")
}

/// `f_<route>`: the route's filter chain, jumped to from `route_filter` by its mark.
pub fn filter_chain(route: &str) -> String {
    format!("f_{route}")
}

/// `x_<route>`: the chain that refuses a connection (block, allow list, limits).
pub fn refusal_chain(route: &str) -> String {
    format!("x_{route}")
}

/// `n4_<route>`, `n6_<route>`: the route's NAT chain per family.
pub fn nat_chain(f: Family, route: &str) -> String {
    format!("n{}_{route}", family_digit(f))
}

/// `t4_<route>_<i>`, `t6_<route>_<i>`: the chain of the route's `i`th target.
pub fn target_chain(f: Family, route: &str, i: usize) -> String {
    format!("t{}_{route}_{i}", family_digit(f))
}

/// The per-route, per-family sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetKind {
    Allow,
    Block,
    Conn,
    Closed,
    Rate,
}

impl SetKind {
    pub const ALL: [SetKind; 5] = [
        SetKind::Allow,
        SetKind::Block,
        SetKind::Conn,
        SetKind::Closed,
        SetKind::Rate,
    ];

    fn prefix(self) -> &'static str {
        match self {
            SetKind::Allow => "allow",
            SetKind::Block => "block",
            SetKind::Conn => "conn",
            SetKind::Closed => "closed",
            SetKind::Rate => "rate",
        }
    }
}

/// `allow4_<route>`, `conn6_<route>`, …: a route's set of one kind and family.
pub fn set(kind: SetKind, f: Family, route: &str) -> String {
    format!("{}{}_{route}", kind.prefix(), family_digit(f))
}

/// The mark-keyed maps: a route's mark -> its filter chain, its SNAT chain, its QoS chain.
/// The filter map is how a mark is traced back to its route.
pub const ROUTE_FILTER: &str = "route_filter";
pub const ROUTE_SNAT: &str = "route_snat";
pub const ROUTE_QOS: &str = "route_qos";

/// The shared SNAT chain `masq`, or `masq_random` for fully random ports.
pub fn masquerade_chain(random: bool) -> &'static str {
    if random {
        "masq_random"
    } else {
        "masq"
    }
}

/// `qos_cs<class>`: the shared chain that sets DSCP class `class`.
pub fn qos_chain(class: u8) -> String {
    format!("qos_cs{class}")
}

/// Shared chains (`masq`, `masq_random`, `qos_csN`): owned by no route, added and removed
/// one by one.
pub fn is_shared_chain(name: &str) -> bool {
    name == "masq" || name == "masq_random" || name.starts_with("qos_cs")
}

/// The route whose filter chain this is (`f_<route>`).
pub fn route_of_filter_chain(name: &str) -> Option<&str> {
    name.strip_prefix("f_")
}

/// The route whose counter this is (`c_<route>`).
pub fn route_of_counter(name: &str) -> Option<&str> {
    name.strip_prefix("c_")
}

/// The route that owns an object name, if any.
pub fn owner(kind: &str, name: &str) -> Option<String> {
    let strip_index = |rest: &str| -> Option<String> {
        let (route, index) = rest.rsplit_once('_')?;
        index
            .chars()
            .all(|c| c.is_ascii_digit())
            .then(|| route.to_owned())
    };
    let per_family = |prefix: &str| {
        [Family::V4, Family::V6]
            .into_iter()
            .find_map(|f| name.strip_prefix(&format!("{prefix}{}_", family_digit(f))))
    };
    match kind {
        "counter" => route_of_counter(name).map(str::to_owned),
        "set" => SetKind::ALL
            .iter()
            .find_map(|k| per_family(k.prefix()))
            .map(str::to_owned),
        "chain" => {
            if let Some(r) = per_family("n") {
                Some(r.to_owned())
            } else if let Some(r) = per_family("t") {
                strip_index(r)
            } else {
                route_of_filter_chain(name)
                    .or_else(|| name.strip_prefix("x_"))
                    .map(str::to_owned)
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name a route owns, with its kind.
    fn every_name(route: &str) -> Vec<(&'static str, String)> {
        let mut names = vec![
            ("counter", counter(route)),
            ("chain", filter_chain(route)),
            ("chain", refusal_chain(route)),
        ];
        for f in [Family::V4, Family::V6] {
            names.push(("chain", nat_chain(f, route)));
            for i in [0, 1, 12] {
                names.push(("chain", target_chain(f, route, i)));
            }
            for k in SetKind::ALL {
                names.push(("set", set(k, f, route)));
            }
        }
        names
    }

    #[test]
    fn every_name_of_a_route_leads_back_to_it() {
        for route in [
            "web", "a", "my_route", "web_2", "x-y", "t4_n6_c", "f_x_1", "r0",
        ] {
            for (kind, name) in every_name(route) {
                assert_eq!(owner(kind, &name).as_deref(), Some(route), "{kind} {name}");
            }
        }
    }

    #[test]
    fn names_are_spelled_as_the_templates_spell_them() {
        assert_eq!(counter("web"), "c_web");
        assert_eq!(filter_chain("web"), "f_web");
        assert_eq!(refusal_chain("web"), "x_web");
        assert_eq!(nat_chain(Family::V6, "web"), "n6_web");
        assert_eq!(target_chain(Family::V4, "web", 3), "t4_web_3");
        assert_eq!(set(SetKind::Closed, Family::V4, "web"), "closed4_web");
        assert_eq!(qos_chain(46), "qos_cs46");
    }

    #[test]
    fn shared_objects_belong_to_no_route() {
        for name in [
            masquerade_chain(false),
            masquerade_chain(true),
            &qos_chain(8),
        ] {
            assert!(is_shared_chain(name));
            assert_eq!(owner("chain", name), None);
        }
        for map in ["dnat4", "route_filter", "route_snat", "route_qos"] {
            assert_eq!(owner("map", map), None);
        }
        assert_eq!(owner("chain", "filter_forward"), None);
    }

    #[test]
    fn owner_strips_prefixes_and_target_indexes() {
        assert_eq!(
            owner("chain", "t4_my_route_12").as_deref(),
            Some("my_route")
        );
        assert_eq!(owner("chain", "f_ip").as_deref(), Some("ip"));
        assert_eq!(owner("chain", "filter_forward"), None);
        assert_eq!(owner("set", "rate6_x-y").as_deref(), Some("x-y"));
        assert_eq!(owner("set", "closed4_x-y").as_deref(), Some("x-y"));
        assert_eq!(owner("counter", "c_web").as_deref(), Some("web"));
    }
}
