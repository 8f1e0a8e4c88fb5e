//! The kernel's side of status: per route, its named counter `c_<route>` and the conntrack
//! entries carrying its mark, read through the [`Kernel`] trait in two queries.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Error, KernelCounts};
use crate::kernel::Kernel;

/// What `nft -j list table` tells about the routes: counter values, each route's mark and
/// the mask the filter rules apply before looking the mark up.
#[derive(Debug, Default, PartialEq, Eq)]
struct TableListing {
    /// Route name -> (packets, bytes).
    counters: BTreeMap<String, (u64, u64)>,
    /// Route name -> its mark (already inside the mask).
    marks: BTreeMap<String, u32>,
    /// `None` when no filter rule looks up `@route_filter` (a table not made by smartproxy).
    mask: Option<u32>,
}

/// Per route of `inet <table>` (by route name): its named counter `c_<route>` (packets,
/// bytes) and the conntrack entries whose mark, under the table's mark mask, is the route's
/// Per route of `inet <table>` (by route name): its named counter `c_<route>` (packets,
/// bytes) and the conntrack entries whose mark, under the table's mark mask, is the route's
/// mark (active). Ok(empty map) when the table does not exist.
pub fn kernel_counts(
    kernel: &dyn Kernel,
    table: &str,
) -> Result<BTreeMap<String, KernelCounts>, String> {
    read_kernel(kernel, table)
        .map(Option::unwrap_or_default)
        .map_err(|e| e.to_string())
}

/// [`kernel_counts`], telling an absent table (`None`) from an empty one, with a typed
/// error. conntrack-tools missing or failing counts nothing as active.
pub fn read_kernel(
    kernel: &dyn Kernel,
    table: &str,
) -> Result<Option<BTreeMap<String, KernelCounts>>, Error> {
    let Some(json) = kernel.list_table_json(table)? else {
        return Ok(None);
    };
    let listing = parse_table(&json)?;
    let active = if listing.marks.is_empty() {
        BTreeMap::new()
    } else {
        kernel
            .conntrack_entries()
            .ok()
            .flatten()
            .map(|text| count_active(&text, listing.mask.unwrap_or(u32::MAX), &listing.marks))
            .unwrap_or_default()
    };
    let mut out = BTreeMap::new();
    for (name, &(packets, bytes)) in &listing.counters {
        out.insert(
            name.clone(),
            KernelCounts {
                packets,
                bytes,
                active: active.get(name).copied().unwrap_or(0),
            },
        );
    }
    Ok(Some(out))
}

/// A number in nft's JSON: a JSON number, or a string in decimal or `0x` hex.
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

fn as_u32(v: &Value) -> Option<u32> {
    as_u64(v).and_then(|n| u32::try_from(n).ok())
}

/// Parses `nft -j list table inet NAME`.
/// Parses `nft -j list table inet NAME`.
fn parse_table(json: &str) -> Result<TableListing, Error> {
    let doc: Value = serde_json::from_str(json)?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or(Error::NotAListing)?;
    let mut out = TableListing::default();
    for obj in objects {
        if let Some(c) = obj.get("counter") {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if let Some(route) = crate::nft::names::route_of_counter(name) {
                let get = |k| c.get(k).and_then(as_u64).unwrap_or(0);
                out.counters
                    .insert(route.to_owned(), (get("packets"), get("bytes")));
            }
        } else if let Some(m) = obj.get("map") {
            if m.get("name").and_then(Value::as_str) == Some(crate::nft::names::ROUTE_FILTER) {
                for elem in m
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some((route, mark)) = filter_element(elem) {
                        out.marks.insert(route, mark);
                    }
                }
            }
        } else if let Some(r) = obj.get("rule") {
            let chain = r.get("chain").and_then(Value::as_str);
            let filter = [
                crate::nft::names::FILTER_FORWARD,
                crate::nft::names::FILTER_INPUT,
            ];
            if chain.is_some_and(|c| filter.contains(&c)) && out.mask.is_none() {
                out.mask = r
                    .get("expr")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find_map(route_filter_mask);
            }
        }
    }
    Ok(out)
}

/// One `route_filter` element, `[MARK, {"jump": {"target": "f_<route>"}}]` (the key may
/// come wrapped as `{"elem": {"val": MARK, …}}`) -> (route, mark).
fn filter_element(elem: &Value) -> Option<(String, u32)> {
    let pair = elem.as_array()?;
    let key = pair.first()?;
    let key = key.get("elem").and_then(|e| e.get("val")).unwrap_or(key);
    let mark = as_u32(key)?;
    let target = pair.get(1)?.get("jump")?.get("target")?.as_str()?;
    Some((
        crate::nft::names::route_of_filter_chain(target)?.to_owned(),
        mark,
    ))
}

