//! The invalid-input corpus: every route file under `tests/invalid/` is run through the
//! real binary (`smartproxy check`, from the repository root so paths are relative).
//!
//! Each case asserts the exit code, the exact code and `file:line:col` of every diagnostic
//! (from `--format json`, in output order) and snapshots the whole text report, so that a
//! change of message, caret or help shows up in review. Corpus-wide tests make sure that
//! every fixture has a case, that every code the source can emit is covered here and
//! documented in `docs/diagnostics.md`, and that the github format points at the same
//! places as the JSON.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Where the fixtures live, relative to the repository root.
const DIR: &str = "tests/invalid";

/// Fixture names that are meant not to exist (the missing-file case).
const ABSENT: &[&str] = &["does-not-exist.toml"];

/// Helper files that fixtures point at; not route files themselves.
const SUPPORT: &[&str] = &["certs"];

/// Codes whose input git cannot hold (a FIFO, a device, a file beyond the size cap): their
/// cases build the input at run time, in the file named.
const COVERED_ELSEWHERE: &[(&str, &str)] = &[
    ("E039", "tests/input_safety.rs"),
    ("E040", "tests/input_safety.rs"),
];

struct Case {
    name: &'static str,
    /// A file or directory under `tests/invalid/`.
    fixture: &'static str,
    /// Extra `check` arguments, before the path.
    args: &'static [&'static str],
    exit: i32,
    /// Every diagnostic in output order: code and location. A location `line:col` is in
    /// the fixture file itself; `name.toml:line:col` is in a file of a fixture directory.
    expected: &'static [(&'static str, &'static str)],
}

macro_rules! cases {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: $fixture:literal $([$($arg:literal),*])? => exit $exit:literal {
            $($code:ident @ $loc:literal),* $(,)?
        }
    )*) => {
        const CASES: &[Case] = &[$(
            Case {
                name: stringify!($name),
                fixture: $fixture,
                args: &[$($($arg),*)?],
                exit: $exit,
                expected: &[$((stringify!($code), $loc)),*],
            },
        )*];

        $(
            $(#[doc = $doc])*
            #[test]
            fn $name() {
                verify(stringify!($name));
            }
        )*
    };
}

