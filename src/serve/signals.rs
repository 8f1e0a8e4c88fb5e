//! What tells serve to reload or stop: the process's signals (SIGHUP; SIGTERM and SIGINT)
//! in production, a channel in tests. Both arrive as one stream of [`Signal`]s.

use std::future::Future;
use std::io;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// What serve is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: load the route files again.
    Reload,
    /// SIGTERM or SIGINT: drain and stop.
    Stop,
}

/// The signals serve acts on, in the order they came; a reload asked for while serve works
/// waits for its turn, a stop cuts the work short.
pub struct Signals {
    rx: UnboundedReceiver<Signal>,
    /// A reload that came during work ([`Signals::unless`]).
    reload_pending: bool,
}

impl Signals {
    /// From a channel (a test's sender; all senders gone is a stop).
    pub fn from_channel(rx: UnboundedReceiver<Signal>) -> Signals {
        Signals {
            rx,
            reload_pending: false,
        }
    }

    /// The process's SIGHUP, SIGTERM and SIGINT, from now on (inside the runtime).
    pub fn unix() -> io::Result<Signals> {
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = unbounded_channel();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = hup.recv() => Signal::Reload,
                    _ = term.recv() => Signal::Stop,
                    _ = int.recv() => Signal::Stop,
                };
                if tx.send(next).is_err() {
                    return;
                }
            }
        });
        Ok(Signals::from_channel(rx))
    }

    /// The next signal (a reload held back by [`Signals::unless`] first).
    pub async fn next(&mut self) -> Signal {
        if std::mem::take(&mut self.reload_pending) {
            return Signal::Reload;
        }
        self.rx.recv().await.unwrap_or(Signal::Stop)
    }

    /// `work` unless a stop comes first (`None`). A reload during it is kept for
    /// [`Signals::next`]. Abandoned work is dropped where it waits; a kernel command it
    /// started runs on on its blocking thread until it ends, times out (--kernel-timeout)
    /// or dies with serve.
    pub async fn unless<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                signal = self.rx.recv() => match signal {
                    Some(Signal::Reload) => self.reload_pending = true,
                    Some(Signal::Stop) | None => return None,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_reload_during_work_waits_and_a_stop_cuts_it_short() {
        let (tx, rx) = unbounded_channel();
        let mut signals = Signals::from_channel(rx);
        tx.send(Signal::Reload).expect("send");
        let slow = tokio::time::sleep(Duration::from_millis(50));
        assert_eq!(
            signals
                .unless(async {
                    slow.await;
                    7
                })
                .await,
            Some(7)
        );
        assert_eq!(signals.next().await, Signal::Reload, "kept for its turn");
        tx.send(Signal::Stop).expect("send");
        let never = std::future::pending::<()>();
        assert_eq!(signals.unless(never).await, None);
        drop(tx);
        assert_eq!(
            signals.next().await,
            Signal::Stop,
            "no sender left is a stop"
        );
    }
}
