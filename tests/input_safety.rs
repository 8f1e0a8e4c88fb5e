//! Hostile route input (issue 10, items 7, 9 and 10): bounded diagnostics, bounded and
//! careful reading of route files, no raw control character in any output.
//!
//! Every run of the binary is bounded by a timeout (a FIFO used to hang `check` forever),
//! and every case checks what reaches stdout and stderr.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The limit the issue sets for each of these runs.
const FAST: Duration = Duration::from_secs(2);
/// Where a run is killed (well beyond `FAST`, so that a slow machine still reports why).
const KILL_AFTER: Duration = Duration::from_secs(20);
const SECRET: &str = "hunter2-secret";

struct Run {
    code: Option<i32>,
    out: Vec<u8>,
    elapsed: Duration,
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }
}

/// `smartproxy --color never ARGS...` in `dir`; stdout and stderr together, killed after
/// [`KILL_AFTER`] (then `code` is `None`).
fn smartproxy(dir: &Path, args: &[&str]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_smartproxy"))
        .args(["--color", "never"])
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the smartproxy binary runs");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let readers = [
        std::thread::spawn(move || drain(&mut stdout)),
        std::thread::spawn(move || drain(&mut stderr)),
    ];
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for smartproxy") {
            break status.code();
        }
        if start.elapsed() > KILL_AFTER {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let mut out = Vec::new();
    for r in readers {
        out.extend(r.join().expect("reader thread"));
    }
    Run { code, out, elapsed }
}

/// At most 64 MiB of a pipe, so that a runaway output cannot exhaust the test's memory.
fn drain(pipe: &mut impl std::io::Read) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = pipe.take(64 << 20).read_to_end(&mut out);
    out
}

fn route(text: &mut String, name: &str, extra: &str) {
    let _ = write!(
        text,
        "\n[[routes]]\nname = \"{name}\"\n{extra}[routes.match]\nports = 443\n\
         [routes.action]\ntargets = [{{ host = \"198.51.100.2\", port = 8443 }}]\n"
    );
}

// ---- bounded diagnostics ------------------------------------------------------------

/// A directory with `routes.toml`: 5,000 kernel routes `r0..` all on port 443.
fn five_thousand_routes_on_port_443() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = String::from("[settings]\nct_mark_mask = \"0xffff0000\"\n");
    for i in 0..5000 {
        route(&mut text, &format!("r{i}"), "");
    }
    std::fs::write(dir.path().join("routes.toml"), text).expect("write");
    dir
}

/// The JSON report lists every diagnostic; the last of 5,000 routes counts 4,998 others.
#[test]
fn the_json_report_of_five_thousand_routes_is_complete() {
    let dir = five_thousand_routes_on_port_443();
    let run = smartproxy(dir.path(), &["check", "--format", "json", "routes.toml"]);
    assert_eq!(run.code, Some(1));
    assert!(run.elapsed < FAST, "took {:?}", run.elapsed);
    let report: serde_json::Value = serde_json::from_slice(&run.out).expect("JSON");
    let diags = report["diagnostics"].as_array().expect("an array");
    assert_eq!(diags.len(), 4999);
    assert!(
        diags.iter().any(|d| d["message"]
            == "port `443/tcp` is already claimed by route `r0` and 4998 other routes"),
        "{:?}",
        diags.last()
    );
}

/// 5,000 kernel routes on one port gave 12.5 million conflict errors (8.9 GB).
#[test]
fn five_thousand_routes_on_one_port_are_reported_fast_and_short() {
    let dir = five_thousand_routes_on_port_443();
    let run = smartproxy(dir.path(), &["check", "routes.toml"]);
    let out = run.text();
    assert_eq!(run.code, Some(1), "{}", &out[..out.len().min(2000)]);
    assert!(run.elapsed < FAST, "took {:?}", run.elapsed);
    assert!(run.out.len() < 1 << 20, "{} bytes of output", run.out.len());
    assert!(
        out.contains("is already claimed by route `r0` and 49 other routes"),
        "each route names the first and counts the rest:\n{}",
        &out[out.len().saturating_sub(2000)..]
    );
    assert!(
        out.contains("... and 4949 more errors"),
        "the rest is counted"
    );
    assert!(
        out.ends_with("failed: 4999 errors, 0 warnings\n"),
        "exact totals: {}",
        &out[out.len().saturating_sub(300)..]
    );
}