cases! {
    // ---- shape: TOML, UTF-8, keys, types (parse.rs, config/mod.rs) -------------------
    /// A string that never closes.
    toml_syntax_error: "toml-syntax-error.toml" => exit 1 { E001 @ "3:12" }
    /// `[settings]` twice in one file is a TOML error, naming the table.
    duplicate_settings_in_one_file: "duplicate-settings-in-one-file.toml" => exit 1 {
        E001 @ "13:2"
    }
    /// Latin-1 bytes: the caret sits on the first invalid byte.
    not_utf8: "not-utf8.toml" => exit 1 { E002 @ "3:12" }
    /// Misspelled keys get a "did you mean", in a section and in an inline target.
    unknown_key_did_you_mean: "unknown-key-did-you-mean.toml" => exit 1 {
        E003 @ "6:1",
        E003 @ "9:50",
    }
    /// A known key in the wrong section: the help names the right one.
    key_in_wrong_section: "key-in-wrong-section.toml" => exit 1 { E003 @ "9:1" }
    /// Nothing similar: the help lists the keys of the section.
    unknown_top_level_key: "unknown-top-level-key.toml" => exit 1 { E003 @ "1:2" }
    wrong_types: "wrong-types.toml" => exit 1 {
        E004 @ "3:11",
        E004 @ "4:12",
        E004 @ "7:9",
        E004 @ "8:11",
    }
    /// Regression: a value rejected as a wrong type is not reported again as missing or
    /// empty (it used to add E005, E024 and E036).
    wrong_types_no_cascade: "wrong-types-no-cascade.toml" => exit 1 {
        E004 @ "3:8",
        E004 @ "6:10",
        E004 @ "9:12",
        E004 @ "9:24",
        E004 @ "13:9",
        E004 @ "14:10",
    }
    /// `[routes]` instead of `[[routes]]`.
    routes_not_an_array: "routes-not-an-array.toml" => exit 1 { E004 @ "2:1" }
    integer_too_large: "integer-too-large.toml" => exit 1 { E004 @ "3:12" }
    missing_name: "missing-name.toml" => exit 1 { E005 @ "1:1" }
    missing_match: "missing-match.toml" => exit 1 { E005 @ "1:1" }
    missing_ports: "missing-ports.toml" => exit 1 { E005 @ "4:1" }
    missing_action: "missing-action.toml" => exit 1 { E005 @ "1:1" }
    target_missing_host: "target-missing-host.toml" => exit 1 { E005 @ "8:12" }
    tls_missing_mode: "tls-missing-mode.toml" => exit 1 { E005 @ "11:1" }
    cert_missing_key: "cert-missing-key.toml" => exit 1 { E005 @ "13:15" }
    /// A redirect section without `to`.
    redirect_without_to: "redirect-without-to.toml" => exit 1 { E005 @ "10:1" }
    /// A redirect to nothing but spaces.
    redirect_to_empty: "redirect-to-empty.toml" => exit 1 { E005 @ "11:6" }
    /// Two files of one directory both hold `[settings]`: both are named.
    two_settings: "two-settings" => exit 1 { E006 @ "10-web.toml:1:1" }
    /// A path that does not exist.
    missing_file: "does-not-exist.toml" => exit 1 { E007 @ "1:1" }
    /// A directory without route files.
    no_toml_files: "no-toml-files" => exit 1 { E007 @ "1:1" }
    /// A symlink in a route directory that leads out of it: refused, nothing quoted.
    symlink_out_of_dir: "symlink-out-of-dir" => exit 1 { E041 @ "10-link.toml:1:1" }

    // ---- names -----------------------------------------------------------------------
    name_uppercase: "name-uppercase.toml" => exit 1 { E010 @ "2:8" }
    name_too_long: "name-too-long.toml" => exit 1 { E010 @ "2:8" }
    name_starts_with_digit: "name-starts-with-digit.toml" => exit 1 { E010 @ "2:8" }
    /// The same name in two files of a directory: the second use, pointing at the first.
    duplicate_names: "duplicate-names" => exit 1 { E011 @ "20-web-again.toml:3:8" }

    // ---- ports and conflicts ---------------------------------------------------------
    /// `80` and `"70-90"`, neither with addresses.
    port_conflict_range: "port-conflict-range.toml" => exit 1 { E012 @ "14:9" }
    /// A route without addresses meets one with addresses.
    port_conflict_one_with_addresses: "port-conflict-one-with-addresses.toml" => exit 1 {
        E012 @ "15:9"
    }
    /// Both with addresses, sharing one; a third on another address does not conflict.
    port_conflict_same_address: "port-conflict-same-address.toml" => exit 1 {
        E012 @ "15:9"
    }
    /// `all` covers udp.
    port_conflict_protocol_all: "port-conflict-protocol-all.toml" => exit 1 { E012 @ "16:9" }
    /// The same port in two files of a directory.
    port_conflict_across_files: "port-conflict-across-files" => exit 1 {
        E012 @ "20-api.toml:5:9"
    }
    /// A kernel route would take the packets of a userspace (SNI) route.
    port_conflict_kernel_and_userspace: "port-conflict-kernel-and-userspace.toml" => exit 1 {
        E012 @ "15:9"
    }
    port_zero: "port-zero.toml" => exit 1 { E013 @ "5:10" }
    /// A target port above 65535.
    port_65536: "port-65536.toml" => exit 1 { E013 @ "8:44" }
    port_range_out_of_range: "port-range-out-of-range.toml" => exit 1 { E013 @ "5:9" }
    port_range_backwards: "port-range-backwards.toml" => exit 1 { E014 @ "5:10" }
    port_range_garbage: "port-range-garbage.toml" => exit 1 {
        E014 @ "5:10",
        E014 @ "5:18",
        E014 @ "5:25",
    }
    target_range_length_mismatch: "target-range-length-mismatch.toml" => exit 1 {
        E015 @ "8:44"
    }
    target_range_without_matched_range: "target-range-without-matched-range.toml" => exit 1 {
        E015 @ "8:44"
    }
    /// Regression: with a bad port in the match, the target range is not judged against
    /// the remaining entry (it used to add a wrong E015).
    port_error_no_range_cascade: "port-error-no-range-cascade.toml" => exit 1 { E013 @ "6:10" }
    empty_ports: "empty-ports.toml" => exit 1 { E036 @ "5:9" }

    // ---- hosts, addresses, rates -----------------------------------------------------
    bad_host: "bad-host.toml" => exit 1 { E016 @ "10:12", E016 @ "11:12" }
    bad_cidr: "bad-cidr.toml" => exit 1 { E017 @ "11:34", E017 @ "12:18" }
    /// `addresses` takes addresses, not networks.
    bad_match_address: "bad-match-address.toml" => exit 1 { E017 @ "6:14" }
    bad_rate: "bad-rate.toml" => exit 1 { E018 @ "11:14" }
    bad_byte_rate: "bad-byte-rate.toml" => exit 1 { E018 @ "11:12" }
    /// Regression: a rate beyond nftables' 32 bits used to pass `check` and fail (or, for a
    /// byte rate, overflow) when rendering.
    rate_too_large: "rate-too-large.toml" => exit 1 { E018 @ "11:14" }
    byte_rate_too_large: "byte-rate-too-large.toml" => exit 1 { E018 @ "12:12" }
    bad_domain: "bad-domain.toml" => exit 1 { E032 @ "6:27", E032 @ "6:48" }
    weight_out_of_range: "weight-out-of-range.toml" => exit 1 { E025 @ "9:50", E025 @ "10:50" }
    out_of_range_numbers: "out-of-range-numbers.toml" => exit 1 {
        E031 @ "2:13",
        E031 @ "14:19",
        E031 @ "17:12",
    }

    // ---- closed sets of values -------------------------------------------------------
    unknown_protocol: "unknown-protocol.toml" => exit 1 { E019 @ "6:12" }
    unknown_engine: "unknown-engine.toml" => exit 1 { E019 @ "8:21" }
    unknown_default_engine: "unknown-default-engine.toml" => exit 1 { E019 @ "2:18" }
    /// Regression: an unknown type is not also treated as `forward` (it used to add E024).
    unknown_action_type: "unknown-action-type.toml" => exit 1 { E019 @ "8:8" }
    unknown_affinity: "unknown-affinity.toml" => exit 1 { E019 @ "9:12" }
    unknown_tls_mode: "unknown-tls-mode.toml" => exit 1 { E019 @ "12:8" }

    // ---- TLS, engines, families ------------------------------------------------------
    missing_cert_file: "missing-cert-file.toml" => exit 1 { E020 @ "13:24" }
    /// A text file as certificate, a certificate as key.
    cert_not_pem: "cert-not-pem.toml" => exit 1 { E021 @ "14:24", E021 @ "14:51" }
    tls_terminate_without_certificate: "tls-terminate-without-certificate.toml" => exit 1 {
        E028 @ "12:8"
    }
    /// `forwarding_engine = "nftables"` on a route with domains.
    forced_nftables_domains: "forced-nftables-domains.toml" => exit 1 { E022 @ "9:21" }
    /// `forwarding_engine = "nftables"` on a route with a tls section.
    forced_nftables_tls: "forced-nftables-tls.toml" => exit 1 { E022 @ "8:21" }
    /// `default_engine = "nftables"` and a redirect route: points at the route's reason.
    forced_nftables_redirect: "forced-nftables-redirect.toml" => exit 1 { E022 @ "11:8" }
    /// An IPv6 `addresses` entry on a route whose targets are all IPv4.
    ipv6_address_ipv4_targets: "ipv6-address-ipv4-targets.toml" => exit 1 { E023 @ "6:30" }
    userspace_udp: "userspace-udp.toml" => exit 1 { E033 @ "6:12" }
    /// PROXY protocol is spoken by the userspace engine only.
    forced_nftables_proxy_protocol: "forced-nftables-proxy-protocol.toml" => exit 1 {
        E022 @ "8:21"
    }
    /// Target verification settings on a mode that never talks TLS to the targets.
    tls_ca_without_reencrypt: "tls-ca-without-reencrypt.toml" => exit 1 { E030 @ "13:24" }
    /// A balancer that is not an address or CIDR.
    bad_proxy_protocol_peer: "bad-proxy-protocol-peer.toml" => exit 1 { E017 @ "11:42" }

    // ---- actions -----------------------------------------------------------------------
    missing_targets: "missing-targets.toml" => exit 1 { E024 @ "7:1" }
    empty_targets: "empty-targets.toml" => exit 1 { E024 @ "8:11" }
    redirect_without_section: "redirect-without-section.toml" => exit 1 { E029 @ "7:1" }
    redirect_bad_status: "redirect-bad-status.toml" => exit 1 { E029 @ "9:52" }
    redirect_on_forward: "redirect-on-forward.toml" => exit 1 { E030 @ "9:12" }
    targets_on_block: "targets-on-block.toml" => exit 1 { E030 @ "9:11" }

    // ---- settings ----------------------------------------------------------------------
    ct_mark_mask_not_contiguous: "ct-mark-mask-not-contiguous.toml" => exit 1 { E026 @ "2:16" }
    /// One mark bit, two kernel routes: points at the mask.
    ct_mark_mask_too_small: "ct-mark-mask-too-small.toml" => exit 1 { E026 @ "3:16" }
    /// `ip` is an nft keyword.
    table_named_ip: "table-named-ip.toml" => exit 1 { E027 @ "2:9" }

    // ---- resolution (check --resolve only) ---------------------------------------------
    /// The `.invalid` TLD never resolves, with or without network.
    unresolvable_host: "unresolvable-host.toml" ["--resolve"] => exit 1 { E038 @ "9:21" }

    // ---- warnings: exit 0, and 1 with --deny-warnings ----------------------------------
    overlapping_allow_list: "overlapping-allow-list.toml" => exit 0 { W001 @ "11:34" }
    shadowed_userspace_route: "shadowed-userspace-route.toml" => exit 0 { W002 @ "13:8" }
    cidr_host_bits: "cidr-host-bits.toml" => exit 0 { W003 @ "11:18" }

    // ---- all at once -------------------------------------------------------------------
    /// Seven unrelated mistakes in one file: all reported in one run, sorted by line.
    many_errors: "many-errors.toml" => exit 1 {
        E027 @ "3:9",
        E010 @ "6:8",
        E013 @ "9:14",
        E019 @ "10:12",
        E014 @ "13:44",
        E003 @ "14:1",
        E018 @ "17:14",
    }
}

