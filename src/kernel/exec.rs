//! Every external command smartproxy waits on (`nft`, `unshare`, `conntrack`) runs here,
//! so that three promises hold for all of them:
//!
//! - **A script is all or nothing.** `nft -f -` commits whatever prefix it reads before EOF
//!   (NFT-NOTES), so a script never goes through a pipe whose writer can die: it is written
//!   into an anonymous, sealed memfd that becomes the child's stdin. nft can only ever read
//!   the complete script, and nothing is left on disk.
//! - **No child outlives us, or our lock.** The child asks the kernel for SIGKILL when its
//!   parent dies (`PR_SET_PDEATHSIG`, and exits if the parent is already gone). A command
//!   that changes the kernel ([`Inherit::Locks`]) also inherits the table locks this
//!   process holds ([`hold`]), so a lock is free only once the last nft that could commit
//!   under it has exited. Nothing else inherits them: not listings, and not the detached
//!   confirm watchdog (spawned elsewhere with the default close-on-exec).
//! - **Nothing hangs.** Each command has a deadline ([`set_timeout`], `--kernel-timeout`,
//!   120 s by default). The child runs in its own process group; at the deadline the whole
//!   group is killed with SIGKILL and reaped, and the caller gets
//!   [`KernelError::Timeout`]. stdout and stderr are read with `poll`, so a chatty child
//!   never deadlocks us.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::FdFlags;
use rustix::process::{Pid, Signal};

use super::KernelError;

/// The default deadline of one external command: generous, an nft load of a 10,000-route
/// table takes seconds, not minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

static TIMEOUT_MS: AtomicU64 = AtomicU64::new(120_000);

/// Sets the deadline of every later external command (`--kernel-timeout`).
pub fn set_timeout(after: Duration) {
    let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
    TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

/// The deadline of one external command.
pub fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed))
}

/// File descriptors of the table locks this process holds (see [`crate::state::Lock`]).
/// Guarded by a mutex that a spawn holds while it forks, so that a lock dropped on another
/// thread cannot close (and a new file reuse) a descriptor the child is about to keep.
static HELD: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// Records a lock descriptor: commands that change the kernel inherit it from now on.
pub(crate) fn hold(fd: RawFd) {
    HELD.lock().unwrap_or_else(PoisonError::into_inner).push(fd);
}

/// Forgets a lock descriptor; call before closing it.
pub(crate) fn release(fd: RawFd) {
    HELD.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|&held| held != fd);
}

/// Whether the child keeps this process's table locks open until it exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inherit {
    /// A command that may commit to the kernel (`nft -f`): it holds our locks.
    Locks,
    /// A command that only reads (listings, `unshare` into a throw-away namespace).
    Nothing,
}

/// Starts `program args` detached in a session of its own (`setsid`: it survives SIGKILL of
/// this process and a hung-up terminal, and stays in this network namespace), with its
/// stdout piped to us and nothing else. It inherits none of our table locks (every lock
/// file is opened close-on-exec) and gets no deadline: it is the confirm watchdog, which
/// must outlive us.
pub fn spawn_session(program: &std::path::Path, args: &[&str]) -> io::Result<Child> {
    Command::new("setsid")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
}

/// Runs `program args`, nothing on stdin, within [`timeout`]; its output whatever its exit
/// status. `Err` only when it cannot be started or runs out of time.
pub fn output(program: &str, args: &[&str]) -> Result<Output, KernelError> {
    run(program, args, None, Inherit::Nothing)
}

/// Runs `program args` within [`timeout`] with `script` (if any) as its stdin, from a
/// sealed memfd.
pub(crate) fn run(
    program: &str,
    args: &[&str],
    script: Option<&str>,
    inherit: Inherit,
) -> Result<Output, KernelError> {
    run_within(program, args, script, inherit, timeout())
}

