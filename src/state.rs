//! Per-namespace state under `/run/smartproxy/net-<inode>/` (or `$SMARTPROXY_STATE_DIR`):
//! the lock that serialises plan/apply/destroy, the listing last applied (for drift), and
//! a pending confirm-timeout with its rollback script.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("lock held: another smartproxy is changing table `{table}` in this network namespace (waited {waited:?}; see --lock-timeout)")]
    LockHeld { table: String, waited: Duration },
    #[error("state directory `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The state directory of the network namespace this process runs in.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SMARTPROXY_STATE_DIR") {
        return PathBuf::from(d);
    }
    let ns = std::fs::read_link("/proc/self/ns/net")
        .map(|l| {
            l.to_string_lossy()
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
        })
        .unwrap_or_default();
    PathBuf::from("/run/smartproxy").join(format!("net-{ns}"))
}

pub fn path(table: &str, suffix: &str) -> PathBuf {
    dir().join(format!("{table}.{suffix}"))
}

/// An exclusive lock on one table's state; released on drop. While it is held, every
/// command that changes the kernel inherits its descriptor ([`crate::kernel::exec`]), so
/// the lock stays taken until such a command has exited, even if this process dies first.
pub struct Lock {
    file: File,
}

impl Lock {
    fn held(file: File) -> Lock {
        crate::kernel::exec::hold(std::os::fd::AsRawFd::as_raw_fd(&file));
        Lock { file }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Out of the registry before the descriptor closes (the file field drops after).
        crate::kernel::exec::release(std::os::fd::AsRawFd::as_raw_fd(&self.file));
    }
}

/// Takes the table's lock, waiting up to `timeout`.
pub fn lock(table: &str, timeout: Duration) -> Result<Lock, StateError> {
    let d = dir();
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    let p = path(table, "lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(io(&p))?;
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Lock::held(file)),
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StateError::LockHeld {
                    table: table.to_owned(),
                    waited: start.elapsed(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&p)(e)),
        }
    }
}

pub fn read(table: &str, suffix: &str) -> Option<String> {
    std::fs::read_to_string(path(table, suffix)).ok()
}

/// Writes beside and renames: readers never see half a file.
pub fn write(table: &str, suffix: &str, text: &str) -> Result<(), StateError> {
    let d = dir();
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    let p = path(table, suffix);
    let tmp = path(table, &format!("{suffix}.tmp"));
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &p).map_err(io(&p))
}

pub fn remove(table: &str, suffix: &str) {
    let _ = std::fs::remove_file(path(table, suffix));
}

/// Tables with a pending confirm in this namespace.
pub fn pending_tables() -> Vec<String> {
    tables_with("pending")
}

/// Tables that have a state file with this suffix in this namespace.
pub fn tables_with(suffix: &str) -> Vec<String> {
    let suffix = format!(".{suffix}");
    let mut out: Vec<String> = std::fs::read_dir(dir())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(suffix.as_str())
                .map(str::to_owned)
        })
        .collect();
    out.sort();
    out
}
