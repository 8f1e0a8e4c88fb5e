//! Per-namespace state under `/run/smartproxy/net-<inode>/` (or `$SMARTPROXY_STATE_DIR`):
//! the lock that serialises plan/apply/destroy, the listing last applied (for drift), and
//! a pending confirm-timeout with its rollback script.
//!
//! Trust: the directory is created 0700 and every file 0600, whatever the umask. Before
//! anything in it is used, the directory must be a real directory owned by our effective
//! uid and not writable by group or others (group traverse, 0710, is allowed: serve's
//! `--socket-group`); each file is opened without following a symlink and must be a
//! regular file owned by us and not writable by group or others. Anything else is refused
//! with an error that names the path, what is wrong and the fix.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
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
    #[error("refusing to trust `{path}`: {problem}; {fix}")]
    Untrusted {
        path: String,
        problem: String,
        fix: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Mode of a state file and of the state directory.
pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Our effective uid (`/proc/self/status`; no libc call needed).
pub fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                .and_then(|id| id.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether metadata of something we are about to trust is ours and closed to others.
fn trust(path: &Path, meta: &std::fs::Metadata, what: &str) -> Result<(), StateError> {
    let me = euid();
    let shown = path.display().to_string();
    if meta.uid() != me {
        return Err(StateError::Untrusted {
            problem: format!(
                "this {what} is owned by uid {}, not by us (uid {me})",
                meta.uid()
            ),
            fix: format!(
                "remove it (`rm -r {shown}`) or `chown {me} {shown}` if it is really ours"
            ),
            path: shown,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let want = if what == "directory" { "700" } else { "600" };
        return Err(StateError::Untrusted {
            problem: format!("this {what} is writable by group or others (mode {mode:04o})"),
            fix: format!("`chmod {want} {shown}` (or remove it)"),
            path: shown,
        });
    }
    Ok(())
}

/// Creates the state directory (0700) or checks the one that is there (see the module docs).
pub fn ensure_dir() -> Result<PathBuf, StateError> {
    let d = dir();
    match std::fs::symlink_metadata(&d) {
        Ok(meta) => {
            if !meta.file_type().is_dir() {
                return Err(StateError::Untrusted {
                    path: d.display().to_string(),
                    problem: "this is not a directory (a symlink or a file)".to_owned(),
                    fix: format!("remove it (`rm {}`)", d.display()),
                });
            }
            trust(&d, &meta, "directory")?;
            // One made before state was private (0755) becomes 0700; one closed to others
            // is left as it is (serve's `--socket-group` makes it 0710 on purpose).
            if meta.mode() & 0o007 != 0 {
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(DIR_MODE))
                    .map_err(io(&d))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
                // At most 0755 (under `umask 000` too): nobody else may rename our directory.
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(io(parent))?;
            }
            match std::fs::DirBuilder::new().mode(DIR_MODE).create(&d) {
                Ok(()) => std::fs::set_permissions(&d, std::fs::Permissions::from_mode(DIR_MODE))
                    .map_err(io(&d))?,
                // Another smartproxy made it meanwhile: check it as any existing one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return ensure_dir(),
                Err(e) => return Err(io(&d)(e)),
            }
        }
        Err(e) => return Err(io(&d)(e)),
    }
    Ok(d)
}

/// Checks the directory and creates the table's lock file (0600) if it is missing, so that
/// [`lock`] opens a file that is ours.
fn prepare_lock(table: &str) -> Result<(), StateError> {
    ensure_dir()?;
    let p = path(table, "lock");
    match crate::fsutil::create_once(&p, b"", FILE_MODE) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_file(&p),
        Err(e) => Err(io(&p)(e)),
    }
}

/// Whether the file at `p` (not followed if a symlink) may be trusted.
fn check_file(p: &Path) -> Result<(), StateError> {
    let meta = std::fs::symlink_metadata(p).map_err(io(p))?;
    if !meta.file_type().is_file() {
        return Err(StateError::Untrusted {
            path: p.display().to_string(),
            problem: "this is not a regular file (a symlink, FIFO or device)".to_owned(),
            fix: format!("remove it (`rm {}`)", p.display()),
        });
    }
    trust(p, &meta, "file")
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
    prepare_lock(table)?;
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

/// A state file's text: `Ok(None)` when there is none, an error when it is there but not
/// to be trusted (see the module docs) or unreadable.
pub fn read_checked(table: &str, suffix: &str) -> Result<Option<String>, StateError> {
    read_path(&path(table, suffix))
}

fn read_path(p: &Path) -> Result<Option<String>, StateError> {
    let mut file = match crate::fsutil::open_nofollow(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // ELOOP: a symlink.
        Err(_) if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) => {
            return Err(StateError::Untrusted {
                path: p.display().to_string(),
                problem: "this is a symlink".to_owned(),
                fix: format!("remove it (`rm {}`)", p.display()),
            })
        }
        Err(e) => return Err(io(p)(e)),
    };
    // Checked on the open file: what is read is what was checked.
    let meta = file.metadata().map_err(io(p))?;
    if !meta.file_type().is_file() {
        return Err(StateError::Untrusted {
            path: p.display().to_string(),
            problem: "this is not a regular file".to_owned(),
            fix: format!("remove it (`rm {}`)", p.display()),
        });
    }
    trust(p, &meta, "file")?;
    // A file of ours written before state was private (0644) becomes 0600.
    if meta.mode() & 0o077 != 0 {
        let _ = file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io(p))?;
    Ok(Some(text))
}

/// [`read_checked`] for callers that treat a missing and an untrusted file alike (the
/// flows check the table's files first with [`check_table`]); an untrusted file is never
/// returned.
pub fn read(table: &str, suffix: &str) -> Option<String> {
    read_checked(table, suffix).ok().flatten()
}

/// Writes atomically (readers never see half a file), 0600, never through a symlink.
pub fn write(table: &str, suffix: &str, text: &str) -> Result<(), StateError> {
    ensure_dir()?;
    let p = path(table, suffix);
    crate::fsutil::write_atomic(&p, text.as_bytes(), FILE_MODE).map_err(io(&p))
}

pub fn remove(table: &str, suffix: &str) {
    let _ = std::fs::remove_file(path(table, suffix));
}

/// Checks the directory and every file of `table` in it (the socket aside: serve makes it
/// 0660 on purpose, and it is only ever connected to): an error for the first one that is
/// not to be trusted. Nothing is created when the directory does not exist.
pub fn check_table(table: &str) -> Result<(), StateError> {
    let d = dir();
    if std::fs::symlink_metadata(&d).is_err() {
        return Ok(());
    }
    ensure_dir()?;
    let prefix = format!("{table}.");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&d)
        .map_err(io(&d))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    names.push(d.join(SEAL_KEY));
    names.sort();
    for p in names {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_socket() => {}
            Ok(_) => check_file(&p)?,
            Err(_) => {}
        }
    }
    Ok(())
}

