//! Scale: 10,000 routes and a 10,000-address block list load in nft, and a packet of
//! route 1 passes exactly as many rules as a packet of route 10,000 (lookups, not lists).
//!
//! The rule count is derived from the rendered ruleset by a small tracer that walks a
//! packet through our base chains the way the kernel does: each rule the packet is
//! evaluated against counts once; verdict-map lookups jump; `goto`/NAT end a chain.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;

const ROUTES: usize = 10_000;

/// Route i listens on port 10000 + i; routes 1 and N carry the same 10k block list so that
/// both have the same shape.
fn route_file(block_list: &[String]) -> String {
    let mut out = String::from("[settings]\nct_mark_mask = \"0xffff0000\"\n");
    for i in 1..=ROUTES {
        let _ = write!(
            out,
            "\n[[routes]]\nname = \"r{i:05}\"\n[routes.match]\nports = {}\n[routes.action]\n",
            10_000 + i,
        );
        if i != 1 && i != ROUTES {
            let _ = writeln!(
                out,
                "targets = [{{ host = \"198.51.100.{}\", port = 8080 }}]",
                2 + i % 200
            );
        }
        if i == 1 || i == ROUTES {
            // Dual-stack, so that the IPv6 part of the block list is used too.
            let _ = writeln!(out, "targets = [{{ host = \"198.51.100.{}\", port = 8080 }}, {{ host = \"2001:db8:1::2\", port = 8080 }}]", 2 + i % 200);
            let _ = write!(
                out,
                "[routes.action.security]\nip_block_list = [{}]\n",
                block_list.join(", ")
            );
        }
    }
    out
}

fn block_list() -> Vec<String> {
    // The IPv4 documentation ranges hold too few hosts: 512 IPv4 hosts plus IPv6 hosts in
    // 2001:db8::/32 make up the 10,000.
    let mut list: Vec<String> = (0..256).map(|i| format!("\"192.0.2.{i}\"")).collect();
    list.extend((0..256).map(|i| format!("\"203.0.113.{i}\"")));
    let mut n = 0u32;
    while list.len() < 10_000 {
        list.push(format!("\"2001:db8:{:x}::{:x}\"", n / 4096, n % 4096 + 1));
        n += 1;
    }
    list
}

#[derive(Debug)]
struct Ruleset {
    chains: BTreeMap<String, Vec<String>>,
    maps: BTreeMap<String, Vec<(Vec<String>, String)>>,
}

fn parse_elements(body: &str) -> Vec<(Vec<String>, String)> {
    body.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (key, verdict) = e.split_once(" : ").expect("element is `key : verdict`");
            (
                key.split(" . ").map(|k| k.trim().to_owned()).collect(),
                verdict.trim().to_owned(),
            )
        })
        .collect()
}

fn parse(script: &str) -> Ruleset {
    let mut chains = BTreeMap::new();
    let mut maps = BTreeMap::new();
    let mut lines = script.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("chain ").and_then(|r| r.strip_suffix(" {")) {
            let mut rules = Vec::new();
            for l in lines.by_ref() {
                let l = l.trim();
                if l == "}" {
                    break;
                }
                if !l.starts_with("type ") {
                    rules.push(l.to_owned());
                }
            }
            chains.insert(name.to_owned(), rules);
        } else if let Some(name) = t.strip_prefix("map ").and_then(|r| r.strip_suffix(" {")) {
            let mut body = String::new();
            let mut in_elements = false;
            for l in lines.by_ref() {
                let l = l.trim();
                if let Some(rest) = l.strip_prefix("elements = { ") {
                    in_elements = true;
                    body.push_str(rest);
                } else if in_elements {
                    body.push_str(l);
                } else if l == "}" {
                    break;
                }
                if in_elements && body.ends_with(" }") {
                    body.truncate(body.len() - 2);
                    in_elements = false;
                }
            }
            maps.insert(name.to_owned(), parse_elements(&body));
        }
    }
    Ruleset { chains, maps }
}

fn key_matches(pattern: &[String], key: &[String]) -> bool {
    pattern.len() == key.len()
        && pattern.iter().zip(key).all(|(p, k)| {
            if p == k {
                return true;
            }
            match (p.split_once('-'), k.parse::<u32>()) {
                (Some((a, b)), Ok(v)) => {
                    a.parse::<u32>().is_ok_and(|a| a <= v) && b.parse::<u32>().is_ok_and(|b| v <= b)
                }
                _ => false,
            }
        })
}

/// A new IPv4 TCP connection from a remote client to a local address, port `dport`.
struct Packet {
    dport: u16,
    mark: Option<String>,
}

impl Ruleset {
    fn lookup(&self, map: &str, key: &[String]) -> Option<String> {
        self.maps[map]
            .iter()
            .find(|(k, _)| key_matches(k, key))
            .map(|(_, v)| v.clone())
    }

    /// Walks one chain; returns (rules evaluated, whether a terminal verdict was reached).
    fn walk(&self, chain: &str, p: &mut Packet) -> (usize, bool) {
        let mut count = 0;
        for rule in &self.chains[chain] {
            count += 1;
            let verdict = self.eval(rule, p);
            match verdict {
                Verdict::Continue => {}
                Verdict::Jump(target) => {
                    let (n, terminal) = self.walk(&target, p);
                    count += n;
                    if terminal {
                        return (count, true);
                    }
                }
                Verdict::Terminal => return (count, true),
            }
        }
        (count, false)
    }

