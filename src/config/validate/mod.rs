//! Raw route files -> one [`Config`], collecting every error.
//!
//! Checks meaning: name syntax and uniqueness, ports and ranges, hosts, CIDRs, rates, enum
//! values, certificate files, engine rules, conflicts between routes. It never resolves a
//! name and never touches the kernel. Each finding is a [`Diagnostic`] with a stable code;
//! the codes are listed in `docs/diagnostics.md`.
//!
//! One concern a file: [`settings`] (`[settings]`), [`names`] (route and table names),
//! [`route`] (one route, engine choice), [`matching`] (ports, ranges, domains),
//! [`targets`], [`policy`] (allow/block lists, rates, `[routes.action.nftables]`), [`tls`],
//! [`redirect`], and the checks across routes: [`across`] (unique names, shadowing, mark
//! capacity) and [`conflicts`] (routes claiming the same port).

mod across;
mod conflicts;
mod matching;
mod names;
mod policy;
mod redirect;
mod route;
mod settings;
mod targets;
mod tls;

use std::path::PathBuf;

pub use self::names::{table_name, InvalidTableName};
use super::parse::RawFile;
use super::{Config, EngineChoice};
use crate::diag::{Diagnostic, FileId, Sp, Span};

/// Validates all parsed files together; `dir` is each file's folder (certificate paths are
/// relative to it).
pub fn validate(files: &[(FileId, PathBuf, RawFile)], diags: &mut Vec<Diagnostic>) -> Config {
    let settings = settings::settings(files, diags);
    // Routes are checked one file per thread; `order` is set once they are joined.
    let per_file = super::in_parallel(files, |(_, dir, raw)| {
        let mut file_diags = Vec::new();
        let mut routes = Vec::with_capacity(raw.routes.len());
        routes.extend(
            raw.routes
                .iter()
                .filter_map(|raw_route| route::route(raw_route, dir, &settings, &mut file_diags)),
        );
        (routes, file_diags)
    });
    let mut routes = Vec::with_capacity(per_file.iter().map(|(r, _)| r.len()).sum());
    for (file_routes, file_diags) in per_file {
        diags.extend(file_diags);
        for mut route in file_routes {
            route.order = routes.len();
            routes.push(route);
        }
    }
    across::unique_names(&routes, diags);
    conflicts::conflicts(&routes, diags);
    across::shadowed(&routes, diags);
    across::mark_capacity(&settings, &routes, diags);
    Config { settings, routes }
}

// ---- shared by the checks ---------------------------------------------------------------

pub(super) fn missing(span: Span, what: &str, help: &str) -> Diagnostic {
    Diagnostic::error("E005", span, format!("missing {what}"))
        .label(format!("{what} is required here"))
        .help(help.to_owned())
}

pub(super) fn out_of_range(span: Span, what: &str, min: i64, max: i64) -> Diagnostic {
    Diagnostic::error(
        "E031",
        span,
        format!("`{what}` must be between {min} and {max}"),
    )
    .label("out of range")
    .help(format!("use a value from {min} to {max}"))
}

pub(super) fn engine_choice(
    value: &Sp<String>,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<EngineChoice> {
    one_of(
        value,
        what,
        &[
            ("auto", EngineChoice::Auto),
            ("nftables", EngineChoice::Nftables),
            ("userspace", EngineChoice::Userspace),
            ("node", EngineChoice::Userspace),
        ],
        diags,
    )
}

/// Maps a string to one of a closed set of values, or reports E019 naming `what` was
/// expected and the choices.
pub(super) fn one_of<T: Copy>(
    value: &Sp<String>,
    what: &str,
    choices: &[(&str, T)],
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    if let Some((_, v)) = choices.iter().find(|(k, _)| *k == value.value) {
        return Some(*v);
    }
    let names: Vec<String> = choices
        .iter()
        .filter(|(k, _)| *k != "node")
        .map(|(k, _)| format!("`{k}`"))
        .collect();
    let suggestion = choices
        .iter()
        .map(|(k, _)| (strsim::jaro_winkler(&value.value.to_lowercase(), k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let help = match suggestion {
        Some((_, k)) => format!("did you mean `{k}`? expected one of {}", names.join(", ")),
        None => format!("expected one of {}", names.join(", ")),
    };
    diags.push(
        Diagnostic::error(
            "E019",
            value.span,
            format!("unknown {what} `{}`", value.value),
        )
        .label("not one of the allowed values")
        .help(help),
    );
    None
}
