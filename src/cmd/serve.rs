//! `smartproxy serve`: builds the real kernel and hands over; serve logs on its own.

use std::sync::Arc;

use super::{Error, Outcome, EXIT_OK};
use crate::cli::ServeArgs;
use crate::kernel::nft::NftKernel;

pub fn run(args: ServeArgs) -> Outcome {
    match crate::serve::run(args.into(), Arc::new(NftKernel::default())) {
        Ok(()) => Ok(EXIT_OK),
        // serve has logged why.
        Err(_) => Err(Error::Shown),
    }
}
