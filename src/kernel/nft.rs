//! The real kernel: `nft` in the current network namespace.

use std::io::Write;
use std::process::{Command, Stdio};

use super::{Kernel, KernelError};

pub struct NftKernel {
    /// The `nft` binary (tests may point it elsewhere).
    pub nft: String,
}

impl Default for NftKernel {
    fn default() -> Self {
        Self {
            nft: std::env::var("SMARTPROXY_NFT").unwrap_or_else(|_| "nft".to_owned()),
        }
    }
}

/// Runs a command with optional stdin; returns stdout or a [`KernelError`].
fn exec(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, KernelError> {
    let cmd = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| KernelError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| KernelError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| KernelError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(KernelError::Command {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn is_absent(err: &KernelError) -> bool {
    matches!(err, KernelError::Command { stderr, .. } if stderr.contains("No such file or directory"))
}

impl NftKernel {
    fn list(&self, table: &str, stateless: bool) -> Result<Option<String>, KernelError> {
        let mut args = vec![];
        if stateless {
            args.push("-s");
        }
        args.extend(["list", "table", "inet", table]);
        match exec(&self.nft, &args, None) {
            Ok(text) => Ok(Some(text)),
            Err(err) if is_absent(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

impl Kernel for NftKernel {
    fn list_table(&self, table: &str) -> Result<Option<String>, KernelError> {
        self.list(table, true)
    }

    fn dump_table(&self, table: &str) -> Result<Option<String>, KernelError> {
        self.list(table, false)
    }

    fn run(&self, script: &str) -> Result<(), KernelError> {
        exec(&self.nft, &["-f", "-"], Some(script)).map(drop)
    }

    /// Loads the script in a throw-away network namespace (`unshare --net`) and lists the
    /// table back: exactly the kernel's normalisation, without touching the real one.
    fn normalise(&self, script: &str, table: &str) -> Result<String, KernelError> {
        let shell = "\"$0\" -f - && \"$0\" -s list table inet \"$1\"";
        exec(
            "unshare",
            &["--net", "--", "sh", "-c", shell, &self.nft, table],
            Some(script),
        )
    }

    fn list_chains_json(&self) -> Result<String, KernelError> {
        exec(&self.nft, &["-j", "list", "chains"], None)
    }

    fn generation(&self) -> Option<u32> {
        super::generation::current().ok()
    }

    fn version(&self) -> String {
        exec(&self.nft, &["--version"], None).unwrap_or_default()
    }
}
