//! `smartproxy status` as a library: per route, what the kernel counted (the named counter
//! `c_<route>`), the connections open now (conntrack entries carrying the route's mark)
//! and, when `smartproxy serve` runs, its own counters and target health, asked over its
//! local socket.
//!
//! The kernel side is read-only and costs two queries of the [`Kernel`](crate::kernel::Kernel)
//! whatever the number of routes: [`list_table_json`](crate::kernel::Kernel::list_table_json)
//! (counters, the `route_filter` map that ties each mark to `f_<route>`, and the mark mask
//! of the filter rules) and [`conntrack_entries`](crate::kernel::Kernel::conntrack_entries).
//!
//! - [`kernel`]: the two listings -> per-route [`KernelCounts`];
//! - [`build`]: a [`Status`] from the model and those counts;
//! - [`text`], [`json`], [`prometheus`]: the three renderers (the Prometheus words serve's
//!   `/metrics` shares live in [`prometheus`]);
//! - [`client`]: asking a running serve over its socket.
//!
//! Nothing here prints; the flow (which table, which renderer, the exit code) is
//! the command layer's (`src/cmd/status.rs`).

pub mod build;
pub mod client;
pub mod json;
pub mod kernel;
pub mod prometheus;
pub mod text;

pub use build::{from_counts, from_model};
pub use client::{ask_serve, socket_path};
pub use json::render_json;
pub use kernel::{kernel_counts, read_kernel};
pub use prometheus::render_prometheus;
pub use text::render_text;

/// Why the kernel's counts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Listing the table failed (nft's own message is in the text).
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    /// What nft printed is not JSON.
    #[error("cannot read nft's JSON listing: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an nft listing.
    #[error("cannot read nft's JSON listing: no `nftables` array")]
    NotAListing,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelCounts {
    pub packets: u64,
    pub bytes: u64,
    pub active: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServeCounts {
    pub connections_total: u64,
    pub active: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: u64,
    pub refused: u64,
    pub tls_handshakes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetStatus {
    /// `198.51.100.2:80`, `[2001:db8::2]:80`; `ADDR:*` keeps the client's port, `ADDR:A-B`
    /// maps a range.
    pub target: String,
    /// `None`: not health-checked.
    pub up: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteStatus {
    pub name: String,
    /// `nftables` or `userspace`.
    pub engine: String,
    pub kernel: Option<KernelCounts>,
    pub serve: Option<ServeCounts>,
    pub targets: Vec<TargetStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServeInfo {
    pub pid: u32,
    /// `on`, `fallback` or `off`.
    pub nftables: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub table: String,
    pub serve: Option<ServeInfo>,
    /// Sorted by name.
    pub routes: Vec<RouteStatus>,
    /// An `apply --confirm-timeout` not confirmed yet (read from the state directory).
    #[serde(default)]
    pub pending_confirm: Option<crate::confirm::PendingConfirm>,
}

pub(crate) const ENGINE_NFTABLES: &str = "nftables";
pub(crate) const ENGINE_USERSPACE: &str = "userspace";

/// A status with both engines, serve counts and checked targets, for the renderers' tests.
#[cfg(test)]
pub(crate) fn sample() -> Status {
    Status {
        table: "edge".into(),
        pending_confirm: None,
        serve: Some(ServeInfo {
            pid: 42,
            nftables: "on".into(),
        }),
        routes: vec![
            RouteStatus {
                name: "sni \"x\"".into(),
                engine: ENGINE_USERSPACE.into(),
                kernel: None,
                serve: Some(ServeCounts {
                    connections_total: 9,
                    active: 2,
                    bytes_in: 100,
                    bytes_out: 2000,
                    errors: 1,
                    refused: 3,
                    tls_handshakes: 8,
                }),
                targets: vec![
                    TargetStatus {
                        target: "198.51.100.2:443".into(),
                        up: Some(true),
                    },
                    TargetStatus {
                        target: "198.51.100.3:443".into(),
                        up: Some(false),
                    },
                ],
            },
            RouteStatus {
                name: "web".into(),
                engine: ENGINE_NFTABLES.into(),
                kernel: Some(KernelCounts {
                    packets: 12,
                    bytes: 1337,
                    active: 1,
                }),
                serve: None,
                targets: vec![TargetStatus {
                    target: "198.51.100.2:80".into(),
                    up: None,
                }],
            },
        ],
    }
}
