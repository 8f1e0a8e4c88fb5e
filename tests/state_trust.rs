//! Issue 10 (items 2, 3, 4, 11, 13): names that reach nft are validated where they enter,
//! state files and saved plans are trusted only when they deserve it, and output files
//! never follow a planted symlink. Kernel tests run in throw-away network namespaces, every
//! smartproxy under `umask 000`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::cli::{self, code, route, s, show, stderr, stdout};
use common::Netns;

/// A namespace and a state directory (not yet created: smartproxy makes it).
struct Env {
    ns: Netns,
    _root: tempfile::TempDir,
    state: PathBuf,
    files: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        let root = tempfile::tempdir().expect("tempdir");
        let files = root.path().join("files");
        std::fs::create_dir(&files).expect("files dir");
        Env {
            ns: Netns::new(tag),
            // Two levels smartproxy creates, as under /run/smartproxy/net-<inode>.
            state: root.path().join("run").join("state"),
            files,
            _root: root,
        }
    }

    /// smartproxy in the namespace under `umask 000`.
    fn sp(&self, args: &[&str]) -> Output {
        let umask = ["sh", "-c", "umask 000; exec \"$0\" \"$@\""];
        cli::sp_cmd_via(&self.ns, &umask, &self.state, args, &[])
            .output()
            .expect("smartproxy runs")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.files.join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    fn tables(&self) -> String {
        self.ns.nft_ok(&["list", "tables"], None)
    }

    fn table(&self) -> String {
        let o = self.ns.nft(&["-s", "list", "table", "inet", "st"], None);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn state_file(&self, suffix: &str) -> PathBuf {
        self.state.join(format!("st.{suffix}"))
    }

    fn state_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.state)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

fn routes(list: &[(&str, u16)]) -> String {
    let mut out = String::from("[settings]\ntable = \"st\"\n");
    for (name, port) in list {
        out.push_str(&route(name, u32::from(*port), "198.51.100.2", 9090));
    }
    out
}

fn ok(o: &Output) {
    assert_eq!(code(o), 0, "{}", show(o));
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).expect("metadata").mode() & 0o7777
}

// ---------------------------------------------------------------- names (item 2)

#[test]
fn a_bad_table_name_is_a_usage_error_that_touches_nothing() {
    if !common::netns_available("a_bad_table_name_is_a_usage_error_that_touches_nothing") {
        return;
    }
    let e = Env::new("stn");
    // A table that an injected `delete`/`add` would hit, and a state directory with files.
    let f = e.write(
        "r.toml",
        &routes(&[("web", 80)]).replace("\"st\"", "\"rtsp\""),
    );
    ok(&e.sp(&["apply", "--auto-approve", s(&f)]));
    let tables = e.tables();
    let files = e.state_names();
    let forty = "a".repeat(40);
    let names = [
        "rtsp; add table inet rtinj1",
        "rtsp add table inet rtinj1",
        "rt sp",
        "\"rtsp\"",
        "'rtsp'",
        "rtsp\n",
        forty.as_str(),
    ];
    for name in names {
        for args in [
            vec!["status", "--table", name],
            vec!["destroy", "--table", name, "--auto-approve"],
            vec!["confirm", "--table", name],
        ] {
            let o = e.sp(&args);
            assert_eq!(code(&o), 1, "{args:?}\n{}", show(&o));
            assert!(
                stderr(&o).contains("invalid table name"),
                "{args:?}\n{}",
                show(&o)
            );
            assert_eq!(e.tables(), tables, "{args:?}: no table created or removed");
            assert_eq!(e.state_names(), files, "{args:?}: no state file created");
        }
    }
}

// ---------------------------------------------------------------- state files (item 3)

