//! The real kernel: `nft` in the current network namespace.

use super::exec::Inherit;
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

/// Runs a command (see [`exec`](super::exec)) with an optional script on stdin; returns
/// stdout or a [`KernelError`].
fn exec(
    program: &str,
    args: &[&str],
    script: Option<&str>,
    inherit: Inherit,
) -> Result<String, KernelError> {
    let out = super::exec::run(program, args, script, inherit)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(KernelError::Command {
            cmd: format!("{program} {}", args.join(" ")),
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
        match exec(&self.nft, &args, None, Inherit::Nothing) {
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

    /// `nft -f -` with the script on stdin from a sealed memfd (never a pipe: nft commits
    /// the prefix it read when a pipe's writer dies), holding our table locks until it exits.
    fn run(&self, script: &str) -> Result<(), KernelError> {
        exec(&self.nft, &["-f", "-"], Some(script), Inherit::Locks).map(drop)
    }

    /// Loads the script in a throw-away network namespace (`unshare --net`) and lists the
    /// table back: exactly the kernel's normalisation, without touching the real one. Also
    /// a throw-away pid namespace whose init (the shell) gets SIGKILL when `unshare` dies
    /// (`--kill-child`, and `unshare` dies with us): nothing in it outlives smartproxy.
    fn normalise(&self, script: &str, table: &str) -> Result<String, KernelError> {
        let shell = "\"$0\" -f - && \"$0\" -s list table inet \"$1\"";
        exec(
            "unshare",
            &[
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                "--",
                "sh",
                "-c",
                shell,
                &self.nft,
                table,
            ],
            Some(script),
            Inherit::Nothing,
        )
    }

    fn list_chains_json(&self) -> Result<String, KernelError> {
        exec(&self.nft, &["-j", "list", "chains"], None, Inherit::Nothing)
    }

    fn list_tables(&self) -> Result<Vec<String>, KernelError> {
        let text = exec(
            &self.nft,
            &["list", "tables", "inet"],
            None,
            Inherit::Nothing,
        )?;
        let mut names: Vec<String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("table inet "))
            .map(|n| n.trim().to_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    fn generation(&self) -> Option<u32> {
        super::generation::current().ok()
    }

    fn list_table_json(&self, table: &str) -> Result<Option<String>, KernelError> {
        let args = ["-j", "list", "table", "inet", table];
        match exec(&self.nft, &args, None, Inherit::Nothing) {
            Ok(text) => Ok(Some(text)),
            Err(err) if is_absent(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `conntrack -L`; `Ok(None)` when conntrack-tools is not installed.
    fn conntrack_entries(&self) -> Result<Option<String>, KernelError> {
        match exec("conntrack", &["-L"], None, Inherit::Nothing) {
            Ok(text) => Ok(Some(text)),
            Err(KernelError::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    fn capability(&self) -> Result<(), String> {
        super::probe::capability()
    }

    fn version(&self) -> String {
        exec(&self.nft, &["--version"], None, Inherit::Nothing).unwrap_or_default()
    }
}
