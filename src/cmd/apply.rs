//! `smartproxy apply`: plan (or a saved plan), approval, the confirm window's watchdog,
//! one transaction, the record.

use std::path::{Path, PathBuf};

use super::{approved, load_model, lock_wait, warn, Error, Outcome, Ui, EXIT_OK};
use crate::confirm;
use crate::converge;
use crate::kernel::Kernel;
use crate::plan::Plan;

pub struct Args<'a> {
    pub paths: &'a [PathBuf],
    pub plan_file: Option<&'a Path>,
    pub auto_approve: bool,
    /// Apply even while a running serve owns the table.
    pub force: bool,
    pub confirm_timeout: Option<u64>,
    pub lock_secs: f64,
}

/// A saved plan, read and checked before anything of it is used.
fn read_saved(file: &Path) -> Result<Plan, Error> {
    let saved: Plan = std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .map_err(|e| {
            Error::msg(format!(
                "cannot read the saved plan `{}`: {e}",
                file.display()
            ))
        })?;
    converge::check_saved(&saved)
        .map_err(|e| Error::msg(format!("refusing the saved plan `{}`: {e}", file.display())))?;
    Ok(saved)
}

pub fn run(kernel: &dyn Kernel, ui: &Ui, a: &Args<'_>) -> Outcome {
    let (planned, _lock) = if let Some(file) = a.plan_file {
        let saved = read_saved(file)?;
        super::owner::refuse_if_served(&saved.table, a.force, "applied")?;
        let lock = converge::lock(&saved.table, lock_wait(a.lock_secs))?;
        let planned = converge::resume(kernel, saved).map_err(|e| match e {
            converge::Error::Stale { table } => Error::msg(format!(
                "the saved plan is stale: table inet {table} changed since `plan --out` ({}); nothing was applied; make a new plan",
                file.display()
            )),
            e => e.into(),
        })?;
        (planned, lock)
    } else {
        let model = load_model(ui, a.paths)?;
        super::owner::refuse_if_served(&model.table, a.force, "applied")?;
        let script = converge::render(&model)?;
        let lock = converge::lock(&model.table, lock_wait(a.lock_secs))?;
        (converge::plan(kernel, &model, script)?, lock)
    };
    planned.notes.iter().for_each(warn);
    let p = &planned.plan;
    let table = p.table.clone();
    confirm::refuse_apply(&table)?;
    print!("{}", p.render(ui.color));
    if !p.has_changes() {
        return Ok(EXIT_OK);
    }
    approved(a.auto_approve, "applied", "apply")?;
    let script = converge::transaction(&planned)?;
    // With a confirm timeout the watchdog is armed before the commit: whenever this
    // process dies after the commit, the rollback is already on its way.
    let armed = match a.confirm_timeout {
        Some(secs) => {
            let undo = converge::rollback(kernel, &planned)?;
            Some(confirm::arm_watchdog(
                &table,
                secs,
                &undo.rollback,
                undo.previous_applied.as_deref(),
                confirm::spawn_watchdog,
            )?)
        }
        None => None,
    };
    match converge::commit(kernel, &planned, &script) {
        Ok(None) => {}
        Ok(Some(e)) => warn(format!(
            "applied, but could not record it for drift detection: {e}"
        )),
        Err(e) => {
            if armed.is_some() {
                confirm::disarm_watchdog(&table);
            }
            return Err(e.into());
        }
    }
    let s = p.summary;
    println!(
        "\nApply complete! Routes: {} added, {} changed, {} destroyed.",
        s.add, s.change, s.destroy
    );
    if let (Some(secs), Some(armed)) = (a.confirm_timeout, armed) {
        // The confirm window starts now, after the commit.
        if let Err(e) = confirm::start_window(&table, &armed, secs) {
            warn(format!("could not restart the confirm window: {e}"));
        }
        println!("Run `smartproxy confirm` within {secs} s to keep it; otherwise the previous ruleset comes back.");
    }
    Ok(EXIT_OK)
}