#[test]
fn under_umask_000_state_files_are_0600_the_directory_0700_and_a_plan_0600() {
    if !common::netns_available(
        "under_umask_000_state_files_are_0600_the_directory_0700_and_a_plan_0600",
    ) {
        return;
    }
    let e = Env::new("stm");
    let one = e.write("one.toml", &routes(&[("web", 80)]));
    let two = e.write("two.toml", &routes(&[("web", 80), ("api", 81)]));
    ok(&e.sp(&["apply", "--auto-approve", s(&one)]));
    let plan = e.files.join("plan.json");
    ok(&e.sp(&["plan", s(&two), "--out", s(&plan)]));
    assert_eq!(mode(&plan), 0o600, "a saved plan holds the ruleset");
    // With a confirm pending: the rollback files exist too.
    ok(&e.sp(&[
        "apply",
        "--auto-approve",
        "--confirm-timeout",
        "30",
        s(&two),
    ]));
    assert_eq!(mode(&e.state), 0o700, "the state directory");
    let parent = e.state.parent().expect("parent");
    assert_eq!(mode(parent), 0o755, "its parent, made under umask 000");
    let names = e.state_names();
    assert!(
        names.iter().any(|n| n == "st.rollback.nft") && names.iter().any(|n| n == "st.lock"),
        "{names:?}"
    );
    for n in &names {
        let p = e.state.join(n);
        assert_eq!(mode(&p), 0o600, "{n} is 0600");
        assert!(!n.ends_with(".tmp"), "no temp file is left: {n}");
    }
    ok(&e.sp(&["confirm"]));
    // State left readable by an older smartproxy (0755, 0644) is closed on use.
    std::fs::set_permissions(&e.state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let applied = e.state_file("applied");
    std::fs::set_permissions(&applied, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    ok(&e.sp(&["plan", s(&two)]));
    assert_eq!(mode(&e.state), 0o700);
    assert_eq!(mode(&applied), 0o600);
}

#[test]
fn a_state_file_or_directory_open_to_others_or_owned_by_another_user_is_refused() {
    if !common::netns_available(
        "a_state_file_or_directory_open_to_others_or_owned_by_another_user_is_refused",
    ) {
        return;
    }
    let e = Env::new("stu");
    let one = e.write("one.toml", &routes(&[("web", 80)]));
    let two = e.write("two.toml", &routes(&[("web", 80), ("api", 81)]));
    ok(&e.sp(&["apply", "--auto-approve", s(&one)]));
    let before = e.table();
    let applied = e.state_file("applied");
    let refused = |what: &str, expect: &str| {
        for args in [
            vec!["plan", s(&two)],
            vec!["apply", "--auto-approve", s(&two)],
        ] {
            let o = e.sp(&args);
            assert_eq!(code(&o), 1, "{what}: {args:?}\n{}", show(&o));
            let err = stderr(&o);
            assert!(err.contains("refusing to trust"), "{what}\n{}", show(&o));
            assert!(err.contains(expect), "{what}: `{expect}`\n{}", show(&o));
            assert_eq!(e.table(), before, "{what}: nothing applied");
        }
    };

    std::fs::set_permissions(&applied, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    refused("a 0666 file", "chmod 600");
    std::fs::set_permissions(&applied, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    std::os::unix::fs::chown(&applied, Some(65534), Some(65534)).expect("chown");
    refused("a file of uid 65534", "owned by uid 65534");
    std::os::unix::fs::chown(&applied, Some(0), Some(0)).expect("chown back");

    std::fs::set_permissions(&e.state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    refused("a 0777 directory", "chmod 700");
    std::fs::set_permissions(&e.state, std::fs::Permissions::from_mode(0o700)).expect("chmod");

    // A planted rollback file of another user is refused too.
    let planted = e.state_file("rollback.nft");
    std::fs::write(&planted, "add table inet rtinj9\n").expect("plant");
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).expect("chown");
    refused("a planted rollback file", "owned by uid 65534");
    std::fs::remove_file(&planted).expect("remove");

    ok(&e.sp(&["apply", "--auto-approve", s(&two)]));
    assert!(!e.tables().contains("rtinj"), "{}", e.tables());
}

// ---------------------------------------------------------------- caches and plans (item 3, 4)

/// Rewrites a cache file's text with `edit`, keeping (`reseal`: forging) its seal line.
fn edit_cache(e: &Env, suffix: &str, reseal: bool, edit: impl FnOnce(&str) -> String) {
    let p = e.state_file(suffix);
    let text = std::fs::read_to_string(&p).expect("cache file");
    let sealed = common::seal::body(&text) != text;
    let body = edit(common::seal::body(&text));
    assert_ne!(
        body,
        common::seal::body(&text),
        "the edit changes something"
    );
    if sealed && reseal {
        common::seal::write(&e.state, "st", suffix, &body);
    } else if sealed {
        let head = text.split_once('\n').expect("seal line").0;
        std::fs::write(&p, format!("{head}\n{body}")).expect("write cache");
    } else {
        std::fs::write(&p, body).expect("write cache");
    }
}

#[test]
fn an_edited_cached_unit_never_reaches_the_kernel() {
    if !common::netns_available("an_edited_cached_unit_never_reaches_the_kernel") {
        return;
    }
    let e = Env::new("stc");
    let one = e.write("one.toml", &routes(&[("web", 80), ("api", 81)]));
    let two = e.write("two.toml", &routes(&[("web", 80), ("api", 82)]));
    // The counter's text closes itself and the table, adds a table, and reopens ours.
    let inject = |body: &str| {
        body.replacen(
            "comment \\\"web\\\"\\n}",
            "comment \\\"web\\\"\\n}\\n}\\nadd table inet rtinj3\\ntable inet st {\\ncounter c_webx {\\n\\tcomment \\\"x\\\"\\n}",
            1,
        )
    };
    for reseal in [false, true] {
        ok(&e.sp(&["apply", "--auto-approve", s(&one)]));
        edit_cache(&e, "normalised", reseal, inject);
        let o = e.sp(&["apply", "--auto-approve", s(&two)]);
        assert!(
            !e.tables().contains("rtinj3"),
            "resealed {reseal}: {}\n{}",
            e.tables(),
            show(&o)
        );
        ok(&o);
        let expect = if reseal {
            "is not exactly that route's objects"
        } else {
            "does not match its seal"
        };
        assert!(
            stderr(&o).contains(expect),
            "a clear warning:\n{}",
            show(&o)
        );
        // What was applied is route file two, exactly.
        let o = e.sp(&["plan", "--detailed-exitcode", s(&two)]);
        assert_eq!(
            code(&o),
            0,
            "resealed {reseal}: nothing left to do\n{}",
            show(&o)
        );
    }
}

#[test]
fn a_replaced_cached_live_listing_is_not_believed() {
    if !common::netns_available("a_replaced_cached_live_listing_is_not_believed") {
        return;
    }
    let e = Env::new("stl");
    let one = e.write("one.toml", &routes(&[("web", 80)]));
    let two = e.write("two.toml", &routes(&[("web", 80), ("api", 81)]));
    ok(&e.sp(&["apply", "--auto-approve", s(&two)]));
    let listing_of_two = |text: &str| -> String {
        let text = common::seal::body(text);
        text.split_once('\n').expect("generation line").1.to_owned()
    };
    let two_listing = listing_of_two(
        &std::fs::read_to_string(e.state_file("live")).expect("live cache after apply"),
    );
    ok(&e.sp(&["apply", "--auto-approve", s(&one)]));
    // The cache now claims the kernel holds file two while it holds file one.
    edit_cache(&e, "live", false, |body| {
        let (generation, _) = body.split_once('\n').expect("generation line");
        format!("{generation}\n{two_listing}")
    });
    let o = e.sp(&["apply", "--auto-approve", s(&two)]);
    ok(&o);
    assert!(
        !stdout(&o).contains("No changes"),
        "apply believed the replaced listing:\n{}",
        show(&o)
    );
    assert!(
        stderr(&o).contains("does not match its seal"),
        "a clear warning:\n{}",
        show(&o)
    );
    assert!(e.table().contains("c_api"), "{}", e.table());
    let o = e.sp(&["plan", "--detailed-exitcode", s(&two)]);
    assert_eq!(code(&o), 0, "{}", show(&o));
}

#[test]
fn a_saved_plan_with_another_table_or_a_foreign_base_chain_is_refused() {
    if !common::netns_available(
        "a_saved_plan_with_another_table_or_a_foreign_base_chain_is_refused",
    ) {
        return;
    }
    let e = Env::new("stp");
    let one = e.write("one.toml", &routes(&[("web", 80)]));
    let plan = e.files.join("plan.json");
    ok(&e.sp(&["plan", s(&one), "--out", s(&plan)]));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan).expect("plan")).expect("json");
    let extras = [
        (
            "a second table",
            "table inet rtinj4 {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t}\n}\n",
        ),
        (
            "a base chain in our table",
            "table inet st {\n\tchain sneaky {\n\t\ttype filter hook input priority -400; policy drop;\n\t}\n}\n",
        ),
    ];
    for (what, extra) in extras {
        let mut p = saved.clone();
        let script = p["desired_script"]
            .as_str()
            .expect("desired_script")
            .to_owned();
        p["desired_script"] = serde_json::Value::String(format!("{script}{extra}"));
        let bad = e.write("bad-plan.json", &p.to_string());
        let o = e.sp(&["apply", "--auto-approve", "--plan", s(&bad)]);
        assert_eq!(code(&o), 1, "{what}\n{}", show(&o));
        assert!(
            stderr(&o).contains("refusing the saved plan"),
            "{what}\n{}",
            show(&o)
        );
        let tables = e.tables();
        assert!(
            !tables.contains("rtinj4") && !tables.lines().any(|l| l.trim() == "table inet st"),
            "{what}: {tables}"
        );
    }
    let mut p = saved.clone();
    p["table"] = serde_json::Value::String("st; add table inet rtinj5".to_owned());
    let bad = e.write("bad-plan.json", &p.to_string());
    let o = e.sp(&["apply", "--auto-approve", "--plan", s(&bad)]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("invalid table name"), "{}", show(&o));
    assert!(!e.tables().contains("rtinj5"), "{}", e.tables());
    // The plan as saved still applies.
    ok(&e.sp(&["apply", "--auto-approve", "--plan", s(&plan)]));
    assert!(e.table().contains("c_web"));
}

// ---------------------------------------------------------------- output files (item 11)

/// Plants symlinks to a victim at `target` and at the temp names beside it (today's and
/// the old fixed one); returns the victim.
fn plant(dir: &Path, target: &Path) -> PathBuf {
    let victim = dir.join("victim");
    std::fs::write(&victim, "root's file\n").expect("victim");
    let name = target
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    for link in [
        target.to_path_buf(),
        dir.join(format!(".{name}.smartproxy-tmp")),
        dir.join(format!(".{name}.tmp")),
    ] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    }
    victim
}

#[test]
fn compile_output_never_follows_a_planted_symlink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes_file = dir.path().join("r.toml");
    std::fs::write(&routes_file, routes(&[("web", 80)])).expect("routes");
    let out = dir.path().join("out.nft");
    let victim = plant(dir.path(), &out);
    let o = common::smartproxy()
        .args(["compile", s(&routes_file), "-o", s(&out)])
        .output()
        .expect("compile runs");
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "root's file\n"
    );
    let meta = std::fs::symlink_metadata(&out).expect("out");
    assert!(meta.file_type().is_file(), "the link itself was replaced");
    assert!(std::fs::read_to_string(&out)
        .expect("out")
        .contains("table inet st"));
}