/// 5,000 SNI virtual hosts on one port: the shadowing check used to compare every pair.
#[test]
fn five_thousand_virtual_hosts_on_one_port_check_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = String::new();
    for i in 0..5000 {
        let _ = write!(
            text,
            "\n[[routes]]\nname = \"v{i}\"\n[routes.match]\nports = 443\n\
             domains = [\"v{i}.example.com\"]\n\
             [routes.action]\ntargets = [{{ host = \"198.51.100.2\", port = 8443 }}]\n"
        );
    }
    std::fs::write(dir.path().join("routes.toml"), text).expect("write");
    let run = smartproxy(dir.path(), &["check", "routes.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.text());
    assert!(run.text().contains("5000 userspace"), "{}", run.text());
    assert!(run.elapsed < FAST, "took {:?}", run.elapsed);
}

/// 5,000 duplicate allow-list entries on one line printed the line 5,000 times (394 MB).
#[test]
fn five_thousand_duplicate_entries_give_one_short_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = vec!["\"192.0.2.7\""; 5000].join(", ");
    let mut text = String::new();
    route(&mut text, "web", "");
    let _ = write!(
        text,
        "[routes.action.security]\nip_allow_list = [{entries}]\n"
    );
    std::fs::write(dir.path().join("routes.toml"), text).expect("write");
    let run = smartproxy(dir.path(), &["check", "routes.toml"]);
    let out = run.text();
    assert_eq!(run.code, Some(0), "{out}");
    assert!(run.elapsed < FAST, "took {:?}", run.elapsed);
    assert!(run.out.len() < 1 << 20, "{} bytes of output", run.out.len());
    assert_eq!(out.matches("warning[W001]").count(), 1, "{out}");
    assert!(out.contains("and 4998 more entries"), "{out}");
    assert!(
        out.lines().all(|l| l.chars().count() < 200),
        "the long line is windowed:\n{out}"
    );
}

// ---- reading route files --------------------------------------------------------------

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

/// Asserts a quick error run whose output names `code` and holds no secret.
fn assert_refused(run: &Run, code: &str, what: &str) {
    let out = run.text();
    assert_eq!(run.code, Some(1), "{what}: exit 1 in time\n{out}");
    assert!(run.elapsed < FAST, "{what}: took {:?}", run.elapsed);
    assert!(out.contains(&format!("error[{code}]")), "{what}: {out}");
    assert!(
        !out.contains(SECRET),
        "{what}: the target's content leaked:\n{out}"
    );
}

#[test]
fn a_fifo_is_an_error_named_directly_and_in_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    mkfifo(&dir.path().join("pipe.toml"));
    let run = smartproxy(dir.path(), &["check", "pipe.toml"]);
    assert_refused(&run, "E039", "a FIFO named directly");
    assert!(
        run.text().contains("`pipe.toml` is a FIFO"),
        "{}",
        run.text()
    );

    let routes = dir.path().join("routes.d");
    std::fs::create_dir(&routes).expect("mkdir");
    mkfifo(&routes.join("10-pipe.toml"));
    let run = smartproxy(dir.path(), &["check", "routes.d"]);
    assert_refused(&run, "E039", "a FIFO in a directory");
    assert!(
        run.text().contains("routes.d/10-pipe.toml"),
        "{}",
        run.text()
    );
}

#[test]
fn dev_zero_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = smartproxy(dir.path(), &["check", "/dev/zero"]);
    assert_refused(&run, "E039", "/dev/zero");
}

/// A 2 GB sparse file aborted `check` (SIGABRT allocating 14.7 GB).
#[test]
fn a_two_gigabyte_sparse_file_is_an_error_before_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = std::fs::File::create(dir.path().join("big.toml")).expect("create");
    file.set_len(2 << 30).expect("a sparse file");
    let run = smartproxy(dir.path(), &["check", "big.toml"]);
    assert_refused(&run, "E040", "a 2 GB sparse file");
}

/// Files under the per-file cap that together pass the total cap: the file that would
/// pass it is refused, before it is read.
#[test]
fn route_files_together_are_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..5 {
        let file = std::fs::File::create(dir.path().join(format!("{i}.toml"))).expect("create");
        file.set_len(15 << 20).expect("a sparse file");
    }
    let run = smartproxy(dir.path(), &["check", "."]);
    // The four files that fit are read and parsed (60 MiB of NUL bytes for the TOML
    // parser): bounded by the kill timeout, not by `FAST`.
    assert_eq!(run.code, Some(1), "{}", run.text());
    assert!(
        run.text().contains("error[E040]") && run.text().contains("failed: 5 errors"),
        "{}",
        run.text()
    );
    assert!(
        run.text()
            .contains("4.toml` would bring the route files read to more than 64 MiB"),
        "{}",
        run.text()
    );
}