fn describe(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_within(
    program: &str,
    args: &[&str],
    script: Option<&str>,
    inherit: Inherit,
    after: Duration,
) -> Result<Output, KernelError> {
    let cmd = describe(program, args);
    let spawn_error = |source| KernelError::Spawn {
        cmd: cmd.clone(),
        source,
    };
    let stdin = match script {
        Some(text) => Stdio::from(sealed(text).map_err(spawn_error)?),
        None => Stdio::null(),
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = spawn(&mut command, inherit).map_err(spawn_error)?;
    let deadline = Instant::now() + after;
    match collect(&mut child, deadline) {
        Ok(Some(out)) => Ok(out),
        Ok(None) => {
            kill_group(&mut child);
            Err(KernelError::Timeout { cmd, after })
        }
        Err(source) => {
            kill_group(&mut child);
            Err(KernelError::Spawn { cmd, source })
        }
    }
}

/// The script in an anonymous memory file, sealed against any change, read from its start.
fn sealed(script: &str) -> io::Result<File> {
    let fd = rustix::fs::memfd_create(
        c"smartproxy-nft",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = File::from(fd);
    file.write_all(script.as_bytes())?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// Spawns with the child set up to die with us and (for [`Inherit::Locks`]) to keep our
/// table locks open.
fn spawn(command: &mut Command, inherit: Inherit) -> io::Result<Child> {
    let held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
    // Allocated here, before the fork: the child only reads it.
    let keep: Vec<RawFd> = match inherit {
        Inherit::Locks => held.clone(),
        Inherit::Nothing => Vec::new(),
    };
    let parent = rustix::process::getpid();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe operations are allowed. It makes raw system calls only (prctl,
    // getppid, fcntl through rustix, none of which allocates or takes a lock), reads `keep`,
    // allocated before the fork, and builds errors from raw errno values (no allocation).
    // The descriptors in `keep` are open: HELD stays locked until the spawn has returned,
    // and a `Lock` leaves HELD before it closes its file.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // The parent may have died before the line above took effect.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc_esrch()));
            }
            for &fd in &keep {
                let fd = BorrowedFd::borrow_raw(fd);
                let flags = rustix::io::fcntl_getfd(fd)?;
                rustix::io::fcntl_setfd(fd, flags.difference(FdFlags::CLOEXEC))?;
            }
            Ok(())
        });
    }
    let child = command.spawn();
    drop(held);
    child
}

/// `ESRCH`: no such process (the parent).
fn libc_esrch() -> i32 {
    rustix::io::Errno::SRCH.raw_os_error()
}

/// Reads stdout and stderr until both close, then waits for the exit; `None` when the
/// deadline passes first.
fn collect(child: &mut Child, deadline: Instant) -> io::Result<Option<Output>> {
    let mut streams: [Stream; 2] = [
        (child.stdout.take().map(|s| Box::new(s) as _), Vec::new()),
        (child.stderr.take().map(|s| Box::new(s) as _), Vec::new()),
    ];
    let mut chunk = vec![0u8; 64 * 1024];
    while streams.iter().any(|(s, _)| s.is_some()) {
        let Some(left) = remaining(deadline) else {
            return Ok(None);
        };
        let ready = {
            let mut fds: Vec<PollFd<'_>> = streams
                .iter()
                .filter_map(|(s, _)| s.as_ref())
                .map(|s| PollFd::from_borrowed_fd(s.fd(), PollFlags::IN))
                .collect();
            let wait = Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            });
            match rustix::event::poll(&mut fds, Some(&wait)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            fds.iter()
                .map(|p| !p.revents().is_empty())
                .collect::<Vec<_>>()
        };
        let mut ready = ready.into_iter();
        for (stream, buf) in &mut streams {
            let Some(s) = stream else { continue };
            if !ready.next().unwrap_or(false) {
                continue;
            }
            match s.read(&mut chunk) {
                Ok(0) => *stream = None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    let Some(status) = wait_until(child, deadline)? else {
        return Ok(None);
    };
    let [(_, stdout), (_, stderr)] = streams;
    Ok(Some(Output {
        status,
        stdout,
        stderr,
    }))
}

/// A child's stdout or stderr while open, and what it said so far.
type Stream = (Option<Box<dyn ReadFd>>, Vec<u8>);

/// A child's stdout or stderr.
trait ReadFd: Read {
    fn fd(&self) -> BorrowedFd<'_>;
}

impl<T: Read + AsFd> ReadFd for T {
    fn fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

/// The child's exit status, polled until `deadline` (it has closed its output already, so
/// this is short).
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let Some(left) = remaining(deadline) else {
            return Ok(None);
        };
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// SIGKILL to the child's process group (a wrapper script and its `sleep` too), then reap
/// the child.
fn kill_group(child: &mut Child) {
    let group = Pid::from_child(child);
    let _ = rustix::process::kill_process_group(group, Signal::KILL);
    let _ = child.kill();
    let _ = child.wait();
    // The group's other members (a wrapper's `sleep`) die on their own time: give them a
    // moment, so that none is left when the caller reports the timeout. Bounded, because a
    // zombie that nobody reaps still counts as a member.
    let until = Instant::now() + GROUP_EXIT_WAIT;
    while rustix::process::test_kill_process_group(group).is_ok() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long [`kill_group`] waits for the rest of a killed process group to exit.
const GROUP_EXIT_WAIT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn sh(script: &str, stdin: Option<&str>, inherit: Inherit, after: Duration) -> Output {
        run_within("sh", &["-c", script], stdin, inherit, after).expect("sh runs")
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn the_script_arrives_whole_from_a_sealed_memfd() {
        let script = "add table inet t\n".repeat(20_000);
        let out = sh(
            "readlink /proc/self/fd/0; cat",
            Some(&script),
            Inherit::Nothing,
            DEFAULT_TIMEOUT,
        );
        let stdout = text(&out.stdout);
        let (link, rest) = stdout.split_once('\n').expect("two parts");
        assert!(link.starts_with("/memfd:smartproxy-nft"), "{link}");
        assert_eq!(rest, script);
    }

    #[test]
    fn large_stdout_and_stderr_do_not_deadlock() {
        let out = sh(
            "head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2; exit 3",
            None,
            Inherit::Nothing,
            DEFAULT_TIMEOUT,
        );
        assert_eq!(out.stdout.len(), 3_000_000);
        assert_eq!(out.stderr.len(), 3_000_000);
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn a_hung_command_is_killed_with_its_whole_group_at_the_deadline() {
        let marker = tempfile::NamedTempFile::new().expect("temp file");
        let path = marker.path().display().to_string();
        let start = Instant::now();
        let err = run_within(
            "sh",
            &["-c", &format!("sleep 1000 & echo $! > {path}; sleep 1000")],
            None,
            Inherit::Nothing,
            Duration::from_millis(500),
        )
        .expect_err("times out");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let msg = err.to_string();
        assert!(matches!(err, KernelError::Timeout { .. }), "{msg}");
        assert!(msg.contains("sh -c sleep 1000"), "{msg}");
        assert!(msg.contains("--kernel-timeout"), "{msg}");
        let pid = std::fs::read_to_string(&path).expect("pid");
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .map_or(true, |stat| stat.contains(") Z "))
        });
        assert!(gone, "the background sleep {pid} survived");
    }

    #[test]
    fn only_kernel_changes_inherit_the_held_locks() {
        let file = tempfile::tempfile().expect("temp file");
        let fd = file.as_raw_fd();
        hold(fd);
        let probe = format!("test -e /proc/self/fd/{fd} && echo open || echo closed");
        let with = sh(&probe, None, Inherit::Locks, DEFAULT_TIMEOUT);
        let without = sh(&probe, None, Inherit::Nothing, DEFAULT_TIMEOUT);
        release(fd);
        let after = sh(&probe, None, Inherit::Locks, DEFAULT_TIMEOUT);
        assert_eq!(text(&with.stdout).trim(), "open");
        assert_eq!(text(&without.stdout).trim(), "closed");
        assert_eq!(text(&after.stdout).trim(), "closed");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = output("/nonexistent/nft", &["list", "ruleset"]).expect_err("no such file");
        assert!(matches!(err, KernelError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/nft list ruleset"));
    }
}
