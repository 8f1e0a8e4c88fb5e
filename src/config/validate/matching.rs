//! `[routes.match]`: ports and port ranges, domains.

use crate::config::parse::RawPort;
use crate::config::PortRange;
use crate::diag::{Diagnostic, Sp, Span};

/// What the route matches, for a target port range mapped 1:1 from it.
#[derive(Clone, Copy)]
pub(super) enum MatchedPorts {
    /// Exactly one range of more than one port.
    OneRange(PortRange),
    /// Anything else: single ports, several entries.
    Other,
    /// Some port was invalid and is already reported.
    Unknown,
}

pub(super) fn port_number(value: i64, span: Span, diags: &mut Vec<Diagnostic>) -> Option<u16> {
    match u16::try_from(value) {
        Ok(p) if p >= 1 => Some(p),
        _ => {
            diags.push(
                Diagnostic::error("E013", span, format!("port `{value}` is out of range"))
                    .label("not in 1..=65535")
                    .help("ports are 1 to 65535"),
            );
            None
        }
    }
}

/// `80`, `"80"` or `"8000-8010"`.
pub(super) fn port_range(port: &Sp<RawPort>, diags: &mut Vec<Diagnostic>) -> Option<PortRange> {
    match &port.value {
        RawPort::Int(n) => {
            port_number(*n, port.span, diags).map(|p| PortRange { first: p, last: p })
        }
        RawPort::Str(s) => parse_range_text(s, port.span, diags),
    }
}

pub(super) fn parse_range_text(
    s: &str,
    span: Span,
    diags: &mut Vec<Diagnostic>,
) -> Option<PortRange> {
    let bad = |diags: &mut Vec<Diagnostic>| {
        diags.push(
            Diagnostic::error("E014", span, format!("invalid port range `{s}`"))
                .label("expected a port or \"from-to\"")
                .help("write a port like 80 or a range like \"8000-8010\" with from <= to"),
        );
        None
    };
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) else {
        return bad(diags);
    };
    let first = port_number(a, span, diags)?;
    let last = port_number(b, span, diags)?;
    if first > last {
        diags.push(
            Diagnostic::error("E014", span, format!("port range `{s}` runs backwards"))
                .label(format!("{first} is greater than {last}"))
                .help(format!("write \"{last}-{first}\"")),
        );
        return None;
    }
    Some(PortRange { first, last })
}

pub(super) fn domain(d: &Sp<String>, diags: &mut Vec<Diagnostic>) -> Option<String> {
    let lower = d.value.to_ascii_lowercase();
    let body = lower.strip_prefix("*.").unwrap_or(&lower);
    if is_dns_name(body) {
        return Some(lower);
    }
    diags.push(
        Diagnostic::error("E032", d.span, format!("invalid domain `{}`", d.value))
            .label("not a DNS name")
            .help("use a name like \"example.com\" or a wildcard like \"*.example.com\" (the `*` only as the first label)"),
    );
    None
}

pub(super) fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}
