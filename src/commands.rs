//! plan, apply and destroy: the flows around the pure plan/apply code, with the lock,
//! approval and state (the confirm window is [`crate::confirm`]'s). Prints; returns exit
//! codes.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::apply;
use crate::cache;
use crate::cli::PlanFormat;
use crate::config;
use crate::confirm::{self, arm_watchdog, disarm_watchdog, Rollback};
use crate::diag;
use crate::kernel::nft::NftKernel;
use crate::kernel::Kernel;
use crate::lower;
use crate::plan::{self, Plan};
use crate::preflight;
use crate::render;
use crate::state;
use crate::{EXIT_ERROR, EXIT_OK};

/// Exit code of `plan --detailed-exitcode` when there are changes.
pub const EXIT_CHANGES: i32 = 2;

fn err(msg: impl std::fmt::Display) -> i32 {
    eprintln!("error: {msg}");
    EXIT_ERROR
}

fn lock_timeout(secs: f64) -> Duration {
    Duration::from_secs_f64(secs.clamp(0.0, 86_400.0))
}

/// Takes the table's lock, then checks that its state files may be trusted (owner, mode:
/// see [`state`]), so that nothing below reads a file someone else could have written.
fn lock_trusted(table: &str, secs: f64) -> Result<state::Lock, state::StateError> {
    let lock = state::lock(table, lock_timeout(secs))?;
    state::check_table(table)?;
    Ok(lock)
}

/// Why a script was not run: the guard refused it, or the kernel did.
enum RunError {
    Guard(crate::nft::guard::GuardError),
    Kernel(crate::kernel::KernelError),
    /// nft ran out of time, but the ruleset generation moved while it ran: its transaction
    /// (all of it) may have committed before it was killed.
    TimedOutAfterCommit(crate::kernel::KernelError),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Guard(e) => write!(f, "{e}"),
            RunError::Kernel(e) => write!(f, "the kernel refused; nothing was changed:\n{e}"),
            RunError::TimedOutAfterCommit(e) => write!(
                f,
                "{e}; the ruleset generation moved meanwhile, so the whole transaction may \
                 have committed: run `smartproxy plan` to see what the kernel holds"
            ),
        }
    }
}

/// The one way a flow here runs a script: only when it touches nothing but table inet
/// `table` ([`crate::nft::guard`]), whatever it was built from.
fn run_guarded(kernel: &dyn Kernel, table: &str, script: &str) -> Result<(), RunError> {
    crate::nft::guard::check(script, table).map_err(RunError::Guard)?;
    let before = kernel.generation();
    kernel.run(script).map_err(|e| match e {
        crate::kernel::KernelError::Timeout { .. } if kernel.generation() != before => {
            RunError::TimedOutAfterCommit(e)
        }
        e => RunError::Kernel(e),
    })
}

/// What a saved plan must satisfy before anything of it is used: a valid table name, and
/// its script and listings touch only that table (nothing else is ever run from it).
fn check_saved(saved: &Plan) -> Result<(), String> {
    config::validate::table_name(&saved.table)?;
    let table = &saved.table;
    for (what, text) in [
        ("desired_script", Some(&saved.desired_script)),
        ("desired_listing", Some(&saved.desired_listing)),
        ("live_listing", saved.live_listing.as_ref()),
    ] {
        if let Some(text) = text {
            crate::nft::guard::check(text, table).map_err(|e| format!("its `{what}`: {e}"))?;
        }
    }
    Ok(())
}

/// Route files -> (model, rendered script). Prints diagnostics; `Err` is the exit code.
fn desired(paths: &[PathBuf], color: bool) -> Result<(crate::model::Model, String), i32> {
    let loaded = config::load(paths);
    let report = |diags: &[diag::Diagnostic]| {
        let text = diag::render(
            &loaded.sources,
            diags,
            diag::Format::Text,
            color && std::io::stderr().is_terminal(),
        );
        let _ = std::io::stderr().write_all(text.as_bytes());
    };
    report(&loaded.diagnostics);
    let cfg = loaded.config.as_ref().ok_or(EXIT_ERROR)?;
    let model = lower::lower(cfg, &lower::SystemResolver).map_err(|d| {
        report(&d);
        EXIT_ERROR
    })?;
    let script = render::render_script(&model).map_err(err)?;
    Ok((model, script))
}

