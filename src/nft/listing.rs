//! A listed table (`nft -s list table inet NAME`, after the kernel's normalisation) split
//! into the units plan and apply work with: table-level text, and per route its objects
//! (counter, sets, chains) and the map elements it owns.
//!
//! Ownership follows the names the renderer gives ([`super::names::owner`]); a map element
//! belongs to the route its verdict jumps to, or (for the mark-keyed maps) whose mark it
//! carries. Pure text parsing: no kernel, no I/O.

use std::collections::BTreeMap;

pub use super::names::owner;

/// One top-level object of the table, as listed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Object {
    /// `counter`, `set`, `map` or `chain`.
    pub kind: String,
    pub name: String,
    /// The listed block, without the elements of a map and without the contents of dynamic
    /// sets (those are state, not configuration).
    pub text: String,
    /// Elements of a map (`key : verdict`), in listed order.
    pub elements: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteUnit {
    /// Objects keyed by (kind, name).
    pub objects: BTreeMap<(String, String), Object>,
    /// (map name, element) pairs.
    pub elements: Vec<(String, String)>,
    /// The route's mark, when it has a `route_filter` element.
    pub mark: Option<String>,
}

impl RouteUnit {
    /// The unit as lines of nft-like text, for diffs and fingerprints.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for o in self.objects.values() {
            out.push_str(&o.text);
            out.push('\n');
        }
        let mut elements = self.elements.clone();
        elements.sort();
        for (map, e) in elements {
            out.push_str(&format!("element {map} {{ {e} }}\n"));
        }
        out
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Everything not owned by a route: table comment, base chains, shared chains, map
    /// declarations.
    pub table: Vec<Object>,
    pub table_comment: Option<String>,
    pub routes: BTreeMap<String, RouteUnit>,
}

impl Listing {
    pub fn table_text(&self) -> String {
        let mut out = String::new();
        if let Some(c) = &self.table_comment {
            out.push_str(&format!("comment \"{c}\"\n"));
        }
        for o in &self.table {
            out.push_str(&o.text);
            out.push('\n');
        }
        out
    }
}

impl Object {
    /// The object as `nft list` prints it inside a table, with `elements` (for a map).
    fn write_listed(&self, elements: &[&str], out: &mut String) {
        let text = self
            .text
            .split_once("\nunowned elements: ")
            .map_or(self.text.as_str(), |(decl, _)| decl);
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        out.push('\t');
        out.push_str(header);
        out.push('\n');
        for line in lines.filter(|l| *l != "}" && !l.trim().is_empty()) {
            out.push('\t');
            out.push_str(line);
            out.push('\n');
        }
        if !elements.is_empty() {
            out.push_str("\t\telements = { ");
            out.push_str(&elements.join(", "));
            out.push_str(" }\n");
        }
        out.push_str("\t}\n");
    }
}

impl Listing {
    /// The listing as `nft -s list table inet TABLE` text that [`parse`] reads back into
    /// an equal listing (the order of objects and elements may differ from nft's).
    pub fn to_text(&self, table: &str) -> String {
        let mut out = format!("table inet {table} {{\n");
        if let Some(c) = &self.table_comment {
            out.push_str(&format!("\tcomment \"{c}\"\n"));
        }
        let mut owned: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for unit in self.routes.values() {
            for (map, e) in &unit.elements {
                owned.entry(map.as_str()).or_default().push(e.as_str());
            }
        }
        for o in &self.table {
            if o.kind == "loose" {
                for line in o.text.lines() {
                    out.push('\t');
                    out.push_str(line);
                    out.push('\n');
                }
                continue;
            }
            let mut elements: Vec<&str> = o.elements.iter().map(String::as_str).collect();
            if o.kind == "map" {
                elements.extend(owned.get(o.name.as_str()).into_iter().flatten());
            }
            o.write_listed(&elements, &mut out);
        }
        for unit in self.routes.values() {
            for o in unit.objects.values() {
                o.write_listed(&[], &mut out);
            }
        }
        out.push_str("}\n");
        out
    }
}

