//! serve's kernel side through the transactional `FakeKernel`: no root, no `nft`. Adoption,
//! an incremental reload, a reload the kernel refuses (the table stays, nft's message is
//! logged), and health-driven changes, through `serve::provision::Provisioner` and through
//! a whole serve driven by a signal channel.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use smartproxy::kernel::fake::FakeKernel;
use smartproxy::kernel::Kernel;
use smartproxy::plan::Summary;
use smartproxy::serve::kernel::{Carrier, Mode};
use smartproxy::serve::load::{load, Loaded};
use smartproxy::serve::provision::{Provisioned, Provisioner};
use smartproxy::serve::{self, Signal};

/// Each test binary's own state directory (locks, records, status sockets).
fn private_state() {
    static STATE: Once = Once::new();
    STATE.call_once(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        std::env::set_var("SMARTPROXY_STATE_DIR", dir);
    });
}

/// Everything serve logs in this binary (tests look for their own table's lines).
fn log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let _ = tracing_subscriber::fmt()
            .with_writer(move || Capture(buffer))
            .with_ansi(false)
            .with_target(false)
            .try_init();
        buffer
    })
}

struct Capture(&'static Mutex<Vec<u8>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> String {
    String::from_utf8_lossy(&log().lock().expect("log")).into_owned()
}

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    within(what, Duration::from_secs(20), done);
}

fn route(name: &str, port: u16, targets: &[&str]) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|t| {
            let (host, port) = t.rsplit_once(':').expect("host:port");
            format!("{{ host = \"{host}\", port = {port} }}")
        })
        .collect();
    format!(
        "\n[[routes]]\nname = \"{name}\"\n[routes.match]\nports = [{port}]\n\
         [routes.action]\nforwarding_engine = \"nftables\"\ntargets = [{}]\n",
        targets.join(", ")
    )
}

/// A route file for `table` in its own directory.
struct Files {
    _dir: tempfile::TempDir,
    path: PathBuf,
    table: String,
}

impl Files {
    fn new(table: &str, routes: &str) -> Files {
        private_state();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("routes.toml");
        let files = Files {
            _dir: dir,
            path,
            table: table.to_owned(),
        };
        files.write(routes);
        files
    }

    fn write(&self, routes: &str) {
        let text = format!("[settings]\ntable = \"{}\"\n{routes}", self.table);
        std::fs::write(&self.path, text).expect("write routes");
    }

    fn load(&self) -> Loaded {
        load(std::slice::from_ref(&self.path), Carrier::Kernel).expect("the route files load")
    }
}

fn provisioner(kernel: &Arc<FakeKernel>) -> Provisioner {
    Provisioner::new(kernel.clone(), Carrier::Kernel)
}

fn table(kernel: &FakeKernel, name: &str) -> Option<String> {
    kernel.list_table(name).expect("the fake lists")
}

/// A listing's lines in order: the same objects whatever order the chains were made in.
fn sorted_lines(listing: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = listing.lines().collect();
    lines.sort_unstable();
    lines
}

const NONE_DOWN: &BTreeSet<SocketAddr> = &BTreeSet::new();

#[test]
fn serve_adopts_a_table_converged_from_the_same_files_without_a_transaction() {
    let files = Files::new("sf_adopt", &route("web", 8001, &["198.51.100.2:80"]));
    let loaded = files.load();
    let kernel = Arc::new(FakeKernel::new());
    smartproxy::converge::converge(&*kernel, loaded.model()).expect("applied before serve");
    let before = kernel.transactions();
    assert_eq!(before.len(), 1, "{before:?}");
    let listed = table(&kernel, "sf_adopt");

    let done = provisioner(&kernel)
        .provision(loaded.model(), NONE_DOWN, true)
        .expect("adopts");
    assert_eq!(done, Provisioned::Adopted(Summary::default()));
    assert_eq!(kernel.transactions(), before, "adoption commits nothing");
    assert_eq!(table(&kernel, "sf_adopt"), listed);
}

