//! Which table a command means when none is named, and whether a running `smartproxy
//! serve` owns it (its status socket answers).

use super::{warn, Error};
use crate::kernel::Kernel;

/// The table comment every table smartproxy renders starts with.
const OURS: &str = "managed by smartproxy";

/// The table of `status`/`destroy` without a path or `--table`: the one a running serve
/// owns, else the only smartproxy table in this namespace, else `smartproxy`. More than
/// one candidate is an error that lists them.
pub fn default_table(kernel: &dyn Kernel) -> Result<String, Error> {
    let served: Vec<String> = crate::state::tables_with("sock")
        .into_iter()
        .filter(|t| crate::status::ask_serve(t).is_some())
        .collect();
    match served.as_slice() {
        [one] => return Ok(one.clone()),
        [] => {}
        several => return Err(ambiguous("a running `smartproxy serve` owns", several)),
    }
    // Without nft the command fails later with its own message, on the default name.
    let Ok(tables) = kernel.list_tables() else {
        return Ok("smartproxy".to_owned());
    };
    let ours: Vec<String> = tables
        .into_iter()
        .filter(|t| crate::config::validate::table_name(t).is_ok())
        .filter(|t| {
            kernel.list_table(t).ok().flatten().is_some_and(|listing| {
                crate::nft::listing::parse(&listing)
                    .table_comment
                    .is_some_and(|c| c.starts_with(OURS))
            })
        })
        .collect();
    match ours.as_slice() {
        [one] => Ok(one.clone()),
        [] => Ok("smartproxy".to_owned()),
        several => Err(ambiguous("smartproxy manages", several)),
    }
}

fn ambiguous(what: &str, tables: &[String]) -> Error {
    let list: Vec<String> = tables.iter().map(|t| format!("inet {t}")).collect();
    Error::msg(format!(
        "{what} more than one table here ({}): name one with --table (or give its route files)",
        list.join(", ")
    ))
}

/// `apply` or `destroy` of `table` (`done`: `applied`, `destroyed`): refused while a running serve owns it, unless
/// `force` (then only a warning: serve puts its own routes back within a second).
pub fn refuse_if_served(table: &str, force: bool, done: &str) -> Result<(), Error> {
    let Some(pid) = serve_pid(table) else {
        return Ok(());
    };
    if force {
        warn(format!(
            "table inet {table} is owned by a running `smartproxy serve` (pid {pid}): it puts its own routes back within a second; change its route files instead, or stop it first"
        ));
        return Ok(());
    }
    Err(Error::msg(format!(
        "table inet {table} is owned by a running `smartproxy serve` (pid {pid}), which would put its routes back within a second: nothing was {done}; change serve's route files (it reloads them), stop serve first, or pass --force"
    )))
}

/// `plan` and `confirm` of `table`: a warning when a running serve owns it.
pub fn warn_if_served(table: &str) {
    if let Some(pid) = serve_pid(table) {
        warn(format!(
            "table inet {table} is owned by a running `smartproxy serve` (pid {pid}); it keeps the table as its own route files say"
        ));
    }
}

/// The pid of the running serve that answers for `table` (`?` when it did not say).
fn serve_pid(table: &str) -> Option<String> {
    let status = crate::status::ask_serve(table)?;
    Some(
        status
            .serve
            .map_or_else(|| "?".to_owned(), |s| s.pid.to_string()),
    )
}