// ---- running the binary ---------------------------------------------------------------

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `smartproxy --color never check ARGS...` from the repository root, without colour.
fn check(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_smartproxy"))
        .args(["--color", "never", "check"])
        .args(args)
        .current_dir(repo())
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the smartproxy binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn case(name: &str) -> &'static Case {
    CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case named {name}"))
}

fn fixture_path(case: &Case) -> String {
    format!("{DIR}/{}", case.fixture)
}

/// The full `path:line:col` of an expected location.
fn location(case: &Case, loc: &str) -> String {
    if loc.matches(':').count() == 1 {
        format!("{}:{loc}", fixture_path(case))
    } else {
        format!("{}/{loc}", fixture_path(case))
    }
}

fn args_with<'a>(case: &'a Case, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args: Vec<&str> = case.args.to_vec();
    args.extend_from_slice(extra);
    args
}

/// The JSON report of a case, checked for shape: counts agree, every diagnostic has a
/// message, a help and a position, and the diagnostics of one file are sorted.
fn json_report(case: &Case) -> Vec<Value> {
    let path = fixture_path(case);
    let run = check(&args_with(case, &["--format", "json", &path]));
    assert_eq!(
        run.code, case.exit,
        "{}: exit code of --format json\n{}{}",
        case.name, run.stdout, run.stderr
    );
    assert_eq!(run.stderr, "", "{}: nothing on stderr", case.name);
    let report: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{}: not JSON ({e}):\n{}", case.name, run.stdout));
    let diags = report["diagnostics"]
        .as_array()
        .expect("`diagnostics` is an array")
        .clone();
    let errors = diags.iter().filter(|d| d["severity"] == "error").count();
    assert_eq!(report["errors"], errors, "{}: error count", case.name);
    assert_eq!(
        report["warnings"],
        diags.len() - errors,
        "{}: warning count",
        case.name
    );
    for d in &diags {
        for field in ["message", "help", "file"] {
            assert!(
                d[field].as_str().is_some_and(|s| !s.trim().is_empty()),
                "{}: every diagnostic has a {field}: {d}",
                case.name
            );
        }
        assert!(d["line"].as_u64().is_some_and(|l| l >= 1), "{d}");
        assert!(d["column"].as_u64().is_some_and(|c| c >= 1), "{d}");
    }
    for pair in diags.windows(2) {
        if pair[0]["file"] == pair[1]["file"] {
            let at = |d: &Value| (d["line"].as_u64(), d["column"].as_u64());
            assert!(
                at(&pair[0]) <= at(&pair[1]),
                "{}: diagnostics of one file are sorted by line and column: {} then {}",
                case.name,
                pair[0],
                pair[1]
            );
        }
    }
    diags
}