#[test]
fn plan_out_never_follows_a_planted_symlink() {
    if !common::netns_available("plan_out_never_follows_a_planted_symlink") {
        return;
    }
    let e = Env::new("sts");
    let one = e.write("one.toml", &routes(&[("web", 80)]));
    let out = e.files.join("plan.json");
    let victim = plant(&e.files, &out);
    ok(&e.sp(&["plan", s(&one), "--out", s(&out)]));
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "root's file\n"
    );
    assert!(std::fs::symlink_metadata(&out)
        .expect("out")
        .file_type()
        .is_file());
    assert_eq!(mode(&out), 0o600);
    ok(&e.sp(&["apply", "--auto-approve", "--plan", s(&out)]));
}

// ---------------------------------------------------------------- the guard on real text

#[test]
fn the_guard_accepts_what_we_render_and_what_nft_lists_back_and_nothing_more() {
    if !common::netns_available(
        "the_guard_accepts_what_we_render_and_what_nft_lists_back_and_nothing_more",
    ) {
        return;
    }
    use smartproxy::nft::guard;
    let e = Env::new("stg");
    let fixture = common::repo().join("tests/fixtures/json/everything.toml");
    let o = common::smartproxy()
        .args(["compile", s(&fixture)])
        .output()
        .expect("compile runs");
    ok(&o);
    let script = stdout(&o);
    guard::check(&script, "smartproxy").expect("the rendered script passes");
    assert!(
        guard::check(&script, "other").is_err(),
        "but only for its own table"
    );
    ok(&e.sp(&["apply", "--auto-approve", s(&fixture)]));
    // Sets with elements, dynamic sets in use, counters with values, every base chain.
    for args in [
        vec!["-s", "list", "table", "inet", "smartproxy"],
        vec!["list", "table", "inet", "smartproxy"],
    ] {
        let listing = e.ns.nft_ok(&args, None);
        guard::check(&listing, "smartproxy")
            .unwrap_or_else(|err| panic!("nft {args:?} passes the guard: {err}\n{listing}"));
        let foreign = format!(
            "{listing}table inet rtinj6 {{\n\tchain c {{\n\t\ttype filter hook input priority 0; policy accept;\n\t}}\n}}\n"
        );
        assert!(guard::check(&foreign, "smartproxy").is_err());
    }
}