/// A plan with what apply needs beside it: the listings parsed, and the ruleset generation
/// the live table was read at (see [`cache`]).
struct Planned {
    plan: Plan,
    parsed: apply::Parsed,
    generation: Option<u32>,
}

/// Makes a plan for route files against the live kernel (the lock must be held).
fn make_plan(
    kernel: &dyn Kernel,
    model: &crate::model::Model,
    script: String,
) -> Result<Planned, i32> {
    let table = &model.table;
    // Reading a big live table is mostly the kernel's work (1 s at 10,000 routes): it runs
    // on its own thread while this one works out the desired table and the preflight facts.
    let (desired, live, facts, applied, applied_parsed) = std::thread::scope(|scope| {
        let live = scope.spawn(|| {
            cache::live_listing(kernel, table).map(|(text, generation)| {
                let parsed = text.as_deref().map(crate::nft::listing::parse);
                (text, parsed, generation)
            })
        });
        let desired = cache::desired_listing(kernel, model, &script);
        let facts = preflight::Facts::gather(kernel, table);
        let applied = state::read(table, "applied");
        // Still listing: meanwhile parse what was applied, for the drift section.
        let applied_parsed = (applied.is_some() && !live.is_finished())
            .then(|| applied.as_deref().map(crate::nft::listing::parse))
            .flatten();
        let live = live
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (desired, live, facts, applied, applied_parsed)
    });
    let (desired_text, desired) = desired.map_err(|e| {
        err(format!(
            "nft refused the rendered ruleset (a bug: please report it): {e}"
        ))
    })?;
    let (live_text, live, generation) = live.map_err(err)?;
    let warnings = preflight::warnings(model, &facts);
    let plan = plan::plan_parsed(
        table,
        script,
        (desired_text, &desired),
        (live_text, live.as_ref()),
        applied.as_deref().map(|a| (a, applied_parsed.as_ref())),
        warnings,
    );
    Ok(Planned {
        plan,
        parsed: apply::Parsed { live, desired },
        generation,
    })
}

pub fn plan(
    paths: &[PathBuf],
    out: Option<&Path>,
    format: PlanFormat,
    detailed: bool,
    lock_secs: f64,
    color: bool,
) -> i32 {
    let kernel = NftKernel::default();
    let (model, script) = match desired(paths, color) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let _lock = match lock_trusted(&model.table, lock_secs) {
        Ok(l) => l,
        Err(e) => return err(e),
    };
    confirm::warn_pending(&model.table);
    let p = match make_plan(&kernel, &model, script) {
        Ok(planned) => planned.plan,
        Err(code) => return code,
    };
    let text = match format {
        PlanFormat::Text => p.render(color),
        PlanFormat::Json => p.to_json(),
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if let Some(path) = out {
        let saved = serde_json::to_string_pretty(&p).unwrap_or_default();
        // 0600: a plan holds the whole ruleset; never through a planted symlink.
        if let Err(e) = crate::fsutil::write_atomic(path, saved.as_bytes(), 0o600) {
            return err(format!("cannot write `{}`: {e}", path.display()));
        }
        if format == PlanFormat::Text {
            println!(
                "\nSaved the plan to {}. Apply exactly it with `smartproxy apply --plan {}`.",
                path.display(),
                path.display()
            );
        }
    }
    if detailed && p.has_changes() {
        EXIT_CHANGES
    } else {
        EXIT_OK
    }
}

/// Asks for `yes` on a terminal; refuses without one unless auto-approved.
fn approved(auto_approve: bool, what: &str) -> Result<(), i32> {
    if auto_approve {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(err(format!("no terminal to ask for approval: nothing was {what}; pass --auto-approve to {what_now} without asking", what_now = if what == "destroyed" { "destroy" } else { "apply" })));
    }
    print!("\nDo you want to perform these actions?\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(err(format!("not approved: nothing was {what}")))
    }
}

pub struct ApplyArgs<'a> {
    pub paths: &'a [PathBuf],
    pub plan_file: Option<&'a Path>,
    pub auto_approve: bool,
    pub confirm_timeout: Option<u64>,
    pub lock_secs: f64,
    pub color: bool,
}

