//! A forward route's `targets`: hosts, ports (fixed, preserved or mapped from the matched
//! range), weights, and the address families they serve.

use std::net::IpAddr;

use super::matching::{is_dns_name, parse_range_text, port_number, MatchedPorts};
use super::missing;
use crate::config::parse::{RawAction, RawPort};
use crate::config::{ActionKind, Host, Target, TargetPort};
use crate::diag::{Diagnostic, Sp};

pub(super) fn targets(
    action: &RawAction,
    kind: Option<ActionKind>,
    matched: MatchedPorts,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Target> {
    let rejected = action.rejected.contains("targets");
    match (&action.targets, kind) {
        (None, Some(ActionKind::Forward)) if !rejected => {
            diags.push(
                Diagnostic::error(
                    "E024",
                    action.span,
                    "a forward route needs at least one target",
                )
                .label("no `targets` in this action")
                .help("add `targets = [{ host = \"198.51.100.2\", port = 8080 }]`"),
            );
            return Vec::new();
        }
        (Some(t), Some(ActionKind::Forward)) if t.value.is_empty() && !rejected => {
            diags.push(
                Diagnostic::error("E024", t.span, "a forward route needs at least one target")
                    .label("empty list")
                    .help("add `{ host = \"198.51.100.2\", port = 8080 }`"),
            );
            return Vec::new();
        }
        (Some(t), Some(ActionKind::Block | ActionKind::Redirect)) => {
            diags.push(
                Diagnostic::error(
                    "E030",
                    t.span,
                    "`targets` has no effect on a route that does not forward",
                )
                .label("ignored targets")
                .help("remove `targets`, or use `type = \"forward\"`"),
            );
            return Vec::new();
        }
        (None, _) => return Vec::new(),
        // Forward, or an unknown type (already reported): still check each target.
        (Some(_), Some(ActionKind::Forward) | None) => {}
    }
    let Some(list) = &action.targets else {
        return Vec::new();
    };
    list.value
        .iter()
        .filter_map(|t| {
            let host = match &t.host {
                None if t.rejected.contains("host") => None,
                None => {
                    diags.push(missing(t.span, "target `host`", "add `host = \"198.51.100.2\"` (an address or a name)"));
                    None
                }
                Some(h) => host(h, diags),
            };
            let port = match &t.port {
                None => Some(TargetPort::Preserve),
                Some(p) => target_port(p, matched, diags),
            };
            let weight = match &t.weight {
                None => Some(1),
                Some(w) => match u32::try_from(w.value) {
                    Ok(v @ 1..=1000) => Some(v),
                    _ => {
                        diags.push(
                            Diagnostic::error("E025", w.span, format!("weight `{}` is out of range", w.value))
                                .label("not in 1..=1000")
                                .help("weights are whole numbers from 1 to 1000; leave a target out to give it none"),
                        );
                        None
                    }
                },
            };
            Some(Target {
                host: host?,
                port: port?,
                weight: weight?,
            })
        })
        .collect()
}

fn host(h: &Sp<String>, diags: &mut Vec<Diagnostic>) -> Option<Sp<Host>> {
    let text = h.value.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(Sp::new(Host::Ip(ip), h.span));
    }
    let lower = h.value.to_ascii_lowercase();
    let looks_numeric = lower.chars().all(|c| c.is_ascii_digit() || c == '.');
    if is_dns_name(lower.trim_end_matches('.')) && !looks_numeric {
        return Some(Sp::new(Host::Name(lower), h.span));
    }
    diags.push(
        Diagnostic::error("E016", h.span, format!("invalid host `{}`", h.value))
            .label("neither an IP address nor a DNS name")
            .help("give an IPv4/IPv6 literal (\"198.51.100.2\", \"2001:db8::2\") or a name (\"backend.example\")"),
    );
    None
}

fn target_port(
    p: &Sp<RawPort>,
    matched: MatchedPorts,
    diags: &mut Vec<Diagnostic>,
) -> Option<TargetPort> {
    match &p.value {
        RawPort::Int(n) => port_number(*n, p.span, diags).map(|port| TargetPort::Fixed { port }),
        RawPort::Str(s) if s == "preserve" => Some(TargetPort::Preserve),
        RawPort::Str(s) => {
            let range = parse_range_text(s, p.span, diags)?;
            if range.len() == 1 {
                return Some(TargetPort::Fixed { port: range.first });
            }
            match matched {
                MatchedPorts::OneRange(matched) if matched.len() == range.len() => {
                    Some(TargetPort::Range {
                        first: range.first,
                        last: range.last,
                    })
                }
                MatchedPorts::Unknown => None,
                MatchedPorts::OneRange(matched) => {
                    diags.push(
                        Diagnostic::error("E015", p.span, format!("target range `{s}` has {} ports but the matched range `{matched}` has {}", range.len(), matched.len()))
                            .label("length differs")
                            .help("ports map 1:1 by offset: make both ranges the same length"),
                    );
                    None
                }
                MatchedPorts::Other => {
                    diags.push(
                        Diagnostic::error("E015", p.span, format!("target range `{s}` needs the route to match exactly one port range"))
                            .label("nothing to map from")
                            .help("match one range of the same length (`ports = \"8000-8010\"`), or use a single port or \"preserve\""),
                    );
                    None
                }
            }
        }
    }
}

/// An `addresses` entry of a family no literal target serves can never match (no NAT46).
/// Named targets are resolved later, so routes with names are not judged here.
pub(super) fn address_families(
    addresses: &[Sp<IpAddr>],
    targets: &[Target],
    diags: &mut Vec<Diagnostic>,
) {
    let mut has4 = false;
    let mut has6 = false;
    for t in targets {
        match &t.host.value {
            Host::Ip(IpAddr::V4(_)) => has4 = true,
            Host::Ip(IpAddr::V6(_)) => has6 = true,
            Host::Name(_) => return,
        }
    }
    for a in addresses {
        let (ok, fam, other) = match a.value {
            IpAddr::V4(_) => (has4, "IPv4", "IPv6"),
            IpAddr::V6(_) => (has6, "IPv6", "IPv4"),
        };
        if !ok {
            diags.push(
                Diagnostic::error("E023", a.span, format!("{fam} address `{}` but the route has no {fam} target", a.value))
                    .label(format!("{fam} traffic here could not be forwarded"))
                    .help(format!("add an {fam} target, or remove this address (there is no translation from {fam} to {other})")),
            );
        }
    }
}