/// Splits `elements = { a, b,\n c }` text (already joined) into elements.
fn split_elements(body: &str) -> Vec<String> {
    body.split(',')
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .collect()
}

/// Parses the listing of one table. Unknown top-level lines are kept as table-level text,
/// so nothing added by hand goes unseen.
pub fn parse(listing: &str) -> Listing {
    let mut objects: Vec<Object> = Vec::new();
    let mut table_comment = None;
    let mut loose = Vec::new();
    let mut lines = listing.lines();
    for line in lines.by_ref() {
        if line.starts_with("table ") {
            break;
        }
    }
    let mut current: Option<(String, String, Vec<String>)> = None;
    for line in lines {
        if let Some((kind, name, body)) = current.as_mut() {
            if line == "\t}" {
                let (text, elements) = finish_object(kind, name, body);
                objects.push(Object {
                    kind: kind.clone(),
                    name: name.clone(),
                    text,
                    elements,
                });
                current = None;
            } else {
                body.push(line.trim().to_owned());
            }
            continue;
        }
        let t = line.trim();
        if t.is_empty() || t == "}" {
            continue;
        }
        if let Some(c) = t
            .strip_prefix("comment \"")
            .and_then(|c| c.strip_suffix('"'))
        {
            table_comment = Some(c.to_owned());
            continue;
        }
        let mut words = t.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (
                Some(
                    kind @ ("counter" | "set" | "map" | "chain" | "limit" | "quota" | "ct"
                    | "flowtable"),
                ),
                Some(name),
                Some("{"),
            ) => {
                current = Some((kind.to_owned(), name.to_owned(), Vec::new()));
            }
            _ => loose.push(t.to_owned()),
        }
    }
    let mut listing = Listing {
        table_comment,
        ..Listing::default()
    };
    // Marks -> routes, from the route_filter map.
    let mut mark_owner = BTreeMap::new();
    for o in objects
        .iter()
        .filter(|o| o.kind == "map" && o.name == super::names::ROUTE_FILTER)
    {
        for e in &o.elements {
            if let Some((mark, verdict)) = e.split_once(" : ") {
                if let Some(route) = verdict
                    .strip_prefix("jump ")
                    .and_then(super::names::route_of_filter_chain)
                {
                    mark_owner.insert(mark.to_owned(), route.to_owned());
                }
            }
        }
    }
    for o in objects {
        if o.kind == "map" {
            let mut decl = o.clone();
            decl.elements = Vec::new();
            for e in &o.elements {
                let owner = e.split_once(" : ").and_then(|(key, verdict)| {
                    let target = verdict
                        .strip_prefix("jump ")
                        .or_else(|| verdict.strip_prefix("goto "))?;
                    owner("chain", target).or_else(|| mark_owner.get(key).cloned())
                });
                match owner {
                    Some(route) => {
                        let unit = listing.routes.entry(route).or_default();
                        if o.name == super::names::ROUTE_FILTER {
                            unit.mark = e.split_once(" : ").map(|(k, _)| k.to_owned());
                        }
                        unit.elements.push((o.name.clone(), e.clone()));
                    }
                    None => decl.elements.push(e.clone()),
                }
            }
            if !decl.elements.is_empty() {
                decl.text = format!(
                    "{}\nunowned elements: {}",
                    decl.text,
                    decl.elements.join(", ")
                );
            }
            listing.table.push(decl);
            continue;
        }
        match owner(&o.kind, &o.name) {
            Some(route) => {
                listing
                    .routes
                    .entry(route)
                    .or_default()
                    .objects
                    .insert((o.kind.clone(), o.name.clone()), o);
            }
            None => listing.table.push(o),
        }
    }
    if !loose.is_empty() {
        listing.table.push(Object {
            kind: "loose".into(),
            name: String::new(),
            text: loose.join("\n"),
            elements: Vec::new(),
        });
    }
    listing.table.sort();
    listing
}