pub fn apply(a: &ApplyArgs<'_>) -> i32 {
    let kernel = NftKernel::default();
    let (p, parsed, _lock, generation) = if let Some(file) = a.plan_file {
        let saved: Plan = match std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                return err(format!(
                    "cannot read the saved plan `{}`: {e}",
                    file.display()
                ))
            }
        };
        if let Err(e) = check_saved(&saved) {
            return err(format!("refusing the saved plan `{}`: {e}", file.display()));
        }
        let lock = match lock_trusted(&saved.table, a.lock_secs) {
            Ok(l) => l,
            Err(e) => return err(e),
        };
        let (live, generation) = match cache::live_listing(&kernel, &saved.table) {
            Ok(l) => l,
            Err(e) => return err(e),
        };
        if plan::fingerprint(live.as_deref()) != saved.fingerprints.live {
            return err(format!(
                "the saved plan is stale: table inet {} changed since `plan --out` ({}); nothing was applied; make a new plan",
                saved.table,
                file.display()
            ));
        }
        let parsed = apply::Parsed::of(&saved);
        (saved, parsed, lock, generation)
    } else {
        let (model, script) = match desired(a.paths, a.color) {
            Ok(x) => x,
            Err(code) => return code,
        };
        let lock = match lock_trusted(&model.table, a.lock_secs) {
            Ok(l) => l,
            Err(e) => return err(e),
        };
        match make_plan(&kernel, &model, script) {
            Ok(planned) => (planned.plan, planned.parsed, lock, planned.generation),
            Err(code) => return code,
        }
    };
    let table = p.table.clone();
    if let Err(e) = confirm::refuse_apply(&table) {
        return err(e);
    }
    print!("{}", p.render(a.color));
    if !p.has_changes() {
        return EXIT_OK;
    }
    if let Err(code) = approved(a.auto_approve, "applied") {
        return code;
    }
    let script = apply::transaction_parsed(&p, &parsed);
    if let Err(e) = crate::nft::guard::check(&script, &table) {
        return err(e);
    }
    let previous_applied = state::read(&table, "applied");
    // With a confirm timeout the watchdog is armed before the commit: whenever this
    // process dies after the commit, the rollback is already on its way.
    let token = match a.confirm_timeout {
        Some(secs) => {
            let rollback = match kernel.dump_table(&table) {
                Ok(dump) => Rollback {
                    full: apply::rollback_script(&table, dump.as_deref()),
                    quick: apply::inverse_parsed(&p, &parsed),
                    fingerprint: plan::fingerprint(p.live_listing.as_deref()),
                },
                Err(e) => return err(e),
            };
            // The rollback is run later, by the watchdog: it too may only touch our table.
            let checked = crate::nft::guard::check(&rollback.full, &table).and_then(|()| {
                rollback
                    .quick
                    .as_deref()
                    .map_or(Ok(()), |q| crate::nft::guard::check(q, &table))
            });
            if let Err(e) = checked {
                return err(format!("the rollback script: {e}"));
            }
            match arm_watchdog(&table, secs, &rollback, previous_applied.as_deref()) {
                Ok(token) => Some(token),
                Err(code) => return code,
            }
        }
        None => None,
    };
    if let Err(e) = run_guarded(&kernel, &table, &script) {
        if token.is_some() {
            disarm_watchdog(&table);
        }
        return err(e);
    }
    if let Err(e) = record_commit(&kernel, &table, generation, &p.desired_listing) {
        eprintln!("warning: applied, but could not record it for drift detection: {e}");
    }
    let s = p.summary;
    println!(
        "\nApply complete! Routes: {} added, {} changed, {} destroyed.",
        s.add, s.change, s.destroy
    );
    if let (Some(secs), Some(token)) = (a.confirm_timeout, token) {
        // The confirm window starts now, after the commit.
        if let Err(e) = confirm::start_window(&table, &token, secs) {
            eprintln!("warning: could not restart the confirm window: {e}");
        }
        println!("Run `smartproxy confirm` within {secs} s to keep it; otherwise the previous ruleset comes back.");
    }
    EXIT_OK
}

