//! `smartproxy check`: findings on stdout in the chosen format, and a closing line.

use std::io::Write;
use std::path::PathBuf;

use super::{Outcome, EXIT_ERROR, EXIT_OK};
use crate::config::Engine;
use crate::diag::{self, Severity};
use crate::{config, lower};

pub fn run(
    paths: &[PathBuf],
    format: diag::Format,
    deny_warnings: bool,
    resolve: bool,
    color: bool,
) -> Outcome {
    let mut loaded = config::load(paths);
    if resolve {
        if let Some(cfg) = &loaded.config {
            if let Err(diags) = lower::lower(cfg, &lower::SystemResolver) {
                loaded.diagnostics.extend(diags);
                diag::sort(&mut loaded.diagnostics);
            }
        }
    }
    let errors = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = loaded.diagnostics.len() - errors;
    let mut out = diag::render(&loaded.sources, &loaded.diagnostics, format, color);
    if format == diag::Format::Text {
        match (&loaded.config, errors) {
            (Some(cfg), 0) => {
                let kernel = cfg
                    .routes
                    .iter()
                    .filter(|r| r.enabled && r.engine == Engine::Nftables)
                    .count();
                let user = cfg
                    .routes
                    .iter()
                    .filter(|r| r.enabled && r.engine == Engine::Userspace)
                    .count();
                let disabled = cfg.routes.len() - kernel - user;
                out.push_str(&format!(
                    "ok: {} route{} ({kernel} nftables, {user} userspace, {disabled} disabled), {warnings} warning{}\n",
                    cfg.routes.len(),
                    plural(cfg.routes.len()),
                    plural(warnings)
                ));
            }
            _ => out.push_str(&format!(
                "failed: {errors} error{}, {warnings} warning{}\n",
                plural(errors),
                plural(warnings)
            )),
        }
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    if errors > 0 || (deny_warnings && warnings > 0) {
        Ok(EXIT_ERROR)
    } else {
        Ok(EXIT_OK)
    }
}

pub(super) fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