fn code_and_location(d: &Value) -> (String, String) {
    (
        d["code"].as_str().unwrap_or_default().to_owned(),
        format!(
            "{}:{}:{}",
            d["file"].as_str().unwrap_or_default(),
            d["line"],
            d["column"]
        ),
    )
}

fn verify(name: &str) {
    let case = case(name);
    let path = fixture_path(case);

    let found: Vec<(String, String)> = json_report(case).iter().map(code_and_location).collect();
    let expected: Vec<(String, String)> = case
        .expected
        .iter()
        .map(|(code, loc)| ((*code).to_owned(), location(case, loc)))
        .collect();
    assert_eq!(found, expected, "{name}: codes and locations");

    let text_args = args_with(case, &[&path]);
    let run = check(&text_args);
    assert_eq!(
        run.code, case.exit,
        "{name}: exit code\n{}{}",
        run.stdout, run.stderr
    );
    assert_eq!(run.stderr, "", "{name}: nothing on stderr");
    assert!(
        !run.stdout.contains('\u{1b}'),
        "{name}: no colour with --color never"
    );
    insta::with_settings!({
        snapshot_path => "snapshots/diagnostics",
        prepend_module_to_snapshot => false,
        description => format!("smartproxy check {}", text_args.join(" ")),
        omit_expression => true,
    }, {
        insta::assert_snapshot!(name, run.stdout);
    });

    if case.exit == 0 {
        assert!(
            !case.expected.is_empty(),
            "{name}: a case that exits 0 is there for its warnings"
        );
        let denied = check(&args_with(case, &["--deny-warnings", &path]));
        assert_eq!(
            denied.code, 1,
            "{name}: --deny-warnings turns warnings into exit 1"
        );
        assert_eq!(
            denied.stdout, run.stdout,
            "{name}: same report with --deny-warnings"
        );
    }
}

