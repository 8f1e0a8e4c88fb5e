//! The converge flow, one straight pipeline over a [`Kernel`]:
//!
//! ```text
//! desired (render, normalised through the cache) ─┐
//! live (through the cache) ───────────────────────┼─> plan -> transaction -> commit -> record
//! preflight facts ────────────────────────────────┘
//! ```
//!
//! `apply` and `destroy` (with a person approving in between) and `serve` (without) all use
//! it. The caches are [`crate::cache`]'s; the state files of a commit (the applied record,
//! the remembered live table) are written here, in [`record`] and [`remove_table`], and
//! nowhere else in the flow. Nothing here prints: warnings come back in [`Planned::notes`]
//! and errors as [`Error`], with their cause.

use std::time::Duration;

use crate::apply;
use crate::cache::{self, Notes};
use crate::kernel::{Kernel, KernelError};
use crate::model::Model;
use crate::nft::guard::GuardError;
use crate::plan::{self, Plan};
use crate::preflight;
use crate::render;
use crate::state::{self, StateError};

/// Why the flow stopped. The kernel is as it was in every case but
/// [`RunError::TimedOutAfterCommit`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot render table inet {table}: {source}")]
    Render {
        table: String,
        #[source]
        source: render::RenderError,
    },
    /// nft refused our own rendered script on a scratch table: never the user's doing.
    #[error("nft refused the rendered ruleset (a bug: please report it): {0}")]
    Normalise(#[source] KernelError),
    /// Listing the live table failed.
    #[error("{0}")]
    Live(#[source] KernelError),
    #[error("the rollback script: {0}")]
    RollbackScript(#[source] GuardError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("cannot delete table inet {table}: {source}")]
    Delete {
        table: String,
        #[source]
        source: RunError,
    },
    #[error(transparent)]
    TableName(#[from] crate::config::validate::InvalidTableName),
    /// A saved plan that may not be used (its text says why).
    #[error("{0}")]
    SavedPlan(String),
    #[error(
        "the saved plan is stale: table inet {table} changed since `plan --out`; nothing was applied; make a new plan"
    )]
    Stale { table: String },
}

/// Why a script was not run: the guard refused it, or the kernel did.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Guard(#[from] GuardError),
    #[error("the kernel refused; nothing was changed:\n{0}")]
    Kernel(#[source] KernelError),
    /// nft ran out of time, but the ruleset generation moved while it ran: its transaction
    /// (all of it) may have committed before it was killed.
    #[error(
        "{0}; the ruleset generation moved meanwhile, so the whole transaction may have committed: run `smartproxy plan` to see what the kernel holds"
    )]
    TimedOutAfterCommit(#[source] KernelError),
}

/// How long serve waits for the table's lock (a person's `apply` may hold it).
pub const SERVE_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Takes the table's lock, then checks that its state files may be trusted (owner, mode:
/// see [`state`]), so that nothing below reads a file someone else could have written.
pub fn lock(table: &str, wait: Duration) -> Result<state::Lock, StateError> {
    let lock = state::lock(table, wait)?;
    state::check_table(table)?;
    Ok(lock)
}

/// The one way the flow runs a script: only when it touches nothing but table inet
/// `table` ([`crate::nft::guard`]), whatever it was built from.
pub fn run_guarded(kernel: &dyn Kernel, table: &str, script: &str) -> Result<(), RunError> {
    crate::nft::guard::check(script, table)?;
    let before = kernel.generation();
    kernel.run(script).map_err(|e| match e {
        KernelError::Timeout { .. } if kernel.generation() != before => {
            RunError::TimedOutAfterCommit(e)
        }
        e => RunError::Kernel(e),
    })
}

/// A plan with what the commit needs beside it: the listings parsed, the ruleset
/// generation the live table was read at (see [`cache`]), and the cache's warnings.
pub struct Planned {
    pub plan: Plan,
    pub parsed: apply::Parsed,
    pub generation: Option<u32>,
    /// Warnings met on the way (untrusted or broken cache files, ignored and rebuilt).
    pub notes: Vec<String>,
}