/// The mask of `ct mark & MASK vmap @route_filter`; `ct mark vmap @route_filter` (no `&`)
/// is the whole mark.
fn route_filter_mask(expr: &Value) -> Option<u32> {
    let vmap = expr.get("vmap")?;
    if vmap.get("data")?.as_str()?.strip_prefix('@') != Some(crate::nft::names::ROUTE_FILTER) {
        return None;
    }
    let key = vmap.get("key")?;
    match key.get("&").and_then(Value::as_array) {
        Some(and) => and.iter().find_map(as_u32),
        None => key.get("ct").map(|_| u32::MAX),
    }
}

/// Counts, per route, the `conntrack -L` entries whose `mark=N` under `mask` is the route's
/// mark. Entries in TIME_WAIT or CLOSE are connections already over (kept only to absorb
/// late packets), so they are not active; every other state is (half-closed ones too, and
/// UDP entries, which have no state, until they time out).
fn count_active(
    conntrack: &str,
    mask: u32,
    marks: &BTreeMap<String, u32>,
) -> BTreeMap<String, u64> {
    let by_mark: BTreeMap<u32, &str> = marks
        .iter()
        .map(|(route, &mark)| (mark, route.as_str()))
        .collect();
    let mut out = BTreeMap::new();
    for line in conntrack.lines() {
        let mut mark = None;
        let mut over = false;
        for word in line.split_whitespace() {
            if let Some(v) = word.strip_prefix("mark=") {
                mark = v.parse::<u32>().ok();
            } else if word == "TIME_WAIT" || word == "CLOSE" {
                over = true;
            }
        }
        let Some(mark) = mark else { continue };
        if over || mark & mask == 0 {
            continue;
        }
        if let Some(route) = by_mark.get(&(mark & mask)) {
            *out.entry((*route).to_owned()).or_insert(0) += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::KernelError;

    /// Captured from `nft -j list table inet stx` (nftables 1.0.6) after applying two routes
    /// with the default mask, trimmed to the objects status reads plus a few it must skip.
    const NFT_SAMPLE: &str = r#"{"nftables": [
{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"table": {"family": "inet", "name": "stx", "handle": 2}},
{"counter": {"family": "inet", "name": "c_api-v2", "table": "stx", "handle": 15, "comment": "api-v2", "packets": 7, "bytes": 420}},
{"counter": {"family": "inet", "name": "c_web", "table": "stx", "handle": 16, "comment": "web", "packets": 12, "bytes": 1337}},
{"map": {"family": "inet", "name": "dnat4", "table": "stx", "type": ["inet_proto", "inet_service"], "handle": 17, "map": "verdict", "elem": [[{"concat": ["tcp", 8080]}, {"jump": {"target": "n4_web"}}]]}},
{"map": {"family": "inet", "name": "route_filter", "table": "stx", "type": "mark", "handle": 25, "map": "verdict", "elem": [[2818048, {"jump": {"target": "f_api-v2"}}], [3670016, {"jump": {"target": "f_web"}}]]}},
{"map": {"family": "inet", "name": "route_snat", "table": "stx", "type": "mark", "handle": 26, "map": "verdict", "elem": [[2818048, {"jump": {"target": "masq"}}]]}},
{"rule": {"family": "inet", "table": "stx", "chain": "f_web", "handle": 40, "expr": [{"counter": "c_web"}]}},
{"rule": {"family": "inet", "table": "stx", "chain": "nat_postrouting", "handle": 54, "expr": [{"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "original"}}, {"vmap": {"key": {"&": [{"ct": {"key": "mark"}}, 16711680]}, "data": "@route_snat"}}]}},
{"rule": {"family": "inet", "table": "stx", "chain": "filter_input", "handle": 55, "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iif"}}, "right": "lo"}}, {"vmap": {"key": {"&": [{"ct": {"key": "mark"}}, 16711680]}, "data": "@route_filter"}}]}},
{"rule": {"family": "inet", "table": "stx", "chain": "filter_forward", "handle": 56, "expr": [{"vmap": {"key": {"&": [{"ct": {"key": "mark"}}, 16711680]}, "data": "@route_filter"}}]}}
]}"#;

    fn marks() -> BTreeMap<String, u32> {
        [
            ("api-v2".to_owned(), 0x002b_0000),
            ("web".to_owned(), 0x0038_0000),
        ]
        .into()
    }

    #[test]
    fn status_parses_counters_marks_and_mask_of_a_captured_listing() {
        let l = parse_table(NFT_SAMPLE).expect("parses");
        assert_eq!(
            l.counters,
            [
                ("api-v2".to_owned(), (7, 420)),
                ("web".to_owned(), (12, 1337))
            ]
            .into()
        );
        assert_eq!(l.marks, marks());
        assert_eq!(l.mask, Some(0x00ff_0000));
    }

    #[test]
    fn status_reads_wrapped_elements_hex_strings_and_an_unmasked_lookup() {
        let json = r#"{"nftables": [
{"map": {"name": "route_filter", "elem": [[{"elem": {"val": "0x10", "comment": "x"}}, {"jump": {"target": "f_a"}}], [5, {"goto": {"target": "f_b"}}], [6, {"jump": {"target": "masq"}}]]}},
{"rule": {"chain": "filter_forward", "expr": [{"vmap": {"key": {"ct": {"key": "mark"}}, "data": "@route_filter"}}]}}
]}"#;
        let l = parse_table(json).expect("parses");
        assert_eq!(l.marks, [("a".to_owned(), 0x10)].into());
        assert_eq!(l.mask, Some(u32::MAX));
    }

    #[test]
    fn status_refuses_what_is_not_an_nft_listing() {
        assert!(parse_table("not json").is_err());
        assert!(parse_table(r#"{"other": []}"#).is_err());
        assert_eq!(
            parse_table(r#"{"nftables": []}"#).expect("empty"),
            TableListing::default()
        );
    }

    #[test]
    fn status_counts_conntrack_entries_by_masked_mark_and_skips_closed_ones() {
        // Bits outside the mask (0xff000000, 0x0000ffff: other software's) do not matter.
        let web = 0x0038_0000u32;
        let lines = [
            format!("tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=192.0.2.1 sport=40000 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=40000 [ASSURED] mark={web} use=1"),
            format!("tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=192.0.2.1 sport=40001 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=40001 [ASSURED] mark={} use=1", web | 0x0100_0001),
            format!("tcp      6 119 TIME_WAIT src=192.0.2.2 dst=192.0.2.1 sport=40002 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=40002 [ASSURED] mark={web} use=1"),
            format!("tcp      6 9 CLOSE src=192.0.2.2 dst=192.0.2.1 sport=40003 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=40003 mark={web} use=1"),
            format!("tcp      6 59 CLOSE_WAIT src=192.0.2.2 dst=192.0.2.1 sport=40004 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=40004 [ASSURED] mark={web} use=1"),
            format!("udp      17 29 src=192.0.2.2 dst=192.0.2.1 sport=5353 dport=53 src=198.51.100.3 dst=192.0.2.2 sport=53 dport=5353 mark={} use=1", 0x002b_0000),
            "tcp      6 431999 ESTABLISHED src=192.0.2.9 dst=192.0.2.1 sport=22 dport=50000 src=192.0.2.1 dst=192.0.2.9 sport=50000 dport=22 [ASSURED] mark=0 use=1".to_owned(),
            format!("tcp      6 431999 ESTABLISHED src=192.0.2.9 dst=192.0.2.1 sport=1 dport=2 src=192.0.2.1 dst=192.0.2.9 sport=2 dport=1 [ASSURED] mark={} use=1", 0x0011_0000),
            "conntrack v1.4.7 (conntrack-tools): 8 flow entries have been shown.".to_owned(),
        ];
        let counted = count_active(&lines.join("\n"), 0x00ff_0000, &marks());
        assert_eq!(
            counted,
            [("api-v2".to_owned(), 1), ("web".to_owned(), 3)].into()
        );
        // Under the whole mark, the entry with foreign bits is another mark.
        let whole = count_active(&lines.join("\n"), u32::MAX, &marks());
        assert_eq!(whole.get("web"), Some(&2));
    }

    /// A kernel that answers status's two queries with captured text and counts them;
    /// every other query is not status's business and fails the test.
    struct Captured {
        table: Option<&'static str>,
        conntrack: Result<Option<String>, &'static str>,
        conntrack_calls: std::sync::atomic::AtomicUsize,
    }

    impl Captured {
        fn new(
            table: Option<&'static str>,
            conntrack: Result<Option<String>, &'static str>,
        ) -> Self {
            Self {
                table,
                conntrack,
                conntrack_calls: std::sync::atomic::AtomicUsize::new(0),
            }
        }
    }

    fn failed(stderr: &str) -> KernelError {
        KernelError::Command {
            cmd: "nft -j list table inet stx".into(),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        }
    }

    impl Kernel for Captured {
        fn list_table(&self, _: &str) -> Result<Option<String>, KernelError> {
            unreachable!("status lists JSON only")
        }
        fn dump_table(&self, _: &str) -> Result<Option<String>, KernelError> {
            unreachable!("status lists JSON only")
        }
        fn run(&self, _: &str) -> Result<(), KernelError> {
            unreachable!("status changes nothing")
        }
        fn normalise(&self, _: &str, _: &str) -> Result<String, KernelError> {
            unreachable!("status normalises nothing")
        }
        fn list_chains_json(&self) -> Result<String, KernelError> {
            unreachable!("status reads no chains")
        }
        fn list_tables(&self) -> Result<Vec<String>, KernelError> {
            unreachable!("status is told its table")
        }
        fn list_table_json(&self, table: &str) -> Result<Option<String>, KernelError> {
            assert_eq!(table, "stx", "status lists the table it was asked about");
            match self.table {
                Some("FAIL") => Err(failed(
                    "Error: Could not process rule: Operation not permitted",
                )),
                other => Ok(other.map(str::to_owned)),
            }
        }
        fn conntrack_entries(&self) -> Result<Option<String>, KernelError> {
            self.conntrack_calls
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.conntrack.clone().map_err(failed)
        }
        fn capability(&self) -> Result<(), String> {
            Ok(())
        }
    }

    /// `conntrack -L` lines of the sample's two routes: two open `web` connections (one
    /// with foreign bits outside the mask), one `web` in TIME_WAIT, one UDP `api-v2` flow,
    /// one connection of no route.
    fn conntrack_sample() -> String {
        let (web, api) = (0x0038_0000u32, 0x002b_0000u32);
        [
            format!("tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=192.0.2.1 sport=40000 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=40000 [ASSURED] mark={web} use=1"),
            format!("tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=192.0.2.1 sport=40001 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=40001 [ASSURED] mark={} use=1", web | 0x0000_0007),
            format!("tcp      6 119 TIME_WAIT src=192.0.2.2 dst=192.0.2.1 sport=40002 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=40002 [ASSURED] mark={web} use=1"),
            format!("udp      17 29 src=192.0.2.2 dst=192.0.2.1 sport=5353 dport=53 src=198.51.100.3 dst=192.0.2.2 sport=53 dport=5353 mark={api} use=1"),
            "tcp      6 431999 ESTABLISHED src=192.0.2.9 dst=192.0.2.1 sport=22 dport=50000 src=192.0.2.1 dst=192.0.2.9 sport=50000 dport=22 [ASSURED] mark=0 use=1".to_owned(),
        ]
        .join("\n")
    }

    fn counts(packets: u64, bytes: u64, active: u64) -> KernelCounts {
        KernelCounts {
            packets,
            bytes,
            active,
        }
    }

    #[test]
    fn status_counts_each_route_through_the_kernel_trait() {
        let kernel = Captured::new(Some(NFT_SAMPLE), Ok(Some(conntrack_sample())));
        let got = kernel_counts(&kernel, "stx").expect("reads");
        assert_eq!(
            got,
            [
                ("api-v2".to_owned(), counts(7, 420, 1)),
                ("web".to_owned(), counts(12, 1337, 2)),
            ]
            .into()
        );
        assert_eq!(
            kernel
                .conntrack_calls
                .load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one conntrack listing for all routes"
        );
    }

    #[test]
    fn status_tells_an_absent_table_from_an_empty_one() {
        let absent = Captured::new(None, Ok(Some(conntrack_sample())));
        assert_eq!(read_kernel(&absent, "stx").expect("reads"), None);
        assert_eq!(
            kernel_counts(&absent, "stx").expect("reads"),
            BTreeMap::new()
        );
        let empty = Captured::new(
            Some(r#"{"nftables": [{"table": {"name": "stx"}}]}"#),
            Ok(None),
        );
        assert_eq!(
            read_kernel(&empty, "stx").expect("reads"),
            Some(BTreeMap::new())
        );
        // No route marks: conntrack is not asked at all.
        assert_eq!(
            empty
                .conntrack_calls
                .load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }

    #[test]
    fn status_counts_nothing_active_without_conntrack() {
        for conntrack in [
            Ok(None),
            Err("conntrack v1.4.7 (conntrack-tools): Operation failed"),
        ] {
            let kernel = Captured::new(Some(NFT_SAMPLE), conntrack);
            let got = kernel_counts(&kernel, "stx").expect("reads");
            assert_eq!(got.get("web"), Some(&counts(12, 1337, 0)));
            assert_eq!(got.get("api-v2"), Some(&counts(7, 420, 0)));
        }
    }

    #[test]
    fn status_keeps_the_kernels_message_and_cause_when_nft_fails() {
        let kernel = Captured::new(Some("FAIL"), Ok(None));
        let err = read_kernel(&kernel, "stx").expect_err("nft failed");
        assert!(
            matches!(err, Error::Kernel(KernelError::Command { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("Operation not permitted"), "{err}");
        let text = kernel_counts(&kernel, "stx").expect_err("nft failed");
        assert!(
            text.contains("`nft -j list table inet stx` failed"),
            "{text}"
        );
        assert!(text.contains("Operation not permitted"), "{text}");
        let garbled = Captured::new(Some("{not json"), Ok(None));
        let err = read_kernel(&garbled, "stx").expect_err("not JSON");
        assert!(matches!(err, Error::Json(_)), "{err:?}");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the JSON error is kept as the cause"
        );
    }
}
