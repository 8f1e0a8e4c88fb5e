//! One route: its name, match, action type and engine; the parts are checked by the
//! modules beside this one.

use std::net::IpAddr;
use std::path::Path;

use super::matching::{domain, port_range, MatchedPorts};
use super::names::{name_problem, name_syntax_ok};
use super::policy::{ip_list, nft_options, security};
use super::redirect::redirect;
use super::targets::{address_families, targets};
use super::tls::tls;
use super::{engine_choice, missing, one_of};
use crate::config::parse::RawRoute;
use crate::config::{ActionKind, Affinity, Engine, EngineChoice, Protocol, Route, Settings};
use crate::diag::{Diagnostic, Sp, Span};

#[allow(clippy::too_many_lines)]
pub(super) fn route(
    raw: &RawRoute,
    dir: &Path,
    settings: &Settings,
    diags: &mut Vec<Diagnostic>,
) -> Option<Route> {
    let before = diags.iter().filter(|d| d.is_error()).count();
    let name = match &raw.name {
        None if raw.rejected.contains("name") => None,
        None => {
            diags.push(missing(
                raw.span,
                "route `name`",
                "add `name = \"my-route\"` to the route",
            ));
            None
        }
        Some(n) if !name_syntax_ok(&n.value) => {
            diags.push(
                Diagnostic::error("E010", n.span, format!("invalid route name `{}`", n.value))
                    .label(name_problem(&n.value))
                    .help("start with a lowercase letter; use lowercase letters, digits, `_` and `-`; at most 32 characters"),
            );
            None
        }
        Some(n) => Some(n.clone()),
    };
    let Some(m) = &raw.matcher else {
        if !raw.rejected.contains("match") {
            diags.push(missing(
                raw.span,
                "`[routes.match]`",
                "add a `[routes.match]` table with at least `ports`",
            ));
        }
        return None;
    };
    let protocol = m
        .protocol
        .as_ref()
        .map_or(Some(Protocol::Tcp), |p| {
            one_of(
                p,
                "protocol",
                &[
                    ("tcp", Protocol::Tcp),
                    ("udp", Protocol::Udp),
                    ("all", Protocol::All),
                ],
                diags,
            )
        })
        .unwrap_or(Protocol::Tcp);
    // A port already reported (here or by the parser) leaves the route's ports unknown:
    // checks that depend on the whole list (range mapping) are then skipped.
    let ports_rejected = m.rejected.contains("ports");
    let (ports, ports_span) = match &m.ports {
        None if ports_rejected => (Vec::new(), m.span),
        None => {
            diags.push(missing(
                m.span,
                "`ports`",
                "add e.g. `ports = [80, \"8000-8010\"]`",
            ));
            (Vec::new(), m.span)
        }
        Some(list) if list.value.is_empty() && ports_rejected => (Vec::new(), list.span),
        Some(list) if list.value.is_empty() => {
            diags.push(
                Diagnostic::error("E036", list.span, "`ports` is empty")
                    .label("no port listed")
                    .help("list at least one port or \"from-to\" range"),
            );
            (Vec::new(), list.span)
        }
        Some(list) => (
            list.value
                .iter()
                .filter_map(|p| port_range(p, diags).map(|r| Sp::new(r, p.span)))
                .collect(),
            list.span,
        ),
    };
    let ports_known = !ports_rejected
        && m.ports
            .as_ref()
            .is_some_and(|l| l.value.len() == ports.len());
    let domains: Vec<String> = m
        .domains
        .iter()
        .flatten()
        .filter_map(|d| domain(d, diags))
        .collect();
    let addresses: Vec<Sp<IpAddr>> = m
        .addresses
        .iter()
        .flatten()
        .filter_map(|a| match a.value.parse::<IpAddr>() {
            Ok(ip) => Some(Sp::new(ip, a.span)),
            Err(_) => {
                diags.push(
                    Diagnostic::error("E017", a.span, format!("invalid address `{}`", a.value))
                        .label("not an IPv4 or IPv6 address")
                        .help("give a local address literal such as \"203.0.113.10\" or \"2001:db8::10\""),
                );
                None
            }
        })
        .collect();

    let Some(action) = &raw.action else {
        if !raw.rejected.contains("action") {
            diags.push(missing(
                raw.span,
                "`[routes.action]`",
                "add a `[routes.action]` table, e.g. `type = \"forward\"` with `targets`",
            ));
        }
        return None;
    };
    // `None`: an unknown type, already reported; the checks that depend on it are skipped.
    let kind = if action.rejected.contains("type") {
        None
    } else {
        action.kind.as_ref().map_or(Some(ActionKind::Forward), |k| {
            one_of(
                k,
                "action type",
                &[
                    ("forward", ActionKind::Forward),
                    ("block", ActionKind::Block),
                    ("redirect", ActionKind::Redirect),
                ],
                diags,
            )
        })
    };
    let choice = action
        .forwarding_engine
        .as_ref()
        .map_or(Some(settings.default_engine), |e| {
            engine_choice(e, "forwarding engine", diags)
        })
        .unwrap_or(settings.default_engine);
    let affinity = action
        .affinity
        .as_ref()
        .map_or(Some(Affinity::None), |a| {
            one_of(
                a,
                "affinity",
                &[("none", Affinity::None), ("source", Affinity::Source)],
                diags,
            )
        })
        .unwrap_or(Affinity::None);

    // Userspace needs: the first reason wins the message.
    let needs_userspace = if !domains.is_empty() {
        m.domains.as_ref().and_then(|d| d.first()).map(|d| {
            (
                d.span,
                "it matches `domains` (SNI), which only the userspace engine can read",
            )
        })
    } else if let Some(tls) = &action.tls {
        Some((
            tls.span,
            "it has a `[routes.action.tls]` section, which only the userspace engine can serve",
        ))
    } else if kind == Some(ActionKind::Redirect) {
        action.kind.as_ref().map(|k| {
            (
                k.span,
                "an HTTP redirect is answered by the userspace engine",
            )
        })
    } else {
        action.userspace.as_ref().map(|u| {
            (
                u.span,
                "it has a `[routes.action.userspace]` section (PROXY protocol), which only the userspace engine speaks",
            )
        })
    };
    let engine = match (choice, needs_userspace) {
        (EngineChoice::Nftables, Some((why_span, why))) => {
            diags.push(forced_to_kernel(
                action.forwarding_engine.as_ref().map(|e| e.span),
                settings.default_engine_span,
                why_span,
                why,
            ));
            Engine::Nftables
        }
        (EngineChoice::Userspace, _) | (EngineChoice::Auto, Some(_)) => Engine::Userspace,
        (EngineChoice::Nftables | EngineChoice::Auto, None) => Engine::Nftables,
    };
    if engine == Engine::Userspace && protocol != Protocol::Tcp {
        let at = m.protocol.as_ref().map_or(m.span, |p| p.span);
        diags.push(
            Diagnostic::error("E033", at, "the userspace engine serves TCP only")
                .label(format!("protocol `{}` here", protocol_name(protocol)))
                .help("use `protocol = \"tcp\"`, or let the kernel serve the route (no domains, tls or redirect)"),
        );
    }

    let matched = if ports_known {
        match ports.as_slice() {
            [only] if only.value.len() > 1 => MatchedPorts::OneRange(only.value),
            _ => MatchedPorts::Other,
        }
    } else {
        MatchedPorts::Unknown
    };
    let targets = targets(action, kind, matched, diags);
    let security = action
        .security
        .as_ref()
        .map(|s| security(s, diags))
        .unwrap_or_default();
    let nftables = action
        .nftables
        .as_ref()
        .map(|n| nft_options(n, diags))
        .unwrap_or_default();
    let tls = action.tls.as_ref().and_then(|t| tls(t, dir, diags));
    let redirect = redirect(action, kind, diags);
    let userspace = action
        .userspace
        .as_ref()
        .map(|u| crate::config::UserspaceOptions {
            send_proxy_protocol: u.send_proxy_protocol.as_ref().is_some_and(|b| b.value),
            accept_proxy_protocol: u
                .accept_proxy_protocol
                .as_deref()
                .map(|list| ip_list(list, "accept_proxy_protocol", diags))
                .unwrap_or_default(),
        })
        .unwrap_or_default();

    if kind == Some(ActionKind::Forward) && engine == Engine::Nftables {
        address_families(&addresses, &targets, diags);
    }

    let enabled = raw.enabled.as_ref().is_none_or(|e| e.value);
    let errors_now = diags.iter().filter(|d| d.is_error()).count();
    let name = name?;
    let kind = kind?;
    if errors_now > before {
        return None;
    }
    Some(Route {
        name: name.value,
        name_span: name.span,
        description: raw
            .description
            .as_ref()
            .map(|d| d.value.clone())
            .unwrap_or_default(),
        enabled,
        priority: raw.priority.as_ref().map_or(0, |p| p.value),
        log: raw.log.as_ref().is_some_and(|l| l.value),
        // Its position among the routes of all files, set once they are joined.
        order: 0,
        protocol,
        ports: ports.iter().map(|p| p.value).collect(),
        ports_span,
        domains,
        addresses: addresses.into_iter().map(|a| a.value).collect(),
        kind,
        engine,
        targets,
        affinity,
        security,
        nftables,
        tls,
        redirect,
        userspace,
    })
}

/// E022: a route that needs the userspace engine is forced to the kernel, by its own
/// `forwarding_engine` or else by `[settings] default_engine`.
fn forced_to_kernel(
    route_choice: Option<Span>,
    default_choice: Option<Span>,
    why_span: Span,
    why: &str,
) -> Diagnostic {
    let message = "route is forced to the nftables engine but needs the userspace engine";
    match route_choice {
        Some(at) => Diagnostic::error("E022", at, message)
            .label("`nftables` chosen here")
            .also(why_span, "needs userspace because of this")
            .help(format!(
                "the kernel cannot serve this route because {why}; use `forwarding_engine = \"auto\"` or \"userspace\""
            )),
        None => {
            let mut d = Diagnostic::error("E022", why_span, message)
                .label("needs the userspace engine");
            if let Some(default) = default_choice {
                d = d.also(default, "`nftables` is the default engine here");
            }
            d.help(format!(
                "the kernel cannot serve this route because {why}; set `forwarding_engine = \"userspace\"` on the route, or `default_engine = \"auto\"`"
            ))
        }
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::All => "all",
    }
}