#[test]
fn a_reload_with_changed_files_is_one_incremental_transaction() {
    let files = Files::new("sf_reload", &route("web", 8001, &["198.51.100.2:80"]));
    let kernel = Arc::new(FakeKernel::new());
    let p = provisioner(&kernel);
    let first = p
        .provision(files.load().model(), NONE_DOWN, true)
        .expect("provisions");
    assert!(matches!(first, Provisioned::Changed { .. }), "{first:?}");
    assert_eq!(kernel.transactions().len(), 1);

    files.write(
        &(route("web", 8001, &["198.51.100.2:80"]) + &route("api", 8002, &["198.51.100.3:80"])),
    );
    let done = p
        .provision(files.load().model(), NONE_DOWN, false)
        .expect("reloads");
    let Provisioned::Changed { summary, changes } = done else {
        panic!("a reload with a new route changes the table: {done:?}");
    };
    assert_eq!(summary.add, 1, "{changes:?}");
    assert_eq!(summary.destroy, 0, "{changes:?}");
    assert!(changes.iter().any(|c| c.contains("api")), "{changes:?}");
    assert!(!changes.iter().any(|c| c.contains("web")), "{changes:?}");
    let transactions = kernel.transactions();
    assert_eq!(
        transactions.len(),
        2,
        "one more transaction: {transactions:?}"
    );
    assert!(
        !transactions[1].contains("delete table") && !transactions[1].contains("flush table"),
        "incremental, not a new table:\n{}",
        transactions[1]
    );
    let listed = table(&kernel, "sf_reload").expect("the table is there");
    assert!(listed.contains("198.51.100.3"), "{listed}");

    // The same files again: nothing to do.
    let again = p
        .provision(files.load().model(), NONE_DOWN, false)
        .expect("reloads");
    assert_eq!(again, Provisioned::Unchanged);
    assert_eq!(kernel.transactions().len(), 2);
}

const REFUSAL: &str = "Error: Could not process rule: No buffer space available (sf_refused)";

#[test]
fn a_reload_the_kernel_refuses_keeps_the_table_and_names_nfts_message() {
    let files = Files::new("sf_refused", &route("web", 8001, &["198.51.100.2:80"]));
    let kernel = Arc::new(FakeKernel::new());
    let p = provisioner(&kernel);
    p.provision(files.load().model(), NONE_DOWN, true)
        .expect("provisions");
    let listed = table(&kernel, "sf_refused");
    let committed = kernel.transactions();

    files.write(&route("web", 8001, &["198.51.100.9:80"]));
    kernel.fail_next(REFUSAL);
    let e = p
        .provision(files.load().model(), NONE_DOWN, false)
        .expect_err("the kernel refuses");
    assert!(serve::chain(&e).contains(REFUSAL), "{}", serve::chain(&e));
    assert_eq!(
        table(&kernel, "sf_refused"),
        listed,
        "the table is as it was"
    );
    assert_eq!(kernel.transactions(), committed);
    // The kernel takes the next one.
    assert!(p.provision(files.load().model(), NONE_DOWN, false).is_ok());
    let now = table(&kernel, "sf_refused").expect("the table is there");
    assert!(now.contains("198.51.100.9"), "{now}");
}

#[test]
fn a_target_going_down_leaves_the_table_and_coming_back_returns() {
    let a = "198.51.100.2:80";
    let b = "198.51.100.3:80";
    let files = Files::new("sf_health", &route("web", 8001, &[a, b]));
    let kernel = Arc::new(FakeKernel::new());
    let p = provisioner(&kernel);
    let model = files.load().model().clone();
    p.provision(&model, NONE_DOWN, true).expect("provisions");
    let both = table(&kernel, "sf_health").expect("the table is there");
    assert!(
        both.contains("198.51.100.2") && both.contains("198.51.100.3"),
        "{both}"
    );

    let down: BTreeSet<SocketAddr> = [a.parse().expect("addr")].into();
    let done = p.provision(&model, &down, false).expect("re-provisions");
    assert!(matches!(done, Provisioned::Changed { .. }), "{done:?}");
    let one = table(&kernel, "sf_health").expect("the table is there");
    assert!(
        !one.contains("198.51.100.2"),
        "the dead target is gone:\n{one}"
    );
    assert!(one.contains("198.51.100.3"), "{one}");

    let done = p
        .provision(&model, NONE_DOWN, false)
        .expect("re-provisions");
    assert!(matches!(done, Provisioned::Changed { .. }), "{done:?}");
    // The same objects; nft, like the fake, lists re-made chains last.
    let back = table(&kernel, "sf_health").expect("the table is there");
    assert_eq!(
        sorted_lines(&back),
        sorted_lines(&both),
        "restored:\n{back}"
    );
    assert_eq!(kernel.transactions().len(), 3);
}

#[test]
fn kernel_routes_are_not_provisioned_when_the_kernel_does_not_carry_them() {
    let files = Files::new("sf_off", &route("web", 8001, &["198.51.100.2:80"]));
    let kernel = Arc::new(FakeKernel::new());
    let p = Provisioner::new(kernel.clone(), Carrier::Fallback);
    let done = p
        .provision(files.load().model(), NONE_DOWN, true)
        .expect("nothing to do");
    assert_eq!(done, Provisioned::NotCarried);
    assert!(kernel.transactions().is_empty());
}