/// The rendered script of `model`.
pub fn render(model: &Model) -> Result<String, Error> {
    render::render_script(model).map_err(|source| Error::Render {
        table: model.table.clone(),
        source,
    })
}

/// Makes a plan for `model` (rendered as `script`) against the live kernel (the lock must
/// be held).
pub fn plan(kernel: &dyn Kernel, model: &Model, script: String) -> Result<Planned, Error> {
    let table = &model.table;
    let notes = Notes::default();
    // Reading a big live table is mostly the kernel's work (1 s at 10,000 routes): it runs
    // on its own thread while this one works out the desired table and the preflight facts.
    let (desired, live, facts, applied, applied_parsed) = std::thread::scope(|scope| {
        let live = scope.spawn(|| {
            cache::live_listing(kernel, table, &notes).map(|(text, generation)| {
                let parsed = text.as_deref().map(crate::nft::listing::parse);
                (text, parsed, generation)
            })
        });
        let desired = cache::desired_listing(kernel, model, &script, &notes);
        let facts = preflight::Facts::gather(kernel, table, &notes);
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
    let (desired_text, desired) = desired.map_err(Error::Normalise)?;
    let (live_text, live, generation) = live.map_err(Error::Live)?;
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
        notes: notes.take(),
    })
}

/// What a saved plan must satisfy before anything of it is used: a valid table name, and
/// its script and listings touch only that table (nothing else is ever run from it).
pub fn check_saved(saved: &Plan) -> Result<(), Error> {
    crate::config::validate::table_name(&saved.table)?;
    let table = &saved.table;
    for (what, text) in [
        ("desired_script", Some(&saved.desired_script)),
        ("desired_listing", Some(&saved.desired_listing)),
        ("live_listing", saved.live_listing.as_ref()),
    ] {
        if let Some(text) = text {
            crate::nft::guard::check(text, table)
                .map_err(|e| Error::SavedPlan(format!("its `{what}`: {e}")))?;
        }
    }
    Ok(())
}

/// A saved plan (checked with [`check_saved`]) made ready to commit, when the live table
/// is still the one it was made against (the lock must be held).
pub fn resume(kernel: &dyn Kernel, saved: Plan) -> Result<Planned, Error> {
    let notes = Notes::default();
    let (live, generation) =
        cache::live_listing(kernel, &saved.table, &notes).map_err(Error::Live)?;
    if plan::fingerprint(live.as_deref()) != saved.fingerprints.live {
        return Err(Error::Stale {
            table: saved.table.clone(),
        });
    }
    let parsed = apply::Parsed::of(&saved);
    Ok(Planned {
        plan: saved,
        parsed,
        generation,
        notes: notes.take(),
    })
}

/// The transaction of a plan, checked by the guard (before anything else is prepared).
pub fn transaction(planned: &Planned) -> Result<String, Error> {
    let script = apply::transaction_parsed(&planned.plan, &planned.parsed);
    crate::nft::guard::check(&script, &planned.plan.table).map_err(RunError::Guard)?;
    Ok(script)
}

/// What undoes the commit of `planned`, should it not be confirmed.
pub struct Undo {
    pub rollback: Rollback,
    /// The applied record before the commit (`None`: there was none).
    pub previous_applied: Option<String>,
}

/// What restores the table as it is now, should the commit of `planned` not be confirmed:
/// its dump with counters, and the quick inverse of an incremental transaction. Both are
/// checked by the guard now: the watchdog runs them later.
pub fn rollback(kernel: &dyn Kernel, planned: &Planned) -> Result<Undo, Error> {
    let p = &planned.plan;
    let dump = kernel.dump_table(&p.table).map_err(Error::Live)?;
    let rollback = Rollback {
        full: apply::rollback_script(&p.table, dump.as_deref()),
        quick: apply::inverse_parsed(p, &planned.parsed),
        fingerprint: plan::fingerprint(p.live_listing.as_deref()),
    };
    crate::nft::guard::check(&rollback.full, &p.table).map_err(Error::RollbackScript)?;
    if let Some(quick) = &rollback.quick {
        crate::nft::guard::check(quick, &p.table).map_err(Error::RollbackScript)?;
    }
    Ok(Undo {
        rollback,
        previous_applied: state::read(&p.table, "applied"),
    })
}

