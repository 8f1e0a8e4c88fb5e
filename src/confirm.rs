//! The confirm window of `apply --confirm-timeout`: the pending record, the detached
//! watchdog that rolls back at the deadline, and what the `confirm` and `rollback` commands
//! do (their flows and output are `crate::cmd::confirm`'s). Prints nothing.
//!
//! State files of a table (all through [`crate::state`]):
//! - `pending`: the window's token, its deadline and the watchdog's pid and start time. It
//!   is there while a confirm is pending, whether or not the watchdog still runs, so
//!   `status`, `plan`, `apply`, `confirm` and `rollback` all see it.
//! - `rollback.nft`, `rollback-quick.nft`, `rollback.fingerprint`, `applied.prev`: what a
//!   rollback restores. Written before the watchdog starts; it reads them into memory then.
//! - `settled`: the tokens of windows ended on purpose (confirm, rollback, destroy, a
//!   refused commit). A watchdog whose `pending` vanished without its token there (the state
//!   directory was deleted) writes its record back and still rolls back at the deadline.
//! - `rolledback`: how the last window ended in a rollback (for a late `confirm`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::kernel::Kernel;
use crate::plan;
use crate::state;

/// Why a confirm-window step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] state::StateError),
    /// Arming failed before the commit: nothing was applied.
    #[error("{what}: {why}; nothing was applied")]
    NotArmed { what: &'static str, why: String },
    #[error("nothing to {what}: no apply awaits confirmation in this network namespace{late}")]
    NothingPending { what: &'static str, late: String },
    /// An earlier apply awaits its confirm: apply must not touch the table now.
    #[error("{0}; nothing was applied")]
    Pending(String),
    #[error("too late: {0}")]
    TooLate(String),
    #[error(
        "the rollback of table inet {0} is missing from the state directory; nothing was changed (`smartproxy confirm` keeps the applied ruleset)"
    )]
    Missing(String),
    #[error("cannot confirm table inet {table}: {source}")]
    Settle {
        table: String,
        #[source]
        source: state::StateError,
    },
    #[error("the kernel refused the rollback of table inet {table}; the confirm is still pending:\n{why}")]
    Refused { table: String, why: String },
    /// The watchdog's rollback failed (the record stays: `confirm` or `rollback` ends it).
    #[error("{0}")]
    Restore(String),
}

/// Tokens kept in `settled`: enough for any window a stopped watchdog may still wait on.
const SETTLED_KEPT: usize = 16;

/// How often the watchdog looks at its record.
const POLL: Duration = Duration::from_millis(100);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn deadline_in(secs: u64) -> u64 {
    now_ms().saturating_add(secs.saturating_mul(1000))
}

// ---------------------------------------------------------------- the pending record

/// A watchdog process: its pid and its start time (field 22 of `/proc/PID/stat`), so that
/// another process that got the pid later is not taken for it.
pub type Watchdog = (u32, u64);

/// `pending`: one line each for the token, the deadline (ms since the epoch; 0 or absent:
/// due now) and `PID START` of the watchdog (absent until it reported back).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    token: String,
    deadline_ms: u64,
    watchdog: Option<Watchdog>,
}

impl Record {
    fn render(&self) -> String {
        let mut out = format!("{}\n{}\n", self.token, self.deadline_ms);
        if let Some((pid, start)) = self.watchdog {
            out.push_str(&format!("{pid} {start}\n"));
        }
        out
    }

    fn parse(text: &str) -> Option<Record> {
        let mut lines = text.lines().map(str::trim);
        let token = lines.next().filter(|t| !t.is_empty())?.to_owned();
        let deadline_ms = lines.next().and_then(|d| d.parse().ok()).unwrap_or(0);
        let watchdog = lines.next().and_then(|l| {
            let (pid, start) = l.split_once(' ')?;
            Some((pid.parse().ok()?, start.parse().ok()?))
        });
        Some(Record {
            token,
            deadline_ms,
            watchdog,
        })
    }

