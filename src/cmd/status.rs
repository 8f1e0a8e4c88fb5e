//! `smartproxy status` (temporary: the status part moves the flow here).

use std::path::PathBuf;

use crate::cli::StatusFormat;
use crate::kernel::Kernel;

pub fn run(
    _kernel: &dyn Kernel,
    paths: &[PathBuf],
    table: Option<&str>,
    format: StatusFormat,
    color: bool,
) -> i32 {
    crate::status::run(paths, table, format, color)
}
