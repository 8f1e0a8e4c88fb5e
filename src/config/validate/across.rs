//! Checks across routes, once they are joined: unique names, shadowed userspace routes,
//! enough mark bits for the kernel routes. Conflicts on a port are in [`super::conflicts`].

use std::collections::HashMap;

use crate::config::{Engine, Route, Settings};
use crate::diag::{Diagnostic, Span};

/// Routes are visited in order, so the diagnostics do not depend on the map's (hash)
/// order; a hash map is several times faster than a `BTreeMap` of 50,000 names.
pub(super) fn unique_names(routes: &[Route], diags: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<&str, Span> = HashMap::with_capacity(routes.len());
    for r in routes {
        if let Some(first) = seen.get(r.name.as_str()) {
            diags.push(
                Diagnostic::error(
                    "E011",
                    r.name_span,
                    format!("route name `{}` is used twice", r.name),
                )
                .label("second use")
                .also(*first, "first used here")
                .help("route names are unique across all files; rename one"),
            );
        } else {
            seen.insert(&r.name, r.name_span);
        }
    }
}

/// A userspace route that can never be chosen: an earlier-ranked route covers all its
/// ports, addresses and domains. A winner over a route with domains lists its first domain,
/// and one over a route without domains has none: only those are tried (thousands of
/// virtual hosts on one port cost one lookup each, not a scan of all the others).
pub(super) fn shadowed(routes: &[Route], diags: &mut Vec<Diagnostic>) {
    let users: Vec<&Route> = routes
        .iter()
        .filter(|r| r.enabled && r.engine == Engine::Userspace)
        .collect();
    let mut by_domain: HashMap<&str, Vec<&Route>> = HashMap::new();
    let mut without_domains: Vec<&Route> = Vec::new();
    for r in &users {
        if r.domains.is_empty() {
            without_domains.push(r);
        }
        let mut domains: Vec<&str> = r.domains.iter().map(String::as_str).collect();
        domains.sort_unstable();
        domains.dedup();
        for d in domains {
            by_domain.entry(d).or_default().push(r);
        }
    }
    for b in &users {
        let candidates = match b.domains.first() {
            Some(d) => by_domain.get(d.as_str()).map_or(&[][..], Vec::as_slice),
            None => without_domains.as_slice(),
        };
        let winner = candidates.iter().find(|a| {
            a.name != b.name
                && (a.priority, std::cmp::Reverse(a.order))
                    > (b.priority, std::cmp::Reverse(b.order))
                && b.ports
                    .iter()
                    .all(|p| a.ports.iter().any(|q| q.contains(*p)))
                && (a.addresses.is_empty()
                    || (!b.addresses.is_empty()
                        && b.addresses.iter().all(|x| a.addresses.contains(x))))
                && ((a.domains.is_empty() && b.domains.is_empty())
                    || (!b.domains.is_empty() && b.domains.iter().all(|d| a.domains.contains(d))))
        });
        if let Some(a) = winner {
            diags.push(
                Diagnostic::warning(
                    "W002",
                    b.name_span,
                    format!(
                        "route `{}` is shadowed by route `{}` and never matches",
                        b.name, a.name
                    ),
                )
                .label("never chosen")
                .also(a.name_span, "this route wins every match")
                .help("give it a higher `priority`, other domains or ports, or remove it"),
            );
        }
    }
}

/// Every kernel route needs an id in the mark bits: 2^bits - 1 ids are available.
pub(super) fn mark_capacity(settings: &Settings, routes: &[Route], diags: &mut Vec<Diagnostic>) {
    let kernel: Vec<&Route> = routes
        .iter()
        .filter(|r| r.enabled && r.engine == Engine::Nftables)
        .collect();
    let bits = settings.ct_mark_mask.count_ones();
    let capacity = if bits >= 32 {
        u32::MAX as usize
    } else {
        (1usize << bits) - 1
    };
    if kernel.len() <= capacity {
        return;
    }
    let needed = usize::BITS - kernel.len().leading_zeros();
    let at = settings
        .ct_mark_mask_span
        .or(settings.span)
        .unwrap_or(kernel[capacity].name_span);
    diags.push(
        Diagnostic::error(
            "E026",
            at,
            format!(
                "{} kernel routes need {needed} mark bits but `ct_mark_mask` has {bits}",
                kernel.len()
            ),
        )
        .label("too few conntrack-mark bits")
        .help(format!(
            "widen `ct_mark_mask` to at least {needed} contiguous bits, e.g. \"0xffff0000\""
        )),
    );
}
