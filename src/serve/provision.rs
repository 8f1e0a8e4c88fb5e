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
    /// The ruleset generation right after serve last made the table what the model says
    /// (`None`: not yet, or unknown): any other generation means someone committed since.
    settled: std::sync::Mutex<Option<u32>>,
}

impl Provisioner {
    pub fn new(kernel: Arc<dyn Kernel + Send + Sync>, carrier: Carrier) -> Provisioner {
        Provisioner {
            kernel,
            carrier,
            settled: std::sync::Mutex::new(None),
        }
    }

    fn settled(&self) -> std::sync::MutexGuard<'_, Option<u32>> {
        self.settled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether anything was committed to the ruleset since serve last provisioned (one
    /// cheap generation query; no listing). Unknown generations count as a change.
    pub fn ruleset_moved(&self) -> bool {
        if self.carrier != Carrier::Kernel {
            return false;
        }
        let now = self.kernel.generation();
        now.is_none() || now != *self.settled()
    }

    /// Puts the table back to what `model` says (without the targets in `down`) when the
    /// ruleset moved since the last provisioning: `Ok(None)` when it did not; otherwise
    /// what it did. A change by someone else to another table plans to [`Provisioned::Unchanged`]
    /// and touches nothing.
    pub fn reconcile(
        &self,
        model: &Model,
        down: &BTreeSet<SocketAddr>,
    ) -> Result<Option<Provisioned>, Error> {
        if !self.ruleset_moved() {
            return Ok(None);
        }
        let table = &model.table;
        // Quietly: a reconcile logs its own line.
        let (done, existed) = self.provision_inner(model, down, false, false)?;
        match &done {
            Provisioned::Changed { changes, .. } => warn!(
                "reconcile: table inet {table} was {} outside serve; put back: {}",
                if existed { "changed" } else { "deleted" },
                changes.join(", ")
            ),
            Provisioned::Removed => {
                warn!("reconcile: table inet {table} reappeared without kernel routes; removed it");
            }
            _ => {}
        }
        Ok(Some(done))
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
        Ok(self.provision_inner(model, down, starting, true)?.0)
    }

    fn provision_inner(
        &self,
        model: &Model,
        down: &BTreeSet<SocketAddr>,
        starting: bool,
        log: bool,
    ) -> Result<(Provisioned, bool), Error> {
        let (done, generation, existed) = self.converge(model, down, starting, log)?;
        // The generation the table is known to be right at (`None`: look again).
        *self.settled() = generation;
        Ok((done, existed))
    }

    fn converge(
        &self,
        model: &Model,
        down: &BTreeSet<SocketAddr>,
        starting: bool,
        log: bool,
    ) -> Result<(Provisioned, Option<u32>, bool), Error> {
        if self.carrier != Carrier::Kernel {
            return Ok((Provisioned::NotCarried, None, false));
        }
        let model = kernel::without_down(model, down);
        let table = &model.table;
        if model.kernel.is_empty() {
            // Nothing for the kernel: no table (not even an empty one); one of ours with
            // routes the files no longer have goes.
            let before = self.kernel.generation();
            return Ok(if self.remove(table)? {
                if log {
                    info!("removed table inet {table}: the route files have no kernel routes");
                }
                (Provisioned::Removed, None, true)
            } else {
                (Provisioned::Absent, before, false)
            });
        }
        let converged = crate::converge::converge(&*self.kernel, &model)?;
        let shown = if log { converged.warnings.len() } else { 0 };
        for w in converged.warnings.iter().take(LOG_DIAGNOSTICS.min(shown)) {
            warn!("{w}");
        }
        if let Some(more) = shown.checked_sub(LOG_DIAGNOSTICS) {
            if more > 0 {
                warn!("and {more} more warnings; run `smartproxy plan` on the route files to see them all");
            }
        }
        let s = converged.summary;
        let generation = converged.generation;
        let done = if starting && converged.existed {
            info!(
                added = s.add,
                changed = s.change,
                destroyed = s.destroy,
                "adopted the existing table inet {table}"
            );
            Provisioned::Adopted(s)
        } else if s == Summary::default() {
            Provisioned::Unchanged
        } else {
            if log {
                info!(
                    added = s.add,
                    changed = s.change,
                    destroyed = s.destroy,
                    "kernel routes in table inet {table}: {}",
                    converged.changes.join(", ")
                );
            }
            Provisioned::Changed {
                summary: s,
                changes: converged.changes,
            }
        };
        Ok((done, generation, converged.existed))
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

    /// [`Provisioner::reconcile`] on a blocking thread.
    pub(crate) async fn reconcile_blocking(
        self: &Arc<Self>,
        model: Arc<super::load::Loaded>,
        down: BTreeSet<SocketAddr>,
    ) -> Result<Option<Provisioned>, Error> {
        if self.carrier != Carrier::Kernel {
            return Ok(None);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reconcile(model.model(), &down)).await?
    }

    /// [`Provisioner::remove`] on a blocking thread.
    pub(crate) async fn remove_blocking(self: &Arc<Self>, table: String) -> Result<bool, Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.remove(&table)).await?
    }
}
