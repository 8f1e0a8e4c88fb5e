//! Config -> model: engine split, family split, names resolved through a [`Resolver`],
//! stable conntrack-mark ids, port mappings made explicit.

use std::collections::BTreeMap;
use std::net::{IpAddr, ToSocketAddrs};

use crate::config::{ActionKind, Config, Engine, Host, Route, Target, TargetPort};
use crate::diag::Diagnostic;
use crate::model::{
    Family, KernelAction, KernelPort, KernelRoute, KernelTarget, Model, Snat, Spread,
    UserspaceRoute, UserspaceTarget,
};

/// Turns a host name into addresses. `compile`, `plan` and `apply` use the system
/// resolver; `check` uses none unless `--resolve`; tests use a fixed table. Routes are
/// lowered on several threads, so a resolver is shared between them.
pub trait Resolver: Sync {
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, String>;
}

/// The operating system's resolver (`getaddrinfo`).
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        (name, 0)
            .to_socket_addrs()
            .map(|addrs| addrs.map(|a| a.ip()).collect())
            .map_err(|e| e.to_string())
    }
}

/// A fixed table of answers, for tests and offline runs.
#[derive(Default)]
pub struct StaticResolver(pub BTreeMap<String, Vec<IpAddr>>);

impl Resolver for StaticResolver {
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| "no such host".to_owned())
    }
}

/// Is this host a service on this machine (reached by `redirect`)?
fn is_local(host: &Host) -> bool {
    match host {
        Host::Ip(ip) => ip.is_loopback(),
        Host::Name(n) => n == "localhost" || n.ends_with(".localhost"),
    }
}

/// A target's addresses: `None` in the list means "this host" for that family.
fn target_addrs(
    t: &Target,
    resolver: &dyn Resolver,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(Family, Option<IpAddr>)> {
    if is_local(&t.host.value) {
        return match &t.host.value {
            Host::Ip(ip) => vec![(Family::of(ip), None)],
            Host::Name(_) => vec![(Family::V4, None), (Family::V6, None)],
        };
    }
    match &t.host.value {
        Host::Ip(ip) => vec![(Family::of(ip), Some(*ip))],
        Host::Name(name) => match resolver.resolve(name) {
            Ok(addrs) if !addrs.is_empty() => {
                let mut out: Vec<_> = addrs.iter().map(|ip| (Family::of(ip), Some(*ip))).collect();
                out.sort();
                out.dedup();
                out
            }
            Ok(_) | Err(_) => {
                diags.push(
                    Diagnostic::error("E038", t.host.span, format!("cannot resolve host `{name}`"))
                        .label("no address for this name")
                        .help("check the name and the resolver, or give an address literal"),
                );
                Vec::new()
            }
        },
    }
}

fn kernel_port(port: TargetPort, route: &Route) -> KernelPort {
    match port {
        TargetPort::Fixed { port } => KernelPort::Fixed { port },
        TargetPort::Preserve => KernelPort::Preserve,
        TargetPort::Range { first, .. } => KernelPort::Map {
            from: route.ports[0],
            to_first: first,
        },
    }
}

/// FNV-1a: a fixed hash, so ids are the same on every machine and run.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Gives each kernel route an id in `1..=capacity`: its name's hash, probing upward on a
/// collision, in name order. An id depends only on the set of names, so adding or removing
/// a route rarely moves another route's mark (conntrack entries keep matching).
fn assign_ids(names: &[&str], capacity: u32) -> Vec<u32> {
    let mut taken = std::collections::BTreeSet::new();
    names
        .iter()
        .map(|name| {
            let mut id = fnv1a(name) % capacity + 1;
            while !taken.insert(id) {
                id = id % capacity + 1;
            }
            id
        })
        .collect()
}

/// Lowers a validated config. Errors are resolution failures only.
/// Routes per unit of parallel lowering: enough to outweigh taking the next unit.
const LOWER_CHUNK: usize = 256;

pub fn lower(config: &Config, resolver: &dyn Resolver) -> Result<Model, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mask = config.settings.ct_mark_mask;
    let shift = mask.trailing_zeros();
    let bits = mask.count_ones();
    let capacity = if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    };

    let mut kernel_routes: Vec<&Route> = config
        .routes
        .iter()
        .filter(|r| r.enabled && r.engine == Engine::Nftables)
        .chain(shielded(config))
        .collect();
    kernel_routes.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = kernel_routes.iter().map(|r| r.name.as_str()).collect();
    let ids = assign_ids(&names, capacity);

    // Independent of each other (ids are assigned): lowered in chunks on several threads,
    // joined in route order.
    let routes: Vec<(&Route, u32)> = kernel_routes.into_iter().zip(ids).collect();
    let chunks: Vec<&[(&Route, u32)]> = routes.chunks(LOWER_CHUNK).collect();
    let lowered = crate::config::in_parallel(&chunks, |chunk| {
        let mut chunk_diags = Vec::new();
        let routes: Vec<KernelRoute> = chunk
            .iter()
            .map(|&(route, id)| kernel_route(route, id << shift, resolver, &mut chunk_diags))
            .collect();
        (routes, chunk_diags)
    });
    let mut kernel = Vec::with_capacity(routes.len());
    for (routes, chunk_diags) in lowered {
        kernel.extend(routes);
        diags.extend(chunk_diags);
    }

    let userspace = config
        .routes
        .iter()
        .filter(|r| r.enabled && r.engine == Engine::Userspace)
        .map(|r| userspace_route(r, resolver, &mut diags))
        .collect();

    if diags.is_empty() {
        Ok(Model {
            table: config.settings.table.clone(),
            mark_mask: mask,
            log_group: config.settings.log_group,
            kernel,
            userspace,
        })
    } else {
        crate::diag::sort(&mut diags);
        Err(diags)
    }
}

