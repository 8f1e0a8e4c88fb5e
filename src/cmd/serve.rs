//! `smartproxy serve`: builds the real kernel and hands over; serve logs on its own.

use std::sync::Arc;

use super::{Error, Outcome, EXIT_OK};
use crate::cli::ServeArgs;
use crate::kernel::nft::NftKernel;

pub fn run(args: ServeArgs) -> Outcome {
    // (temporary until serve takes its kernel: serve builds its own)
    let _kernel = Arc::new(NftKernel::default());
    match crate::serve::run(args.into()) {
        0 => Ok(EXIT_OK),
        // serve has logged why.
        _ => Err(Error::Shown),
    }
}
