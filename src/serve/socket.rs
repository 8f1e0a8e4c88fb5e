//! serve's status socket (`smartproxy status` asks it) and the status both it and
//! `/metrics` show. The kernel's part (one `nft` listing and one `conntrack` listing) is read
//! by the shared [`Collector`] at most once per [`COLLECT_INTERVAL`], whatever the number of
//! requests; the socket is `0660` whatever the umask, in `--socket-group` when given.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tracing::warn;

use super::kernel::Carrier;
use super::metrics::Collector;
use super::Shared;
use crate::status::{ServeCounts, ServeInfo, Status};

/// What the kernel counted per route of the table, as the collector shares it.
pub(super) type KernelCounts = Result<BTreeMap<String, crate::status::KernelCounts>, String>;

/// The kernel is read at most this often for status requests and scrapes together.
pub(super) const COLLECT_INTERVAL: Duration = Duration::from_secs(1);

/// Status requests answered at once; a connection beyond them is closed unanswered (the
/// asking `smartproxy status` then reads the kernel itself).
const MAX_STATUS_REQUESTS: usize = 16;

/// How long a status request may take in all.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The collector of the kernel's counts.
pub(super) fn collector() -> Arc<Collector<KernelCounts>> {
    Collector::new(COLLECT_INTERVAL)
}

/// What `smartproxy status` and `/metrics` show of both engines: the model's routes with
/// the kernel's counts (when the kernel carries routes), serve's counts and target health.
pub(super) async fn status(shared: &Arc<Shared>) -> Status {
    let model = shared.model();
    let counts = if shared.carrier == Carrier::Kernel {
        let table = model.table.clone();
        let collected = shared
            .kernel
            .get(move || {
                let counts =
                    crate::status::kernel_counts(&crate::kernel::nft::NftKernel::default(), &table);
                if let Err(e) = &counts {
                    warn!("status: cannot read the kernel's counters: {e}");
                }
                counts
            })
            .await;
        match collected.as_deref() {
            Some(Ok(counts)) => counts.clone(),
            Some(Err(_)) | None => BTreeMap::new(),
        }
    } else {
        BTreeMap::new()
    };
    let mut status = crate::status::from_model(&model, counts);
    status.serve = Some(ServeInfo {
        pid: std::process::id(),
        nftables: shared.carrier.as_str().to_owned(),
    });
    let health = shared.health.snapshot();
    let userspace: BTreeSet<&str> = model.userspace.iter().map(|r| r.name.as_str()).collect();
    for r in &mut status.routes {
        if userspace.contains(r.name.as_str()) {
            let m = shared.metrics.route(&r.name);
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            r.serve = Some(ServeCounts {
                connections_total: get(&m.connections),
                active: get(&m.active),
                bytes_in: get(&m.bytes_in),
                bytes_out: get(&m.bytes_out),
                errors: get(&m.errors),
                refused: get(&m.refused),
                tls_handshakes: get(&m.tls_handshakes),
            });
        }
        for t in &mut r.targets {
            if let Ok(addr) = t.target.parse::<SocketAddr>() {
                t.up = health.get(&addr).copied();
            }
        }
    }
    status
}

/// The GID of `--socket-group NAME|GID`: a number as given, a name from `/etc/group`.
fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("--socket-group `{group}`: cannot read /etc/group: {e}"))?;
    find_group(&groups, group).ok_or_else(|| {
        format!("--socket-group: unknown group `{group}` (not in /etc/group; give its GID instead)")
    })
}

/// The GID of `name` in the text of `/etc/group` (`name:password:GID:members`).
fn find_group(groups: &str, name: &str) -> Option<u32> {
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.trim().parse().ok()
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {} to {mode:o}: {e}", path.display()))
}

fn set_group(path: &Path, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, None, Some(gid))
        .map_err(|e| format!("cannot give {} to group {gid}: {e}", path.display()))
}

/// Answers `smartproxy status` on the table's local socket; its path. Another serve of the
/// same table in this network namespace (it answers there) is an error: two would fight
/// over the table. The socket is bound under a temporary name, made `0660` (and given to
/// `--socket-group`, whose members then need to traverse the state directory: it becomes
/// `0710` in that group), then renamed into place, so its path never shows a socket with
/// the umask's mode.
pub(super) async fn answer_status(shared: &Arc<Shared>, table: &str) -> Result<PathBuf, String> {
    let path = crate::status::socket_path(table);
    if tokio::net::UnixStream::connect(&path).await.is_ok() {
        return Err(format!(
            "another smartproxy serve runs for table inet {table} in this network namespace (it answers on {})",
            path.display()
        ));
    }
    let gid = shared
        .options
        .socket_group
        .as_deref()
        .map(group_id)
        .transpose()?;
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if let Some(gid) = gid {
        set_group(dir, gid)?;
        set_mode(dir, 0o710)?;
    }
    let tmp = crate::state::path(table, "sock.tmp");
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)
        .map_err(|e| format!("cannot answer status on {}: {e}", tmp.display()))?;
    let placed = set_mode(&tmp, 0o660)
        .and_then(|()| gid.map_or(Ok(()), |gid| set_group(&tmp, gid)))
        .and_then(|()| {
            std::fs::rename(&tmp, &path)
                .map_err(|e| format!("cannot answer status on {}: {e}", path.display()))
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let shared = shared.clone();
    let slots = Arc::new(Semaphore::new(MAX_STATUS_REQUESTS));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let _ = tokio::time::timeout(STATUS_TIMEOUT, answer(stream, &shared)).await;
            });
        }
    });
    Ok(path)
}

/// Reads `status` and writes the JSON status.
async fn answer(mut stream: tokio::net::UnixStream, shared: &Arc<Shared>) {
    let mut line = [0u8; 64];
    let asked = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut line))
        .await
        .is_ok_and(|r| r.is_ok_and(|n| line[..n].starts_with(b"status")));
    if !asked {
        return;
    }
    let answer = crate::status::render_json(&status(shared).await);
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_group_names_come_from_etc_group_and_numbers_pass() {
        let groups = "root:x:0:\nproxy:x:13:\nsmartproxy:x:998:alice,bob\n";
        assert_eq!(find_group(groups, "smartproxy"), Some(998));
        assert_eq!(find_group(groups, "proxy"), Some(13));
        assert_eq!(find_group(groups, "prox"), None);
        assert_eq!(find_group(groups, "x"), None);
        assert_eq!(group_id("4242"), Ok(4242));
        let unknown = group_id("no-such-group-for-smartproxy").expect_err("unknown");
        assert!(
            unknown.contains("`no-such-group-for-smartproxy`"),
            "{unknown}"
        );
    }
}