pub fn destroy(
    path: Option<&Path>,
    table: Option<&str>,
    auto_approve: bool,
    lock_secs: f64,
    color: bool,
) -> i32 {
    let table = match (table, path) {
        (Some(t), _) => t.to_owned(),
        (None, Some(p)) => {
            let loaded = config::load(&[p.to_path_buf()]);
            match &loaded.config {
                Some(cfg) => cfg.settings.table.clone(),
                None => {
                    let text = diag::render(
                        &loaded.sources,
                        &loaded.diagnostics,
                        diag::Format::Text,
                        color && std::io::stderr().is_terminal(),
                    );
                    let _ = std::io::stderr().write_all(text.as_bytes());
                    return EXIT_ERROR;
                }
            }
        }
        (None, None) => "smartproxy".to_owned(),
    };
    let kernel = NftKernel::default();
    let _lock = match lock_trusted(&table, lock_secs) {
        Ok(l) => l,
        Err(e) => return err(e),
    };
    let live = match kernel.list_table(&table) {
        Ok(l) => l,
        Err(e) => return err(e),
    };
    let Some(live) = live else {
        println!("Nothing to destroy: table inet {table} does not exist.");
        return EXIT_OK;
    };
    let routes = crate::nft::listing::parse(&live).routes.len();
    println!(
        "smartproxy will destroy table inet {table} ({routes} route{}):\n",
        if routes == 1 { "" } else { "s" }
    );
    let minus = if color { "\x1b[31m-\x1b[0m" } else { "-" };
    println!("  {minus} table inet {table}\n\nPlan: 0 to add, 0 to change, {routes} to destroy.");
    if let Err(code) = approved(auto_approve, "destroyed") {
        return code;
    }
    if let Err(e) = run_guarded(&kernel, &table, &format!("delete table inet {table}\n")) {
        return err(e);
    }
    state::remove(&table, "applied");
    state::remove(&table, "rolledback");
    cache::forget_live(&table);
    disarm_watchdog(&table);
    println!("\nDestroy complete! Table inet {table} removed.");
    EXIT_OK
}

/// After a commit of `listing` to `table`: the live-listing cache learns it, and the
/// applied record (drift detection) is written; an error only for the record.
fn record_commit(
    kernel: &dyn Kernel,
    table: &str,
    generation: Option<u32>,
    listing: &str,
) -> Result<(), state::StateError> {
    cache::committed(kernel, table, generation, listing);
    state::write(table, "applied", listing)
}

/// What [`converge`] found and did.
#[derive(Clone, Debug)]
pub struct Converged {
    /// The table was there before (serve adopts it).
    pub existed: bool,
    pub summary: plan::Summary,
    /// The plan's routes changed, by name and what happened (`add`, `change`, ...).
    pub changes: Vec<String>,
    pub warnings: Vec<String>,
}

/// Makes table `model.table` what `model` says, with the plan/apply code: one transaction
/// of the routes that differ (the others keep their counters, meters and sets), none when
/// nothing does. `serve` provisions its kernel routes with it. On an error the kernel is
/// as it was.
pub fn converge(model: &crate::model::Model) -> Result<Converged, String> {
    let script = render::render_script(model).map_err(|e| e.to_string())?;
    let kernel = NftKernel::default();
    let _lock = lock_trusted(&model.table, 10.0).map_err(|e| e.to_string())?;
    let planned = make_plan(&kernel, model, script)
        .map_err(|_| format!("cannot plan table inet {}", model.table))?;
    let p = &planned.plan;
    let result = Converged {
        existed: p.table_exists,
        summary: p.summary,
        changes: p
            .changes
            .iter()
            .map(|c| format!("{} {}", c.action.symbol(), c.unit))
            .collect(),
        warnings: p.warnings.clone(),
    };
    if p.has_changes() {
        let transaction = apply::transaction_parsed(p, &planned.parsed);
        run_guarded(&kernel, &model.table, &transaction).map_err(|e| e.to_string())?;
        if let Err(e) = record_commit(
            &kernel,
            &model.table,
            planned.generation,
            &p.desired_listing,
        ) {
            tracing::warn!("applied, but could not record it for drift detection: {e}");
        }
    }
    Ok(result)
}

/// Deletes table `table` (serve's deprovisioning); whether it was there.
pub fn remove_table(table: &str) -> Result<bool, String> {
    let kernel = NftKernel::default();
    let _lock = lock_trusted(table, 10.0).map_err(|e| e.to_string())?;
    if kernel
        .list_table(table)
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Ok(false);
    }
    run_guarded(&kernel, table, &format!("delete table inet {table}\n"))
        .map_err(|e| format!("cannot delete table inet {table}: {e}"))?;
    state::remove(table, "applied");
    cache::forget_live(table);
    Ok(true)
}
