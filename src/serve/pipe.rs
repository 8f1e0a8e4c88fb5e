//! Moving a connection's bytes: both directions copied until both ends are done, or nothing
//! moved for the idle timeout. A small buffer per direction while a connection trickles, a
//! large one while it moves data in bulk; plain TCP sides hold a last short answer back so
//! that its FIN leaves in the same segment.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::metrics::RouteMetrics;

/// Copy buffer per direction of a connection moving data in bulk.
const COPY_BUFFER: usize = 64 * 1024;
/// Copy buffer per direction otherwise (and of an idle connection).
const SMALL_BUFFER: usize = 512;

/// Copies both ways until both sides are done, or nothing moved for the idle timeout.
pub(crate) async fn pipe<A, B>(
    idle: Duration,
    a: A,
    b: B,
    metrics: &Arc<RouteMetrics>,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    pump(idle, (ar, aw), (br, bw), metrics).await
}

/// [`pipe`] for two TCP sockets: halves without the lock `tokio::io::split` takes on
/// every read and write.
pub(crate) async fn pipe_tcp(
    idle: Duration,
    mut a: TcpStream,
    mut b: TcpStream,
    metrics: &Arc<RouteMetrics>,
) -> io::Result<()> {
    let (ar, aw) = a.split();
    let (br, bw) = b.split();
    pump(idle, (ar, aw), (br, bw), metrics).await
}

/// Linux `MSG_MORE`: more is coming, hold the segment back.
const MSG_MORE: i32 = 0x8000;

/// What the copy loop can do with a side beyond reading and writing: with plain TCP
/// sockets, save packets and syscalls at a connection's end (TLS sides do none of it).
trait Ends {
    /// Reads on without waiting: `Some(0)` when the peer's end is already here, `Some(n)`
    /// for `n` more bytes read into `spare`.
    fn end_here(&self, _spare: &mut [u8]) -> Option<usize> {
        None
    }

    /// Sends what it can of `buf` held back for a FIN to join (`MSG_MORE`); how much.
    fn send_before_end(&self, _buf: &[u8]) -> usize {
        0
    }

    /// Whether the direction that ends second may leave its FIN to the close that
    /// follows (both receive sides are at their end then, so nothing unread turns the
    /// close into a reset): a shutdown syscall less. A TLS writer must send close_notify.
    const CLOSE_SENDS_END: bool = false;
}

impl<T> Ends for tokio::io::ReadHalf<T> {}
impl<T> Ends for tokio::io::WriteHalf<T> {}

impl Ends for tokio::net::tcp::ReadHalf<'_> {
    fn end_here(&self, spare: &mut [u8]) -> Option<usize> {
        self.try_read(spare).ok()
    }
}

impl Ends for tokio::net::tcp::WriteHalf<'_> {
    fn send_before_end(&self, buf: &[u8]) -> usize {
        let stream: &TcpStream = self.as_ref();
        stream
            .try_io(tokio::io::Interest::WRITABLE, || {
                socket2::SockRef::from(stream).send_with_flags(buf, MSG_MORE)
            })
            .unwrap_or(0)
    }

    const CLOSE_SENDS_END: bool = true;
}

/// Copies a→b and b→a until both directions are done, or nothing moved for the idle
/// timeout.
async fn pump<AR, AW, BR, BW>(
    idle: Duration,
    (ar, aw): (AR, AW),
    (br, bw): (BR, BW),
    metrics: &Arc<RouteMetrics>,
) -> io::Result<()>
where
    AR: AsyncRead + Unpin + Ends,
    AW: AsyncWrite + Unpin + Ends,
    BR: AsyncRead + Unpin + Ends,
    BW: AsyncWrite + Unpin + Ends,
{
    let started = Instant::now();
    let last = AtomicU64::new(0);
    let ended = AtomicBool::new(false);
    // Only the target's answers are checked for an end right behind them: servers answer
    // and close; clients rarely send and close (the check costs a syscall when it fails).
    let up = copy(ar, bw, &metrics.bytes_in, &last, started, (&ended, false));
    let down = copy(br, aw, &metrics.bytes_out, &last, started, (&ended, true));
    let watch = async {
        loop {
            tokio::time::sleep(idle / 4).await;
            let quiet = started.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
            if quiet >= idle.as_millis() as u64 {
                return;
            }
        }
    };
    tokio::select! {
        (r1, r2) = async { tokio::join!(up, down) } => { r1.and(r2) }
        () = watch => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    }
}

