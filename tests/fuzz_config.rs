//! Bad input never panics (SPEC §2): property tests over generated route files.
//!
//! Route files are generated from strategies, not typed by hand: a *clean* file uses only
//! values that the format allows (one port block per route, so routes never conflict),
//! a *mutated* file is a clean one with a few edits (a bad value, a deleted or renamed key,
//! an unknown key, a duplicate name, a port conflict). Each is written to a temporary
//! directory and taken through the library as `check` and `compile` do: `config::load`,
//! then `lower::lower` and `render::render_script` when it is valid. Diagnostics are
//! rendered in every format, since the renderer quotes arbitrary spans.
//!
//! The properties: nothing panics; an invalid file has at least one error with a message;
//! every clean file is valid, lowers and renders (so at least half of the cases reach
//! rendering, which is counted and asserted). Raw random bytes and byte-level mutations
//! of clean files go through `load` the same way, and a small sample goes through the real
//! binary for its exit code (0 or 1, with a report when 1).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

use smartproxy::config::{self, Loaded};
use smartproxy::diag::{self, Format};
use smartproxy::lower::{self, StaticResolver};
use smartproxy::render;

// ---- route files as data ----------------------------------------------------------------

/// `key = literal` lines of one TOML table; literals are TOML text, good or bad.
type Lines = Vec<(String, String)>;

#[derive(Clone, Debug)]
struct RouteSpec {
    top: Lines,
    matcher: Lines,
    action: Lines,
    security: Option<Lines>,
    nftables: Option<Lines>,
    tls: Option<Lines>,
    redirect: Option<Lines>,
}

#[derive(Clone, Debug)]
struct FileSpec {
    settings: Option<Lines>,
    routes: Vec<RouteSpec>,
}

impl RouteSpec {
    fn sections_mut(&mut self) -> Vec<&mut Lines> {
        let mut out = vec![&mut self.top, &mut self.matcher, &mut self.action];
        for s in [
            &mut self.security,
            &mut self.nftables,
            &mut self.tls,
            &mut self.redirect,
        ]
        .into_iter()
        .flatten()
        {
            out.push(s);
        }
        out
    }
}

impl FileSpec {
    fn to_toml(&self) -> String {
        fn table(out: &mut String, header: &str, lines: &Lines) {
            out.push_str(header);
            out.push('\n');
            for (k, v) in lines {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push('\n');
        }
        let mut out = String::new();
        if let Some(s) = &self.settings {
            table(&mut out, "[settings]", s);
        }
        for r in &self.routes {
            table(&mut out, "[[routes]]", &r.top);
            table(&mut out, "[routes.match]", &r.matcher);
            table(&mut out, "[routes.action]", &r.action);
            let optional = [
                ("[routes.action.security]", &r.security),
                ("[routes.action.nftables]", &r.nftables),
                ("[routes.action.tls]", &r.tls),
                ("[routes.action.redirect]", &r.redirect),
            ];
            for (header, lines) in optional {
                if let Some(lines) = lines {
                    table(&mut out, header, lines);
                }
            }
        }
        out
    }

    /// Every `(route or settings, section, line)` slot, for edits.
    fn slots(&mut self) -> Vec<&mut Lines> {
        let mut out: Vec<&mut Lines> = Vec::new();
        if let Some(s) = &mut self.settings {
            out.push(s);
        }
        for r in &mut self.routes {
            out.extend(r.sections_mut());
        }
        out
    }
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push('\t'),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---- clean values -------------------------------------------------------------------------

fn certs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/certs")
}

fn v4() -> impl Strategy<Value = String> {
    (0u8..=255, 0u8..=255, 1u8..=254).prop_map(|(a, b, c)| format!("198.{a}.{b}.{c}"))
}

fn v6() -> impl Strategy<Value = String> {
    (any::<u16>(), 1u16..).prop_map(|(a, b)| format!("2001:db8:{a:x}::{b:x}"))
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        (v4(), 8u8..=32).prop_map(|(a, p)| format!("{a}/{p}")),
        (v6(), 16u8..=128).prop_map(|(a, p)| format!("{a}/{p}")),
        v4(),
        v6(),
    ]
}

fn time_unit() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["second", "minute", "hour", "day"])
}