    fn read(table: &str) -> Option<Record> {
        Record::parse(&state::read(table, "pending")?)
    }
}

/// The start time of process `pid`, unless it is gone or a zombie.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a `/proc/PID/stat` line; `None` for a zombie (field 3 `Z` or `X`). Field 2,
/// the command name in parentheses, may hold spaces and `)`: fields are counted after the
/// last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    if matches!(fields.first(), Some(&("Z" | "X"))) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn is_running(watchdog: Option<Watchdog>) -> bool {
    watchdog.is_some_and(|(pid, start)| start_time(pid) == Some(start))
}

/// A pending confirm as `status` shows it (also in its JSON).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingConfirm {
    /// When the watchdog rolls back, in ms since the epoch.
    pub deadline_ms: u64,
    pub watchdog_pid: Option<u32>,
    /// False: nothing will roll back by itself; `confirm` or `rollback` ends the window.
    pub watchdog_running: bool,
    /// The line status, plan and apply print about it.
    pub notice: String,
}

/// The pending confirm of `table`, if there is one.
pub fn pending(table: &str) -> Option<PendingConfirm> {
    let record = Record::read(table)?;
    let running = is_running(record.watchdog);
    let notice = if running {
        let secs = record.deadline_ms.saturating_sub(now_ms()).div_ceil(1000);
        format!(
            "pending confirm for table inet {table}: rolled back in {secs} s unless `smartproxy confirm` (or now with `smartproxy rollback`)"
        )
    } else {
        format!(
            "pending confirm for table inet {table}, watchdog not running: run `smartproxy confirm` to keep or `smartproxy rollback` to restore"
        )
    };
    Some(PendingConfirm {
        deadline_ms: record.deadline_ms,
        watchdog_pid: record.watchdog.map(|(pid, _)| pid),
        watchdog_running: running,
        notice,
    })
}

/// Why apply must not touch `table` now: a confirm is pending (message without `error: `).
pub fn refuse_apply(table: &str) -> Result<(), Error> {
    match pending(table) {
        None => Ok(()),
        Some(p) if p.watchdog_running => Err(Error::Pending(format!(
            "an earlier apply to table inet {table} awaits `smartproxy confirm` (or its rollback, `smartproxy rollback` to have it now): confirm it first"
        ))),
        Some(p) => Err(Error::Pending(p.notice)),
    }
}

fn is_settled(table: &str, token: &str) -> bool {
    state::read(table, "settled").is_some_and(|s| s.lines().any(|l| l == token))
}

/// Marks the window `token` as ended on purpose, before its record goes: its watchdog,
/// seeing the record gone, then exits instead of rolling back.
fn settle(table: &str, token: &str) -> Result<(), state::StateError> {
    let old = state::read(table, "settled").unwrap_or_default();
    let mut tokens: Vec<&str> = old.lines().filter(|l| !l.is_empty()).collect();
    tokens.push(token);
    let from = tokens.len().saturating_sub(SETTLED_KEPT);
    let mut text = tokens[from..].join("\n");
    text.push('\n');
    state::write(table, "settled", &text)
}

// ---------------------------------------------------------------- arming

/// How a rollback restores the table: `quick` undoes only what the apply changed (the
/// other routes keep their counters, meters and set contents); when it is absent, fails or
/// does not arrive at `fingerprint`, `full` reloads the table as dumped before the apply.
pub struct Rollback {
    pub full: String,
    pub quick: Option<String>,
    pub fingerprint: String,
}

/// What a rollback needs, as the watchdog holds it from its start: the [`Rollback`] and
/// the applied record before the apply (`None`: there was none).
struct Held {
    rollback: Rollback,
    fingerprint_known: bool,
    previous_applied: Option<String>,
}