async fn copy<R, W>(
    mut from: R,
    mut to: W,
    counter: &AtomicU64,
    last: &AtomicU64,
    started: Instant,
    (ended, look_for_end): (&AtomicBool, bool),
) -> io::Result<()>
where
    R: AsyncRead + Unpin + Ends,
    W: AsyncWrite + Unpin + Ends,
{
    // An idle connection holds only the small buffer (inside the task); the large one is
    // taken while data flows in bulk and given back when it trickles.
    let mut small = [0u8; SMALL_BUFFER];
    let mut large: Option<Vec<u8>> = None;
    loop {
        let trickling = large.is_none();
        let buf: &mut [u8] = match large.as_mut() {
            Some(l) => l,
            None => &mut small,
        };
        let mut n = match from.read(buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => {
                // The other side still learns that this direction ended (else it waits
                // for the idle timeout, e.g. a TLS client gone without close_notify).
                let _ = to.shutdown().await;
                return Err(e);
            }
        };
        // A short answer with the end right behind it (a server that answers and
        // closes): the data is held back so that the FIN leaves in the same segment.
        let mut at_end = n == 0;
        if look_for_end && trickling && 0 < n && n < buf.len() {
            match from.end_here(&mut buf[n..]) {
                Some(0) => at_end = true,
                Some(more) => n += more,
                None => {}
            }
        }
        let held = if at_end {
            to.send_before_end(&buf[..n])
        } else {
            0
        };
        to.write_all(&buf[held..n]).await?;
        if n > 0 {
            counter.fetch_add(n as u64, Ordering::Relaxed);
            last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        if at_end {
            let other_ended = ended.swap(true, Ordering::Relaxed);
            if !(other_ended && W::CLOSE_SENDS_END) {
                let _ = to.shutdown().await;
            }
            return Ok(());
        }
        if large.is_none() && n == SMALL_BUFFER {
            large = Some(vec![0u8; COPY_BUFFER]);
        } else if large.is_some() && n < SMALL_BUFFER {
            large = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_directions_are_copied_and_counted_until_both_end() {
        let (client, mut client_far) = tokio::io::duplex(4096);
        let (target, mut target_far) = tokio::io::duplex(4096);
        let metrics = Arc::new(RouteMetrics::default());
        let m = metrics.clone();
        let piping =
            tokio::spawn(async move { pipe(Duration::from_secs(5), client, target, &m).await });
        let bulk = vec![7u8; 3 * SMALL_BUFFER + 1];
        client_far.write_all(&bulk).await.expect("write");
        client_far.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        target_far.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, bulk);
        target_far.write_all(b"answer").await.expect("write");
        target_far.shutdown().await.expect("shutdown");
        let mut answer = Vec::new();
        client_far.read_to_end(&mut answer).await.expect("read");
        assert_eq!(answer, b"answer");
        piping.await.expect("joined").expect("piped");
        assert_eq!(metrics.bytes_in.load(Ordering::Relaxed), bulk.len() as u64);
        assert_eq!(metrics.bytes_out.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn a_quiet_connection_ends_at_the_idle_timeout() {
        let (client, _client_far) = tokio::io::duplex(64);
        let (target, _target_far) = tokio::io::duplex(64);
        let metrics = Arc::new(RouteMetrics::default());
        let started = Instant::now();
        let e = pipe(Duration::from_millis(100), client, target, &metrics)
            .await
            .expect_err("idle");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