    fn eval(&self, rule: &str, p: &mut Packet) -> Verdict {
        let vmap_target = |v: Option<String>| match v {
            Some(v) => Verdict::Jump(v.trim_start_matches("jump ").to_owned()),
            None => Verdict::Continue,
        };
        if rule.starts_with("meta nfproto ipv4 fib daddr type local meta l4proto . th dport vmap @")
        {
            let map = rule.rsplit('@').next().unwrap_or_default();
            return vmap_target(self.lookup(map, &["tcp".into(), p.dport.to_string()]));
        }
        if rule.starts_with("meta nfproto ipv6")
            || rule.starts_with("ip6 daddr")
            || rule.starts_with("ip daddr . ")
        {
            // Not an IPv6 packet / no `addresses` element for this packet: evaluated, no match.
            let map = rule.rsplit('@').next().unwrap_or_default();
            if rule.starts_with("ip daddr . ") {
                assert!(
                    self.maps[map].is_empty(),
                    "addresses maps are empty in this test"
                );
            }
            return Verdict::Continue;
        }
        if let Some(rest) = rule.strip_prefix("ct mark set ct mark & ") {
            let mark = rest.rsplit(' ').next().expect("mark value").to_owned();
            p.mark = Some(mark);
            return Verdict::Continue;
        }
        if rule.contains(" dnat ip to ") || rule.starts_with("masquerade") {
            return Verdict::Terminal;
        }
        if rule.starts_with("counter name ") {
            return Verdict::Continue;
        }
        if rule.starts_with("ct direction original ip saddr @") {
            // The client (192.0.2.x is on the block list, so use a host that is not).
            return Verdict::Continue;
        }
        if rule.starts_with("ct direction original ip6 saddr @") {
            return Verdict::Continue;
        }
        if rule.starts_with("iif != \"lo\"")
            || rule.contains("ct mark & ") && rule.contains("vmap @")
        {
            let map = rule.rsplit('@').next().unwrap_or_default();
            return match &p.mark {
                Some(mark) => vmap_target(self.lookup(map, std::slice::from_ref(mark))),
                None => Verdict::Continue,
            };
        }
        panic!("tracer does not know rule `{rule}`");
    }
}

enum Verdict {
    Continue,
    Jump(String),
    Terminal,
}

/// Rules a new forwarded connection to `dport` passes: prerouting (DNAT), forward
/// (filter), postrouting (masquerade, QoS).
fn rules_passed(rs: &Ruleset, dport: u16) -> (usize, Option<String>) {
    let mut p = Packet { dport, mark: None };
    let mut total = 0;
    for base in [
        "nat_prerouting",
        "filter_forward",
        "nat_postrouting",
        "qos_postrouting",
    ] {
        total += rs.walk(base, &mut p).0;
    }
    (total, p.mark)
}

fn compile(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).expect("write routes");
    let (code, out, err) = common::run(&["compile", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "compile failed: {err}");
    out
}

#[test]
fn route_one_and_route_ten_thousand_pass_the_same_number_of_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = compile(dir.path(), &route_file(&block_list()));
    let rs = parse(&script);
    assert_eq!(
        rs.maps["dnat4"].len(),
        ROUTES,
        "one dispatch element per route"
    );

    let (first, mark_first) = rules_passed(&rs, 10_001);
    let (last, mark_last) = rules_passed(&rs, 10_000 + u16::try_from(ROUTES).expect("fits"));
    assert!(
        mark_first.is_some() && mark_last.is_some() && mark_first != mark_last,
        "both packets were routed, to different routes"
    );
    assert_eq!(
        first, last,
        "route 1 and route {ROUTES} pass the same number of rules"
    );

    // And the same as with a single route: the count does not grow with the ruleset.
    let single = compile(
        dir.path(),
        "[settings]\nct_mark_mask = \"0xffff0000\"\n[[routes]]\nname = \"only\"\n[routes.match]\nports = 10001\n[routes.action]\ntargets = [{ host = \"198.51.100.2\", port = 8080 }, { host = \"2001:db8:1::2\", port = 8080 }]\n[routes.action.security]\nip_block_list = [\"192.0.2.1\", \"2001:db8::1\"]\n",
    );
    let (one, _) = rules_passed(&parse(&single), 10_001);
    assert_eq!(
        first, one,
        "a packet passes as many rules with 1 route as with {ROUTES}"
    );
    assert!(
        first < 20,
        "a packet passes a small constant number of rules, got {first}"
    );
}

#[test]
fn ten_thousand_routes_and_a_ten_thousand_address_block_list_load_in_nft() {
    if !common::netns_available("ten_thousand_routes_load_in_nft") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let script = compile(dir.path(), &route_file(&block_list()));
    let file = dir.path().join("ruleset.nft");
    std::fs::write(&file, &script).expect("write script");
    let ns = common::Netns::new("scale");
    let out = ns.load_file(&file, false);
    assert!(
        out.status.success(),
        "nft -f failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = ns.nft_ok(
        &["list", "set", "inet", "smartproxy", "block6_r10000"],
        None,
    );
    assert!(listed.contains("2001:db8:2::"), "the block list was loaded");
    let chains = ns.nft_ok(&["list", "chains", "inet"], None);
    assert!(
        chains.contains("chain f_r10000"),
        "the last route's chain exists"
    );
}
