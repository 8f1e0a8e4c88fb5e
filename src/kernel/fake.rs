//! An in-memory kernel for tests: a listed table, the transactions it was given, and an
//! optional failure. Normalisation is the identity, so tests give listings in nft's form.

use std::sync::Mutex;

use super::{Kernel, KernelError};

#[derive(Default)]
pub struct FakeKernel {
    pub listing: Mutex<Option<String>>,
    pub transactions: Mutex<Vec<String>>,
    /// When set, `run` fails with this message and changes nothing.
    pub fail_with: Option<String>,
    /// What `run` turns the listing into on success (tests decide the outcome).
    pub after_run: Mutex<Option<String>>,
}

impl Kernel for FakeKernel {
    fn list_table(&self, _table: &str) -> Result<Option<String>, KernelError> {
        Ok(self.listing.lock().map(|l| l.clone()).unwrap_or_default())
    }

    fn dump_table(&self, table: &str) -> Result<Option<String>, KernelError> {
        self.list_table(table)
    }

    fn run(&self, script: &str) -> Result<(), KernelError> {
        if let Some(msg) = &self.fail_with {
            return Err(KernelError::Command {
                cmd: "nft -f -".into(),
                status: "exit status: 1".into(),
                stderr: msg.clone(),
            });
        }
        if let Ok(mut t) = self.transactions.lock() {
            t.push(script.to_owned());
        }
        let next = self.after_run.lock().ok().and_then(|mut n| n.take());
        if let (Some(next), Ok(mut listing)) = (next, self.listing.lock()) {
            *listing = Some(next);
        }
        Ok(())
    }

    fn normalise(&self, script: &str, _table: &str) -> Result<String, KernelError> {
        Ok(script.to_owned())
    }

    fn list_chains_json(&self) -> Result<String, KernelError> {
        Ok("{\"nftables\": []}".to_owned())
    }

    fn list_table_json(&self, _table: &str) -> Result<Option<String>, KernelError> {
        Ok(None)
    }

    fn conntrack_entries(&self) -> Result<Option<String>, KernelError> {
        Ok(None)
    }

    fn capability(&self) -> Result<(), String> {
        Ok(())
    }

    fn version(&self) -> String {
        "fake".to_owned()
    }
}