fn kernel_route(
    route: &Route,
    mark: u32,
    resolver: &dyn Resolver,
    diags: &mut Vec<Diagnostic>,
) -> KernelRoute {
    let action = match route.kind {
        // A userspace route here is its kernel shield (see [`shielded`]).
        _ if route.engine == Engine::Userspace => KernelAction::Shield,
        ActionKind::Block | ActionKind::Redirect => KernelAction::Block,
        ActionKind::Forward => {
            let mut v4 = Vec::new();
            let mut v6 = Vec::new();
            for t in &route.targets {
                for (family, addr) in target_addrs(t, resolver, diags) {
                    let target = KernelTarget {
                        addr,
                        port: kernel_port(t.port, route),
                        weight: t.weight,
                    };
                    match family {
                        Family::V4 => v4.push(target),
                        Family::V6 => v6.push(target),
                    }
                }
            }
            let spread = |mut targets: Vec<KernelTarget>| {
                targets.sort();
                // The same address and port twice is one target with the summed weight.
                targets.dedup_by(|b, a| {
                    let same = a.addr == b.addr && a.port == b.port;
                    if same {
                        a.weight += b.weight;
                    }
                    same
                });
                (!targets.is_empty()).then_some(Spread {
                    affinity: route.affinity,
                    targets,
                })
            };
            KernelAction::Forward {
                v4: spread(v4),
                v6: spread(v6),
            }
        }
    };
    let comment = match (route.engine, route.description.is_empty()) {
        (Engine::Userspace, _) => format!("{}: kernel shield of a userspace route", route.name),
        (_, true) => route.name.clone(),
        (_, false) => format!("{}: {}", route.name, route.description),
    };
    // Redirected connections never leave the host: nothing to masquerade.
    let all_local = match &action {
        KernelAction::Forward { v4, v6 } => v4
            .iter()
            .chain(v6)
            .all(|s| s.targets.iter().all(|t| t.addr.is_none())),
        KernelAction::Block | KernelAction::Shield => true,
    };
    let snat = match (
        all_local,
        route.nftables.preserve_source_ip,
        route.nftables.use_advanced_nat,
    ) {
        (true, _, _) | (_, true, _) => Snat::None,
        (_, false, false) => Snat::Masquerade,
        (_, false, true) => Snat::MasqueradeRandom,
    };
    KernelRoute {
        name: route.name.clone(),
        comment: crate::nft::comment::sanitize(&comment),
        mark,
        l4: route.protocol.l4().to_vec(),
        ports: sorted(route.ports.clone()),
        addresses: sorted(route.addresses.clone()),
        action,
        allow: route
            .security
            .allow_set
            .then(|| route.security.allow.clone()),
        block: route.security.block.clone(),
        max_connections: route.security.max_connections,
        rate_limit: route.security.rate_limit,
        max_rate: route.nftables.max_rate,
        snat,
        qos: route.nftables.priority,
        log: route.log,
        use_ip_sets: route.nftables.use_ip_sets,
    }
}

