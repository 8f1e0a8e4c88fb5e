//! `smartproxy serve`: builds the real kernel and hands over; serve logs on its own.

use std::sync::Arc;

use super::{Error, Outcome, EXIT_OK};
use crate::cli::ServeArgs;
use crate::kernel::nft::NftKernel;

/// `color`: `--color` as given; the log is coloured only when it goes to a terminal (or
/// `--color always`), never under `NO_COLOR` unless asked for.
pub fn run(args: ServeArgs, color: crate::cli::Color) -> Outcome {
    use std::io::IsTerminal;
    let mut options: crate::serve::Options = args.into();
    options.log_color = super::colored(color, std::io::stderr().is_terminal());
    match crate::serve::run(options, Arc::new(NftKernel::default())) {
        Ok(()) => Ok(EXIT_OK),
        // serve has logged why.
        Err(_) => Err(Error::Shown),
    }
}