fn rate() -> impl Strategy<Value = String> {
    (1u32..100_000, time_unit(), prop::option::of(1u32..100_000)).prop_map(|(n, u, b)| match b {
        Some(b) => format!("{n}/{u} burst {b}"),
        None => format!("{n}/{u}"),
    })
}

/// At most 4000 of any size per unit: one second's worth stays below nftables' 4 GiB burst.
fn byte_rate() -> impl Strategy<Value = String> {
    (
        1u32..=4_000,
        prop::sample::select(vec!["bytes", "kbytes", "mbytes"]),
        time_unit(),
    )
        .prop_map(|(n, s, u)| format!("{n} {s}/{u}"))
}

fn domain() -> impl Strategy<Value = String> {
    (
        "[a-z][a-z0-9-]{0,8}[a-z0-9](\\.[a-z]{2,8}){1,2}",
        any::<bool>(),
    )
        .prop_map(|(d, wild)| if wild { format!("*.{d}") } else { d })
}

/// What a route does; decides which sections it has.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Forward,
    Block,
    Sni,
    Redirect,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => Just(Kind::Forward),
        1 => Just(Kind::Block),
        2 => Just(Kind::Sni),
        1 => Just(Kind::Redirect),
    ]
}

/// 1 to 3 port entries inside route `i`'s own block of 1000 ports, so that clean routes
/// never conflict. Returns the literal and, for a single range, its length.
fn ports(i: usize) -> impl Strategy<Value = (String, Option<u32>)> {
    let base = 10_000 + 1_000 * i as u32;
    let entry = (0u32..900, 0u32..50).prop_map(move |(start, len)| {
        let first = base + start;
        if len == 0 {
            (first.to_string(), None)
        } else {
            (format!("\"{first}-{}\"", first + len), Some(len + 1))
        }
    });
    prop::collection::vec(entry, 1..=3).prop_map(|entries| {
        let single = match entries.as_slice() {
            [(_, Some(len))] => Some(*len),
            _ => None,
        };
        let list: Vec<String> = entries.into_iter().map(|(t, _)| t).collect();
        if list.len() == 1 && single.is_none() {
            (list[0].clone(), None)
        } else {
            (format!("[{}]", list.join(", ")), single)
        }
    })
}

fn target(range_len: Option<u32>, first: bool) -> impl Strategy<Value = String> {
    let host = if first {
        v4().boxed()
    } else {
        prop_oneof![
            4 => v4(),
            3 => v6(),
            1 => Just("backend.example".to_owned()),
            1 => Just("localhost".to_owned()),
            1 => Just("127.0.0.1".to_owned()),
        ]
        .boxed()
    };
    let port = match range_len {
        Some(len) => prop_oneof![
            (1u32..=65_535 - len).prop_map(move |p| format!("\"{p}-{}\"", p + len - 1)),
            Just("\"preserve\"".to_owned()),
            (1u32..=65_535).prop_map(|p| p.to_string()),
        ]
        .boxed(),
        None => prop_oneof![
            3 => (1u32..=65_535).prop_map(|p| p.to_string()),
            1 => Just("\"preserve\"".to_owned()),
        ]
        .boxed(),
    };
    (host, port, prop::option::of(1u32..=1000)).prop_map(|(h, p, w)| match w {
        Some(w) => format!("{{ host = \"{h}\", port = {p}, weight = {w} }}"),
        None => format!("{{ host = \"{h}\", port = {p} }}"),
    })
}

fn security() -> impl Strategy<Value = Lines> {
    (
        prop::option::of(prop::collection::vec(cidr(), 0..4)),
        prop::option::of(prop::collection::vec(cidr(), 0..4)),
        prop::option::of(1u32..=1_000_000),
        prop::option::of(rate()),
    )
        .prop_map(|(allow, block, maxc, rate)| {
            let list = |l: Vec<String>| {
                let items: Vec<String> = l.iter().map(|s| format!("\"{s}\"")).collect();
                format!("[{}]", items.join(", "))
            };
            let mut lines = Vec::new();
            if let Some(a) = allow {
                lines.push(("ip_allow_list".to_owned(), list(a)));
            }
            if let Some(b) = block {
                lines.push(("ip_block_list".to_owned(), list(b)));
            }
            if let Some(m) = maxc {
                lines.push(("max_connections".to_owned(), m.to_string()));
            }
            if let Some(r) = rate {
                lines.push(("rate_limit".to_owned(), format!("\"{r}\"")));
            }
            lines
        })
}

