//! `smartproxy confirm`, `smartproxy rollback` and the hidden `__watchdog`.

use std::io::Write;

use super::{Outcome, EXIT_OK};
use crate::confirm;
use crate::kernel::Kernel;

/// Keeps the applied ruleset of every pending table (or only `table`); 1 when nothing is
/// pending.
pub fn confirm(table: Option<&str>) -> Outcome {
    let pending = confirm::pending_tables(table);
    if pending.is_empty() {
        return Err(confirm::nothing_pending(table, "confirm").into());
    }
    for t in &pending {
        super::owner::warn_if_served(t);
        confirm::confirm(t)?;
        println!("Confirmed: table inet {t} keeps the applied ruleset.");
    }
    Ok(EXIT_OK)
}

/// Rolls every pending table (or only `table`) back now; 1 when nothing is pending.
pub fn rollback(kernel: &dyn Kernel, table: Option<&str>) -> Outcome {
    let pending = confirm::pending_tables(table);
    if pending.is_empty() {
        return Err(confirm::nothing_pending(table, "roll back").into());
    }
    for t in &pending {
        confirm::rollback(kernel, t)?;
        println!("Rolled back: table inet {t} is as it was before the unconfirmed apply.");
    }
    Ok(EXIT_OK)
}

/// The detached watchdog; `ready PID START` on stdout tells apply it holds the rollback.
pub fn watchdog(kernel: &dyn Kernel, table: &str, token: &str, deadline_ms: u64) -> Outcome {
    confirm::watchdog(kernel, table, token, deadline_ms, |pid, start| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready {pid} {start}");
        let _ = out.flush();
    })?;
    Ok(EXIT_OK)
}
