//! File writes and reads that a planted symlink cannot redirect.
//!
//! [`write_atomic`] is the one way smartproxy writes a file (state files, `plan --out`,
//! `compile -o`): a temp file with a random name is created exclusively in the target's
//! directory (`O_CREAT|O_EXCL|O_NOFOLLOW`: a symlink or any file already at that name is an
//! error, never followed), given its mode explicitly (the umask plays no part), written,
//! synced and renamed over the target. A rename replaces a symlink at the target itself,
//! never the file it points to. On any error the temp file is removed, so a full disk
//! leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `bytes` random bytes from the kernel (`/dev/urandom`), for what must be secret.
pub(crate) fn random_bytes(bytes: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf))?;
    Ok(buf)
}

/// Attempts at a fresh temp name before giving up (each collision is a name that exists).
const TEMP_ATTEMPTS: usize = 16;

/// `bytes` random bytes as hex, for names: from the kernel, with a time- and pid-based
/// fallback that keeps names unique (not secret) if `/dev/urandom` cannot be read.
pub(crate) fn random_hex(bytes: usize) -> String {
    let buf = random_bytes(bytes).unwrap_or_else(|_| {
        use std::hash::{BuildHasher, Hasher};
        let mut buf = vec![0u8; bytes];
        for chunk in buf.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            let v = h.finish().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        buf
    });
    crate::plan::lower_hex(&buf)
}

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Creates a new file at a random name beside `path` (never an existing one, never through
/// a symlink), with exactly `mode`.
fn create_temp(path: &Path, mode: u32) -> std::io::Result<(File, PathBuf)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = parent_of(path);
    let mut last = None;
    for _ in 0..TEMP_ATTEMPTS {
        let tmp = dir.join(format!(".{name}.{}.tmp", random_hex(8)));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(file) => return Ok((file, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temp name")))
}

/// Writes `bytes` to `path` atomically with permissions `mode` (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let (mut file, tmp) = create_temp(path, mode)?;
    let written = (|| {
        // Set explicitly: `mode` at creation is masked by the umask.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    // The rename itself is durable once the directory is synced; failing that is not an
    // error of the write (the data is in place).
    if let Ok(d) = File::open(parent_of(path)) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates `path` with `bytes` unless something is already there (then `AlreadyExists`);
/// never replaces and never follows a symlink. Readers see all of it or nothing.
pub fn create_once(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let (mut file, tmp) = create_temp(path, mode)?;
    let created = (|| {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        // link(2) fails with EEXIST when the name is taken, symlink or not.
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    created
}

/// Opens a file for reading without following a symlink at its last component.
pub fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").expect("victim");
        let target = dir.path().join("out.nft");
        std::os::unix::fs::symlink(&victim, &target).expect("symlink");
        write_atomic(&target, b"new", 0o600).expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep");
        assert_eq!(std::fs::read_to_string(&target).expect("target"), "new");
        let meta = std::fs::symlink_metadata(&target).expect("meta");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "no temp file is left");
    }

    #[test]
    fn the_mode_is_the_one_asked_for_and_a_failed_write_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("x");
        write_atomic(&target, b"a", 0o644).expect("write");
        let mode = std::fs::metadata(&target).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o644);
        // Renaming over a directory fails: the temp file must go.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("sub");
        std::fs::write(sub.join("f"), "x").expect("f");
        assert!(write_atomic(&sub, b"a", 0o600).is_err());
        let tmps = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        assert_eq!(tmps, 0);
    }

    #[test]
    fn create_once_never_replaces_and_open_nofollow_refuses_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("key");
        create_once(&p, b"one", 0o600).expect("first");
        let again = create_once(&p, b"two", 0o600).expect_err("second");
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&p).expect("key"), "one");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).expect("symlink");
        assert!(open_nofollow(&link).is_err());
        assert!(open_nofollow(&p).is_ok());
    }
}