fn options(files: &Files, health: serve::health::Options) -> serve::Options {
    serve::Options {
        log_color: false,
        paths: vec![files.path.clone()],
        metrics: None,
        hello_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_millis(200),
        watch_interval: Duration::ZERO,
        nftables: Mode::On,
        keep_kernel_routes: false,
        health,
        socket_group: None,
    }
}

/// Health options without checks (the tests that do not exercise health).
fn no_checks() -> serve::health::Options {
    serve::health::Options {
        interval: Duration::ZERO,
        ..serve::health::Options::default()
    }
}

/// A whole serve of `files` on a thread, through `kernel`, driven by the returned sender.
fn start(
    files: &Files,
    kernel: &Arc<FakeKernel>,
    health: serve::health::Options,
) -> (
    tokio::sync::mpsc::UnboundedSender<Signal>,
    std::thread::JoinHandle<Result<(), serve::Error>>,
) {
    log();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let options = options(files, health);
    let kernel: Arc<dyn Kernel + Send + Sync> = kernel.clone();
    let serving = std::thread::spawn(move || serve::run_with_signals(options, kernel, rx));
    (tx, serving)
}

#[test]
fn a_refused_reload_logs_nfts_own_message_and_serve_keeps_going() {
    let files = Files::new("sf_logged", &route("web", 8001, &["198.51.100.2:80"]));
    let kernel = Arc::new(FakeKernel::new());
    let (signals, serving) = start(&files, &kernel, no_checks());
    wait_until("the first provisioning", || {
        kernel.transactions().len() == 1
    });
    let listed = table(&kernel, "sf_logged");

    files.write(&route("web", 8001, &["198.51.100.9:80"]));
    let refusal = "Error: Could not process rule: Device or resource busy (sf_logged)";
    kernel.fail_next(refusal);
    signals.send(Signal::Reload).expect("serve listens");
    wait_until("the refused reload's log line", || {
        let log = logged();
        log.find("reload: the kernel routes were not changed")
            .is_some_and(|at| log[at..].contains(refusal))
    });
    assert_eq!(
        table(&kernel, "sf_logged"),
        listed,
        "the table is as it was"
    );
    assert_eq!(kernel.transactions().len(), 1);

    signals.send(Signal::Reload).expect("serve listens");
    wait_until("the next reload", || kernel.transactions().len() == 2);
    let now = table(&kernel, "sf_logged").expect("the table is there");
    assert!(now.contains("198.51.100.9"), "{now}");

    signals.send(Signal::Stop).expect("serve listens");
    serving
        .join()
        .expect("serve ran")
        .expect("serve stopped cleanly");
    assert_eq!(
        table(&kernel, "sf_logged"),
        None,
        "the stop removed the table"
    );
    assert!(!smartproxy::status::socket_path("sf_logged").exists());
}

/// A port of this host nobody listens on (for now).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn health_checks_take_a_dead_target_out_of_the_kernel_table_and_bring_it_back() {
    // A service on this host (a `redirect` rule), checked on loopback: refused while
    // nothing listens on its port, answered once something does.
    let port = free_port();
    let files = Files::new(
        "sf_checked",
        &route("web", 8001, &[&format!("127.0.0.1:{port}")]),
    );
    let redirect = format!("redirect to :{port}");
    let kernel = Arc::new(FakeKernel::new());
    let fast = serve::health::Options {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
        rise: 1,
        fall: 1,
    };
    let (signals, serving) = start(&files, &kernel, fast);
    let listed = || table(&kernel, "sf_checked").unwrap_or_default();
    // The first check may take the target out within 50 ms of the first provisioning:
    // look at what was committed, not at the table now.
    wait_until("the first provisioning", || {
        kernel
            .transactions()
            .first()
            .is_some_and(|t| t.contains(&redirect))
    });
    wait_until("the dead target leaving the table", || {
        !listed().contains(&redirect) && listed().contains("table inet sf_checked")
    });
    let at_down = kernel.transactions().len();
    assert!(at_down >= 2, "{at_down}");

    let _v4 = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the target");
    let _v6 = std::net::TcpListener::bind(("::1", port));
    wait_until("the target back in the table", || {
        listed().contains(&redirect)
    });
    assert!(kernel.transactions().len() > at_down);

    signals.send(Signal::Stop).expect("serve listens");
    serving
        .join()
        .expect("serve ran")
        .expect("serve stopped cleanly");
    assert_eq!(table(&kernel, "sf_checked"), None);
}

