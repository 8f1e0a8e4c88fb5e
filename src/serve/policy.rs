//! Per-route admission in userspace: allow and block lists, concurrent connections and new
//! connections per second per source address (a token bucket per source, as the kernel's
//! meter does), and the weighted choice of a target.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Rate;
use crate::model::UserspaceRoute;

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Blocked,
    NotAllowed,
    TooManyConnections,
    RateLimited,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Blocked => "block list",
            Refusal::NotAllowed => "not in the allow list",
            Refusal::TooManyConnections => "max_connections",
            Refusal::RateLimited => "rate_limit",
        }
    }
}

#[derive(Debug)]
struct Source {
    active: u32,
    tokens: f64,
    at: Instant,
}

/// The per-source state of one route.
#[derive(Debug, Default)]
pub struct Admission {
    sources: Mutex<HashMap<IpAddr, Source>>,
}

/// Above this many sources, sources with nothing to remember are forgotten.
const PRUNE_ABOVE: usize = 4096;

/// A connection admitted by [`Admission::admit`]; gives its slot back on drop.
pub struct Ticket {
    /// `None` for a route that limits nothing per source: nothing to give back.
    admission: Option<Arc<Admission>>,
    source: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(admission) = &self.admission else {
            return;
        };
        if let Ok(mut sources) = admission.sources.lock() {
            if let Some(s) = sources.get_mut(&self.source) {
                s.active = s.active.saturating_sub(1);
            }
        }
    }
}

fn refill(s: &mut Source, rate: &Rate, now: Instant) {
    let per_second = rate.count as f64 / rate.unit.seconds() as f64;
    let elapsed = now.duration_since(s.at).as_secs_f64();
    s.tokens = (s.tokens + elapsed * per_second).min(rate.burst as f64);
    s.at = now;
}

impl Admission {
    /// Admits a connection from `source` to `route`, or says why not.
    pub fn admit(
        self: &Arc<Self>,
        route: &UserspaceRoute,
        source: IpAddr,
    ) -> Result<Ticket, Refusal> {
        let source = canonical(source);
        if route.block.iter().any(|n| n.contains(&source)) {
            return Err(Refusal::Blocked);
        }
        if let Some(allow) = &route.allow {
            if !allow.iter().any(|n| n.contains(&source)) {
                return Err(Refusal::NotAllowed);
            }
        }
        if route.max_connections.is_none() && route.rate_limit.is_none() {
            // Nothing to count per source: no lock shared by the workers to take.
            return Ok(Ticket {
                admission: None,
                source,
            });
        }
        let now = Instant::now();
        let mut sources = self.sources.lock().map_err(|_| Refusal::RateLimited)?;
        if sources.len() > PRUNE_ABOVE {
            sources.retain(|_, s| {
                if let Some(rate) = &route.rate_limit {
                    refill(s, rate, now);
                    s.active > 0 || s.tokens < rate.burst as f64
                } else {
                    s.active > 0
                }
            });
        }
        let s = sources.entry(source).or_insert_with(|| Source {
            active: 0,
            tokens: route.rate_limit.map_or(0.0, |r| r.burst as f64),
            at: now,
        });
        if let Some(max) = route.max_connections {
            if s.active >= max {
                return Err(Refusal::TooManyConnections);
            }
        }
        if let Some(rate) = &route.rate_limit {
            refill(s, rate, now);
            if s.tokens < 1.0 {
                return Err(Refusal::RateLimited);
            }
            s.tokens -= 1.0;
        }
        s.active += 1;
        Ok(Ticket {
            admission: Some(self.clone()),
            source,
        })
    }
}

/// An IPv4 client seen through a dual-stack socket is still an IPv4 client.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The order in which to try the targets of a route: the first by weight (or by the
/// client's address with source affinity), then the others as failover.
pub fn target_order(weights: &[u32], pick: u64) -> Vec<usize> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if weights.is_empty() || total == 0 {
        return (0..weights.len()).collect();
    }
    let mut slot = pick % total;
    let mut first = 0;
    for (i, w) in weights.iter().enumerate() {
        if slot < u64::from(*w) {
            first = i;
            break;
        }
        slot -= u64::from(*w);
    }
    let mut order = vec![first];
    order.extend((0..weights.len()).filter(|&i| i != first));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TimeUnit;

    fn route() -> UserspaceRoute {
        UserspaceRoute::bare("r", 0, 0, &[])
    }

    #[test]
    fn lists_limits_and_rates_per_source() {
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let mut r = route();
        r.block = vec!["192.0.2.2/32".parse().expect("net")];
        r.max_connections = Some(2);
        let adm = Arc::new(Admission::default());
        assert_eq!(adm.admit(&r, b).err(), Some(Refusal::Blocked));
        let t1 = adm.admit(&r, a).expect("first");
        let _t2 = adm.admit(&r, a).expect("second");
        assert_eq!(adm.admit(&r, a).err(), Some(Refusal::TooManyConnections));
        drop(t1);
        assert!(adm.admit(&r, a).is_ok(), "a slot came back");

        let mut r = route();
        r.allow = Some(vec!["198.51.100.0/24".parse().expect("net")]);
        r.rate_limit = Some(Rate {
            count: 1,
            unit: TimeUnit::Minute,
            burst: 3,
        });
        let adm = Arc::new(Admission::default());
        assert_eq!(adm.admit(&r, a).err(), Some(Refusal::NotAllowed));
        let c: IpAddr = "::ffff:198.51.100.9".parse().expect("ip");
        for _ in 0..3 {
            assert!(adm.admit(&r, c).is_ok());
        }
        assert_eq!(adm.admit(&r, c).err(), Some(Refusal::RateLimited));
    }

    #[test]
    fn the_weighted_pick_comes_first_and_the_rest_fail_over() {
        assert_eq!(target_order(&[1, 2], 0), vec![0, 1]);
        assert_eq!(target_order(&[1, 2], 1), vec![1, 0]);
        assert_eq!(target_order(&[1, 2], 2), vec![1, 0]);
        assert_eq!(target_order(&[1, 2, 1], 3), vec![2, 0, 1]);
        let firsts: Vec<usize> = (0..300).map(|k| target_order(&[1, 2], k)[0]).collect();
        assert_eq!(firsts.iter().filter(|&&i| i == 1).count(), 200);
    }
}