// ---- the corpus as a whole ------------------------------------------------------------

#[test]
fn corpus_holds_at_least_forty_invalid_files() {
    let invalid = CASES.iter().filter(|c| c.exit == 1).count();
    assert!(invalid >= 40, "only {invalid} invalid fixtures");
}

#[test]
fn every_fixture_has_a_case_and_every_case_a_fixture() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo().join(DIR))
        .expect("tests/invalid exists")
        .map(|e| {
            e.expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| !SUPPORT.contains(&n.as_str()))
        .collect();
    let in_cases: BTreeSet<String> = CASES
        .iter()
        .map(|c| c.fixture.to_owned())
        .filter(|f| !ABSENT.contains(&f.as_str()))
        .collect();
    assert_eq!(on_disk, in_cases, "fixtures on disk vs cases");
    for absent in ABSENT {
        assert!(
            !repo().join(DIR).join(absent).exists(),
            "{absent} must not exist"
        );
    }
    let names: BTreeSet<&str> = CASES.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), CASES.len(), "case names are unique");
}

/// Every `"E0.."`/`"W0.."` string literal in `src/`: the codes the program can emit.
fn emitted_codes() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable src dir") {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("src"), &mut files);
    let mut codes = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source is UTF-8");
        for (i, _) in text.match_indices('"') {
            let code = text.get(i + 1..i + 5).unwrap_or_default();
            let closed = text.get(i + 5..i + 6) == Some("\"");
            let mut chars = code.chars();
            if closed
                && matches!(chars.next(), Some('E' | 'W'))
                && chars.all(|c| c.is_ascii_digit())
            {
                codes.insert(code.to_owned());
            }
        }
    }
    codes
}

