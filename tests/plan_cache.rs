//! The caches behind a fast plan (src/cache.rs), against a real kernel: a desired listing
//! assembled from remembered routes equals the kernel's normalisation of the whole script,
//! after routes are added, changed and removed and after table settings change; the
//! remembered live table equals what the kernel lists after full and incremental applies;
//! and both caches are really used while valid and ignored once the generation moves.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::cli;
use common::Netns;
use smartproxy::nft::listing::{self, Listing};

struct Host {
    ns: Netns,
    state: tempfile::TempDir,
    routes: tempfile::TempDir,
}

impl Host {
    fn new(tag: &str) -> Host {
        Host {
            ns: Netns::new(tag),
            state: tempfile::tempdir().expect("state dir"),
            routes: tempfile::tempdir().expect("routes dir"),
        }
    }

    fn sp(&self, args: &[&str]) -> Output {
        cli::sp_in(&self.ns, self.state.path(), args, &[])
    }

    fn sp_ok(&self, args: &[&str]) -> String {
        let out = self.sp(args);
        assert!(
            out.status.success(),
            "smartproxy {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.routes.path().join(name), text).expect("write routes");
    }

    fn dir(&self) -> &str {
        self.routes.path().to_str().expect("utf-8")
    }

    fn state_file(&self, suffix: &str) -> PathBuf {
        self.state.path().join(format!("smartproxy.{suffix}"))
    }

    /// The desired listing of `plan --out`, parsed.
    fn planned_desired(&self) -> Listing {
        let out = self.state.path().join("plan.json");
        self.sp_ok(&["plan", "--out", out.to_str().expect("utf-8"), self.dir()]);
        let plan: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).expect("plan written"))
                .expect("plan JSON");
        listing::parse(plan["desired_listing"].as_str().expect("desired_listing"))
    }

    /// The kernel's own normalisation of the whole compiled script, in a fresh namespace.
    fn full_normalisation(&self) -> Listing {
        let script = self.sp_ok(&["compile", self.dir()]);
        let scratch = Netns::new("pcn");
        scratch.nft_ok(&["-f", "-"], Some(&script));
        listing::parse(&scratch.nft_ok(&["-s", "list", "table", "inet", "smartproxy"], None))
    }

    fn live_now(&self) -> Listing {
        listing::parse(
            &self
                .ns
                .nft_ok(&["-s", "list", "table", "inet", "smartproxy"], None),
        )
    }

    fn remembered_live(&self) -> Listing {
        let text = std::fs::read_to_string(self.state_file("live")).expect("live cache written");
        let (_, listing) = common::seal::body(&text)
            .split_once('\n')
            .expect("generation line");
        listing::parse(listing)
    }
}

fn assert_same(what: &str, got: &Listing, want: &Listing) {
    assert_eq!(got.table, want.table, "{what}: table-level part differs");
    assert_eq!(got.table_comment, want.table_comment, "{what}: comment");
    let names = |l: &Listing| l.routes.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(got), names(want), "{what}: routes");
    for (name, unit) in &want.routes {
        assert_eq!(
            got.routes[name].text(),
            unit.text(),
            "{what}: route {name} differs"
        );
    }
}

fn everything() -> String {
    std::fs::read_to_string(common::repo().join("tests/fixtures/json/everything.toml"))
        .expect("fixture")
}

fn extra(routes: &[(&str, u16, u8)]) -> String {
    let mut out = String::new();
    for (name, port, priority) in routes {
        out.push_str(&format!(
            "\n[[routes]]\nname = \"{name}\"\n[routes.match]\nports = {port}\n[routes.action]\n\
             targets = [{{ host = \"198.51.100.77\", port = 8080 }}]\n\
             [routes.action.nftables]\npriority = {priority}\n"
        ));
    }
    out
}

fn file_text(p: &Path) -> String {
    std::fs::read_to_string(p).expect("readable")
}

