//! An in-memory kernel for tests: a listed table, the transactions it was given, and an
//! optional failure. Normalisation is the identity, so tests give listings in nft's form.

use std::cell::RefCell;

use super::{Kernel, KernelError};

#[derive(Default)]
pub struct FakeKernel {
    pub listing: RefCell<Option<String>>,
    pub transactions: RefCell<Vec<String>>,
    /// When set, `run` fails with this message and changes nothing.
    pub fail_with: Option<String>,
    /// What `run` turns the listing into on success (tests decide the outcome).
    pub after_run: RefCell<Option<String>>,
}

impl Kernel for FakeKernel {
    fn list_table(&self, _table: &str) -> Result<Option<String>, KernelError> {
        Ok(self.listing.borrow().clone())
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
        self.transactions.borrow_mut().push(script.to_owned());
        if let Some(next) = self.after_run.borrow_mut().take() {
            *self.listing.borrow_mut() = Some(next);
        }
        Ok(())
    }

    fn normalise(&self, script: &str, _table: &str) -> Result<String, KernelError> {
        Ok(script.to_owned())
    }

    fn list_chains_json(&self) -> Result<String, KernelError> {
        Ok("{\"nftables\": []}".to_owned())
    }

    fn version(&self) -> String {
        "fake".to_owned()
    }
}
