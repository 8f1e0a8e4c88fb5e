//! `smartproxy status [PATH...] [--table NAME] [--format F]`: the flow. Which table (the
//! `--table` given, else the route files', else `smartproxy`), serve's answer when it runs
//! or else the kernel's counts, the renderer, the output and the exit code.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use crate::cli::StatusFormat;
use crate::kernel::Kernel;
use crate::model::Model;
use crate::{config, diag, lower, status};
use crate::{EXIT_ERROR, EXIT_OK};

/// Loads and lowers the route files; prints their diagnostics when they are invalid.
fn load_model(paths: &[PathBuf], color: bool) -> Option<Model> {
    let loaded = config::load(paths);
    let report = |diags: &[diag::Diagnostic]| {
        let color = color && std::io::stderr().is_terminal();
        let text = diag::render(&loaded.sources, diags, diag::Format::Text, color);
        let _ = std::io::stderr().write_all(text.as_bytes());
    };
    let Some(cfg) = loaded.config.as_ref().filter(|_| !loaded.has_errors()) else {
        report(&loaded.diagnostics);
        return None;
    };
    lower::lower(cfg, &lower::SystemResolver)
        .map_err(|diags| report(&diags))
        .ok()
}

/// Exit 0, also when the table does not exist; 1 when the route files are invalid or the
/// kernel cannot be read.
pub fn run(
    kernel: &dyn Kernel,
    paths: &[PathBuf],
    table: Option<&str>,
    format: StatusFormat,
    color: bool,
) -> i32 {
    let model = if paths.is_empty() {
        None
    } else {
        match load_model(paths, color) {
            Some(m) => Some(m),
            None => return EXIT_ERROR,
        }
    };
    let table = table
        .map(str::to_owned)
        .or_else(|| model.as_ref().map(|m| m.table.clone()))
        .unwrap_or_else(|| "smartproxy".to_owned());
    let (mut shown, absent) = match status::ask_serve(&table) {
        Some(s) => (s, false),
        None => match status::read_kernel(kernel, &table) {
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_ERROR;
            }
            Ok(None) => (status::from_counts(&table, BTreeMap::new()), true),
            Ok(Some(counts)) => match &model {
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
    crate::confirm::warn_pending(&table);
    let out = match format {
        StatusFormat::Text if absent => format!(
            "table inet {table} does not exist in this network namespace (nothing applied)\n"
        ),
        StatusFormat::Text => status::render_text(&shown),
        StatusFormat::Json => status::render_json(&shown),
        StatusFormat::Prometheus => status::render_prometheus(&shown, true),
    };
    let _ = std::io::stdout().write_all(out.as_bytes());
    EXIT_OK
}