pub use crate::confirm::Rollback;

/// Commits `script` (the plan's [`transaction`]) and records it; `Ok` carries the warning
/// when the commit stands but its record could not be written.
pub fn commit(
    kernel: &dyn Kernel,
    planned: &Planned,
    script: &str,
) -> Result<Option<StateError>, Error> {
    let p = &planned.plan;
    run_guarded(kernel, &p.table, script)?;
    let notes = Notes::default();
    Ok(record(
        kernel,
        &p.table,
        planned.generation,
        &p.desired_listing,
        &notes,
    )
    .err())
}

/// After a commit of `listing` to `table`: the live-listing cache learns it, and the
/// applied record (drift detection) is written; an error only for the record.
fn record(
    kernel: &dyn Kernel,
    table: &str,
    generation: Option<u32>,
    listing: &str,
    notes: &Notes,
) -> Result<(), StateError> {
    cache::committed(kernel, table, generation, listing, notes);
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
    /// The ruleset generation the table is known to be `model` at: the one the plan read
    /// when nothing was committed, our commit's when nobody else committed around it;
    /// `None` when that cannot be told (look again).
    pub generation: Option<u32>,
}

/// Makes table `model.table` what `model` says, without asking: one transaction of the
/// routes that differ (the others keep their counters, meters and sets), none when nothing
/// does. `serve` provisions its kernel routes with it. On an error the kernel is as it was.
pub fn converge(kernel: &dyn Kernel, model: &Model) -> Result<Converged, Error> {
    let script = render(model)?;
    let _lock = lock(&model.table, SERVE_LOCK_WAIT)?;
    let planned = plan(kernel, model, script)?;
    let p = &planned.plan;
    let mut warnings = p.warnings.clone();
    warnings.extend(planned.notes.iter().cloned());
    let result = Converged {
        existed: p.table_exists,
        summary: p.summary,
        changes: p
            .changes
            .iter()
            .map(|c| format!("{} {}", c.action.symbol(), c.unit))
            .collect(),
        warnings,
        generation: planned.generation,
    };
    let mut result = result;
    if p.has_changes() {
        let script = transaction(&planned)?;
        if let Some(e) = commit(kernel, &planned, &script)? {
            result.warnings.push(format!(
                "applied, but could not record it for drift detection: {e}"
            ));
        }
        let after = kernel.generation();
        result.generation = match (planned.generation, after) {
            (Some(before), Some(after)) if after == before.wrapping_add(1) => Some(after),
            _ => None,
        };
    }
    Ok(result)
}

/// Deletes table `table` (known to exist) with its applied record and cached listing (the
/// lock must be held).
pub fn delete_table(kernel: &dyn Kernel, table: &str) -> Result<(), Error> {
    run_guarded(kernel, table, &format!("delete table inet {table}\n")).map_err(|source| {
        Error::Delete {
            table: table.to_owned(),
            source,
        }
    })?;
    state::remove(table, "applied");
    state::remove(table, "rolledback");
    cache::forget_live(table);
    Ok(())
}

/// Deletes table `table` under its lock (serve's deprovisioning); whether it was there.
pub fn remove_table(kernel: &dyn Kernel, table: &str) -> Result<bool, Error> {
    let _lock = lock(table, SERVE_LOCK_WAIT)?;
    if kernel.list_table(table).map_err(Error::Live)?.is_none() {
        return Ok(false);
    }
    delete_table(kernel, table)?;
    Ok(true)
}
