//! Warnings before harm: facts about this host that would make an apply hurt. Reads
//! `/proc`, the boot configuration and the environment; asks the kernel only for the list
//! of base chains. Never blocks an apply: it warns.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::config::L4;
use crate::kernel::Kernel;
use crate::model::{Family, KernelAction, Model};

/// Facts gathered from the host (separate from the checks, so the checks are testable).
#[derive(Debug, Default)]
pub struct Facts {
    pub ipv4_forwarding: Option<bool>,
    pub ipv6_forwarding: Option<bool>,
    /// (table family, table, chain, hook) of foreign base chains with policy drop.
    pub drop_chains: Vec<(String, String, String, String)>,
    /// Path of a boot configuration that flushes the ruleset.
    pub boot_flush: Option<String>,
    /// Listening (protocol, port, local address) of local processes.
    pub listening: Vec<(L4, u16, String)>,
    /// Server port of the SSH connection this command runs over.
    pub ssh_port: Option<u16>,
    /// Server address of that connection (a route limited to other addresses spares it).
    pub ssh_addr: Option<IpAddr>,
}

fn read_flag(path: &str) -> Option<bool> {
    std::fs::read_to_string(path).ok().map(|s| s.trim() != "0")
}

/// `/proc/net/{tcp,tcp6,udp,udp6}`: sockets in LISTEN (tcp, state 0A) or bound
/// unconnected (udp, state 07).
fn listening() -> Vec<(L4, u16, String)> {
    let mut out = Vec::new();
    for (file, l4, state) in [
        ("/proc/net/tcp", L4::Tcp, "0A"),
        ("/proc/net/tcp6", L4::Tcp, "0A"),
        ("/proc/net/udp", L4::Udp, "07"),
        ("/proc/net/udp6", L4::Udp, "07"),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 4 || cols[3] != state {
                continue;
            }
            if let Some((addr, port)) = cols[1].split_once(':') {
                if let Ok(port) = u16::from_str_radix(port, 16) {
                    out.push((l4, port, proc_addr(addr)));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `/proc/net` addresses are hex in host byte order per 32-bit word.
fn proc_addr(hex: &str) -> String {
    let words: Vec<u32> = (0..hex.len() / 8)
        .filter_map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok())
        .collect();
    match words.as_slice() {
        [w] => IpAddr::from(w.to_le_bytes()).to_string(),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::from(bytes).to_string()
        }
        _ => hex.to_owned(),
    }
}

/// The hooks smartproxy's table uses.
const HOOKS: [&str; 5] = ["prerouting", "input", "forward", "output", "postrouting"];

/// Foreign base chains with a drop policy; `None` when the chains cannot be listed.
fn drop_chains(kernel: &dyn Kernel, ours: &str) -> Option<Vec<(String, String, String, String)>> {
    let text = kernel.list_chains_json().ok()?;
    let doc = serde_json::from_str::<serde_json::Value>(&text).ok()?;
    let mut out = Vec::new();
    for item in doc["nftables"].as_array().into_iter().flatten() {
        let c = &item["chain"];
        let (Some(family), Some(table), Some(name), Some(hook)) = (
            c["family"].as_str(),
            c["table"].as_str(),
            c["name"].as_str(),
            c["hook"].as_str(),
        ) else {
            continue;
        };
        if c["policy"].as_str() == Some("drop")
            && HOOKS.contains(&hook)
            && !(family == "inet" && table == ours)
            && matches!(family, "inet" | "ip" | "ip6")
        {
            out.push((
                family.to_owned(),
                table.to_owned(),
                name.to_owned(),
                hook.to_owned(),
            ));
        }
    }
    Some(out)
}

impl Facts {
    pub fn gather(kernel: &dyn Kernel, table: &str, notes: &crate::cache::Notes) -> Facts {
        let boot = std::env::var("SMARTPROXY_BOOT_CONF")
            .unwrap_or_else(|_| "/etc/nftables.conf".to_owned());
        let boot_flush = std::fs::read_to_string(&boot)
            .ok()
            .filter(|t| {
                t.lines().any(|l| {
                    l.split('#')
                        .next()
                        .unwrap_or("")
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        == ["flush", "ruleset"]
                })
            })
            .map(|_| boot.clone());
        let ssh = std::env::var("SSH_CONNECTION").unwrap_or_default();
        let ssh: Vec<&str> = ssh.split_whitespace().collect();
        let ssh_port = ssh.get(3).and_then(|p| p.parse().ok());
        let ssh_addr = ssh
            .get(2)
            .and_then(|a| a.split('%').next().unwrap_or(a).parse().ok());
        Facts {
            ipv4_forwarding: read_flag("/proc/sys/net/ipv4/ip_forward"),
            ipv6_forwarding: read_flag("/proc/sys/net/ipv6/conf/all/forwarding"),
            drop_chains: crate::cache::foreign_drop_chains(kernel, table, notes, || {
                drop_chains(kernel, table)
            }),
            boot_flush,
            listening: listening(),
            ssh_port,
            ssh_addr,
        }
    }
}

/// The warnings for a model on a host.
pub fn warnings(model: &Model, facts: &Facts) -> Vec<String> {
    let mut out = Vec::new();
    let forwarding = |family: Family| -> Vec<&str> {
        model
            .kernel
            .iter()
            .filter(|r| {
                r.spread(family)
                    .is_some_and(|s| s.targets.iter().any(|t| t.addr.is_some()))
            })
            .map(|r| r.name.as_str())
            .collect()
    };
    for (family, flag, sysctl) in [
        (Family::V4, facts.ipv4_forwarding, "net.ipv4.ip_forward"),
        (
            Family::V6,
            facts.ipv6_forwarding,
            "net.ipv6.conf.all.forwarding",
        ),
    ] {
        let routes = forwarding(family);
        if flag == Some(false) && !routes.is_empty() {
            out.push(format!(
                "IP forwarding is off ({sysctl} = 0) but route{} {} forward{} to other hosts: their connections will not pass; run `sysctl -w {sysctl}=1`",
                if routes.len() == 1 { "" } else { "s" },
                names(&routes),
                if routes.len() == 1 { "s" } else { "" },
            ));
        }
    }
    for (family, table, chain, hook) in &facts.drop_chains {
        out.push(format!(
            "table {family} {table} has chain `{chain}` on hook {hook} with policy drop: it may drop the traffic of smartproxy's routes; accept it there (e.g. `ct status dnat accept`)"
        ));
    }
    if let Some(path) = &facts.boot_flush {
        out.push(format!(
            "the boot configuration {path} runs `flush ruleset`: a reboot or `systemctl restart nftables` removes smartproxy's table; run `smartproxy apply` after it (e.g. a systemd unit ordered after nftables.service)"
        ));
    }
    let mut seen = BTreeSet::new();
    for r in &model.kernel {
        if matches!(r.action, KernelAction::Shield) {
            // Its port is serve's own: nothing is taken from anyone.
            continue;
        }
        let takes = |l4: L4, port: u16, addr: Option<&IpAddr>| {
            r.l4.contains(&l4)
                && r.ports.iter().any(|p| p.first <= port && port <= p.last)
                && (r.addresses.is_empty()
                    || addr.is_none_or(|a| a.is_unspecified() || r.addresses.contains(a)))
        };
        if let Some(port) = facts.ssh_port {
            if takes(L4::Tcp, port, facts.ssh_addr.as_ref()) {
                out.push(format!(
                    "route `{}` takes port {port}/tcp of the SSH connection this command runs over: your session may hang after apply; use --confirm-timeout, or give the route `addresses`",
                    r.name
                ));
            }
        }
        if is_block(r) {
            continue;
        }
        for (l4, port, addr) in &facts.listening {
            if takes(*l4, *port, addr.parse().ok().as_ref()) && seen.insert(r.name.clone()) {
                out.push(format!(
                    "route `{}` takes port {port}/{} on which a local process listens ({addr}): connections to it will go to the route's targets instead",
                    r.name,
                    l4.as_str()
                ));
            }
        }
    }
    out
}

fn is_block(r: &crate::model::KernelRoute) -> bool {
    matches!(r.action, KernelAction::Block)
}

fn names(list: &[&str]) -> String {
    list.iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::lower::testing::model_of as model;

    const SSH_ROUTES: &str = r#"
[[routes]]
name = "all"
[routes.match]
ports = 22
addresses = ["192.0.2.1"]
[routes.action]
targets = [{ host = "198.51.100.2", port = 22 }]

[[routes]]
name = "other"
[routes.match]
ports = 22
addresses = ["192.0.2.5"]
[routes.action]
targets = [{ host = "198.51.100.2", port = 22 }]

[[routes]]
name = "web"
[routes.match]
ports = 8080
[routes.action]
targets = [{ host = "198.51.100.2", port = 80 }]
"#;

    #[test]
    fn ssh_and_listeners_are_spared_by_routes_on_other_addresses() {
        let m = model(SSH_ROUTES);
        let facts = Facts {
            ssh_port: Some(22),
            ssh_addr: "192.0.2.1".parse().ok(),
            listening: vec![
                (L4::Tcp, 22, "192.0.2.5".to_owned()),
                (L4::Tcp, 22, "127.0.0.1".to_owned()),
                (L4::Udp, 8080, "0.0.0.0".to_owned()),
            ],
            ..Facts::default()
        };
        let w = warnings(&m, &facts);
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(w[0].starts_with("route `all` takes port 22/tcp of the SSH connection"));
        assert!(w[1].starts_with(
            "route `other` takes port 22/tcp on which a local process listens (192.0.2.5)"
        ));
    }

    #[test]
    fn a_route_without_addresses_takes_every_local_address() {
        let i = SSH_ROUTES
            .find("[[routes]]\nname = \"other\"")
            .expect("route other");
        let m = model(&SSH_ROUTES[i..].replace("addresses = [\"192.0.2.5\"]\n", ""));
        let facts = Facts {
            ssh_port: Some(22),
            ssh_addr: "2001:db8::1".parse().ok(),
            listening: vec![(L4::Tcp, 8080, "::".to_owned())],
            ..Facts::default()
        };
        let w = warnings(&m, &facts);
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(w[0].starts_with("route `other` takes port 22/tcp of the SSH connection"));
        assert!(w[1]
            .starts_with("route `web` takes port 8080/tcp on which a local process listens (::)"));
    }

    #[test]
    fn proc_addresses_decode() {
        assert_eq!(proc_addr("0100007F"), "127.0.0.1");
        assert_eq!(proc_addr("00000000000000000000000001000000"), "::1");
    }
}
