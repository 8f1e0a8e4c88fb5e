//! The readable table `smartproxy status` prints by default.

use std::fmt::Write as _;

use super::{Status, TargetStatus};

fn opt<T>(v: Option<&T>, f: impl FnOnce(&T) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

fn targets_text(targets: &[TargetStatus]) -> String {
    if targets.is_empty() {
        return "-".to_owned();
    }
    targets
        .iter()
        .map(|t| match t.up {
            None => t.target.clone(),
            Some(true) => format!("{} up", t.target),
            Some(false) => format!("{} DOWN", t.target),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A readable table: route, engine, kernel packets/bytes/active, serve connections (total
/// and active) and bytes (in/out), targets with their health. `-` where an engine has no
/// value.
pub fn render_text(s: &Status) -> String {
    let mut out = format!("table inet {}", s.table);
    match &s.serve {
        Some(serve) => {
            let _ = writeln!(
                out,
                " (serve pid {}, nftables {})",
                serve.pid, serve.nftables
            );
        }
        None => out.push_str(" (serve not running)\n"),
    }
    if s.routes.is_empty() {
        out.push_str("no routes\n");
        return out;
    }
    let header = [
        "ROUTE",
        "ENGINE",
        "PACKETS",
        "BYTES",
        "ACTIVE",
        "SERVE CONNS",
        "SERVE ACTIVE",
        "SERVE IN/OUT",
        "TARGETS",
    ];
    let mut rows: Vec<[String; 9]> = vec![header.map(str::to_owned)];
    for r in &s.routes {
        let k = r.kernel.as_ref();
        let v = r.serve.as_ref();
        rows.push([
            r.name.clone(),
            r.engine.clone(),
            opt(k, |k| k.packets.to_string()),
            opt(k, |k| k.bytes.to_string()),
            opt(k, |k| k.active.to_string()),
            opt(v, |v| v.connections_total.to_string()),
            opt(v, |v| v.active.to_string()),
            opt(v, |v| format!("{}/{}", v.bytes_in, v.bytes_out)),
            targets_text(&r.targets),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            match i {
                0 | 1 => {
                    let _ = write!(line, "{cell:<w$}  ");
                }
                8 => line.push_str(cell),
                _ => {
                    let _ = write!(line, "{cell:>w$}  ");
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::sample;

    #[test]
    fn status_text_aligns_columns_and_marks_health() {
        let text = render_text(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "table inet edge (serve pid 42, nftables on)");
        assert!(lines[1].starts_with("ROUTE"), "{text}");
        assert!(
            lines[2].contains("9") && lines[2].contains("100/2000"),
            "{text}"
        );
        assert!(
            lines[2].ends_with("198.51.100.2:443 up, 198.51.100.3:443 DOWN"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("web ") && lines[3].contains("1337"),
            "{text}"
        );
        assert_eq!(lines[1].find("ENGINE"), lines[3].find("nftables"), "{text}");
    }
}
