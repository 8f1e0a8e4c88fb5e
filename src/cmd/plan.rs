//! `smartproxy plan`: what apply would change, as text or JSON, optionally saved.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{load_model, lock_wait, warn, Error, Outcome, Ui, EXIT_CHANGES, EXIT_OK};
use crate::cli::PlanFormat;
use crate::converge;
use crate::kernel::Kernel;

pub struct Args<'a> {
    pub paths: &'a [PathBuf],
    pub out: Option<&'a Path>,
    pub format: PlanFormat,
    pub detailed: bool,
    pub lock_secs: f64,
}

pub fn run(kernel: &dyn Kernel, ui: &Ui, a: &Args<'_>) -> Outcome {
    let model = load_model(ui, a.paths)?;
    super::owner::warn_if_served(&model.table);
    let script = converge::render(&model)?;
    let _lock = converge::lock(&model.table, lock_wait(a.lock_secs))?;
    if let Some(p) = crate::confirm::pending(&model.table) {
        warn(&p.notice);
    }
    let planned = converge::plan(kernel, &model, script)?;
    planned.notes.iter().for_each(warn);
    let p = planned.plan;
    let text = match a.format {
        PlanFormat::Text => p.render(ui.color),
        PlanFormat::Json => p.to_json(),
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if let Some(path) = a.out {
        let saved = serde_json::to_string_pretty(&p).unwrap_or_default();
        // 0600: a plan holds the whole ruleset; never through a planted symlink.
        crate::fsutil::write_atomic(path, saved.as_bytes(), 0o600)
            .map_err(|e| Error::msg(format!("cannot write `{}`: {e}", path.display())))?;
        if a.format == PlanFormat::Text {
            println!(
                "\nSaved the plan to {}. Apply exactly it with `smartproxy apply --plan {}`.",
                path.display(),
                path.display()
            );
        }
    }
    if a.detailed && p.has_changes() {
        Ok(EXIT_CHANGES)
    } else {
        Ok(EXIT_OK)
    }
}
