//! The nft vocabulary, pure (no kernel, no I/O): the object names a route owns, both ways
//! ([`names`]), the keywords nft refuses as names ([`keywords`]), comment sanitising
//! ([`comment`]), the listing parser ([`listing`]) and the guard every script passes before
//! it is run ([`guard`]).

pub mod comment;
pub mod guard;
pub mod keywords;
pub mod listing;
pub mod names;
