//! The Prometheus text exposition of a [`Status`], and the exposition words serve's own
//! `/metrics` shares with it: the per-route serve families and label escaping.

use std::fmt::Write as _;

use super::{RouteStatus, Status};

/// serve's per-route metric families: name, type, help (serve's `/metrics` exports them
/// from its counters, `status` from serve's answer).
pub const ROUTE_FAMILIES: [(&str, &str, &str); 7] = [
    (
        "smartproxy_serve_connections_total",
        "counter",
        "connections accepted for the route",
    ),
    (
        "smartproxy_serve_connections_active",
        "gauge",
        "connections open now",
    ),
    (
        "smartproxy_serve_bytes_in_total",
        "counter",
        "bytes from clients to targets",
    ),
    (
        "smartproxy_serve_bytes_out_total",
        "counter",
        "bytes from targets to clients",
    ),
    (
        "smartproxy_serve_errors_total",
        "counter",
        "connections that ended in an error (no target reachable, TLS failure, timeout)",
    ),
    (
        "smartproxy_serve_refused_total",
        "counter",
        "connections refused by the route's security settings",
    ),
    (
        "smartproxy_serve_tls_handshakes_total",
        "counter",
        "TLS handshakes completed with clients",
    ),
];

/// A Prometheus label value, escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A metric family over the routes: name, type, help, and the value of a route (none: the
/// route has no sample).
type RouteFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&RouteStatus) -> Option<u64>,
);

const KERNEL_FAMILIES: [RouteFamily; 3] = [
    (
        "smartproxy_kernel_packets_total",
        "counter",
        "packets counted by the route's nftables counter (both directions)",
        |r| r.kernel.as_ref().map(|k| k.packets),
    ),
    (
        "smartproxy_kernel_bytes_total",
        "counter",
        "bytes counted by the route's nftables counter (both directions)",
        |r| r.kernel.as_ref().map(|k| k.bytes),
    ),
    (
        "smartproxy_kernel_active_connections",
        "gauge",
        "conntrack entries with the route's mark, not in TIME_WAIT or CLOSE",
        |r| r.kernel.as_ref().map(|k| k.active),
    ),
];

/// The values of serve's families, in the order of its `/metrics`
/// ([`ROUTE_FAMILIES`], names, types and help).
const SERVE_VALUES: [fn(&RouteStatus) -> Option<u64>; 7] = [
    |r| r.serve.as_ref().map(|v| v.connections_total),
    |r| r.serve.as_ref().map(|v| v.active),
    |r| r.serve.as_ref().map(|v| v.bytes_in),
    |r| r.serve.as_ref().map(|v| v.bytes_out),
    |r| r.serve.as_ref().map(|v| v.errors),
    |r| r.serve.as_ref().map(|v| v.refused),
    |r| r.serve.as_ref().map(|v| v.tls_handshakes),
];

/// Prometheus text exposition. `with_serve`: also the serve counters (serve's own /metrics
/// already exports those, under the names of [`ROUTE_FAMILIES`], so it passes false).
pub fn render_prometheus(s: &Status, with_serve: bool) -> String {
    let mut out = String::new();
    let serve: Vec<RouteFamily> = ROUTE_FAMILIES
        .iter()
        .zip(SERVE_VALUES)
        .filter(|_| with_serve)
        .map(|(&(name, kind, help), value)| (name, kind, help, value))
        .collect();
    for (name, kind, help, value) in KERNEL_FAMILIES.iter().chain(&serve) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for r in &s.routes {
            if let Some(v) = value(r) {
                let _ = writeln!(out, "{name}{{route=\"{}\"}} {v}", escape_label(&r.name));
            }
        }
    }
    let name = "smartproxy_target_up";
    let _ = writeln!(
        out,
        "# HELP {name} whether the target passed its last health check (1) or not (0)"
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for r in &s.routes {
        for t in &r.targets {
            if let Some(up) = t.up {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\",target=\"{}\"}} {}",
                    escape_label(&r.name),
                    escape_label(&t.target),
                    u8::from(up)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::sample;

    #[test]
    fn status_prometheus_escapes_labels_and_leaves_serve_to_serve() {
        let s = sample();
        let with = render_prometheus(&s, true);
        assert!(with.contains("smartproxy_kernel_packets_total{route=\"web\"} 12\n"));
        assert!(with.contains("smartproxy_kernel_active_connections{route=\"web\"} 1\n"));
        assert!(with.contains("smartproxy_serve_connections_active{route=\"sni \\\"x\\\"\"} 2\n"));
        assert!(with.contains(
            "smartproxy_target_up{route=\"sni \\\"x\\\"\",target=\"198.51.100.3:443\"} 0\n"
        ));
        assert!(
            !with.contains("target=\"198.51.100.2:80\""),
            "unchecked target"
        );
        let without = render_prometheus(&s, false);
        assert!(!without.contains("smartproxy_serve_"));
        assert!(without.contains("smartproxy_target_up{"));
    }

    #[test]
    fn status_prometheus_label_escaping_keeps_values_apart() {
        assert_eq!(escape_label("plain"), "plain");
        assert_eq!(escape_label("a\"b"), "a\\\"b");
        assert_eq!(escape_label("a\\b"), "a\\\\b");
        assert_eq!(escape_label("a\nb"), "a\\nb");
        // The backslash is escaped first: a quote's escape is not escaped again.
        assert_eq!(escape_label("\\\""), "\\\\\\\"");
    }
}