/// The userspace routes that get a kernel shield: those with a source policy (allow or
/// block list, `max_connections`, `rate_limit`) that is theirs alone on their address and
/// port. The kernel sees no SNI, so a listener shared with other userspace routes keeps
/// its policy in serve only.
pub fn shielded(config: &Config) -> Vec<&Route> {
    let userspace: Vec<&Route> = config
        .routes
        .iter()
        .filter(|r| r.enabled && r.engine == Engine::Userspace)
        .collect();
    let meet = |a: &Route, b: &Route| {
        a.ports
            .iter()
            .any(|p| b.ports.iter().any(|q| p.overlaps(*q)))
            && (a.addresses.is_empty()
                || b.addresses.is_empty()
                || a.addresses.iter().any(|x| b.addresses.contains(x)))
    };
    let has_policy = |r: &Route| {
        r.security.allow_set
            || !r.security.block.is_empty()
            || r.security.max_connections.is_some()
            || r.security.rate_limit.is_some()
    };
    userspace
        .iter()
        .filter(|r| {
            has_policy(r)
                && !userspace
                    .iter()
                    .any(|o| !std::ptr::eq(*o, **r) && meet(o, r))
        })
        .copied()
        .collect()
}

fn userspace_route(
    route: &Route,
    resolver: &dyn Resolver,
    diags: &mut Vec<Diagnostic>,
) -> UserspaceRoute {
    let targets = route
        .targets
        .iter()
        .map(|t| {
            let addrs = target_addrs(t, resolver, diags)
                .into_iter()
                .map(|(family, addr)| {
                    addr.unwrap_or(match family {
                        Family::V4 => IpAddr::from([127, 0, 0, 1]),
                        Family::V6 => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                    })
                })
                .collect();
            UserspaceTarget {
                host: match &t.host.value {
                    Host::Ip(ip) => ip.to_string(),
                    Host::Name(n) => n.clone(),
                },
                addrs,
                port: t.port,
                weight: t.weight,
            }
        })
        .collect();
    UserspaceRoute {
        name: route.name.clone(),
        order: route.order,
        priority: route.priority,
        protocol: route.protocol,
        ports: sorted(route.ports.clone()),
        addresses: sorted(route.addresses.clone()),
        domains: route.domains.clone(),
        kind: route.kind,
        targets,
        affinity: route.affinity,
        allow: route
            .security
            .allow_set
            .then(|| route.security.allow.clone()),
        block: route.security.block.clone(),
        max_connections: route.security.max_connections,
        rate_limit: route.security.rate_limit,
        tls: route.tls.clone(),
        redirect: route.redirect.clone(),
        send_proxy_protocol: route.userspace.send_proxy_protocol,
        accept_proxy_protocol: route.userspace.accept_proxy_protocol.clone(),
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_in_range_even_when_full() {
        let names: Vec<String> = (0..255).map(|i| format!("r{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut ids = assign_ids(&refs, 255);
        assert!(ids.iter().all(|id| (1..=255).contains(id)));
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 255);
    }

    #[test]
    fn adding_a_route_keeps_other_ids_when_no_collision() {
        let before = assign_ids(&["api", "web"], 65535);
        let after = assign_ids(&["api", "dns", "web"], 65535);
        assert_eq!((before[0], before[1]), (after[0], after[2]));
    }
}

/// For unit tests elsewhere: the model of route files, loaded and lowered offline.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};

    use crate::model::Model;

    /// The model of one route file at `path` (its hosts resolve without a network).
    pub(crate) fn model_of_file(path: &Path) -> Model {
        let loaded = crate::config::load(&[path.to_path_buf()]);
        let config = loaded
            .config
            .unwrap_or_else(|| panic!("valid routes: {:?}", loaded.diagnostics));
        super::lower(&config, &super::StaticResolver::default())
            .expect("the routes name only local hosts")
    }

    /// The model of a route file holding `text`.
    pub(crate) fn model_of(text: &str) -> Model {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, text).expect("write routes");
        model_of_file(&path)
    }

    /// The model of a fixture under `tests/fixtures/`.
    pub(crate) fn fixture(name: &str) -> Model {
        model_of_file(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
    }
}