/// Codes with a `## CODE` section in `docs/diagnostics.md`.
fn documented_codes() -> BTreeSet<String> {
    let docs = std::fs::read_to_string(repo().join("docs/diagnostics.md"))
        .expect("docs/diagnostics.md exists");
    docs.lines()
        .filter_map(|l| l.strip_prefix("## "))
        .filter_map(|h| h.split([' ', ':']).next())
        .filter(|c| c.len() == 4 && (c.starts_with('E') || c.starts_with('W')))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_emitted_code_has_a_case() {
    let emitted = emitted_codes();
    assert!(emitted.len() >= 30, "the scan found the codes: {emitted:?}");
    let covered: BTreeSet<String> = CASES
        .iter()
        .flat_map(|c| c.expected.iter().map(|(code, _)| (*code).to_owned()))
        .chain(COVERED_ELSEWHERE.iter().map(|(code, file)| {
            let text = std::fs::read_to_string(repo().join(file)).expect("the covering test");
            assert!(text.contains(&format!("\"{code}\"")), "{file} tests {code}");
            (*code).to_owned()
        }))
        .collect();
    let missing: Vec<&String> = emitted.difference(&covered).collect();
    assert!(missing.is_empty(), "codes without a fixture: {missing:?}");
    let unknown: Vec<&String> = covered.difference(&emitted).collect();
    assert!(
        unknown.is_empty(),
        "cases expect codes nothing emits: {unknown:?}"
    );
}

#[test]
fn every_emitted_code_is_documented_and_nothing_else() {
    let emitted = emitted_codes();
    let documented = documented_codes();
    assert_eq!(
        emitted, documented,
        "`## CODE` sections of docs/diagnostics.md vs codes in src/"
    );
}

/// `--format github` points at the same places as the JSON, one annotation per line.
#[test]
fn github_format_annotates_each_diagnostic() {
    let case = case("many_errors");
    let path = fixture_path(case);
    let run = check(&["--format", "github", &path]);
    assert_eq!(run.code, 1);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), case.expected.len(), "{}", run.stdout);
    for (line, (code, loc)) in lines.iter().zip(case.expected) {
        let (l, c) = loc.split_once(':').expect("line:col");
        let prefix = format!("::error file={path},line={l},col={c},title={code}::");
        assert!(line.starts_with(&prefix), "{line}\nstarts with {prefix}");
        assert!(line.contains("%0Ahelp: "), "the help rides along: {line}");
    }
    insta::with_settings!({
        snapshot_path => "snapshots/diagnostics",
        prepend_module_to_snapshot => false,
        description => format!("smartproxy check --format github {path}"),
        omit_expression => true,
    }, {
        insta::assert_snapshot!("github_many_errors", run.stdout);
    });
}

