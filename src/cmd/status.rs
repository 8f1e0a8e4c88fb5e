//! `smartproxy status [PATH...] [--table NAME] [--format F]`: the flow. Which table (the
//! `--table` given, else the route files', else the one a running serve owns or the only
//! smartproxy table here, else `smartproxy`), serve's answer when it runs
//! or else the kernel's counts, the renderer, the output and the exit code.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use super::{warn, Outcome, Ui, EXIT_OK};
use crate::cli::StatusFormat;
use crate::kernel::Kernel;
use crate::status;

/// Exit 0, also when the table does not exist; 1 when the route files are invalid or the
/// kernel cannot be read. The route files' warnings are not shown (status reports on the
/// kernel, not on the files).
pub fn run(
    kernel: &dyn Kernel,
    ui: &Ui,
    paths: &[PathBuf],
    table: Option<&str>,
    format: StatusFormat,
) -> Outcome {
    let model = if paths.is_empty() {
        None
    } else {
        Some(super::load_model_with(ui, paths, false)?)
    };
    let table = table
        .map(str::to_owned)
        .or_else(|| model.as_ref().map(|m| m.table.clone()))
        .map_or_else(|| super::owner::default_table(kernel), Ok)?;
    let (mut shown, absent) = match status::ask_serve(&table) {
        Some(s) => (s, false),
        None => match status::read_kernel(kernel, &table)? {
            None => (status::from_counts(&table, BTreeMap::new()), true),
            Some(counts) => match &model {
                Some(m) => {
                    let mut s = status::from_model(m, counts);
                    s.table.clone_from(&table);
                    (s, false)
                }
                None => (status::from_counts(&table, counts), false),
            },
        },
    };
    shown.pending_confirm = crate::confirm::pending(&table);
    if let Some(p) = &shown.pending_confirm {
        warn(&p.notice);
    }
    let out = match format {
        StatusFormat::Text if absent => format!(
            "table inet {table} does not exist in this network namespace (nothing applied)\n"
        ),
        StatusFormat::Text => status::render_text(&shown),
        StatusFormat::Json => status::render_json(&shown),
        StatusFormat::Prometheus => status::render_prometheus(&shown, true),
    };
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(EXIT_OK)
}
