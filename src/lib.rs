//! smartproxy: declarative route files -> one deterministic nftables table.
//!
//! Pipeline: `config` (parse + validate, with spans) -> `lower` (engine choice, resolved
//! targets) -> `model` -> `render` (nft script via templates, nftables JSON) -> `converge`
//! (desired vs live through the cache, preflight, `plan`, `apply`'s transaction, commit,
//! record) over a `kernel::Kernel`. `cmd` holds the command flows and is the only layer
//! that prints; `serve` is the userspace engine. docs/ARCHITECTURE.md has the whole map.

pub mod apply;
pub mod cache;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod confirm;
pub mod converge;
pub mod diag;
pub mod fsutil;
pub mod kernel;
pub mod lower;
pub mod model;
pub mod nft;
pub mod plan;
pub mod preflight;
pub mod render;
pub mod serve;
pub mod state;
pub mod status;
pub mod types;

pub use cmd::{run, write_completions};