fn nftables() -> impl Strategy<Value = Lines> {
    (
        any::<bool>(),
        prop::option::of(byte_rate()),
        prop::option::of(0u8..=7),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(preserve, max_rate, prio, sets, nat)| {
            let mut lines = vec![
                ("preserve_source_ip".to_owned(), preserve.to_string()),
                ("use_ip_sets".to_owned(), sets.to_string()),
                ("use_advanced_nat".to_owned(), nat.to_string()),
            ];
            if let Some(r) = max_rate {
                lines.push(("max_rate".to_owned(), format!("\"{r}\"")));
            }
            if let Some(p) = prio {
                lines.push(("priority".to_owned(), p.to_string()));
            }
            lines
        })
}

fn tls() -> impl Strategy<Value = Lines> {
    let certs = certs_dir();
    prop_oneof![
        3 => Just(vec![("mode".to_owned(), "\"passthrough\"".to_owned())]),
        1 => prop::sample::select(vec!["terminate", "terminate-and-reencrypt"]).prop_map(
            move |mode| {
                let cert = toml_str(&certs.join("example.pem").display().to_string());
                let key = toml_str(&certs.join("example.key").display().to_string());
                vec![
                    ("mode".to_owned(), format!("\"{mode}\"")),
                    ("certificate".to_owned(), format!("{{ cert = {cert}, key = {key} }}")),
                ]
            }
        ),
    ]
}

/// A clean route `i`: every value allowed, ports in its own block, a unique name.
fn clean_route(i: usize) -> impl Strategy<Value = RouteSpec> {
    (
        (
            "[a-z0-9_-]{0,10}",
            prop::option::of(any::<String>()),
            prop::option::of(any::<bool>()),
            prop::option::of(-100i64..100),
            prop::option::of(any::<bool>()),
        ),
        kind(),
        ports(i),
        prop::sample::select(vec!["tcp", "udp", "all"]),
        prop::option::of(prop::collection::vec(
            (1u8..=254).prop_map(|d| format!("\"203.0.113.{d}\"")),
            1..3,
        )),
        (
            prop::sample::select(vec!["none", "source"]),
            prop::option::of(security()),
            prop::option::of(nftables()),
            tls(),
            prop::collection::vec(domain(), 1..3),
            prop::sample::select(vec![301i64, 302, 303, 307, 308]),
            "[!-~][ -~]{0,29}",
        ),
    )
        .prop_flat_map(
            move |(top, kind, (ports, range_len), proto, addresses, rest)| {
                let targets = (
                    target(range_len, true),
                    prop::collection::vec(target(range_len, false), 0..3),
                )
                    .prop_map(|(first, more)| {
                        let mut all = vec![first];
                        all.extend(more);
                        format!("[{}]", all.join(", "))
                    });
                (Just((top, kind, ports, proto, addresses, rest)), targets)
            },
        )
        .prop_map(
            move |((top, kind, ports, proto, addresses, rest), targets)| {
                let (name_tail, description, enabled, priority, log) = top;
                let (affinity, security, nftables, tls, domains, status, to) = rest;
                let mut r = RouteSpec {
                    top: vec![("name".into(), toml_str(&format!("r{i}-{name_tail}")))],
                    matcher: vec![("ports".into(), ports)],
                    action: Vec::new(),
                    security: None,
                    nftables: None,
                    tls: None,
                    redirect: None,
                };
                if let Some(d) = description {
                    r.top.push(("description".into(), toml_str(&d)));
                }
                if let Some(e) = enabled {
                    r.top.push(("enabled".into(), e.to_string()));
                }
                if let Some(p) = priority {
                    r.top.push(("priority".into(), p.to_string()));
                }
                if let Some(l) = log {
                    r.top.push(("log".into(), l.to_string()));
                }
                match kind {
                    Kind::Forward | Kind::Block => {
                        r.matcher.push(("protocol".into(), toml_str(proto)));
                        if let Some(a) = addresses {
                            r.matcher
                                .push(("addresses".into(), format!("[{}]", a.join(", "))));
                        }
                        r.security = security;
                        r.nftables = nftables;
                        if matches!(kind, Kind::Forward) {
                            r.action.push(("targets".into(), targets));
                            r.action.push(("affinity".into(), toml_str(affinity)));
                        } else {
                            r.action.push(("type".into(), "\"block\"".into()));
                        }
                    }
                    Kind::Sni => {
                        let d: Vec<String> = domains.iter().map(|d| toml_str(d)).collect();
                        r.matcher
                            .push(("domains".into(), format!("[{}]", d.join(", "))));
                        r.action.push(("targets".into(), targets));
                        r.tls = Some(tls);
                    }
                    Kind::Redirect => {
                        r.action.push(("type".into(), "\"redirect\"".into()));
                        r.redirect = Some(vec![
                            ("to".into(), toml_str(&to)),
                            ("status".into(), status.to_string()),
                        ]);
                    }
                }
                r
            },
        )
}