/// A symlink in `routes.d` to `secret.env` was followed and its line printed.
#[test]
fn a_symlink_leaving_the_directory_is_refused_unless_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("secret.env"),
        format!("DB_PASSWORD = \"{SECRET}\"\n"),
    )
    .expect("write");
    let routes = dir.path().join("routes.d");
    std::fs::create_dir(&routes).expect("mkdir");
    let mut ok = String::new();
    route(&mut ok, "web", "");
    std::fs::write(routes.join("00-web.toml"), ok).expect("write");
    std::os::unix::fs::symlink("../secret.env", routes.join("10-secret.toml")).expect("symlink");

    let run = smartproxy(dir.path(), &["check", "routes.d"]);
    assert_refused(&run, "E041", "an outside symlink");
    assert!(
        run.text().contains("routes.d/10-secret.toml") && run.text().contains("--follow-symlinks"),
        "names the link and the way out: {}",
        run.text()
    );

    let run = smartproxy(dir.path(), &["--follow-symlinks", "check", "routes.d"]);
    let out = run.text();
    assert_eq!(run.code, Some(1), "{out}");
    assert!(!out.contains("E041"), "{out}");
    assert!(
        out.contains("unknown key `DB_PASSWORD`"),
        "the link was read: {out}"
    );
}

/// A symlink inside the directory to a file inside it is fine.
#[test]
fn a_symlink_within_the_directory_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ok = String::new();
    route(&mut ok, "web", "");
    std::fs::write(dir.path().join("web.toml.orig"), ok).expect("write");
    std::os::unix::fs::symlink("web.toml.orig", dir.path().join("web.toml")).expect("symlink");
    let run = smartproxy(dir.path(), &["check", "."]);
    assert_eq!(run.code, Some(0), "{}", run.text());
}

/// A file that is not TOML is quoted only within the error's span: a secret elsewhere on
/// its line is never printed.
#[test]
fn a_file_that_is_not_toml_is_not_quoted() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("secret.toml"),
        format!("DB_PASSWORD = {SECRET}\n"),
    )
    .expect("write");
    let run = smartproxy(dir.path(), &["check", "secret.toml"]);
    assert_refused(&run, "E001", "a file that is not TOML");
    assert!(run.text().contains("secret.toml:1:"), "{}", run.text());
    assert!(!run.text().contains("DB_PASSWORD"), "{}", run.text());
}

// ---- control characters ---------------------------------------------------------------

/// Bytes no output may hold: C0 but `\n` and `\t`, DEL, and the UTF-8 of C1 and of the
/// bidi controls.
fn raw_controls(out: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(out);
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n' && c != '\t')
                || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
        })
        .map(|c| format!("U+{:04X}", u32::from(c)))
        .collect()
}

fn assert_no_raw_controls(run: &Run, what: &str) {
    let found = raw_controls(&run.out);
    assert!(
        found.is_empty(),
        "{what}: raw {found:?} in the output:\n{}",
        run.text().escape_debug()
    );
}

#[test]
fn escapes_in_a_comment_never_reach_the_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = String::from("# \u{1b}]0;pwned\u{7}\u{1b}[2J \u{202e}txt.exe\n");
    route(&mut text, "web", "");
    std::fs::write(dir.path().join("routes.toml"), text).expect("write");
    for args in [&["check", "routes.toml"][..], &["compile", "routes.toml"]] {
        let run = smartproxy(dir.path(), args);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.text());
        assert_no_raw_controls(&run, &format!("{args:?}"));
        assert!(run.text().contains("error[E001]"), "{}", run.text());
    }
}

#[test]
fn names_with_control_or_bidi_characters_are_rejected_and_escaped() {
    for name in ["web\\u001b[2J", "web\\u0007", "web\\u202etxt", "web\\u200b"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = String::new();
        route(&mut text, name, "");
        std::fs::write(dir.path().join("routes.toml"), text).expect("write");
        for args in [&["check", "routes.toml"][..], &["compile", "routes.toml"]] {
            let run = smartproxy(dir.path(), args);
            assert_eq!(run.code, Some(1), "{name} {args:?}: {}", run.text());
            assert!(run.text().contains("error[E010]"), "{name}: {}", run.text());
            assert!(run.text().contains("\\u{"), "shown escaped: {}", run.text());
            assert!(
                run.text()
                    .contains("a control, bidi or invisible character"),
                "says why: {}",
                run.text()
            );
            assert_no_raw_controls(&run, &format!("{name} {args:?}"));
        }
    }
}

#[test]
fn descriptions_reach_nft_without_controls_or_bidi() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = String::new();
    route(
        &mut text,
        "web",
        "description = \"left\\u001b[2J\\u0007\\u202eright\\u200b\\u2028\\ufeffend\"\n",
    );
    std::fs::write(dir.path().join("routes.toml"), text).expect("write");
    let run = smartproxy(dir.path(), &["check", "routes.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.text());
    assert_no_raw_controls(&run, "check");
    let run = smartproxy(dir.path(), &["compile", "routes.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.text());
    assert_no_raw_controls(&run, "compile");
    assert!(run.text().contains("left [2J rightend"), "{}", run.text());
}