/// ENOSPC half-way through a write (a 16 KiB tmpfs in a private mount namespace, so the
/// host sees nothing): `compile -o` fails naming the file, and neither the target nor a
/// temp file is left behind; with room, the same command writes the file.
#[test]
fn a_write_that_runs_out_of_space_leaves_no_temp_file() {
    if !common::netns_available("a_write_that_runs_out_of_space_leaves_no_temp_file") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let routes_file = dir.path().join("r.toml");
    let many: Vec<(String, u16)> = (0..200).map(|i| (format!("r{i}"), 2000 + i)).collect();
    let list: Vec<(&str, u16)> = many.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    std::fs::write(&routes_file, routes(&list)).expect("routes");
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mount point");
    let script = r#"mount -t tmpfs -o size=16k tmpfs "$1" || exit 99
"$2" compile "$3" -o "$1/out.nft"; echo "rc=$?"
ls -A "$1"; echo end"#;
    let run = |routes: &Path| {
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .args([s(&small), env!("CARGO_BIN_EXE_smartproxy"), s(routes)])
            .output()
            .expect("unshare runs")
    };
    let o = run(&routes_file);
    let out = stdout(&o);
    assert!(
        out.contains("rc=1"),
        "compile into a full disk fails: {}",
        show(&o)
    );
    let listed: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("rc="))
        .skip(1)
        .take_while(|l| *l != "end")
        .collect();
    assert!(
        listed.is_empty(),
        "nothing left on the full disk: {listed:?}"
    );
    assert!(
        stderr(&o).contains("out.nft") && stderr(&o).contains("No space left"),
        "the error names the file and the cause: {}",
        show(&o)
    );
    // The same file system takes a small script: the failure above was the space.
    let one = dir.path().join("one.toml");
    std::fs::write(&one, routes(&[("web", 80)])).expect("routes");
    let o = run(&one);
    assert!(stdout(&o).contains("rc=0"), "{}", show(&o));
    assert!(stdout(&o).contains("out.nft"), "{}", show(&o));
}