fn settings() -> impl Strategy<Value = Option<Lines>> {
    prop::option::of((
        prop::sample::select(vec!["smartproxy", "sp_test", "edge0"]),
        Just("auto"),
        prop::sample::select(vec![
            "\"0x00ff0000\"",
            "0xffff0000",
            "\"0x0000ff00\"",
            "\"0xffffffff\"",
        ]),
        0u16..100,
    ))
    .prop_map(|s| {
        s.map(|(table, engine, mask, group)| {
            vec![
                ("table".into(), toml_str(table)),
                ("default_engine".into(), toml_str(engine)),
                ("ct_mark_mask".into(), mask.into()),
                ("log_group".into(), group.to_string()),
            ]
        })
    })
}

fn clean_file() -> impl Strategy<Value = FileSpec> {
    (settings(), 1usize..=4).prop_flat_map(|(settings, n)| {
        let routes: Vec<_> = (0..n).map(clean_route).collect();
        (Just(settings), routes).prop_map(|(settings, routes)| FileSpec { settings, routes })
    })
}

// ---- mutations ------------------------------------------------------------------------------

/// Values that are wrong somewhere: types, ranges, syntax of ports, hosts, rates, names.
fn bad_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "65536",
            "-1",
            "99999999999999999999",
            "1.5",
            "true",
            "[]",
            "{}",
            "\"\"",
            "\"x\"",
            "\"70-90\"",
            "\"90-70\"",
            "\"0-10\"",
            "\"65535-65536\"",
            "\"1-2-3\"",
            "[0, 80]",
            "[true]",
            "[\"80\", 443]",
            "\"preserve\"",
            "\"Web\"",
            "\"1web\"",
            "\"ip\"",
            "\"a-very-long-route-name-over-32-chars\"",
            "\"300.1.1.1\"",
            "\"back end\"",
            "\"::1\"",
            "\"2001:db8::/129\"",
            "\"192.0.2.0/33\"",
            "[\"192.0.2.0/24\", \"192.0.2.128/25\"]",
            "[\"192.0.2.66/24\"]",
            "\"20 per second\"",
            "\"0/second\"",
            "\"5/fortnight\"",
            "\"1/second burst 0\"",
            "\"10 mbit/second\"",
            "\"0 bytes/second\"",
            "\"4096 mbytes/second\"",
            "\"5000000000/second\"",
            "\"1/second burst 5000000000\"",
            "\"0x00ff00ff\"",
            "\"0x0\"",
            "\"*.*.example\"",
            "[\"-bad.example\"]",
            "\"sctp\"",
            "\"kernel\"",
            "\"drop\"",
            "\"sticky\"",
            "\"pass-through\"",
            "\"nftables\"",
            "\"udp\"",
            "\"redirect\"",
            "\"block\"",
            "\"terminate\"",
            "\"userspace\"",
            "\"node\"",
            "200",
            "1001",
            "8",
            "70000",
            "[{ port = 80 }]",
            "[{ host = \"198.51.100.2\", port = \"8000-8010\" }]",
            "[{ host = \"198.51.100.2\", port = 80, weight = 0 }]",
            "[5]",
            "{ cert = \"missing.pem\", key = \"missing.key\" }",
            "{ cert = 1 }",
            "[\"2001:db8::10\"]",
            "1979-05-27T07:32:00Z",
            "'literal'",
            "\"\"\"multi\nline\"\"\"",
        ])
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<String>().prop_map(|s| toml_str(&s)),
        "[ -~]{0,12}",
    ]
}

