//! The one spelling of the object names a route owns, both ways: route -> name for the
//! renderers, name -> route ([`owner`]) for the listing parser, plan and status.
//!
//! Route names are `[a-z][a-z0-9_-]*` and always sit behind a prefix, so a name never
//! collides with an nft keyword or with the table-level objects: the dispatch maps
//! ([`dnat_map`], [`ROUTE_FILTER`], …), the base chains ([`BASE_CHAINS`]) and the shared
//! chains (`masq`, `qos_csN`). The templates in `templates/` spell the same names; a test
//! below renders a script and checks that it declares exactly the names listed here.

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

/// The mark-keyed maps, in the script's order.
pub const MARK_MAPS: [&str; 3] = [ROUTE_FILTER, ROUTE_SNAT, ROUTE_QOS];

/// The dispatch map the NAT base chains look a connection's destination up in: one per
/// family, keyed by protocol and port alone (routes without `addresses`, any local
/// address) or by the destination address too; single ports in a hash map, ranges in an
/// interval map (`_range`). `dnat4`, `dnat4_range`, `dnat4_addr`, `dnat6_addr_range`, ….
pub fn dnat_map(f: Family, by_address: bool, range: bool) -> &'static str {
    match (f, by_address, range) {
        (Family::V4, false, false) => "dnat4",
        (Family::V4, false, true) => "dnat4_range",
        (Family::V4, true, false) => "dnat4_addr",
        (Family::V4, true, true) => "dnat4_addr_range",
        (Family::V6, false, false) => "dnat6",
        (Family::V6, false, true) => "dnat6_range",
        (Family::V6, true, false) => "dnat6_addr",
        (Family::V6, true, true) => "dnat6_addr_range",
    }
}

/// Every dispatch map's (family, by address, range), in the script's order: per family,
/// by port, by port range, by address, by address and range.
pub const DNAT_MAPS: [(Family, bool, bool); 8] = [
    (Family::V4, false, false),
    (Family::V4, false, true),
    (Family::V4, true, false),
    (Family::V4, true, true),
    (Family::V6, false, false),
    (Family::V6, false, true),
    (Family::V6, true, false),
    (Family::V6, true, true),
];

/// The base chains: the NAT hooks (dispatch by destination), and the filter and QoS hooks
/// (dispatch by the route's mark).
pub const NAT_PREROUTING: &str = "nat_prerouting";
pub const NAT_OUTPUT: &str = "nat_output";
pub const NAT_POSTROUTING: &str = "nat_postrouting";
pub const FILTER_INPUT: &str = "filter_input";
pub const FILTER_FORWARD: &str = "filter_forward";
pub const FILTER_OUTPUT: &str = "filter_output";
pub const QOS_POSTROUTING: &str = "qos_postrouting";

/// Every base chain, in the script's order.
pub const BASE_CHAINS: [&str; 7] = [
    NAT_PREROUTING,
    NAT_OUTPUT,
    NAT_POSTROUTING,
    FILTER_INPUT,
    FILTER_FORWARD,
    FILTER_OUTPUT,
    QOS_POSTROUTING,
];

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
    fn every_dispatch_map_has_its_own_name() {
        let names: Vec<&str> = DNAT_MAPS
            .iter()
            .map(|&(f, by_address, range)| dnat_map(f, by_address, range))
            .collect();
        assert_eq!(
            names,
            [
                "dnat4",
                "dnat4_range",
                "dnat4_addr",
                "dnat4_addr_range",
                "dnat6",
                "dnat6_range",
                "dnat6_addr",
                "dnat6_addr_range"
            ]
        );
        assert_eq!(MARK_MAPS, ["route_filter", "route_snat", "route_qos"]);
        let guarded: Vec<&str> = crate::nft::guard::BASE_CHAINS
            .iter()
            .map(|(name, _, _)| *name)
            .collect();
        assert_eq!(
            guarded, BASE_CHAINS,
            "the guard allows the base chains listed here"
        );
    }

    /// The objects a script declares at the top of the table, kind by kind in order:
    /// (`map`|`chain`|`set`|`counter`, name, whether it is a base chain).
    fn declared(script: &str) -> Vec<(String, String, bool)> {
        let lines: Vec<&str> = script.lines().collect();
        let mut out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let Some((kind, rest)) = line.strip_prefix('\t').and_then(|l| l.split_once(' ')) else {
                continue;
            };
            if let Some(name) = rest.strip_suffix(" {") {
                let next = lines.get(i + 1).copied().unwrap_or_default();
                let base = next.contains("type ") && next.contains(" hook ");
                out.push((kind.to_owned(), name.to_owned(), base));
            }
        }
        out
    }

    /// The templates spell the base chains and the maps their rules jump through: the
    /// script rendered from them declares exactly the table-level names listed here, every
    /// other object it declares belongs to one of its routes (or is a shared chain), every
    /// `@name` it uses is declared, and the JSON document declares the same objects.
    #[test]
    fn the_rendered_script_declares_exactly_the_names_listed_here() {
        let model = crate::lower::testing::fixture("json/everything.toml");
        let script = crate::render::render_script(&model).expect("renders");
        let objects = declared(&script);
        let of = |kind: &str| -> Vec<&str> {
            objects
                .iter()
                .filter(|(k, _, _)| k == kind)
                .map(|(_, n, _)| n.as_str())
                .collect()
        };
        let maps: Vec<&str> = DNAT_MAPS
            .iter()
            .map(|&(f, by_address, range)| dnat_map(f, by_address, range))
            .chain(MARK_MAPS)
            .collect();
        assert_eq!(of("map"), maps);
        let base: Vec<&str> = objects
            .iter()
            .filter(|(_, _, base)| *base)
            .map(|(_, n, _)| n.as_str())
            .collect();
        assert_eq!(base, BASE_CHAINS);
        let routes: Vec<&str> = model.kernel.iter().map(|r| r.name.as_str()).collect();
        let mut shared = 0;
        for (kind, name, base) in &objects {
            if kind == "map" || *base {
                continue;
            }
            if kind == "chain" && is_shared_chain(name) {
                shared += 1;
                continue;
            }
            let route = owner(kind, name);
            assert!(
                route.as_deref().is_some_and(|r| routes.contains(&r)),
                "{kind} {name} belongs to no route of the model"
            );
        }
        assert!(shared > 0, "the fixture uses a shared chain");
        for word in script.split(|c: char| c.is_whitespace() || c == ',') {
            if let Some(name) = word.strip_prefix('@') {
                assert!(
                    objects
                        .iter()
                        .any(|(k, n, _)| n == name && (k == "map" || k == "set")),
                    "`@{name}` is used but not declared"
                );
            }
        }

        let json: serde_json::Value =
            serde_json::from_str(&crate::render::json::render_json(&model).expect("renders JSON"))
                .expect("valid JSON");
        let commands = json["nftables"].as_array().expect("a command list");
        for kind in ["map", "chain", "set", "counter"] {
            let in_json: Vec<&str> = commands
                .iter()
                .filter_map(|c| c["add"][kind]["name"].as_str())
                .collect();
            assert_eq!(in_json, of(kind), "the JSON document's {kind}s");
        }
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