#[test]
fn github_format_marks_warnings_as_warnings() {
    let run = check(&["--format", "github", "tests/invalid/cidr-host-bits.toml"]);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.starts_with(
            "::warning file=tests/invalid/cidr-host-bits.toml,line=11,col=18,title=W003::"
        ),
        "{}",
        run.stdout
    );
}

/// The JSON report of a cross-file finding: `related` carries the other place.
#[test]
fn json_format_carries_related_locations() {
    let run = check(&["--format", "json", "tests/invalid/two-settings"]);
    assert_eq!(run.code, 1);
    insta::with_settings!({
        snapshot_path => "snapshots/diagnostics",
        prepend_module_to_snapshot => false,
        description => "smartproxy check --format json tests/invalid/two-settings",
        omit_expression => true,
    }, {
        insta::assert_snapshot!("json_two_settings", run.stdout);
    });
}

/// Two files given one by one behave like the directory that holds them.
#[test]
fn two_settings_given_as_two_paths() {
    let a = "tests/invalid/two-settings/00-settings.toml";
    let b = "tests/invalid/two-settings/10-web.toml";
    let run = check(&["--format", "json", a, b]);
    assert_eq!(run.code, 1);
    let report: Value = serde_json::from_str(&run.stdout).expect("JSON");
    let found: Vec<(String, String)> = report["diagnostics"]
        .as_array()
        .expect("array")
        .iter()
        .map(code_and_location)
        .collect();
    assert_eq!(found, [("E006".to_owned(), format!("{b}:1:1"))]);
    assert_eq!(report["diagnostics"][0]["related"][0]["file"], a);
}

// ---- regressions ------------------------------------------------------------------------

fn check_text_file(text: &str) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("routes.toml");
    std::fs::write(&file, text).expect("write");
    check(&[file.to_str().expect("UTF-8 temp path")])
}

/// `ct_mark_mask = "0xffffffff"` overflowed in the contiguity check (a panic in debug
/// builds); octal, binary and `_`-separated TOML integers were misread.
#[test]
fn ct_mark_mask_accepts_every_contiguous_spelling() {
    let route = "\n[[routes]]\nname = \"web\"\n[routes.match]\nports = 80\n\
                 [routes.action]\ntargets = [{ host = \"198.51.100.2\", port = 8080 }]\n";
    for mask in [
        "\"0xffffffff\"",
        "0xffffffff",
        "\"0x80000000\"",
        "0xffff_0000",
        "0o17",
        "0b1111_0000",
        "4294967295",
    ] {
        let run = check_text_file(&format!("[settings]\nct_mark_mask = {mask}\n{route}"));
        assert_eq!(
            run.code, 0,
            "ct_mark_mask = {mask}\n{}{}",
            run.stdout, run.stderr
        );
    }
    for mask in [
        "\"0x0\"",
        "\"0xff00ff\"",
        "\"-1\"",
        "\"+5\"",
        "\"0x1_0000_0000\"",
    ] {
        let run = check_text_file(&format!("[settings]\nct_mark_mask = {mask}\n{route}"));
        assert_eq!(
            run.code, 1,
            "ct_mark_mask = {mask}\n{}{}",
            run.stdout, run.stderr
        );
        assert!(run.stdout.contains("error[E026]"), "{mask}: {}", run.stdout);
    }
}