const ALL_KEYS: &[&str] = &[
    "name",
    "description",
    "enabled",
    "priority",
    "log",
    "ports",
    "protocol",
    "domains",
    "addresses",
    "type",
    "forwarding_engine",
    "targets",
    "affinity",
    "ip_allow_list",
    "ip_block_list",
    "max_connections",
    "rate_limit",
    "preserve_source_ip",
    "max_rate",
    "use_ip_sets",
    "use_advanced_nat",
    "mode",
    "certificate",
    "to",
    "status",
    "table",
    "default_engine",
    "ct_mark_mask",
    "log_group",
    "nmae",
    "port",
    "target",
    "match",
];

#[derive(Clone, Debug)]
enum Edit {
    Replace(usize, usize, String),
    Delete(usize, usize),
    Rename(usize, usize, String),
    Add(usize, String, String),
    /// Route `j` takes route 0's name.
    DuplicateName(usize),
    /// Route `j` takes route 0's ports and protocol.
    SamePorts(usize),
    /// Drop a whole optional section.
    DropSection(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let key = prop::sample::select(ALL_KEYS.to_vec()).prop_map(str::to_owned);
    prop_oneof![
        6 => (any::<usize>(), any::<usize>(), bad_literal()).prop_map(|(a, b, v)| Edit::Replace(a, b, v)),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Delete(a, b)),
        1 => (any::<usize>(), any::<usize>(), key.clone()).prop_map(|(a, b, k)| Edit::Rename(a, b, k)),
        2 => (any::<usize>(), key, bad_literal()).prop_map(|(a, k, v)| Edit::Add(a, k, v)),
        1 => any::<usize>().prop_map(Edit::DuplicateName),
        1 => any::<usize>().prop_map(Edit::SamePorts),
        1 => any::<usize>().prop_map(Edit::DropSection),
    ]
}

fn apply(mut file: FileSpec, edits: &[Edit]) -> FileSpec {
    for e in edits {
        let n = file.routes.len();
        match e {
            Edit::Replace(s, l, v) | Edit::Rename(s, l, v) => {
                let mut slots = file.slots();
                let count = slots.len();
                let lines = &mut slots[s % count];
                if !lines.is_empty() {
                    let len = lines.len();
                    let line = &mut lines[l % len];
                    if matches!(e, Edit::Replace(..)) {
                        line.1.clone_from(v);
                    } else {
                        line.0.clone_from(v);
                    }
                }
            }
            Edit::Delete(s, l) => {
                let mut slots = file.slots();
                let count = slots.len();
                let lines = &mut slots[s % count];
                if !lines.is_empty() {
                    let len = lines.len();
                    lines.remove(l % len);
                }
            }
            Edit::Add(s, k, v) => {
                let mut slots = file.slots();
                let count = slots.len();
                slots[s % count].push((k.clone(), v.clone()));
            }
            Edit::DuplicateName(j) => {
                // Earlier edits may have deleted or renamed the name line.
                let name_of = |top: &Lines| top.iter().position(|(k, _)| k == "name");
                if let Some(from) = name_of(&file.routes[0].top) {
                    let name = file.routes[0].top[from].1.clone();
                    let other = &mut file.routes[j % n].top;
                    match name_of(other) {
                        Some(to) => other[to].1 = name,
                        None => other.push(("name".into(), name)),
                    }
                }
            }
            Edit::SamePorts(j) => {
                let matcher = file.routes[0].matcher.clone();
                file.routes[j % n].matcher = matcher;
            }
            Edit::DropSection(j) => {
                let r = &mut file.routes[j % n];
                match j % 4 {
                    0 => r.tls = None,
                    1 => r.redirect = None,
                    2 => r.security = None,
                    _ => r.action.clear(),
                }
            }
        }
    }
    file
}