/// Normalised text of one object and, for maps, its elements. Map elements and dynamic
/// set contents are taken out of the text.
fn finish_object(kind: &str, name: &str, body: &[String]) -> (String, Vec<String>) {
    let dynamic = body
        .iter()
        .any(|l| l.starts_with("flags ") && l.contains("dynamic"));
    let mut text_lines = Vec::new();
    let mut elements = Vec::new();
    let mut in_elements = false;
    let mut element_text = String::new();
    for line in body {
        if let Some(rest) = line.strip_prefix("elements = { ") {
            in_elements = true;
            element_text.push_str(rest);
        } else if in_elements {
            element_text.push(' ');
            element_text.push_str(line);
        } else {
            text_lines.push(line.clone());
            continue;
        }
        if element_text.ends_with('}') {
            in_elements = false;
            let inner = element_text.trim_end_matches('}').trim_end().to_owned();
            if kind == "map" {
                elements = split_elements(&inner);
            } else if !dynamic {
                text_lines.push(format!(
                    "elements = {{ {} }}",
                    split_elements(&inner).join(", ")
                ));
            }
            element_text.clear();
        }
    }
    let text = format!(
        "{kind} {name} {{\n{}\n}}",
        text_lines
            .iter()
            .map(|l| format!("\t{l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    (text, elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "table inet smartproxy {
\tcomment \"managed by smartproxy\"
\tcounter c_web {
\t\tcomment \"web\"
\t}

\tset conn4_web {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags dynamic
\t\telements = { 192.0.2.2 ct count over 3 }
\t}

\tset block4_web {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 192.0.2.66,
\t\t\t     192.0.2.128/25 }
\t}

\tmap dnat4 {
\t\ttype inet_proto . inet_service : verdict
\t\tflags interval
\t\telements = { tcp . 80 : jump n4_web,
\t\t\t     tcp . 8000-8010 : jump n4_web_2, tcp . 443 : jump n4_api }
\t}

\tmap route_filter {
\t\ttype mark : verdict
\t\telements = { 0x00380000 : jump f_web }
\t}

\tmap route_snat {
\t\ttype mark : verdict
\t\telements = { 0x00380000 : jump masq }
\t}

\tchain n4_web {
\t\tct mark set ct mark & 0xff38ffff | 0x00380000
\t\tnumgen random mod 3 vmap { 0 : jump t4_web_0, 1-2 : jump t4_web_1 }
\t}

\tchain t4_web_0 {
\t\tmeta l4proto tcp dnat ip to 198.51.100.2:9090
\t}

\tchain masq {
\t\tmasquerade
\t}
}
";

    #[test]
    fn a_listing_written_as_text_parses_back_to_itself() {
        let listing = parse(LISTING);
        let text = listing.to_text("smartproxy");
        assert_eq!(parse(&text), listing, "{text}");
        let empty_chain = "table inet t {\n\tchain f_a {\n\t}\n\tmap route_filter {\n\t\ttype mark : verdict\n\t\telements = { 0x1 : jump f_a, 0x2 : jump nowhere }\n\t}\n}\n";
        let listing = parse(empty_chain);
        assert_eq!(parse(&listing.to_text("t")), listing);
    }

    #[test]
    fn objects_and_elements_go_to_their_route() {
        let l = parse(LISTING);
        assert_eq!(l.table_comment.as_deref(), Some("managed by smartproxy"));
        let web = &l.routes["web"];
        let names: Vec<&str> = web.objects.keys().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names,
            ["n4_web", "t4_web_0", "c_web", "block4_web", "conn4_web"]
        );
        assert_eq!(web.mark.as_deref(), Some("0x00380000"));
        assert!(web
            .elements
            .contains(&("route_snat".into(), "0x00380000 : jump masq".into())));
        assert!(web
            .elements
            .contains(&("dnat4".into(), "tcp . 80 : jump n4_web".into())));
        assert!(l.routes["web_2"]
            .elements
            .contains(&("dnat4".into(), "tcp . 8000-8010 : jump n4_web_2".into())));
        assert!(l.routes.contains_key("api"));
        // Dynamic set contents are state, not configuration.
        assert!(!web.text().contains("ct count over 3"));
        assert!(web
            .text()
            .contains("elements = { 192.0.2.66, 192.0.2.128/25 }"));
        assert!(l.table.iter().any(|o| o.name == "masq"));
    }
}