#[test]
fn nftables_on_refuses_to_start_when_the_kernel_says_it_cannot() {
    let files = Files::new("sf_nocap", &route("web", 8001, &["198.51.100.2:80"]));
    let kernel = Arc::new(FakeKernel::new());
    kernel.set_capability(Err("`nft` is not installed (sf_nocap)".to_owned()));
    let (_signals, serving) = start(&files, &kernel, serve::health::Options::default());
    let e = serving
        .join()
        .expect("serve ran")
        .expect_err("serve refuses");
    assert!(matches!(e, serve::Error::Nftables(_)), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("--nftables on: `nft` is not installed (sf_nocap)"),
        "{e}"
    );
    assert!(kernel.transactions().is_empty());
    assert_eq!(table(&kernel, "sf_nocap"), None);
}

/// Waits at most `within` for `done` (the reconcile's promise: about 2 s).
fn within(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < within,
            "not within {within:?}: {what}:\n{}",
            logged()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn serve_puts_its_table_back_when_someone_deletes_flushes_or_edits_it_and_leaves_others_alone() {
    let files = Files::new("sf_heal", &route("web", 8001, &["198.51.100.2:80"]));
    let kernel = Arc::new(FakeKernel::new());
    let foreign_table = "table inet sf_foreign {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 22 accept\n\t}\n}\n";
    kernel.run(foreign_table).expect("a foreign table");
    let foreign = table(&kernel, "sf_foreign");
    let (signals, serving) = start(&files, &kernel, no_checks());
    wait_until("the first provisioning", || {
        table(&kernel, "sf_heal").is_some()
    });
    let good = table(&kernel, "sf_heal").expect("provisioned");
    let limit = Duration::from_secs(3);

    kernel
        .run("delete table inet sf_heal\n")
        .expect("deleted by hand");
    let took = within("the deleted table is back", limit, || {
        table(&kernel, "sf_heal").as_ref() == Some(&good)
    });
    eprintln!("deleted -> back in {took:?}");
    wait_until("the reconcile's log line", || {
        logged().contains(
            "reconcile: table inet sf_heal was deleted outside serve; put back: + (table), + web",
        )
    });

    kernel
        .run("flush table inet sf_heal\n")
        .expect("flushed by hand");
    within("the flushed table is whole again", limit, || {
        table(&kernel, "sf_heal").as_ref() == Some(&good)
    });

    kernel
        .run("add rule inet sf_heal f_web drop\n")
        .expect("a rule added by hand");
    assert!(table(&kernel, "sf_heal")
        .expect("there")
        .contains("\t\tdrop\n"));
    within("the hand-made rule is gone", limit, || {
        table(&kernel, "sf_heal").as_ref() == Some(&good)
    });
    assert_eq!(
        table(&kernel, "sf_foreign"),
        foreign,
        "the foreign table is untouched"
    );

    // A change to another table only: serve looks, finds its own table as it should be,
    // and commits nothing.
    let commits = kernel.transactions().len();
    kernel
        .run("add chain inet sf_foreign other\n")
        .expect("a foreign change");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        kernel.transactions().len(),
        commits + 1,
        "serve committed nothing"
    );
    assert!(table(&kernel, "sf_foreign")
        .expect("there")
        .contains("chain other"));

    signals.send(Signal::Stop).expect("serve listens");
    serving
        .join()
        .expect("the serve thread")
        .expect("serve stops cleanly");
    assert!(
        table(&kernel, "sf_heal").is_none(),
        "serve removed its table on stop"
    );
    assert!(table(&kernel, "sf_foreign").is_some());
}

#[test]
fn a_reconcile_the_kernel_refuses_is_logged_and_retried() {
    let files = Files::new("sf_retry", &route("web", 8001, &["198.51.100.2:80"]));
    let kernel = Arc::new(FakeKernel::new());
    let (signals, serving) = start(&files, &kernel, no_checks());
    wait_until("the first provisioning", || {
        table(&kernel, "sf_retry").is_some()
    });
    let good = table(&kernel, "sf_retry").expect("provisioned");
    kernel
        .run("delete table inet sf_retry\n")
        .expect("deleted by hand");
    let refusal = "Error: Could not process rule: Cannot allocate memory (sf_retry)";
    kernel.fail_next(refusal);
    wait_until("the refused reconcile's log line", || {
        let log = logged();
        log.find("reconcile: could not put table inet sf_retry back")
            .is_some_and(|at| log[at..].contains(refusal))
    });
    // The next try (after a pause of 2 s) puts it back.
    within(
        "the table is back on the next try",
        Duration::from_secs(6),
        || table(&kernel, "sf_retry").as_ref() == Some(&good),
    );
    signals.send(Signal::Stop).expect("serve listens");
    serving
        .join()
        .expect("the serve thread")
        .expect("serve stops cleanly");
}