/// Clean (70%) or mutated (30%) file, with a flag saying which.
fn any_file() -> impl Strategy<Value = (bool, FileSpec)> {
    prop_oneof![
        7 => clean_file().prop_map(|f| (true, f)),
        3 => (clean_file(), prop::collection::vec(edit(), 1..5))
            .prop_map(|(f, edits)| (false, apply(f, &edits))),
    ]
}

#[derive(Clone, Debug)]
enum ByteEdit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Truncate(usize),
    DuplicateLine(usize),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| ByteEdit::Flip(p, b)),
        (
            any::<usize>(),
            prop_oneof![
                any::<u8>(),
                prop::sample::select(b"[]{}\"'=,.\n\\#-0x".to_vec())
            ]
        )
            .prop_map(|(p, b)| ByteEdit::Insert(p, b)),
        (any::<usize>(), 1usize..20).prop_map(|(p, n)| ByteEdit::Delete(p, n)),
        any::<usize>().prop_map(ByteEdit::Truncate),
        any::<usize>().prop_map(ByteEdit::DuplicateLine),
    ]
}

fn apply_bytes(mut bytes: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len().max(1);
        match *e {
            ByteEdit::Flip(p, bit) => {
                if let Some(b) = bytes.get_mut(p % len) {
                    *b ^= 1 << bit;
                }
            }
            ByteEdit::Insert(p, b) => bytes.insert(p % (bytes.len() + 1), b),
            ByteEdit::Delete(p, n) => {
                let start = p % len;
                let end = (start + n).min(bytes.len());
                if start < end {
                    bytes.drain(start..end);
                }
            }
            ByteEdit::Truncate(p) => bytes.truncate(p % len),
            ByteEdit::DuplicateLine(p) => {
                let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
                if !lines.is_empty() {
                    let i = p % lines.len();
                    let mut out = Vec::with_capacity(bytes.len() + lines[i].len());
                    for (j, l) in lines.iter().enumerate() {
                        out.extend_from_slice(l);
                        if j == i {
                            out.extend_from_slice(l);
                        }
                    }
                    bytes = out;
                }
            }
        }
    }
    bytes
}

// ---- the pipeline under test ----------------------------------------------------------------

fn resolver() -> StaticResolver {
    let mut answers: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    answers.insert(
        "backend.example".into(),
        vec![
            "198.51.100.9".parse().expect("literal"),
            "2001:db8::9".parse().expect("literal"),
        ],
    );
    StaticResolver(answers)
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Invalid: `check` would exit 1.
    Invalid,
    /// Valid but a name did not resolve: `compile` would exit 1.
    Unresolved,
    /// Valid, lowered and rendered: `compile` would exit 0.
    Rendered,
}

/// `load`, then `lower` and both renderers when valid; diagnostics rendered in every format.
/// Fails (never panics) when an invalid result has no error with a message, or rendering
/// a lowered model fails.
fn pipeline(bytes: &[u8]) -> Result<(Outcome, Loaded), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let loaded = config::load(&[path]);
    for format in [Format::Text, Format::Json, Format::Github] {
        for color in [false, true] {
            let out = diag::render(&loaded.sources, &loaded.diagnostics, format, color);
            prop_assert!(
                loaded.diagnostics.is_empty() || !out.trim().is_empty(),
                "diagnostics render to something"
            );
        }
    }
    for d in &loaded.diagnostics {
        prop_assert!(!d.message.trim().is_empty(), "empty message: {d:?}");
        prop_assert!(d.code.len() == 4, "code: {d:?}");
    }
    let Some(cfg) = &loaded.config else {
        prop_assert!(loaded.has_errors(), "no config, yet no error");
        return Ok((Outcome::Invalid, loaded));
    };
    prop_assert!(!loaded.has_errors(), "a config despite errors");
    let model = match lower::lower(cfg, &resolver()) {
        Ok(model) => model,
        Err(diags) => {
            prop_assert!(!diags.is_empty(), "lower failed without a diagnostic");
            for d in &diags {
                prop_assert_eq!(d.code, "E038", "lower reports resolution only: {:?}", d);
                let _ = diag::render(&loaded.sources, &diags, Format::Text, false);
            }
            return Ok((Outcome::Unresolved, loaded));
        }
    };
    let script = render::render_script(&model)
        .map_err(|e| TestCaseError::fail(format!("render_script: {e}")))?;
    prop_assert!(
        script.contains(&format!("table inet {}", model.table)),
        "{script}"
    );
    render::json::render_json(&model)
        .map_err(|e| TestCaseError::fail(format!("render_json: {e}")))?;
    Ok((Outcome::Rendered, loaded))
}

