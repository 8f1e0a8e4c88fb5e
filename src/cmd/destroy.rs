//! `smartproxy destroy`: removes the table (and nothing else), after approval.

use std::path::Path;

use super::{approved, load, lock_wait, Outcome, Ui, EXIT_OK};
use crate::converge;
use crate::kernel::Kernel;

pub fn run(
    kernel: &dyn Kernel,
    ui: &Ui,
    path: Option<&Path>,
    table: Option<&str>,
    (auto_approve, force): (bool, bool),
    lock_secs: f64,
) -> Outcome {
    let table = match (table, path) {
        (Some(t), _) => t.to_owned(),
        (None, Some(p)) => load(ui, &[p.to_path_buf()])?.settings.table,
        (None, None) => super::owner::default_table(kernel)?,
    };
    super::owner::refuse_if_served(&table, force, "destroyed")?;
    let _lock = converge::lock(&table, lock_wait(lock_secs))?;
    let Some(live) = kernel.list_table(&table)? else {
        println!("Nothing to destroy: table inet {table} does not exist.");
        return Ok(EXIT_OK);
    };
    let routes = crate::nft::listing::parse(&live).routes.len();
    println!(
        "smartproxy will destroy table inet {table} ({routes} route{}):\n",
        super::check::plural(routes)
    );
    let minus = if ui.color { "\x1b[31m-\x1b[0m" } else { "-" };
    println!("  {minus} table inet {table}\n\nPlan: 0 to add, 0 to change, {routes} to destroy.");
    if crate::confirm::pending(&table).is_some() {
        println!(
            "\nThis also ends the pending confirm of table inet {table}: nothing will roll back."
        );
    }
    approved(auto_approve, "destroyed", "destroy")?;
    converge::delete_table(kernel, &table)?;
    crate::confirm::disarm_watchdog(&table);
    println!("\nDestroy complete! Table inet {table} removed.");
    Ok(EXIT_OK)
}
