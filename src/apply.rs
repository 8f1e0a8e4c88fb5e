//! Plan -> one transaction. A new table, or changed table-level settings, load the whole
//! rendered script (which replaces the table atomically); otherwise only what changed is
//! touched, so counters, meters and set contents of other routes survive.
//!
//! Order inside the transaction: stale map elements go first (nothing jumps to a chain
//! that is about to go), then chains of changed routes are flushed (nothing references a
//! set or counter that is about to be recreated), then deletions, then additions, then the
//! new map elements (their chains exist by then). nft applies all of it or none of it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use crate::nft::listing::{self, Listing, Object};
use crate::plan::{is_shared_chain, Plan};

/// The script that takes the kernel from `plan.live_listing` to the desired state.
pub fn transaction(plan: &Plan) -> String {
    transaction_parsed(plan, &Parsed::of(plan))
}

/// The listings of a plan, parsed once for [`transaction_parsed`] and [`inverse_parsed`].
pub struct Parsed {
    pub live: Option<Listing>,
    pub desired: Listing,
}

impl Parsed {
    pub fn of(plan: &Plan) -> Self {
        Parsed {
            live: plan.live_listing.as_deref().map(listing::parse),
            desired: listing::parse(&plan.desired_listing),
        }
    }
}

/// [`transaction`] with the plan's listings already parsed.
pub fn transaction_parsed(plan: &Plan, parsed: &Parsed) -> String {
    match (&parsed.live, plan.replace_table) {
        (Some(live), false) => incremental(&plan.table, live, &parsed.desired),
        _ => plan.desired_script.clone(),
    }
}

/// The transaction that undoes an incremental [`transaction`]: from the desired state back
/// to the live state the plan was made against. `None` when the apply loads the whole
/// table (then only a full reload restores it).
pub fn inverse(plan: &Plan) -> Option<String> {
    inverse_parsed(plan, &Parsed::of(plan))
}

/// [`inverse`] with the plan's listings already parsed.
pub fn inverse_parsed(plan: &Plan, parsed: &Parsed) -> Option<String> {
    match (&parsed.live, plan.replace_table) {
        (Some(live), false) => Some(incremental(&plan.table, &parsed.desired, live)),
        _ => None,
    }
}

fn key_of(element: &str) -> &str {
    element.split_once(" : ").map_or(element, |(k, _)| k)
}

/// All objects of a listing that may change one by one: route objects and shared chains.
fn objects(l: &Listing) -> Vec<(Option<&str>, &Object)> {
    let mut out: Vec<(Option<&str>, &Object)> = l
        .routes
        .iter()
        .flat_map(|(name, unit)| unit.objects.values().map(move |o| (Some(name.as_str()), o)))
        .collect();
    out.extend(
        l.table
            .iter()
            .filter(|o| is_shared_chain(o))
            .map(|o| (None, o)),
    );
    out
}

/// Every map element of a listing, as (map, element), in route order.
fn elements(l: &Listing) -> Vec<(&str, &str)> {
    l.routes
        .values()
        .flat_map(|u| u.elements.iter().map(|(m, e)| (m.as_str(), e.as_str())))
        .collect()
}

/// Object texts by (kind, name). Hashed: a 10k-route table holds ~40k objects and as many
/// elements, and ordered maps of them took most of the time of building a transaction.
type Index<'a> = HashMap<(&'a str, &'a str), &'a str>;

fn index<'a>(list: &[(Option<&str>, &'a Object)]) -> Index<'a> {
    list.iter()
        .map(|(_, o)| ((o.kind.as_str(), o.name.as_str()), o.text.as_str()))
        .collect()
}

fn find<'a>(idx: &Index<'a>, o: &Object) -> Option<&'a str> {
    idx.get(&(o.kind.as_str(), o.name.as_str())).copied()
}