#[test]
fn assembled_listings_equal_the_kernels_normalisation() {
    if !common::netns_available("assembled_listings_equal_the_kernels_normalisation") {
        return;
    }
    let h = Host::new("pc");
    h.write("10-everything.toml", &everything());
    h.write(
        "20-extra.toml",
        &extra(&[("e1", 7001, 1), ("e2", 7002, 3), ("e3", 7003, 0)]),
    );

    // Cold: nothing remembered.
    assert!(!h.state_file("normalised").exists());
    assert_same("cold", &h.planned_desired(), &h.full_normalisation());
    assert!(
        h.state_file("normalised").exists(),
        "the routes are remembered"
    );

    // One route changed, one added with a QoS class nobody had, one removed, and a route of
    // the other file changed.
    h.write(
        "20-extra.toml",
        &extra(&[("e1", 7001, 1), ("e2", 7012, 3), ("e4", 7004, 6)]),
    );
    let fixture = everything().replace("ports = 8443", "ports = 8444");
    h.write("10-everything.toml", &fixture);
    assert_same(
        "warm, routes changed",
        &h.planned_desired(),
        &h.full_normalisation(),
    );

    // The last class-6 route goes: its shared chain must go from the table-level part.
    h.write("20-extra.toml", &extra(&[("e1", 7001, 1), ("e2", 7012, 3)]));
    assert_same(
        "warm, shared chain gone",
        &h.planned_desired(),
        &h.full_normalisation(),
    );

    // Table settings change every route's key.
    h.write("00-settings.toml", "[settings]\nlog_group = 7\n");
    assert_same(
        "settings changed",
        &h.planned_desired(),
        &h.full_normalisation(),
    );

    // The remembered routes are really used: a unit edited in the cache shows in the plan.
    let cache = h.state_file("normalised");
    let text = file_text(&cache);
    assert!(text.contains("c_sticky"));
    let tampered =
        common::seal::body(&text).replace("jhash on the client address", "tampered comment");
    assert_ne!(
        tampered,
        common::seal::body(&text),
        "the sticky route's comment is in the cache"
    );
    // Sealed with the directory's key (smartproxy ignores a cache changed by anyone else:
    // tests/state_trust.rs).
    common::seal::write(h.state.path(), "smartproxy", "normalised", &tampered);
    let planned = h.planned_desired();
    assert!(
        planned.routes["sticky"].text().contains("tampered comment"),
        "the plan took the remembered unit"
    );
}

#[test]
fn the_remembered_live_table_is_what_the_kernel_lists() {
    if !common::netns_available("the_remembered_live_table_is_what_the_kernel_lists") {
        return;
    }
    let h = Host::new("pl");
    h.write("10-everything.toml", &everything());
    h.write("20-extra.toml", &extra(&[("e1", 7001, 1), ("e2", 7002, 3)]));
    h.sp_ok(&["apply", "--auto-approve", h.dir()]);
    assert_same("after creating", &h.remembered_live(), &h.live_now());

    h.write("20-extra.toml", &extra(&[("e1", 7011, 1), ("e3", 7003, 6)]));
    let out = h.sp_ok(&["apply", "--auto-approve", h.dir()]);
    assert!(out.contains("1 added, 1 changed, 1 destroyed"), "{out}");
    assert_same(
        "after an incremental apply",
        &h.remembered_live(),
        &h.live_now(),
    );
    let out = h.sp_ok(&["plan", h.dir()]);
    assert!(out.contains("No changes."), "{out}");

    // While the generation stays, plan believes the remembered table: edit it and plan
    // sees the edit.
    let cache = h.state_file("live");
    let text = file_text(&cache);
    let tampered = common::seal::body(&text).replace("counter c_e3 {", "counter c_e3x {");
    assert_ne!(tampered, common::seal::body(&text));
    common::seal::write(h.state.path(), "smartproxy", "live", &tampered);
    let out = h.sp_ok(&["plan", h.dir()]);
    assert!(
        out.contains("route \"e3x\" will be destroyed")
            && out.contains("Plan: 0 to add, 1 to change, 1 to destroy."),
        "the remembered listing is used while the generation stays:\n{out}"
    );

    // Any commit in the namespace (here another table) moves the generation: plan lists
    // the kernel again and finds it matches.
    h.ns.nft_ok(&["add", "table", "inet", "other"], None);
    let out = h.sp_ok(&["plan", h.dir()]);
    assert!(out.contains("No changes."), "{out}");

    // A rule added to our table by hand is drift, cache or not.
    std::fs::write(&cache, &text).expect("restore cache");
    h.ns.nft_ok(
        &["add", "rule", "inet", "smartproxy", "f_e1", "counter"],
        None,
    );
    let out = h.sp_ok(&["plan", h.dir()]);
    assert!(out.contains("f_e1") && out.contains("1 to change"), "{out}");
}
