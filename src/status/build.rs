//! A [`Status`] from the model and the kernel's counts: each route with its engine and
//! targets as status shows them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{KernelCounts, RouteStatus, Status, TargetStatus, ENGINE_NFTABLES, ENGINE_USERSPACE};
use crate::config::TargetPort;
use crate::model::{KernelAction, KernelPort, KernelTarget, Model, UserspaceTarget};

/// A target as status shows it (see [`TargetStatus::target`]).
fn target_text(addr: IpAddr, port: &str) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn kernel_target(t: &KernelTarget, local: IpAddr) -> String {
    let addr = t.addr.unwrap_or(local);
    match t.port {
        KernelPort::Fixed { port } => SocketAddr::new(addr, port).to_string(),
        KernelPort::Preserve => target_text(addr, "*"),
        KernelPort::Map { from, to_first } => {
            let last = u32::from(to_first) + from.len() - 1;
            target_text(addr, &format!("{to_first}-{last}"))
        }
    }
}

fn userspace_targets(t: &UserspaceTarget) -> impl Iterator<Item = String> + '_ {
    t.addrs.iter().map(move |&addr| match t.port {
        TargetPort::Fixed { port } => SocketAddr::new(addr, port).to_string(),
        TargetPort::Preserve => target_text(addr, "*"),
        TargetPort::Range { first, last } => target_text(addr, &format!("{first}-{last}")),
    })
}

fn unchecked(targets: impl IntoIterator<Item = String>) -> Vec<TargetStatus> {
    let mut seen: Vec<String> = targets.into_iter().collect();
    seen.sort();
    seen.dedup();
    seen.into_iter()
        .map(|target| TargetStatus { target, up: None })
        .collect()
}

/// The status of the model's routes from the kernel's counts, plus any route the table
/// counts that the model no longer has (drift: `plan` would destroy it).
pub fn from_model(model: &Model, mut counts: BTreeMap<String, KernelCounts>) -> Status {
    let userspace: BTreeSet<&str> = model.userspace.iter().map(|r| r.name.as_str()).collect();
    let mut routes = Vec::new();
    // A kernel route named like a userspace route is that route's kernel part (its
    // connections go on to serve): it is listed once, as the userspace route.
    for r in model
        .kernel
        .iter()
        .filter(|r| !userspace.contains(r.name.as_str()))
    {
        let targets = if let KernelAction::Forward { v4, v6 } = &r.action {
            let v4 = v4.iter().flat_map(|s| &s.targets);
            let v6 = v6.iter().flat_map(|s| &s.targets);
            unchecked(
                v4.map(|t| kernel_target(t, Ipv4Addr::LOCALHOST.into()))
                    .chain(v6.map(|t| kernel_target(t, Ipv6Addr::LOCALHOST.into()))),
            )
        } else {
            Vec::new()
        };
        routes.push(RouteStatus {
            name: r.name.clone(),
            engine: ENGINE_NFTABLES.to_owned(),
            kernel: counts.remove(&r.name),
            serve: None,
            targets,
        });
    }
    for r in &model.userspace {
        routes.push(RouteStatus {
            name: r.name.clone(),
            engine: ENGINE_USERSPACE.to_owned(),
            kernel: counts.remove(&r.name),
            serve: None,
            targets: unchecked(r.targets.iter().flat_map(userspace_targets)),
        });
    }
    let mut status = from_counts(&model.table, counts);
    status.routes.extend(routes);
    status.routes.sort_by(|a, b| a.name.cmp(&b.name));
    status
}

/// One route per counter of the table.
pub fn from_counts(table: &str, counts: BTreeMap<String, KernelCounts>) -> Status {
    Status {
        table: table.to_owned(),
        serve: None,
        pending_confirm: None,
        routes: counts
            .into_iter()
            .map(|(name, k)| RouteStatus {
                name,
                engine: ENGINE_NFTABLES.to_owned(),
                kernel: Some(k),
                serve: None,
                targets: Vec::new(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::lower::testing::model_of as model;

    const ROUTES: &str = r#"
[settings]
table = "edge"

[[routes]]
name = "web"
[routes.match]
ports = 8080
[routes.action]
targets = [{ host = "198.51.100.2", port = 80 }, { host = "198.51.100.2", port = 80 }]

[[routes]]
name = "any-port"
[routes.match]
ports = "9000-9009"
[routes.action]
targets = [{ host = "2001:db8::2", port = "preserve" }]

[[routes]]
name = "passthrough"
[routes.match]
ports = 443
domains = ["other.example"]
[routes.action]
targets = [{ host = "198.51.100.3", port = 443 }]
[routes.action.tls]
mode = "passthrough"
"#;

    fn counts(packets: u64) -> KernelCounts {
        KernelCounts {
            packets,
            bytes: packets * 100,
            active: 1,
        }
    }

    #[test]
    fn status_lists_the_models_routes_with_their_engines_targets_and_counts() {
        let kernel = [
            ("web".to_owned(), counts(3)),
            ("gone".to_owned(), counts(5)),
        ];
        let s = from_model(&model(ROUTES), kernel.into());
        assert_eq!(s.table, "edge");
        let names: Vec<&str> = s.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["any-port", "gone", "passthrough", "web"],
            "sorted, drift kept"
        );
        let route = |n: &str| s.routes.iter().find(|r| r.name == n).expect(n);
        let web = route("web");
        assert_eq!(web.engine, ENGINE_NFTABLES);
        assert_eq!(web.kernel, Some(counts(3)));
        assert_eq!(
            web.targets,
            [TargetStatus {
                target: "198.51.100.2:80".into(),
                up: None
            }],
            "one target, not health-checked"
        );
        assert_eq!(route("any-port").targets[0].target, "[2001:db8::2]:*");
        assert_eq!(route("any-port").kernel, None, "not counted yet");
        let gone = route("gone");
        assert_eq!(
            (gone.engine.as_str(), gone.kernel.clone()),
            (ENGINE_NFTABLES, Some(counts(5)))
        );
        assert!(gone.targets.is_empty());
        let tls = route("passthrough");
        assert_eq!(tls.engine, ENGINE_USERSPACE);
        assert_eq!(tls.targets[0].target, "198.51.100.3:443");
    }
}
