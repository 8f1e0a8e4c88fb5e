//! The converge flow (what `apply`, `destroy` and `serve` run) against the in-memory
//! [`FakeKernel`]: no root, no `nft`. Each test has its own table; the state directory is
//! one private temporary directory for the whole binary, set before any test touches it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use smartproxy::converge;
use smartproxy::kernel::fake::FakeKernel;
use smartproxy::kernel::Kernel;
use smartproxy::model::Model;
use smartproxy::nft::listing;
use smartproxy::state;

/// The state directory, created and exported once, before any test reads state.
fn state_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("smartproxy-fake-state-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        // Set once, before any other thread of this binary reads the environment through
        // smartproxy (every test calls `model` first, which gets here first).
        std::env::set_var("SMARTPROXY_STATE_DIR", &dir);
        dir
    })
}

/// One route forwarding tcp `port` to `target:target_port`.
fn route(name: &str, port: u16, target: &str, target_port: u16) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\n[routes.match]\nports = {port}\n[routes.action]\ntargets = [{{ host = \"{target}\", port = {target_port} }}]\n"
    )
}

/// The model of a route file for table `table` with `routes`, loaded and lowered offline.
fn model(table: &str, routes: &[String]) -> Model {
    model_of(&format!(
        "[settings]\ntable = \"{table}\"\n{}",
        routes.concat()
    ))
}

/// The model of one route file's text, loaded and lowered offline.
fn model_of(text: &str) -> Model {
    state_dir();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, text).expect("write the route file");
    let loaded = smartproxy::config::load(std::slice::from_ref(&path));
    let config = loaded
        .config
        .unwrap_or_else(|| panic!("the route file loads: {:?}", loaded.diagnostics));
    let resolver = smartproxy::lower::StaticResolver::default();
    smartproxy::lower::lower(&config, &resolver).expect("the routes lower")
}

fn web() -> String {
    route("web", 80, "198.51.100.2", 8080)
}

fn api(target: &str) -> String {
    route("api", 443, target, 8443)
}

fn listed(k: &FakeKernel, table: &str) -> Option<String> {
    k.list_table(table).expect("the fake lists")
}