/// The elements of `list` that `other` lacks, sorted, each once.
fn only<'a>(list: &[(&'a str, &'a str)], other: &HashSet<(&str, &str)>) -> Vec<(&'a str, &'a str)> {
    let mut out: Vec<(&str, &str)> = list
        .iter()
        .copied()
        .filter(|pair| !other.contains(pair))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn incremental(table: &str, live: &Listing, desired: &Listing) -> String {
    let mut s = String::new();
    let changed: BTreeSet<&str> = live
        .routes
        .iter()
        .filter(|(name, unit)| {
            desired
                .routes
                .get(*name)
                .is_none_or(|d| d != *unit && d.text() != unit.text())
        })
        .map(|(name, _)| name.as_str())
        .chain(
            desired
                .routes
                .keys()
                .filter(|n| !live.routes.contains_key(*n))
                .map(String::as_str),
        )
        .collect();

    let (live_elements, desired_elements) = (elements(live), elements(desired));
    let live_set: HashSet<(&str, &str)> = live_elements.iter().copied().collect();
    let desired_set: HashSet<(&str, &str)> = desired_elements.iter().copied().collect();

    // 1. Map elements that go away or change.
    for (map, e) in only(&live_elements, &desired_set) {
        let _ = writeln!(s, "delete element inet {table} {map} {{ {} }}", key_of(e));
    }
    let live_objects = objects(live);
    let desired_objects = objects(desired);
    // Objects by (kind, name): a lookup per object, not a scan (10k routes hold ~40k).
    let (live_index, desired_index) = (index(&live_objects), index(&desired_objects));
    // 2. Flush every chain of a changed route (and changed shared chains).
    for (route, o) in &live_objects {
        let route_changed = route.is_some_and(|r| changed.contains(r));
        let text_changed = find(&desired_index, o) != Some(o.text.as_str());
        if o.kind == "chain" && (route_changed || text_changed) {
            let _ = writeln!(s, "flush chain inet {table} {}", o.name);
        }
    }
    // 3. Delete what the desired state lacks or holds differently (chains are only
    //    deleted when gone; a flushed chain is refilled below).
    for (_, o) in &live_objects {
        let wanted = find(&desired_index, o);
        let delete = match o.kind.as_str() {
            "chain" => wanted.is_none(),
            _ => wanted != Some(o.text.as_str()),
        };
        if delete {
            let _ = writeln!(s, "delete {} inet {table} {}", o.kind, o.name);
        }
    }
    // 4. Add: new or recreated counters and sets, and the rules of every flushed or new
    //    chain, in one table block (nft resolves jumps between them).
    let mut block = String::new();
    for (route, o) in &desired_objects {
        let before = find(&live_index, o);
        let route_changed = route.is_some_and(|r| changed.contains(r));
        let add = match o.kind.as_str() {
            "chain" => route_changed || before != Some(o.text.as_str()),
            _ => before != Some(o.text.as_str()),
        };
        if add {
            for line in o.text.lines() {
                let _ = writeln!(block, "\t{line}");
            }
        }
    }
    if !block.is_empty() {
        let _ = write!(s, "table inet {table} {{\n{block}}}\n");
    }
    // 5. New map elements.
    for (map, e) in only(&desired_elements, &live_set) {
        let _ = writeln!(s, "add element inet {table} {map} {{ {e} }}");
    }
    s
}