impl Held {
    fn load(table: &str) -> Option<Held> {
        let full = state::read(table, "rollback.nft")?;
        let fingerprint = state::read(table, "rollback.fingerprint");
        Some(Held {
            fingerprint_known: fingerprint.is_some(),
            rollback: Rollback {
                full,
                quick: state::read(table, "rollback-quick.nft"),
                fingerprint: fingerprint.unwrap_or_default(),
            },
            previous_applied: state::read(table, "applied.prev").filter(|s| !s.is_empty()),
        })
    }

    /// Writes the rollback files back (after the state directory was deleted).
    fn save(&self, table: &str) -> Result<(), state::StateError> {
        save_rollback(
            table,
            &self.rollback,
            self.fingerprint_known,
            self.previous_applied.as_deref(),
        )
    }
}

fn save_rollback(
    table: &str,
    rollback: &Rollback,
    fingerprint_known: bool,
    previous_applied: Option<&str>,
) -> Result<(), state::StateError> {
    state::write(table, "rollback.nft", &rollback.full)?;
    match &rollback.quick {
        Some(quick) => state::write(table, "rollback-quick.nft", quick)?,
        None => state::remove(table, "rollback-quick.nft"),
    }
    if fingerprint_known {
        state::write(table, "rollback.fingerprint", &rollback.fingerprint)?;
    }
    state::write(table, "applied.prev", previous_applied.unwrap_or(""))
}

/// A started watchdog: the token of its window, and the process.
pub struct Armed {
    token: String,
    watchdog: Watchdog,
}

/// Records the rollback and starts the detached watchdog (`setsid`, its own session: it
/// survives SIGKILL of this process and a hung-up terminal, and stays in this namespace).
/// Returns once the watchdog has read the rollback into memory and its pid is recorded.
/// Called before the commit, so nothing needs undoing when it fails. `start` starts the
/// watchdog of `(table, token, deadline_ms)` and returns once it holds the rollback:
/// [`spawn_watchdog`] in production; tests may run [`watchdog`] on a thread.
pub fn arm_watchdog(
    table: &str,
    secs: u64,
    rollback: &Rollback,
    previous_applied: Option<&str>,
    start: impl FnOnce(&str, &str, u64) -> Result<Watchdog, String>,
) -> Result<Armed, Error> {
    let token = format!("{}-{}", std::process::id(), now_ms());
    let mut record = Record {
        token: token.clone(),
        deadline_ms: deadline_in(secs),
        watchdog: None,
    };
    if let Some(old) = Record::read(table) {
        let _ = settle(table, &old.token);
    }
    state::remove(table, "rolledback");
    let saved = save_rollback(table, rollback, true, previous_applied)
        .and_then(|()| state::write(table, "pending", &record.render()));
    if let Err(e) = saved {
        disarm_watchdog(table);
        return Err(Error::NotArmed {
            what: "cannot record the pending confirm",
            why: e.to_string(),
        });
    }
    let watchdog = match start(table, &token, record.deadline_ms) {
        Ok(w) => w,
        Err(e) => {
            disarm_watchdog(table);
            return Err(Error::NotArmed {
                what: "cannot start the rollback watchdog",
                why: e,
            });
        }
    };
    record.watchdog = Some(watchdog);
    if let Err(e) = state::write(table, "pending", &record.render()) {
        disarm_watchdog(table);
        return Err(Error::NotArmed {
            what: "cannot record the pending confirm",
            why: e.to_string(),
        });
    }
    Ok(Armed { token, watchdog })
}