/// (packets, bytes) of counter `c_<route>` in the dump.
fn counter(k: &FakeKernel, table: &str, route: &str) -> Option<(u64, u64)> {
    let dump = k.dump_table(table).expect("dumps")?;
    let at = dump.find(&format!("\tcounter c_{route} {{"))?;
    let line = dump[at..]
        .lines()
        .find(|l| l.trim().starts_with("packets "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    Some((words[1].parse().ok()?, words[3].parse().ok()?))
}

#[test]
fn converge_creates_the_table_and_a_second_converge_is_a_no_op() {
    let k = FakeKernel::new();
    let m = model("fk_create", &[web(), api("198.51.100.3")]);
    let first = converge::converge(&k, &m).expect("converges");
    assert!(!first.existed);
    assert_eq!(first.summary.add, 2, "{:?}", first.changes);
    assert_eq!(k.transactions().len(), 1);
    let text = listed(&k, "fk_create").expect("the table exists");
    let parsed = listing::parse(&text);
    assert!(parsed.routes.contains_key("web") && parsed.routes.contains_key("api"));
    assert!(text.contains("dnat ip to 198.51.100.3:8443"), "{text}");
    let generation = k.generation();

    let second = converge::converge(&k, &m).expect("converges");
    assert!(second.existed);
    assert!(second.changes.is_empty(), "{:?}", second.changes);
    assert_eq!(
        (
            second.summary.add,
            second.summary.change,
            second.summary.destroy
        ),
        (0, 0, 0)
    );
    assert_eq!(k.transactions().len(), 1, "no second transaction");
    assert_eq!(k.generation(), generation);
    assert_eq!(listed(&k, "fk_create").as_deref(), Some(text.as_str()));
}

#[test]
fn changing_one_route_is_one_transaction_of_its_objects_and_other_counters_survive() {
    let k = FakeKernel::new();
    let t = "fk_incr";
    converge::converge(&k, &model(t, &[web(), api("198.51.100.3")])).expect("converges");
    assert!(k.set_counter(t, "c_web", 1234, 567_890));
    assert!(k.set_counter(t, "c_api", 7, 700));

    let changed =
        converge::converge(&k, &model(t, &[web(), api("198.51.100.4")])).expect("converges");
    assert!(changed.existed);
    assert_eq!(changed.summary.change, 1, "{:?}", changed.changes);
    let txs = k.transactions();
    assert_eq!(txs.len(), 2, "one more transaction");
    let tx = &txs[1];
    assert!(!tx.contains("web"), "only api's objects:\n{tx}");
    assert!(
        !tx.contains("delete table"),
        "incremental, not a reload:\n{tx}"
    );
    assert!(tx.contains("api"), "{tx}");
    assert!(tx.contains("198.51.100.4:8443"), "{tx}");
    assert_eq!(counter(&k, t, "web"), Some((1234, 567_890)));
    assert_eq!(
        counter(&k, t, "api"),
        Some((7, 700)),
        "its counter is kept too"
    );
    let text = listed(&k, t).expect("exists");
    assert!(!text.contains("198.51.100.3"), "{text}");
}

#[test]
fn a_refused_transaction_leaves_kernel_record_and_generation_as_they_were() {
    let k = FakeKernel::new();
    let t = "fk_refused";
    converge::converge(&k, &model(t, &[web(), api("198.51.100.3")])).expect("converges");
    let before = (listed(&k, t), state::read(t, "applied"), k.generation());
    assert!(
        before.1.is_some(),
        "the first converge recorded what it applied"
    );

    k.fail_next("Error: Could not process rule: Cannot allocate memory");
    let err = converge::converge(&k, &model(t, &[web(), api("198.51.100.9")]))
        .expect_err("the kernel refuses");
    let text = err.to_string();
    assert!(text.contains("Cannot allocate memory"), "{text}");
    assert_eq!(
        (listed(&k, t), state::read(t, "applied"), k.generation()),
        before
    );
    assert_eq!(k.transactions().len(), 1);

    // The next converge (nothing failing) gets there.
    converge::converge(&k, &model(t, &[web(), api("198.51.100.9")])).expect("converges");
    assert!(listed(&k, t).expect("exists").contains("198.51.100.9:8443"));
}

#[test]
fn remove_table_removes_the_table_and_its_record_once() {
    let k = FakeKernel::new();
    let t = "fk_remove";
    converge::converge(&k, &model(t, &[web()])).expect("converges");
    assert!(state::read(t, "applied").is_some());
    assert!(converge::remove_table(&k, t).expect("removes"));
    assert_eq!(listed(&k, t), None);
    assert_eq!(state::read(t, "applied"), None);
    let count = k.transactions().len();
    assert!(!converge::remove_table(&k, t).expect("nothing to remove"));
    assert_eq!(
        k.transactions().len(),
        count,
        "no transaction for an absent table"
    );
}

#[test]
fn a_script_that_touches_another_table_never_reaches_the_kernel() {
    let k = FakeKernel::new();
    let t = "fk_guard";
    let m = model(t, &[web()]);
    converge::converge(&k, &m).expect("converges");
    k.run("table inet other {\n}\n")
        .expect("a table of someone else");
    let (count, generation) = (k.transactions().len(), k.generation());

    let err = converge::run_guarded(&k, t, "delete table inet other\n").expect_err("refused");
    assert!(
        matches!(err, converge::RunError::Guard(_)),
        "the guard, not the kernel: {err}"
    );
    // The commit step of the flow guards the same way, whatever script it is handed.
    let m2 = model(t, &[web(), api("198.51.100.3")]);
    let planned = converge::plan(&k, &m2, converge::render(&m2).expect("renders")).expect("plans");
    let err = converge::commit(&k, &planned, "flush chain inet other x\n").expect_err("refused");
    assert!(err.to_string().contains("another table"), "{err}");
    assert_eq!(
        (k.transactions().len(), k.generation()),
        (count, generation)
    );
    assert!(listed(&k, "other").is_some());
}

#[test]
fn a_route_removed_from_the_files_goes_with_its_map_elements() {
    let k = FakeKernel::new();
    let t = "fk_gone";
    converge::converge(&k, &model(t, &[web(), api("198.51.100.3")])).expect("converges");
    let before = listing::parse(&listed(&k, t).expect("exists"));
    let api_unit = &before.routes["api"];
    assert!(!api_unit.elements.is_empty(), "api has map elements");
    k.set_counter(t, "c_web", 42, 4200);

    let r = converge::converge(&k, &model(t, &[web()])).expect("converges");
    assert_eq!(r.summary.destroy, 1, "{:?}", r.changes);
    let tx = k.transactions().last().cloned().expect("a transaction");
    assert!(tx.contains("delete element"), "{tx}");
    assert!(!tx.contains("delete table"), "{tx}");
    let text = listed(&k, t).expect("exists");
    let after = listing::parse(&text);
    assert!(!after.routes.contains_key("api"), "{text}");
    for (map, element) in &api_unit.elements {
        assert!(
            !text.contains(element.as_str()),
            "{map} still holds {element}:\n{text}"
        );
    }
    assert!(!text.contains("_api"), "{text}");
    assert_eq!(counter(&k, t, "web"), Some((42, 4200)));
}

#[test]
fn the_rollback_of_an_unconfirmed_apply_restores_the_table_and_its_counters() {
    let k = FakeKernel::new();
    let t = "fk_rollback";
    converge::converge(&k, &model(t, &[web(), api("198.51.100.3")])).expect("converges");
    k.set_counter(t, "c_web", 10, 1000);
    let before = listed(&k, t);

    // What `apply --confirm` does: plan, keep the undo, commit.
    let next = model(t, &[web(), api("198.51.100.5")]);
    let planned =
        converge::plan(&k, &next, converge::render(&next).expect("renders")).expect("plans");
    let undo = converge::rollback(&k, &planned).expect("an undo");
    let script = converge::transaction(&planned).expect("a transaction");
    converge::commit(&k, &planned, &script).expect("commits");
    assert!(listed(&k, t).expect("exists").contains("198.51.100.5"));
    k.set_counter(t, "c_web", 11, 1100);

    // Not confirmed: the quick inverse takes the table back to what it was.
    let quick = undo
        .rollback
        .quick
        .expect("an incremental apply has a quick inverse");
    converge::run_guarded(&k, t, &quick).expect("the inverse runs");
    assert_eq!(listed(&k, t), before);
    assert_eq!(
        counter(&k, t, "web"),
        Some((11, 1100)),
        "the inverse keeps counters"
    );
    // The full rollback reloads the dump taken before the apply, counters as they were.
    converge::run_guarded(&k, t, &undo.rollback.full).expect("the dump reloads");
    assert_eq!(listed(&k, t), before);
    assert_eq!(counter(&k, t, "web"), Some((10, 1000)));
}

#[test]
fn a_table_left_by_an_earlier_run_is_adopted_without_a_transaction() {
    let k = FakeKernel::new();
    let t = "fk_adopt";
    let m = model(t, &[web(), api("198.51.100.3")]);
    // Loaded by someone else (a previous serve), with no state of ours about it.
    k.run(&converge::render(&m).expect("renders"))
        .expect("loads");
    k.set_counter(t, "c_api", 3, 30);
    let count = k.transactions().len();
    let r = converge::converge(&k, &m).expect("converges");
    assert!(r.existed);
    assert!(r.changes.is_empty(), "{:?}", r.changes);
    assert_eq!(k.transactions().len(), count);
    assert_eq!(counter(&k, t, "api"), Some((3, 30)));
}

/// Arms the confirm window of `planned` as `apply --confirm-timeout` does, with the
/// watchdog on a thread of this process over the same fake kernel; returns its handle.
fn arm_on_thread(
    k: &std::sync::Arc<FakeKernel>,
    planned: &converge::Planned,
    secs: u64,
) -> (
    smartproxy::confirm::Armed,
    std::thread::JoinHandle<Result<(), smartproxy::confirm::Error>>,
) {
    let undo = converge::rollback(&**k, planned).expect("an undo");
    let table = planned.plan.table.clone();
    let mut handle = None;
    let armed = smartproxy::confirm::arm_watchdog(
        &table,
        secs,
        &undo.rollback,
        undo.previous_applied.as_deref(),
        |table, token, deadline| {
            let (tx, rx) = std::sync::mpsc::channel();
            let (k, table, token) = (k.clone(), table.to_owned(), token.to_owned());
            handle = Some(std::thread::spawn(move || {
                smartproxy::confirm::watchdog(&*k, &table, &token, deadline, |pid, start| {
                    let _ = tx.send((pid, start));
                })
            }));
            rx.recv().map_err(|e| e.to_string())
        },
    )
    .expect("arms");
    (armed, handle.expect("the watchdog started"))
}

#[test]
fn an_unconfirmed_apply_is_rolled_back_by_its_watchdog_at_the_deadline() {
    let k = std::sync::Arc::new(FakeKernel::new());
    let t = "fk_deadline";
    converge::converge(&*k, &model(t, &[web(), api("198.51.100.3")])).expect("converges");
    k.set_counter(t, "c_web", 7, 700);
    let before = listed(&k, t);
    let applied_before = state::read(t, "applied");

    let next = model(t, &[web(), api("198.51.100.9")]);
    let planned =
        converge::plan(&*k, &next, converge::render(&next).expect("renders")).expect("plans");
    let (armed, watchdog) = arm_on_thread(&k, &planned, 60);
    let script = converge::transaction(&planned).expect("a transaction");
    converge::commit(&*k, &planned, &script).expect("commits");
    assert!(listed(&k, t).expect("exists").contains("198.51.100.9"));
    let pending = smartproxy::confirm::pending(t).expect("a confirm is pending");
    assert!(pending.watchdog_running, "{pending:?}");
    // The window starts after the commit; a second is enough for the test.
    smartproxy::confirm::start_window(t, &armed, 1).expect("the window starts");
    let refused = smartproxy::confirm::refuse_apply(t).expect_err("apply waits for the confirm");
    assert!(
        refused.to_string().contains("awaits `smartproxy confirm`"),
        "{refused}"
    );

    watchdog
        .join()
        .expect("the watchdog thread")
        .expect("it rolled back");
    assert_eq!(listed(&k, t), before, "the table is as before the apply");
    assert_eq!(counter(&k, t, "web"), Some((7, 700)));
    assert_eq!(state::read(t, "applied"), applied_before);
    assert!(smartproxy::confirm::pending(t).is_none());
    assert!(state::read(t, "rolledback")
        .expect("how the window ended")
        .contains("not confirmed in time"));
}

#[test]
fn a_confirmed_apply_stays_and_its_watchdog_exits_without_touching_the_kernel() {
    let k = std::sync::Arc::new(FakeKernel::new());
    let t = "fk_confirmed";
    converge::converge(&*k, &model(t, &[web()])).expect("converges");
    let next = model(t, &[web(), api("198.51.100.3")]);
    let planned =
        converge::plan(&*k, &next, converge::render(&next).expect("renders")).expect("plans");
    let (armed, watchdog) = arm_on_thread(&k, &planned, 60);
    let script = converge::transaction(&planned).expect("a transaction");
    converge::commit(&*k, &planned, &script).expect("commits");
    smartproxy::confirm::start_window(t, &armed, 60).expect("the window starts");
    let after = listed(&k, t);
    let commits = k.transactions().len();

    smartproxy::confirm::confirm(t).expect("confirms");
    watchdog
        .join()
        .expect("the watchdog thread")
        .expect("it ends");
    assert_eq!(k.transactions().len(), commits, "no rollback ran");
    assert_eq!(listed(&k, t), after);
    assert!(smartproxy::confirm::pending(t).is_none());
    let late = smartproxy::confirm::rollback(&*k, t).expect_err("nothing left to roll back");
    assert!(late.to_string().contains("too late"), "{late}");
}

/// Per route: the (kind, name) of its objects and the maps of its elements.
type Shape = Vec<(String, Vec<(String, String)>, Vec<String>)>;

fn shape(text: &str) -> Shape {
    let l = listing::parse(text);
    l.routes
        .iter()
        .map(|(name, unit)| {
            let objects = unit.objects.keys().cloned().collect();
            let mut maps: Vec<String> = unit.elements.iter().map(|(m, _)| m.clone()).collect();
            maps.sort();
            (name.clone(), objects, maps)
        })
        .collect()
}

/// The incremental transaction from `live` to the table `normalised` lists, and the routes
/// it changes.
fn step(table: &str, script: &str, normalised: String, live: String) -> (String, Vec<String>) {
    let plan = smartproxy::plan::plan(
        table,
        script.to_owned(),
        normalised,
        Some(live),
        None,
        Vec::new(),
    );
    let changes = plan.changes.iter().map(|c| c.unit.clone()).collect();
    (smartproxy::apply::transaction(&plan), changes)
}

#[test]
fn the_fake_agrees_with_nft_on_a_full_load_and_an_incremental_change() {
    if !common::netns_available("the_fake_agrees_with_nft_on_a_full_load_and_an_incremental_change")
    {
        return;
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for example in [
        "weighted.toml",
        "security-limits.toml",
        "ipv6.toml",
        "dns-udp.toml",
    ] {
        let text = std::fs::read_to_string(examples.join(example)).expect("the example");
        let v1 = model_of(&text);
        let changed = format!(
            "{}{}",
            text.replace("198.51.100.3", "198.51.100.7"),
            route("extra", 7777, "198.51.100.8", 7778)
        );
        let v2 = model_of(&changed);
        let table = v1.table.clone();
        let (s1, s2) = (
            converge::render(&v1).expect("renders"),
            converge::render(&v2).expect("renders"),
        );

        // The real kernel: a fresh namespace, and a scratch one for normalisation.
        let ns = common::Netns::new("fake-agree");
        let scratch = common::Netns::new("fake-norm");
        ns.nft_ok(&["-f", "-"], Some(&s1));
        let real_live = ns.nft_ok(&["-s", "list", "table", "inet", &table], None);
        scratch.nft_ok(&["-f", "-"], Some(&s2));
        let real_desired = scratch.nft_ok(&["-s", "list", "table", "inet", &table], None);
        let (real_tx, real_changes) = step(&table, &s2, real_desired.clone(), real_live.clone());
        ns.nft_ok(&["-f", "-"], Some(&real_tx));
        let real_after = ns.nft_ok(&["-s", "list", "table", "inet", &table], None);

        // The fake, the same way.
        let k = FakeKernel::new();
        k.run(&s1).expect("the fake loads it");
        let fake_live = listed(&k, &table).expect("exists");
        let fake_desired = k.normalise(&s2, &table).expect("normalises");
        let (fake_tx, fake_changes) = step(&table, &s2, fake_desired.clone(), fake_live.clone());
        k.run(&fake_tx).unwrap_or_else(|e| {
            panic!("{example}: the fake refuses what nft took: {e}\n{fake_tx}")
        });
        let fake_after = listed(&k, &table).expect("exists");

        assert_eq!(shape(&fake_live), shape(&real_live), "{example}: full load");
        assert!(
            !real_changes.is_empty(),
            "{example}: the change changes something"
        );
        assert_eq!(
            fake_changes, real_changes,
            "{example}: the same routes change"
        );
        assert_eq!(
            shape(&fake_after),
            shape(&real_after),
            "{example}: after the change"
        );
        assert_eq!(shape(&fake_after), shape(&fake_desired), "{example}");
        assert_eq!(
            listing::parse(&fake_after)
                .table
                .iter()
                .map(|o| (&o.kind, &o.name))
                .collect::<Vec<_>>(),
            listing::parse(&real_after)
                .table
                .iter()
                .map(|o| (&o.kind, &o.name))
                .collect::<Vec<_>>(),
            "{example}: table-level objects"
        );
    }
}

#[test]
fn status_reads_counters_and_active_connections_through_the_fake() {
    let k = FakeKernel::new();
    let t = "fk_status";
    assert!(smartproxy::status::kernel_counts(&k, t)
        .expect("an absent table is no error")
        .is_empty());
    converge::converge(&k, &model(t, &[web(), api("198.51.100.3")])).expect("converges");
    k.set_counter(t, "c_web", 12, 3400);
    let parsed = listing::parse(&listed(&k, t).expect("exists"));
    let mark = |route: &str| {
        let hex = parsed.routes[route]
            .mark
            .clone()
            .expect("a route_filter mark");
        u32::from_str_radix(hex.trim_start_matches("0x"), 16).expect("a hex mark")
    };
    let (web_mark, api_mark) = (mark("web"), mark("api"));
    assert_ne!(web_mark, api_mark);
    k.set_conntrack(Some(&format!(
        "tcp 6 431999 ESTABLISHED src=192.0.2.1 dst=192.0.2.9 sport=1 dport=80 mark={web_mark} use=1\n\
         tcp 6 431999 ESTABLISHED src=192.0.2.2 dst=192.0.2.9 sport=2 dport=80 mark={web_mark} use=1\n\
         tcp 6 100 TIME_WAIT src=192.0.2.3 dst=192.0.2.9 sport=3 dport=443 mark={api_mark} use=1\n"
    )));
    let counts = smartproxy::status::kernel_counts(&k, t).expect("counts");
    let web = &counts["web"];
    assert_eq!((web.packets, web.bytes, web.active), (12, 3400, 2));
    let api = &counts["api"];
    assert_eq!(
        (api.packets, api.bytes, api.active),
        (0, 0, 0),
        "TIME_WAIT is over"
    );
}

#[test]
fn a_foreign_drop_chain_is_a_warning_of_the_converge() {
    let k = FakeKernel::new();
    let t = "fk_preflight";
    k.run("table ip fk_firewall {\n\tchain input {\n\t\ttype filter hook input priority 0; policy drop;\n\t}\n\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n\t}\n}\n")
        .expect("someone else's firewall");
    let r = converge::converge(&k, &model(t, &[web()])).expect("converges");
    let found: Vec<&String> = r
        .warnings
        .iter()
        .filter(|w| w.contains("table ip fk_firewall"))
        .collect();
    assert_eq!(found.len(), 1, "{:?}", r.warnings);
    assert!(
        found[0].contains("`input` on hook input with policy drop"),
        "{found:?}"
    );
}