/// Removes the contents of dynamic sets from a listing: they are per-connection state,
/// and some forms (`ct count over`) do not load back.
pub fn strip_dynamic_elements(listing: &str) -> String {
    let mut out = String::with_capacity(listing.len());
    let mut in_dynamic_set = false;
    let mut skipping = false;
    let mut block: Vec<&str> = Vec::new();
    for line in listing.lines() {
        if line.starts_with("\tset ") && line.ends_with('{') {
            block.clear();
            block.push(line);
            in_dynamic_set = true;
            continue;
        }
        if in_dynamic_set {
            if line == "\t}" {
                let dynamic = block
                    .iter()
                    .any(|l| l.trim_start().starts_with("flags ") && l.contains("dynamic"));
                for l in &block {
                    if dynamic && l.trim_start().starts_with("elements = ") {
                        skipping = !l.trim_end().ends_with('}');
                        continue;
                    }
                    if skipping {
                        skipping = !l.trim_end().ends_with('}');
                        continue;
                    }
                    out.push_str(l);
                    out.push('\n');
                }
                out.push_str(line);
                out.push('\n');
                in_dynamic_set = false;
                skipping = false;
            } else {
                block.push(line);
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The script that restores a table as dumped (with counter values), or removes it when
/// it did not exist.
pub fn rollback_script(table: &str, dump: Option<&str>) -> String {
    let mut s = format!("table inet {table} {{}}\ndelete table inet {table}\n");
    if let Some(d) = dump {
        s.push_str(&strip_dynamic_elements(d));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: &str = "table inet sp {
\tcounter c_web {
\t\tcomment \"web\"
\t}

\tcounter c_api {
\t\tcomment \"api\"
\t}

\tmap dnat4 {
\t\ttype inet_proto . inet_service : verdict
\t\tflags interval
\t\telements = { tcp . 80 : jump n4_web, tcp . 443 : jump n4_api }
\t}

\tmap route_filter {
\t\ttype mark : verdict
\t\telements = { 0x00010000 : jump f_web, 0x00020000 : jump f_api }
\t}

\tchain n4_web {
\t\tmeta l4proto tcp dnat ip to 198.51.100.2:80
\t}

\tchain f_web {
\t\tcounter name \"c_web\"
\t}

\tchain n4_api {
\t\tmeta l4proto tcp dnat ip to 198.51.100.3:443
\t}

\tchain f_api {
\t\tcounter name \"c_api\"
\t}
}
";

    #[test]
    fn changing_one_route_touches_only_that_route() {
        let desired = LIVE.replace("198.51.100.3:443", "198.51.100.4:443");
        let script = incremental("sp", &listing::parse(LIVE), &listing::parse(&desired));
        assert!(!script.contains("web"), "web is untouched:\n{script}");
        assert!(script.contains("flush chain inet sp n4_api"), "{script}");
        assert!(script.contains("dnat ip to 198.51.100.4:443"), "{script}");
        assert!(
            !script.contains("delete counter"),
            "the counter survives:\n{script}"
        );
    }

    #[test]
    fn removing_a_route_deletes_elements_before_chains() {
        let desired = LIVE
            .replace(", tcp . 443 : jump n4_api", "")
            .replace(", 0x00020000 : jump f_api", "")
            .replace("\tcounter c_api {\n\t\tcomment \"api\"\n\t}\n\n", "")
            .replace(
                "\tchain n4_api {\n\t\tmeta l4proto tcp dnat ip to 198.51.100.3:443\n\t}\n\n",
                "",
            )
            .replace("\tchain f_api {\n\t\tcounter name \"c_api\"\n\t}\n", "");
        let script = incremental("sp", &listing::parse(LIVE), &listing::parse(&desired));
        let pos = |needle: &str| {
            script
                .find(needle)
                .unwrap_or_else(|| panic!("`{needle}` in:\n{script}"))
        };
        assert!(
            pos("delete element inet sp dnat4 { tcp . 443 }") < pos("delete chain inet sp n4_api")
        );
        assert!(pos("flush chain inet sp f_api") < pos("delete counter inet sp c_api"));
        assert!(!script.contains("web"), "{script}");
    }

    #[test]
    fn the_inverse_undoes_only_the_changed_route() {
        let desired = LIVE.replace("198.51.100.3:443", "198.51.100.4:443");
        let p = crate::plan::plan(
            "sp",
            String::new(),
            desired,
            Some(LIVE.to_owned()),
            None,
            Vec::new(),
        );
        let undo = inverse(&p).expect("an incremental plan has an inverse");
        assert!(!undo.contains("web"), "web is untouched:\n{undo}");
        assert!(undo.contains("dnat ip to 198.51.100.3:443"), "{undo}");
        let full = crate::plan::Plan {
            replace_table: true,
            ..p
        };
        assert_eq!(
            inverse(&full),
            None,
            "a full load is undone by a full reload"
        );
    }

    #[test]
    fn dynamic_set_contents_are_dropped_from_rollback() {
        let dump = "table inet sp {\n\tset conn4_a {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic\n\t\telements = { 192.0.2.2 ct count over 3,\n\t\t\t     192.0.2.3 ct count over 3 }\n\t}\n\tset block4_a {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 192.0.2.66 }\n\t}\n}\n";
        let out = strip_dynamic_elements(dump);
        assert!(!out.contains("ct count"), "{out}");
        assert!(out.contains("elements = { 192.0.2.66 }"), "{out}");
        assert!(out.contains("flags dynamic\n\t}"), "{out}");
    }
}