/// Starts `smartproxy __watchdog` in its own session and waits for its `ready PID START`
/// line, which it prints once it holds the rollback in memory.
pub fn spawn_watchdog(table: &str, token: &str, deadline_ms: u64) -> Result<Watchdog, String> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("smartproxy"));
    let deadline = deadline_ms.to_string();
    let args = [
        "__watchdog",
        "--table",
        table,
        "--token",
        token,
        "--deadline-ms",
        &deadline,
    ];
    let mut child =
        crate::kernel::exec::spawn_session(&exe, &args).map_err(|e| format!("setsid: {e}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let ready = line
        .strip_prefix("ready ")
        .and_then(|rest| rest.trim().split_once(' '))
        .and_then(|(pid, start)| Some((pid.parse().ok()?, start.parse().ok()?)));
    ready.ok_or_else(|| "it did not report back".to_owned())
}

/// Moves the deadline of an armed window to `secs` from now (after the commit).
pub fn start_window(table: &str, armed: &Armed, secs: u64) -> Result<(), state::StateError> {
    let record = Record {
        token: armed.token.clone(),
        deadline_ms: deadline_in(secs),
        watchdog: Some(armed.watchdog),
    };
    state::write(table, "pending", &record.render())
}

/// Ends a pending confirm without a rollback (its transaction never committed, or the
/// table was destroyed): its watchdog exits, its files go.
pub fn disarm_watchdog(table: &str) {
    if let Some(record) = Record::read(table) {
        let _ = settle(table, &record.token);
    }
    state::remove(table, "pending");
    remove_rollback(table);
}

fn remove_rollback(table: &str) {
    for suffix in [
        "rollback.nft",
        "rollback-quick.nft",
        "rollback.fingerprint",
        "applied.prev",
    ] {
        state::remove(table, suffix);
    }
}

// ---------------------------------------------------------------- the watchdog

/// What the watchdog does next.
enum Next {
    /// Ended on purpose (confirmed, rolled back, destroyed, superseded): exit.
    Ended,
    Wait,
    Due,
}

/// The detached watchdog. It reads the rollback into memory, reports `ready PID START`,
/// then waits for the deadline (re-read from `pending`, which apply moves to the end of
/// the commit) and rolls back unless the window was ended on purpose. A record that
/// vanished without that (the state directory was deleted) is written back, and the
/// deadline still holds. `deadline_ms` is the deadline it was started with; `ready` is
/// told `(PID, START)` once the rollback is held (the command reports it to apply).
pub fn watchdog(
    kernel: &dyn Kernel,
    table: &str,
    token: &str,
    deadline_ms: u64,
    ready: impl FnOnce(u32, u64),
) -> Result<(), Error> {
    let Some(held) = Held::load(table) else {
        return Err(Error::Missing(table.to_owned()));
    };
    let pid = std::process::id();
    let me = (pid, start_time(pid).unwrap_or(0));
    ready(me.0, me.1);
    let mut deadline = deadline_ms;
    loop {
        match next(table, token, &mut deadline, me, &held) {
            Next::Ended => return Ok(()),
            Next::Wait => {
                std::thread::sleep(POLL);
                continue;
            }
            Next::Due => {}
        }
        // Another smartproxy may hold the lock for long (a destroy waiting at its prompt):
        // keep trying while the confirm is still ours; giving up would keep an unconfirmed
        // ruleset for good.
        let Ok(_lock) = state::lock(table, Duration::from_secs(30)) else {
            std::thread::sleep(POLL);
            continue;
        };
        match next(table, token, &mut deadline, me, &held) {
            Next::Ended => return Ok(()),
            // Apply moved the deadline while we waited for its lock.
            Next::Wait => {}
            Next::Due => {
                let why = "rolled back: its last apply was not confirmed in time\n";
                return roll_back(kernel, table, token, &held, why).map_err(Error::Restore);
            }
        }
    }
}

fn next(table: &str, token: &str, deadline: &mut u64, me: Watchdog, held: &Held) -> Next {
    match Record::read(table) {
        Some(r) if r.token == token => {
            if r.deadline_ms != 0 {
                *deadline = r.deadline_ms;
            }
        }
        Some(_) => return Next::Ended,
        // Read after `pending`: whoever ends a window settles it before removing the record.
        None if is_settled(table, token) => return Next::Ended,
        None => {
            // Gone without being settled: the state directory was deleted. Best effort; the
            // rollback is in memory whatever happens to the files.
            let record = Record {
                token: token.to_owned(),
                deadline_ms: *deadline,
                watchdog: Some(me),
            };
            let _ = held
                .save(table)
                .and_then(|()| state::write(table, "pending", &record.render()));
        }
    }
    if now_ms() < *deadline {
        Next::Wait
    } else {
        Next::Due
    }
}

/// Restores the table as it was before the apply (the lock must be held): the quick
/// inverse first, the full dump if that fails or does not arrive at the fingerprint.
fn restore(kernel: &dyn Kernel, table: &str, held: &Held) -> Result<(), String> {
    let r = &held.rollback;
    let arrived = || {
        held.fingerprint_known
            && kernel
                .list_table(table)
                .is_ok_and(|l| plan::fingerprint(l.as_deref()) == r.fingerprint)
    };
    // The scripts come from state files: each must touch only our table before it runs.
    let guarded = |script: &str| -> Result<(), String> {
        crate::nft::guard::check(script, table)
            .map_err(|e| format!("the rollback script of table inet {table} was refused: {e}"))?;
        kernel.run(script).map_err(|e| e.to_string())
    };
    let quick = r
        .quick
        .as_deref()
        .is_some_and(|script| guarded(script).is_ok() && arrived());
    if !quick {
        guarded(&r.full)?;
    }
    Ok(())
}

/// Rolls the window `token` back (the lock must be held) and ends it: the applied record
/// as it was, the record and the rollback files gone, `why` left for a late `confirm`.
fn roll_back(
    kernel: &dyn Kernel,
    table: &str,
    token: &str,
    held: &Held,
    why: &str,
) -> Result<(), String> {
    restore(kernel, table, held)?;
    match &held.previous_applied {
        Some(prev) => {
            let _ = state::write(table, "applied", prev);
        }
        None => state::remove(table, "applied"),
    }
    let _ = settle(table, token);
    state::remove(table, "pending");
    remove_rollback(table);
    let _ = state::write(table, "rolledback", why);
    Ok(())
}

// ---------------------------------------------------------------- confirm, rollback

/// The tables with a pending confirm, `table` only when given.
pub fn pending_tables(table: Option<&str>) -> Vec<String> {
    state::pending_tables()
        .into_iter()
        .filter(|t| table.is_none_or(|x| x == t))
        .collect()
}

/// `nothing to WHAT: ...`, with how the tables' last windows ended.
pub fn nothing_pending(table: Option<&str>, what: &'static str) -> Error {
    let late: String = state::tables_with("rolledback")
        .into_iter()
        .filter(|t| table.is_none_or(|x| x == t))
        .filter_map(|t| state::read(&t, "rolledback").map(|r| (t, r)))
        .map(|(t, r)| format!("; table inet {t} was {}", r.trim()))
        .collect();
    Error::NothingPending { what, late }
}

/// How long `confirm` and `rollback` wait for the table's lock.
const COMMAND_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Keeps the applied ruleset of table `t`'s pending confirm: its watchdog exits.
pub fn confirm(t: &str) -> Result<(), Error> {
    let _lock = state::lock(t, COMMAND_LOCK_WAIT)?;
    let Some(record) = Record::read(t) else {
        return Err(Error::TooLate(format!(
            "table inet {t} was already rolled back"
        )));
    };
    settle(t, &record.token).map_err(|source| Error::Settle {
        table: t.to_owned(),
        source,
    })?;
    state::remove(t, "pending");
    remove_rollback(t);
    Ok(())
}

/// Restores now what table `t`'s pending confirm would restore at its deadline, under the
/// table's lock.
pub fn rollback(kernel: &dyn Kernel, t: &str) -> Result<(), Error> {
    let _lock = state::lock(t, COMMAND_LOCK_WAIT)?;
    let Some(record) = Record::read(t) else {
        return Err(Error::TooLate(format!(
            "the confirm of table inet {t} has ended meanwhile"
        )));
    };
    let held = Held::load(t).ok_or_else(|| Error::Missing(t.to_owned()))?;
    let why = "rolled back by `smartproxy rollback`\n";
    roll_back(kernel, t, &record.token, &held, why).map_err(|why| Error::Refused {
        table: t.to_owned(),
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn record_round_trips_and_reads_the_old_form() {
        let r = Record {
            token: "12-34".into(),
            deadline_ms: 99,
            watchdog: Some((7, 123_456)),
        };
        assert_eq!(Record::parse(&r.render()), Some(r));
        let old = Record::parse("12-34\n99\n").expect("parses");
        assert_eq!((old.deadline_ms, old.watchdog), (99, None));
        assert_eq!(Record::parse("12-34\n").map(|r| r.deadline_ms), Some(0));
        assert_eq!(Record::parse(""), None);
    }

    #[test]
    fn start_time_is_field_22_counted_after_the_name() {
        let tail = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 19 20";
        assert_eq!(parse_start_time(&format!("77 (a) b) {tail}")), Some(4242));
        assert_eq!(parse_start_time(&format!("77 (x) {tail}")), Some(4242));
        let zombie = tail.replacen('S', "Z", 1);
        assert_eq!(parse_start_time(&format!("77 (x) {zombie}")), None);
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn this_process_runs_and_a_wrong_start_time_does_not() {
        let pid = std::process::id();
        let start = start_time(pid).expect("our own stat");
        assert!(is_running(Some((pid, start))));
        assert!(!is_running(Some((pid, start + 1))));
        assert!(!is_running(None));
    }

    fn held(quick: Option<&str>, fingerprint: &str) -> Held {
        Held {
            rollback: Rollback {
                full: FULL.into(),
                quick: quick.map(str::to_owned),
                fingerprint: fingerprint.into(),
            },
            fingerprint_known: true,
            previous_applied: None,
        }
    }

    const BEFORE: &str = "table inet sp {\n}\n";
    const QUICK: &str = "add table inet sp\n";
    const FULL: &str = "delete table inet sp\ntable inet sp {\n}\n";

    #[test]
    fn restore_refuses_a_rollback_script_that_touches_another_table() {
        let k = FakeKernel::default();
        let mut h = held(None, "x");
        h.rollback.full = format!("{FULL}add table inet planted\n");
        let err = restore(&k, "sp", &h).expect_err("refused");
        assert!(err.contains("refused"), "{err}");
        assert!(k.transactions().is_empty());
    }

    #[test]
    fn restore_keeps_the_quick_inverse_when_it_arrives() {
        let k = FakeKernel::default();
        let h = held(Some(QUICK), &plan::fingerprint(Some(BEFORE)));
        restore(&k, "sp", &h).expect("restores");
        assert_eq!(k.transactions(), [QUICK]);
    }

    #[test]
    fn restore_reloads_the_dump_when_the_inverse_misses_the_fingerprint() {
        let k = FakeKernel::default();
        let by_hand = "table inet sp {\n\tchain by_hand {\n\t}\n}\n";
        k.run(by_hand).expect("a chain added by hand");
        let h = held(Some(QUICK), &plan::fingerprint(Some(BEFORE)));
        restore(&k, "sp", &h).expect("restores");
        assert_eq!(k.transactions(), [by_hand, QUICK, FULL]);
        assert_eq!(k.list_table("sp").expect("lists").as_deref(), Some(BEFORE));
        let k = FakeKernel::default();
        k.run(QUICK).expect("the table exists");
        restore(&k, "sp", &held(None, "x")).expect("restores");
        assert_eq!(k.transactions(), [QUICK, FULL]);
    }

    #[test]
    fn restore_reports_a_refused_dump() {
        let k = FakeKernel::default();
        k.run(QUICK).expect("the table exists");
        k.fail_next("no");
        let err = restore(&k, "sp", &held(None, "x")).expect_err("refused");
        assert!(err.contains("no"), "{err}");
        assert_eq!(k.transactions(), [QUICK]);
    }
}
