//! serve's kernel routes, through the [`Kernel`] it was given: the table made what the
//! running model says without the targets that are down (adopting a table of the same
//! name on start, one incremental transaction on a reload or a health change, none when
//! nothing differs), and removed on stop. [`Provisioner`] is the whole of it, driven
//! without sockets by tests; serve runs it on a blocking thread (nft may take a while).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{info, warn};

use super::kernel::{self, Carrier};
use super::load::LOG_DIAGNOSTICS;
use crate::kernel::Kernel;
use crate::model::Model;
use crate::plan::Summary;

/// Why the kernel routes are not what the model says; the kernel is as it was.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The converge (or the table's removal) failed, with its cause (nft's own message).
    #[error(transparent)]
    Converge(#[from] crate::converge::Error),
    /// The blocking thread that ran it was lost.
    #[error("the kernel work was lost: {0}")]
    Lost(#[from] tokio::task::JoinError),
}

/// What one provisioning did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provisioned {
    /// The kernel does not carry the kernel routes (`--nftables off`, or the fallback).
    NotCarried,
    /// On start, the table was there already and was made what the model says (with as
    /// many changes as `Summary` counts; none when it came from the same files).
    Adopted(Summary),
    /// One transaction changed the routes named in `changes` (`+ web`, `~ api`, ...).
    Changed {
        summary: Summary,
        changes: Vec<String>,
    },
    /// The table was what the model says already: no transaction.
    Unchanged,
    /// The model has no kernel routes and the table was there: it went.
    Removed,
    /// The model has no kernel routes and there is no table.
    Absent,
}

/// Provisions one table's kernel routes through one kernel.
pub struct Provisioner {
    kernel: Arc<dyn Kernel + Send + Sync>,
    carrier: Carrier,
}

impl Provisioner {
    pub fn new(kernel: Arc<dyn Kernel + Send + Sync>, carrier: Carrier) -> Provisioner {
        Provisioner { kernel, carrier }
    }

    pub fn carrier(&self) -> Carrier {
        self.carrier
    }

    pub fn kernel(&self) -> &Arc<dyn Kernel + Send + Sync> {
        &self.kernel
    }

    /// Makes table `model.table` what `model` says without the targets in `down` (a route
    /// with none left refuses its connections); `starting`: a table found there is
    /// adopted. Logs what it did, and the plan's warnings (cut short).
    pub fn provision(
        &self,
        model: &Model,
        down: &BTreeSet<SocketAddr>,
        starting: bool,
    ) -> Result<Provisioned, Error> {
        if self.carrier != Carrier::Kernel {
            return Ok(Provisioned::NotCarried);
        }
        let model = kernel::without_down(model, down);
        let table = &model.table;
        if model.kernel.is_empty() {
            // Nothing for the kernel: no table (not even an empty one); one of ours with
            // routes the files no longer have goes.
            return Ok(if self.remove(table)? {
                info!("removed table inet {table}: the route files have no kernel routes");
                Provisioned::Removed
            } else {
                Provisioned::Absent
            });
        }
        let converged = crate::converge::converge(&*self.kernel, &model)?;
        for w in converged.warnings.iter().take(LOG_DIAGNOSTICS) {
            warn!("{w}");
        }
        if let Some(more) = converged.warnings.len().checked_sub(LOG_DIAGNOSTICS) {
            if more > 0 {
                warn!("and {more} more warnings; run `smartproxy plan` on the route files to see them all");
            }
        }
        let s = converged.summary;
        if starting && converged.existed {
            info!(
                added = s.add,
                changed = s.change,
                destroyed = s.destroy,
                "adopted the existing table inet {table}"
            );
            Ok(Provisioned::Adopted(s))
        } else if s == Summary::default() {
            Ok(Provisioned::Unchanged)
        } else {
            info!(
                added = s.add,
                changed = s.change,
                destroyed = s.destroy,
                "kernel routes in table inet {table}: {}",
                converged.changes.join(", ")
            );
            Ok(Provisioned::Changed {
                summary: s,
                changes: converged.changes,
            })
        }
    }

    /// Deletes table `table`; whether it was there.
    pub fn remove(&self, table: &str) -> Result<bool, Error> {
        Ok(crate::converge::remove_table(&*self.kernel, table)?)
    }

    /// [`Provisioner::provision`] on a blocking thread.
    pub(crate) async fn provision_blocking(
        self: &Arc<Self>,
        model: Arc<super::load::Loaded>,
        down: BTreeSet<SocketAddr>,
        starting: bool,
    ) -> Result<Provisioned, Error> {
        if self.carrier != Carrier::Kernel {
            return Ok(Provisioned::NotCarried);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.provision(model.model(), &down, starting)).await?
    }

    /// [`Provisioner::remove`] on a blocking thread.
    pub(crate) async fn remove_blocking(self: &Arc<Self>, table: String) -> Result<bool, Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.remove(&table)).await?
    }
}