/// Tables with a pending confirm in this namespace.
pub fn pending_tables() -> Vec<String> {
    tables_with("pending")
}

/// Tables that have a state file with this suffix in this namespace. A file whose name is
/// not a valid table name is not ours and is left out.
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
        .filter(|t| crate::config::validate::table_name(t).is_ok())
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------- sealed files

/// The namespace's sealing key: 32 random bytes in a 0600 file made once.
const SEAL_KEY: &str = "seal.key";

fn seal_key() -> Result<Vec<u8>, StateError> {
    let d = ensure_dir()?;
    let p = d.join(SEAL_KEY);
    if let Some(hex) = read_path(&p)? {
        if let Some(key) = from_hex(hex.trim()).filter(|k| k.len() == 32) {
            return Ok(key);
        }
        return Err(StateError::Untrusted {
            path: p.display().to_string(),
            problem: "this is not a sealing key (64 hex digits)".to_owned(),
            fix: format!(
                "remove it (`rm {}`): the caches it seals are then rebuilt",
                p.display()
            ),
        });
    }
    // A key must be secret: no fallback when the kernel gives no random bytes.
    let key = crate::fsutil::random_bytes(32).map_err(io(Path::new("/dev/urandom")))?;
    let hex = crate::plan::lower_hex(&key);
    match crate::fsutil::create_once(&p, hex.as_bytes(), FILE_MODE) {
        Ok(()) => {}
        // Another smartproxy made one meanwhile: use that.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return seal_key(),
        Err(e) => return Err(io(&p)(e)),
    }
    Ok(key)
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// HMAC-SHA256 (RFC 2104) of what `feed` hashes.
fn hmac_sha256(key: &[u8], feed: impl FnOnce(&mut sha2::Sha256)) -> String {
    use sha2::{Digest, Sha256};
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    feed(&mut inner);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    crate::plan::lower_hex(&outer.finalize())
}

/// [`hmac_sha256`] of `parts`, each length-prefixed (no two splits of the same bytes agree).
fn hmac(key: &[u8], parts: &[&[u8]]) -> String {
    use sha2::Digest;
    hmac_sha256(key, |h| {
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
    })
}

const SEAL_PREFIX: &str = "hmac-sha256:";

fn mac_of(key: &[u8], table: &str, suffix: &str, text: &str) -> String {
    hmac(key, &[table.as_bytes(), suffix.as_bytes(), text.as_bytes()])
}

/// Writes a state file with a keyed digest of its table, name and text (see [`read_sealed`]).
pub fn write_sealed(table: &str, suffix: &str, text: &str) -> Result<(), StateError> {
    let key = seal_key()?;
    let mac = mac_of(&key, table, suffix, text);
    write(table, suffix, &format!("{SEAL_PREFIX}{mac}\n{text}"))
}

/// What a sealed state file holds: `Ok(None)` when there is none; an error when it is not
/// to be trusted or does not match its seal (changed by anything but smartproxy, or moved
/// from another table); then the caller ignores it (a cache is only a shortcut).
pub fn read_sealed(table: &str, suffix: &str) -> Result<Option<String>, StateError> {
    let Some(sealed) = read_checked(table, suffix)? else {
        return Ok(None);
    };
    let p = path(table, suffix).display().to_string();
    let broken = || StateError::Untrusted {
        path: p.clone(),
        problem: "it does not match its seal (changed outside smartproxy)".to_owned(),
        fix: "it is ignored and rebuilt".to_owned(),
    };
    let (head, text) = sealed.split_once('\n').ok_or_else(broken)?;
    let mac = head.strip_prefix(SEAL_PREFIX).ok_or_else(broken)?;
    let key = seal_key()?;
    let want = mac_of(&key, table, suffix, text);
    // Not secret-dependent timing worth guarding: the key never leaves the directory.
    if mac != want {
        return Err(broken());
    }
    Ok(Some(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        use sha2::Digest;
        let mac = hmac_sha256(b"Jefe", |h| h.update(b"what do ya want for nothing?"));
        assert_eq!(
            mac,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(hmac(b"Jefe", &[b"ab", b"c"]), hmac(b"Jefe", &[b"a", b"bc"]));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(from_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