/// At least `cases` cases; more when `PROPTEST_CASES` asks for more (a longer hunt).
fn runner(cases: u32) -> TestRunner {
    let asked = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse::<u32>().ok());
    TestRunner::new(ProptestConfig {
        cases: asked.map_or(cases, |n| n.max(cases)),
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

// ---- properties -------------------------------------------------------------------------------

/// Generated route files, clean and mutated: no panic; clean ones all render; at least half
/// of all cases reach rendering.
#[test]
fn generated_route_files_never_panic_and_mostly_render() {
    let total = Cell::new(0usize);
    let rendered = Cell::new(0usize);
    let invalid = Cell::new(0usize);
    let result = runner(1_500).run(&any_file(), |(clean, file)| {
        let text = file.to_toml();
        let (outcome, loaded) = pipeline(text.as_bytes())?;
        if clean {
            let errors: Vec<String> = loaded
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(|d| {
                    format!(
                        "{} {} at {}",
                        d.code,
                        d.message,
                        loaded.sources.location(d.primary.span)
                    )
                })
                .collect();
            prop_assert_eq!(
                &outcome,
                &Outcome::Rendered,
                "a clean file must be valid and render: {:?}\n{}",
                errors,
                text
            );
        }
        total.set(total.get() + 1);
        match outcome {
            Outcome::Rendered => rendered.set(rendered.get() + 1),
            Outcome::Invalid => invalid.set(invalid.get() + 1),
            Outcome::Unresolved => {}
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (total, rendered, invalid) = (total.get(), rendered.get(), invalid.get());
    eprintln!("{total} cases: {rendered} rendered, {invalid} invalid");
    assert!(total >= 1_000, "{total} cases ran");
    assert!(
        rendered * 2 >= total,
        "only {rendered} of {total} cases reached rendering"
    );
    assert!(
        invalid * 10 >= total,
        "only {invalid} of {total} cases were invalid: the mutations miss"
    );
}

/// Random bytes: no panic, and anything not valid has an error with a message.
#[test]
fn random_bytes_never_panic() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        // Mostly printable, with TOML's punctuation: gets past the UTF-8 check more often.
        prop::collection::vec(
            prop_oneof![
                4 => 0x20u8..0x7f,
                1 => prop::sample::select(b"\n[]{}=\"',#".to_vec()),
                1 => any::<u8>(),
            ],
            0..512,
        ),
    ];
    let result = runner(1_000).run(&bytes, |bytes| {
        pipeline(&bytes)?;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Clean files with bytes flipped, inserted, deleted, lines duplicated, truncated.
#[test]
fn mutated_bytes_of_valid_files_never_panic() {
    let cases = (clean_file(), prop::collection::vec(byte_edit(), 1..6));
    let result = runner(1_000).run(&cases, |(file, edits)| {
        let bytes = apply_bytes(file.to_toml().into_bytes(), &edits);
        pipeline(&bytes)?;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A sample through the real binary: `check` exits 0 or 1, prints a report when 1, and its
/// JSON output parses.
#[test]
fn the_binary_exits_zero_or_one_with_a_report() {
    let result = runner(48).run(&any_file(), |(_, file)| {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, file.to_toml()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for format in ["text", "json", "github"] {
            let out = Command::new(env!("CARGO_BIN_EXE_smartproxy"))
                .args(["--color", "never", "check", "--format", format])
                .arg(&path)
                .env("NO_COLOR", "1")
                .output()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let code = out.status.code();
            let stdout = String::from_utf8_lossy(&out.stdout);
            prop_assert!(
                code == Some(0) || code == Some(1),
                "exit {:?}: {}{}",
                code,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
            if code == Some(1) {
                prop_assert!(!stdout.trim().is_empty(), "exit 1 without a report");
            }
            if format == "json" {
                let parsed: Result<serde_json::Value, _> = serde_json::from_str(&stdout);
                prop_assert!(parsed.is_ok(), "not JSON: {}", stdout);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
