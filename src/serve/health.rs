//! Active TCP health checks of the targets of both engines. Every `interval` each target is
//! connected to (within `timeout`); `fall` failures in a row take an up target down, `rise`
//! successes in a row bring a down target back. Targets start up, so that serve never
//! refuses traffic before the first checks have run. Serve's pool tries healthy targets
//! first; the kernel routes are re-provisioned without the dead ones (see `kernel.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::warn;

/// How targets are checked (`serve --health-*`).
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Zero: no checks, every target counts as up.
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl Default for Options {
    /// The documented defaults: a dead target is out after at most 3 × 2 s + 1 s.
    fn default() -> Self {
        Options {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct State {
    up: bool,
    /// Results in a row that disagree with `up`.
    streak: u32,
}

/// The health of every target of the running configuration.
#[derive(Debug)]
pub struct Health {
    options: Options,
    targets: Mutex<BTreeMap<SocketAddr, State>>,
    /// Whether any target is down: while none is, connections ask no lock.
    any_down: AtomicBool,
    /// Signalled when a target went down or came back.
    pub changed: Notify,
}

impl Health {
    pub fn new(options: Options) -> Self {
        Health {
            options,
            targets: Mutex::new(BTreeMap::new()),
            any_down: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.options.interval.is_zero()
    }

    /// Checks exactly `targets` from now on: new ones start up, gone ones are forgotten.
    pub fn set_targets(&self, targets: &BTreeSet<SocketAddr>) {
        let mut map = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|a, _| targets.contains(a));
        for a in targets {
            map.entry(*a).or_insert(State {
                up: true,
                streak: 0,
            });
        }
        self.any_down
            .store(map.values().any(|s| !s.up), Ordering::Relaxed);
    }

    /// Whether `target` is up (a target that is not checked is).
    pub fn is_up(&self, target: &SocketAddr) -> bool {
        if !self.any_down.load(Ordering::Relaxed) {
            return true;
        }
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(target)
            .is_none_or(|s| s.up)
    }

    /// Every checked target and whether it is up.
    pub fn snapshot(&self) -> BTreeMap<SocketAddr, bool> {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(a, s)| (*a, s.up))
            .collect()
    }

    /// The targets that are down.
    pub fn down(&self) -> BTreeSet<SocketAddr> {
        self.snapshot()
            .into_iter()
            .filter_map(|(a, up)| (!up).then_some(a))
            .collect()
    }

    /// Records one check of `target`; whether it changed state.
    fn record(&self, target: SocketAddr, ok: bool) -> bool {
        let mut map = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(s) = map.get_mut(&target) else {
            return false;
        };
        if ok == s.up {
            s.streak = 0;
            return false;
        }
        s.streak += 1;
        let needed = if s.up {
            self.options.fall
        } else {
            self.options.rise
        };
        if s.streak < needed.max(1) {
            return false;
        }
        s.up = ok;
        s.streak = 0;
        self.any_down
            .store(map.values().any(|s| !s.up), Ordering::Relaxed);
        true
    }
}

/// Checks every target each interval, for as long as serve runs.
pub async fn run(health: Arc<Health>) {
    if !health.enabled() {
        return;
    }
    let mut tick = tokio::time::interval(health.options.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let targets: Vec<SocketAddr> = health.snapshot().into_keys().collect();
        let mut checks = tokio::task::JoinSet::new();
        for target in targets {
            let timeout = health.options.timeout;
            checks.spawn(async move {
                let ok = matches!(
                    tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await,
                    Ok(Ok(_))
                );
                (target, ok)
            });
        }
        let mut changed = false;
        while let Some(Ok((target, ok))) = checks.join_next().await {
            if health.record(target, ok) {
                changed = true;
                if ok {
                    warn!(%target, "target is up again: back in the pool");
                } else {
                    warn!(%target, "target is down: out of the pool");
                }
            }
        }
        if changed {
            health.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_and_rise_take_results_in_a_row() {
        let h = Health::new(Options {
            rise: 2,
            fall: 3,
            ..Options::default()
        });
        let a: SocketAddr = "192.0.2.1:80".parse().expect("addr");
        h.set_targets(&BTreeSet::from([a]));
        assert!(h.is_up(&a));
        assert!(!h.record(a, false));
        assert!(!h.record(a, false));
        assert!(!h.record(a, true), "a success breaks the streak");
        assert!(!h.record(a, false));
        assert!(!h.record(a, false));
        assert!(h.record(a, false), "the third failure in a row");
        assert!(!h.is_up(&a));
        assert_eq!(h.down(), BTreeSet::from([a]));
        assert!(!h.record(a, true));
        assert!(h.record(a, true), "the second success in a row");
        assert!(h.is_up(&a));
        let unknown: SocketAddr = "192.0.2.9:80".parse().expect("addr");
        assert!(h.is_up(&unknown), "an unchecked target counts as up");
        h.set_targets(&BTreeSet::new());
        assert!(h.snapshot().is_empty());
    }
}
