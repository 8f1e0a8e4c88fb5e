//! Desired versus live -> a [`Plan`]: per route `+` add, `~` change, `-` destroy, `-/+`
//! replace, plus table-level settings and drift. Pure: the kernel listings come in as
//! text; `Display` renders the Terraform-style text, `to_json` the documented JSON
//! (docs/plan-json.md).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::diag::escape;
use crate::nft::listing::{self, Listing};

/// The unit name of table-level settings: never a valid route name, so no route can
/// collide with it.
pub const TABLE_UNIT: &str = "(table)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Replace,
    Delete,
}

impl Action {
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Action::Create => "will be created",
            Action::Update => "will be updated in place",
            Action::Replace => "must be replaced (its conntrack mark changes)",
            Action::Delete => "will be destroyed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The route name, or `table` for table-level settings.
    pub unit: String,
    pub action: Action,
    pub before: String,
    pub after: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub unit: String,
    /// Unified diff from what smartproxy last applied to what the kernel holds now.
    pub diff: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprints {
    /// Of the live table (counters, dynamic-set contents and handles left out).
    pub live: String,
    /// Of the desired table, after the kernel's normalisation.
    pub desired: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    pub table: String,
    pub table_exists: bool,
    /// The whole table must be replaced (table-level settings changed, or it is new).
    pub replace_table: bool,
    pub changes: Vec<Change>,
    pub drift: Vec<Drift>,
    pub warnings: Vec<String>,
    pub summary: Summary,
    pub fingerprints: Fingerprints,
    /// The rendered script (for a full load) and its normalised listing.
    pub desired_script: String,
    pub desired_listing: String,
    /// The live listing the plan was made against (for the incremental transaction).
    pub live_listing: Option<String>,
}

/// Fingerprint of a listing's configuration: the route units and table text, so counter
/// values, dynamic-set contents and handles never count.
pub fn fingerprint(listing: Option<&str>) -> String {
    fingerprint_of(listing.map(listing::parse).as_ref())
}

/// [`fingerprint`] of an already parsed listing (plan parses each listing once).
fn fingerprint_of(parsed: Option<&Listing>) -> String {
    let Some(parsed) = parsed else {
        return "sha256:absent".to_owned();
    };
    let mut hasher = Sha256::new();
    hasher.update(parsed.table_text());
    for (name, unit) in &parsed.routes {
        hasher.update(format!("route {name}\n"));
        hasher.update(unit.text());
    }
    format!("sha256:{}", lower_hex(&hasher.finalize()))
}

/// Bytes as lowercase hex (digests in fingerprints and cache keys).
pub(crate) fn lower_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Builds the plan. `applied` is the normalised listing smartproxy last applied (for
/// drift), `None` when unknown.
pub fn plan(
    table: &str,
    desired_script: String,
    desired_listing: String,
    live_listing: Option<String>,
    applied: Option<&str>,
    warnings: Vec<String>,
) -> Plan {
    let desired = listing::parse(&desired_listing);
    let live = live_listing.as_deref().map(listing::parse);
    plan_parsed(
        table,
        desired_script,
        (desired_listing, &desired),
        (live_listing, live.as_ref()),
        applied.map(|a| (a, None)),
        warnings,
    )
}

/// [`plan`] of listings already parsed (each listing of 10,000 routes takes ~80 ms to
/// parse): `desired` and `live` are the texts with their parsed forms, `applied` the text
/// with its parsed form when the caller had time to parse it.
pub fn plan_parsed(
    table: &str,
    desired_script: String,
    (desired_listing, desired): (String, &Listing),
    (live_listing, live): (Option<String>, Option<&Listing>),
    applied: Option<(&str, Option<&Listing>)>,
    warnings: Vec<String>,
) -> Plan {
    let mut changes = Vec::new();
    let mut summary = Summary::default();
    let empty = Listing::default();
    let live_ref = live.unwrap_or(&empty);

    match live {
        None => changes.push(Change {
            unit: TABLE_UNIT.into(),
            action: Action::Create,
            before: String::new(),
            after: table_outline(desired),
        }),
        Some(l) => {
            if let Some(c) = table_update(table_unit(l, desired), table_unit(desired, l)) {
                changes.push(c);
                summary.change += 1;
            }
        }
    }
    let names: BTreeSet<&String> = desired
        .routes
        .keys()
        .chain(live_ref.routes.keys())
        .collect();
    for name in names {
        let before = live_ref.routes.get(name);
        let after = desired.routes.get(name);
        let action = match (before, after) {
            (None, Some(_)) => Action::Create,
            (Some(_), None) => Action::Delete,
            (Some(b), Some(a)) if b == a || b.text() == a.text() => continue,
            (Some(b), Some(a)) if b.mark != a.mark => Action::Replace,
            (Some(_), Some(_)) => Action::Update,
            (None, None) => continue,
        };
        match action {
            Action::Create => summary.add += 1,
            Action::Update => summary.change += 1,
            Action::Delete => summary.destroy += 1,
            Action::Replace => {
                summary.add += 1;
                summary.destroy += 1;
            }
        }
        changes.push(Change {
            unit: name.clone(),
            action,
            before: before.map(listing::RouteUnit::text).unwrap_or_default(),
            after: after.map(listing::RouteUnit::text).unwrap_or_default(),
        });
    }
    // A shared chain that no route change explains (one left over or made by hand) is a
    // table change of its own: without it the plan would be empty and never repair it.
    if let (Some(l), true) = (live, changes.is_empty()) {
        if let Some(c) = table_update(l.table_text(), desired.table_text()) {
            changes.push(c);
            summary.change += 1;
        }
    }
    let drift = match (applied, live_listing.as_deref(), live) {
        // The same text: nothing drifted (the usual case, and the one without a parse).
        (Some((applied, _)), Some(now), _) if applied == now => Vec::new(),
        (Some((_, Some(applied))), Some(_), Some(now)) => drift(applied, now),
        (Some((applied, None)), Some(_), Some(now)) => drift(&listing::parse(applied), now),
        _ => Vec::new(),
    };
    let replace_table = live.is_none() || !table_fixed_equal(live_ref, desired);
    Plan {
        format_version: 1,
        table: table.to_owned(),
        table_exists: live.is_some(),
        replace_table,
        changes,
        drift,
        warnings,
        summary,
        fingerprints: Fingerprints {
            live: fingerprint_of(live),
            desired: fingerprint_of(Some(desired)),
        },
        desired_script,
        desired_listing,
        live_listing,
    }
}

/// A table-level update, when the texts differ.
fn table_update(before: String, after: String) -> Option<Change> {
    (before != after).then(|| Change {
        unit: TABLE_UNIT.into(),
        action: Action::Update,
        before,
        after,
    })
}

/// Table-level text for comparison: the fixed objects, plus the shared chains that both
/// sides have (a shared chain comes and goes with the routes that use it, so its arrival
/// or departure is not a table change of its own).
fn table_unit(l: &Listing, other: &Listing) -> String {
    let mut out = String::new();
    if let Some(c) = &l.table_comment {
        let _ = writeln!(out, "comment \"{c}\"");
    }
    for o in &l.table {
        if !is_shared_chain(o)
            || other
                .table
                .iter()
                .any(|x| x.kind == o.kind && x.name == o.name)
        {
            out.push_str(&o.text);
            out.push('\n');
        }
    }
    out
}

/// A new table in one line per object: the details are the same on every install.
fn table_outline(l: &Listing) -> String {
    let mut out = String::new();
    for o in &l.table {
        let first = o
            .text
            .lines()
            .find(|x| x.contains("hook"))
            .map(str::trim)
            .unwrap_or_default();
        let _ = writeln!(out, "{} {} {}", o.kind, o.name, first.trim_end_matches(';'));
    }
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Shared chains (`masq`, `masq_random`, `qos_csN`) can be added and removed one by one;
/// anything else at table level (base chains, map types, the comment) needs a new table.
pub fn is_shared_chain(o: &listing::Object) -> bool {
    o.kind == "chain" && crate::nft::names::is_shared_chain(&o.name)
}

fn table_fixed_equal(a: &Listing, b: &Listing) -> bool {
    let fixed = |l: &Listing| -> Vec<listing::Object> {
        l.table
            .iter()
            .filter(|o| !is_shared_chain(o))
            .cloned()
            .collect()
    };
    a.table_comment == b.table_comment && fixed(a) == fixed(b)
}

fn drift(applied: &Listing, now: &Listing) -> Vec<Drift> {
    let mut out = Vec::new();
    let (a, n) = (applied.table_text(), now.table_text());
    if a != n {
        out.push(Drift {
            unit: TABLE_UNIT.into(),
            diff: unified(&a, &n),
        });
    }
    let names: BTreeSet<&String> = applied.routes.keys().chain(now.routes.keys()).collect();
    for name in names {
        let a = applied
            .routes
            .get(name)
            .map(listing::RouteUnit::text)
            .unwrap_or_default();
        let n = now
            .routes
            .get(name)
            .map(listing::RouteUnit::text)
            .unwrap_or_default();
        if a != n {
            out.push(Drift {
                unit: name.clone(),
                diff: unified(&a, &n),
            });
        }
    }
    out
}

fn unified(before: &str, after: &str) -> String {
    let diff = similar::TextDiff::from_lines(before, after);
    let mut out = String::new();
    for hunk in diff.unified_diff().context_radius(2).iter_hunks() {
        for change in hunk.iter_changes() {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            };
            let _ = write!(out, "{sign} {}", change.value());
            if change.missing_newline() {
                out.push('\n');
            }
        }
    }
    out
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    pub fn to_json(&self) -> String {
        let view = serde_json::json!({
            "format_version": self.format_version,
            "table": self.table,
            "table_exists": self.table_exists,
            "replace_table": self.replace_table && self.has_changes(),
            "changes": self.changes,
            "drift": self.drift,
            "warnings": self.warnings,
            "summary": self.summary,
            "fingerprints": self.fingerprints,
        });
        let mut out = serde_json::to_string_pretty(&view).unwrap_or_default();
        out.push('\n');
        out
    }

    /// The Terraform-style text; `color` adds ANSI colours.
    pub fn render(&self, color: bool) -> String {
        let paint = |code: &str, text: &str| {
            if color {
                format!("\x1b[{code}m{text}\x1b[0m")
            } else {
                text.to_owned()
            }
        };
        let mut out = String::new();
        for w in &self.warnings {
            let _ = writeln!(out, "{} {}", paint("33;1", "Warning:"), escape(w));
        }
        if !self.warnings.is_empty() {
            out.push('\n');
        }
        if !self.drift.is_empty() {
            let _ = writeln!(out, "Drift: objects in table inet {} changed outside smartproxy since the last apply:\n", escape(&self.table));
            for d in &self.drift {
                let _ = writeln!(out, "  ~ {}", unit_title(&d.unit));
                for line in d.diff.lines() {
                    let _ = writeln!(out, "      {}", color_line(line, &paint));
                }
            }
            out.push('\n');
        }
        if !self.has_changes() {
            out.push_str("No changes. The kernel matches the route files.\n");
            return out;
        }
        let _ = writeln!(
            out,
            "smartproxy will perform the following actions on table inet {}:\n",
            escape(&self.table)
        );
        if self.table_exists && self.replace_table {
            let _ = writeln!(
                out,
                "  # table-level settings change: the whole table is replaced in one transaction (all counters and meters restart)\n"
            );
        }
        for c in &self.changes {
            let sym = c.action.symbol();
            let code = match c.action {
                Action::Create => "32",
                Action::Delete => "31",
                Action::Update | Action::Replace => "33",
            };
            let _ = writeln!(out, "  # {} {}", unit_title(&c.unit), c.action.words());
            let _ = writeln!(out, "  {} {} {{", paint(code, sym), unit_title(&c.unit));
            let body = match c.action {
                Action::Create => prefixed(&c.after, "+"),
                Action::Delete => prefixed(&c.before, "-"),
                Action::Update | Action::Replace => unified(&c.before, &c.after),
            };
            for line in body.lines() {
                let _ = writeln!(out, "      {}", color_line(line, &paint));
            }
            out.push_str("    }\n\n");
        }
        let s = self.summary;
        let _ = writeln!(
            out,
            "Plan: {} to add, {} to change, {} to destroy.",
            s.add, s.change, s.destroy
        );
        out
    }
}

fn unit_title(unit: &str) -> String {
    if unit == TABLE_UNIT {
        "table settings".to_owned()
    } else {
        format!("route \"{}\"", escape(unit))
    }
}

fn prefixed(text: &str, sign: &str) -> String {
    text.lines().map(|l| format!("{sign} {l}\n")).collect()
}

/// One line of a body or diff, its control characters escaped (live comments and state
/// files may hold anything), then coloured by its sign.
fn color_line(line: &str, paint: &dyn Fn(&str, &str) -> String) -> String {
    let line = escape(line);
    match line.chars().next() {
        Some('+') => paint("32", &line),
        Some('-') => paint("31", &line),
        _ => line.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_and_diff_lines_are_shown_escaped() {
        let paint = |_: &str, t: &str| t.to_owned();
        assert_eq!(
            color_line("+ comment \"\u{1b}[2J\u{202e}\"", &paint),
            "+ comment \"\\u{1b}[2J\\u{202e}\""
        );
        assert_eq!(unit_title("a\u{7}"), "route \"a\\u{7}\"");
    }

    fn listing(routes: &[(&str, &str)]) -> String {
        let mut out = String::from("table inet sp {\n\tcomment \"managed\"\n");
        let mut filter = Vec::new();
        for (name, mark) in routes {
            let _ = write!(out, "\tcounter c_{name} {{\n\t\tcomment \"{name}\"\n\t}}\n\n\tchain f_{name} {{\n\t\tcounter name \"c_{name}\"\n\t}}\n\n");
            filter.push(format!("{mark} : jump f_{name}"));
        }
        let _ = write!(
            out,
            "\tmap route_filter {{\n\t\ttype mark : verdict\n\t\telements = {{ {} }}\n\t}}\n}}\n",
            filter.join(", ")
        );
        out
    }

    #[test]
    fn plan_of_x_against_x_is_empty() {
        let l = listing(&[("web", "0x00010000"), ("api", "0x00020000")]);
        let p = plan(
            "sp",
            String::new(),
            l.clone(),
            Some(l.clone()),
            Some(&l),
            Vec::new(),
        );
        assert!(!p.has_changes());
        assert!(p.drift.is_empty());
        assert!(p
            .render(false)
            .contains("No changes. The kernel matches the route files."));
        assert_eq!(p.fingerprints.live, p.fingerprints.desired);
    }

    #[test]
    fn one_added_route_is_one_to_add() {
        let before = listing(&[("web", "0x00010000")]);
        let after = listing(&[("web", "0x00010000"), ("api", "0x00020000")]);
        let p = plan("sp", String::new(), after, Some(before), None, Vec::new());
        assert_eq!(
            p.summary,
            Summary {
                add: 1,
                change: 0,
                destroy: 0
            }
        );
        assert!(!p.replace_table);
        let text = p.render(false);
        assert!(
            text.ends_with("Plan: 1 to add, 0 to change, 0 to destroy.\n"),
            "{text}"
        );
        assert!(text.contains("  + route \"api\" {"), "{text}");
    }

    #[test]
    fn a_changed_mark_is_a_replace_and_a_removed_route_a_destroy() {
        let before = listing(&[("web", "0x00010000"), ("old", "0x00030000")]);
        let after = listing(&[("web", "0x00020000")]);
        let p = plan("sp", String::new(), after, Some(before), None, Vec::new());
        let actions: Vec<_> = p
            .changes
            .iter()
            .map(|c| (c.unit.as_str(), c.action))
            .collect();
        assert_eq!(actions, [("old", Action::Delete), ("web", Action::Replace)]);
        assert_eq!(
            p.summary,
            Summary {
                add: 1,
                change: 0,
                destroy: 2
            }
        );
    }

    #[test]
    fn a_stray_shared_chain_is_a_table_change() {
        let desired = listing(&[("web", "0x00010000")]);
        let live = desired.replace(
            "\tmap route_filter {",
            "\tchain qos_cs7 {\n\t\tip dscp set cs7\n\t}\n\n\tmap route_filter {",
        );
        let p = plan("sp", String::new(), desired, Some(live), None, Vec::new());
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        assert_eq!(p.changes[0].unit, TABLE_UNIT);
        assert_eq!(p.changes[0].action, Action::Update);
        assert!(!p.replace_table, "the shared chain goes on its own");
        assert_eq!(p.summary.change, 1);
    }

    #[test]
    fn hand_edits_show_as_drift() {
        let applied = listing(&[("web", "0x00010000")]);
        let now = applied.replace(
            "\t\tcounter name \"c_web\"\n",
            "\t\tcounter name \"c_web\"\n\t\tip saddr 192.0.2.9 drop\n",
        );
        let p = plan(
            "sp",
            String::new(),
            applied.clone(),
            Some(now),
            Some(&applied),
            Vec::new(),
        );
        assert_eq!(p.drift.len(), 1);
        assert!(
            p.drift[0].diff.contains("+ \tip saddr 192.0.2.9 drop"),
            "{}",
            p.drift[0].diff
        );
        assert_eq!(p.summary.change, 1, "the next apply repairs it");
    }
}
