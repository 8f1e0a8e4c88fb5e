//! nft vocabulary that needs no kernel: the guard every script passes before it is run.

pub mod guard;
