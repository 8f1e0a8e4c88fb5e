//! What plan remembers between runs, so that a one-route change to a table of 10,000
//! routes does not redo the work of the other 9,999. Both caches live in the state
//! directory, under the table's lock, and are only ever a shortcut to the same answer:
//!
//! - **Normalised routes** (`<table>.normalised`). The kernel's normalisation of a route
//!   (its counter, sets, chains and map elements, as `nft list` prints them back) depends
//!   only on the route and on the table's settings. Each route is remembered under a
//!   digest of its lowered form, the settings, the templates, the smartproxy version, the
//!   `nft` version and the kernel release; only routes without an entry are normalised,
//!   in a small scratch table that also holds one route for each shared chain (masquerade,
//!   QoS classes), so that the table-level part comes out as it would for the whole table.
//! - **The live table** (`<table>.live`). After a commit, if the namespace's ruleset
//!   generation ([`crate::kernel::generation`]) moved by exactly one from what the plan
//!   saw, the kernel holds exactly what the plan wanted, and nothing else was committed in
//!   between. That listing is remembered with the generation; while the generation stays
//!   the same, nothing in the namespace has changed, and plan uses it instead of listing
//!   the table (1 s at 10,000 routes). Any commit by anyone (a rule added by hand, another
//!   firewall, a rollback) changes the generation, and plan lists the table again.
//! - **Foreign drop chains** (`<table>.foreign`), the preflight check that lists every
//!   chain of the namespace (20,000 of them with 10,000 routes): remembered with the
//!   generation in the same way.
//!
//! All three are sealed ([`state::write_sealed`]: a keyed digest with a key only the state
//! directory holds): a file changed by anything but smartproxy is ignored with a warning,
//! and the table is listed or the routes normalised again. A cached unit must also parse
//! back as exactly that route's objects ([`unit_is_sound`]) before it is used.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kernel::{Kernel, KernelError};
use crate::model::{KernelRoute, Model, Snat};
use crate::nft::listing::{self, Listing, Object, RouteUnit};
use crate::state;

const NORMALISED: &str = "normalised";
const LIVE: &str = "live";
const FOREIGN: &str = "foreign";

#[derive(Default, Serialize, Deserialize)]
struct Normalised {
    /// Digest of everything the table-level part depends on.
    table_key: String,
    table_comment: Option<String>,
    table: Vec<Object>,
    routes: BTreeMap<String, CachedRoute>,
}

#[derive(Serialize, Deserialize)]
struct CachedRoute {
    key: String,
    objects: Vec<Object>,
    elements: Vec<(String, String)>,
    mark: Option<String>,
}

impl CachedRoute {
    fn of(key: String, unit: &RouteUnit) -> Self {
        CachedRoute {
            key,
            objects: unit.objects.values().cloned().collect(),
            elements: unit.elements.clone(),
            mark: unit.mark.clone(),
        }
    }

    fn unit(&self) -> RouteUnit {
        RouteUnit {
            objects: self
                .objects
                .iter()
                .map(|o| ((o.kind.clone(), o.name.clone()), o.clone()))
                .collect(),
            elements: self.elements.clone(),
            mark: self.mark.clone(),
        }
    }
}

fn hex_digest(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    crate::plan::lower_hex(&h.finalize())
}

/// What every normalised unit depends on besides the route itself.
fn environment_key(kernel: &dyn Kernel, model: &Model) -> String {
    let templates = crate::render::template_texts();
    let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    hex_digest(&[
        env!("CARGO_PKG_VERSION").as_bytes(),
        templates.as_bytes(),
        kernel.version().as_bytes(),
        kernel_release.as_bytes(),
        model.table.as_bytes(),
        &model.mark_mask.to_le_bytes(),
        &model.log_group.to_le_bytes(),
    ])
}

/// The shared chains routes need: the only way the routes shape the table-level part.
struct SharedChains {
    masquerade: bool,
    masquerade_random: bool,
    qos: BTreeSet<u8>,
}

impl SharedChains {
    fn of<'a>(routes: impl Iterator<Item = &'a KernelRoute> + Clone) -> Self {
        SharedChains {
            masquerade: routes.clone().any(|r| r.snat == Snat::Masquerade),
            masquerade_random: routes.clone().any(|r| r.snat == Snat::MasqueradeRandom),
            qos: routes.filter_map(|r| r.qos).collect(),
        }
    }
}

/// The desired table as the kernel would list it (see the module docs): from the cache
/// for routes normalised before, by loading a scratch table for the others.
pub fn desired_listing(
    kernel: &dyn Kernel,
    model: &Model,
    script: &str,
    notes: &Notes,
) -> Result<(String, Listing), KernelError> {
    let env = environment_key(kernel, model);
    let all: Vec<&KernelRoute> = model.kernel.iter().collect();
    let shared = SharedChains::of(model.kernel.iter());
    let qos_bytes: Vec<u8> = shared.qos.iter().copied().collect();
    let table_key = hex_digest(&[
        env.as_bytes(),
        &[
            u8::from(shared.masquerade),
            u8::from(shared.masquerade_random),
        ],
        &qos_bytes,
    ]);
    let keys: Vec<String> = crate::config::in_parallel(&all, |r| {
        let json = serde_json::to_vec(r).unwrap_or_default();
        hex_digest(&[env.as_bytes(), &json])
    });

    let mut cached: Normalised = sealed(notes, &model.table, NORMALISED)
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if !table_part_is_sound(&model.table, &cached) {
        warn_cache(notes, &model.table, "its table-level part is not ours");
        cached = Normalised::default();
    }
    let sound: Vec<bool> = crate::config::in_parallel(&all, |r| {
        cached
            .routes
            .get(&r.name)
            .is_none_or(|c| unit_is_sound(&model.table, &r.name, c))
    });
    for (r, _) in all.iter().zip(&sound).filter(|(_, ok)| !**ok) {
        warn_cache(
            notes,
            &model.table,
            &format!(
                "the entry of route `{}` is not exactly that route's objects",
                r.name
            ),
        );
        cached.routes.remove(&r.name);
    }
    let missing: Vec<usize> = (0..all.len())
        .filter(|&i| {
            cached
                .routes
                .get(&all[i].name)
                .is_none_or(|c| c.key != keys[i])
        })
        .collect();

    let (table_comment, table, fresh) = if missing.is_empty() && cached.table_key == table_key {
        (
            cached.table_comment.clone(),
            cached.table.clone(),
            Listing::default(),
        )
    } else if missing.len() == all.len() {
        // Nothing to reuse: normalise the script as it is.
        let fresh = listing::parse(&kernel.normalise(script, &model.table)?);
        (fresh.table_comment.clone(), fresh.table.clone(), fresh)
    } else {
        let fresh = listing::parse(&normalise_some(kernel, model, &shared, &missing)?);
        (fresh.table_comment.clone(), fresh.table.clone(), fresh)
    };

    let mut listing = Listing {
        table,
        table_comment,
        routes: BTreeMap::new(),
    };
    let mut next = Normalised {
        table_key,
        table_comment: listing.table_comment.clone(),
        table: listing.table.clone(),
        routes: BTreeMap::new(),
    };
    for (route, key) in all.iter().zip(keys) {
        let unit = match fresh.routes.get(&route.name) {
            Some(unit) => unit.clone(),
            None => match cached.routes.get(&route.name).filter(|c| c.key == key) {
                Some(c) => c.unit(),
                // A route the kernel lists with nothing of its own (not rendered so far).
                None => RouteUnit::default(),
            },
        };
        next.routes
            .insert(route.name.clone(), CachedRoute::of(key, &unit));
        listing.routes.insert(route.name.clone(), unit);
    }
    // Units the kernel attributes to names that are not routes (none today) are kept.
    for (name, unit) in &fresh.routes {
        listing
            .routes
            .entry(name.clone())
            .or_insert_with(|| unit.clone());
    }
    // Rewritten only when it changed (it is ~7 MB at 10,000 routes).
    let unchanged = missing.is_empty()
        && cached.table_key == next.table_key
        && cached.routes.len() == next.routes.len();
    if !unchanged || sound.contains(&false) {
        if let Ok(text) = serde_json::to_string(&next) {
            let _ = state::write_sealed(&model.table, NORMALISED, &text);
        }
    }
    Ok((listing.to_text(&model.table), listing))
}

/// Normalises the routes at `missing` in a scratch table that also holds one route for
/// each shared chain the whole model needs, so that its table-level part is the model's.
fn normalise_some(
    kernel: &dyn Kernel,
    model: &Model,
    needed: &SharedChains,
    missing: &[usize],
) -> Result<String, KernelError> {
    let mut chosen: BTreeSet<usize> = missing.iter().copied().collect();
    let routes = &model.kernel;
    let have = SharedChains::of(chosen.iter().map(|&i| &routes[i]));
    if needed.masquerade && !have.masquerade {
        chosen.extend(routes.iter().position(|r| r.snat == Snat::Masquerade));
    }
    if needed.masquerade_random && !have.masquerade_random {
        chosen.extend(routes.iter().position(|r| r.snat == Snat::MasqueradeRandom));
    }
    for class in needed.qos.difference(&have.qos) {
        chosen.extend(routes.iter().position(|r| r.qos == Some(*class)));
    }
    let scratch = Model {
        table: model.table.clone(),
        mark_mask: model.mark_mask,
        log_group: model.log_group,
        kernel: chosen.iter().map(|&i| routes[i].clone()).collect(),
        userspace: Vec::new(),
    };
    let script = crate::render::render_script(&scratch).map_err(|e| KernelError::Command {
        cmd: "render".into(),
        status: "failed".into(),
        stderr: e.to_string(),
    })?;
    kernel.normalise(&script, &model.table)
}

/// What the cache found wrong on the way (a file not to be trusted, a broken seal): the
/// caller shows them as warnings; the cache itself prints nothing.
#[derive(Debug, Default)]
pub struct Notes(std::sync::Mutex<Vec<String>>);

impl Notes {
    pub fn push(&self, note: String) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(note);
    }

    /// The notes so far, in the order they came; the collector is empty afterwards.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

fn warn_cache(notes: &Notes, table: &str, why: &str) {
    notes.push(format!(
        "cache `{}`: {why}; ignored, rebuilt from the kernel",
        state::path(table, NORMALISED).display()
    ));
}

/// A sealed cache file's text; `None` (with a warning when it was there) when it is absent,
/// not to be trusted or not matching its seal.
fn sealed(notes: &Notes, table: &str, suffix: &str) -> Option<String> {
    match state::read_sealed(table, suffix) {
        Ok(text) => text,
        Err(e) => {
            notes.push(e.to_string());
            None
        }
    }
}

/// A state file written as `generation\ntext` (sealed).
fn read_generational(notes: &Notes, table: &str, suffix: &str) -> Option<(u32, String)> {
    let text = sealed(notes, table, suffix)?;
    let (generation, rest) = text.split_once('\n')?;
    Some((generation.parse().ok()?, rest.to_owned()))
}

/// Whether a cached route unit is exactly route `name`'s objects and map elements: written
/// into a table as plan would write it, it is one `table inet T { … }` statement that the
/// guard accepts, and it parses back as that route alone, equal to itself (so no `}` in
/// it closes the table, no object or element belongs to another route or to the table).
fn unit_is_sound(table: &str, name: &str, cached: &CachedRoute) -> bool {
    let unit = cached.unit();
    let maps: BTreeSet<&str> = unit.elements.iter().map(|(m, _)| m.as_str()).collect();
    let decls: Vec<Object> = maps
        .iter()
        .map(|m| Object {
            kind: "map".to_owned(),
            name: (*m).to_owned(),
            text: format!("map {m} {{\n\ttype mark : verdict\n}}"),
            elements: Vec::new(),
        })
        .collect();
    let listing = Listing {
        table: decls.clone(),
        table_comment: None,
        routes: BTreeMap::from([(name.to_owned(), unit.clone())]),
    };
    let mut sorted = decls;
    sorted.sort();
    let expected = Listing {
        table: sorted,
        ..listing.clone()
    };
    text_is_one_table(table, &listing.to_text(table), &expected)
}

/// [`unit_is_sound`] for the cached table-level part (comment, base and shared chains, maps).
fn table_part_is_sound(table: &str, cached: &Normalised) -> bool {
    if cached.table.is_empty() && cached.table_comment.is_none() {
        return true;
    }
    let listing = Listing {
        table: cached.table.clone(),
        table_comment: cached.table_comment.clone(),
        routes: BTreeMap::new(),
    };
    text_is_one_table(table, &listing.to_text(table), &listing)
}

fn text_is_one_table(table: &str, text: &str, expected: &Listing) -> bool {
    let one = crate::nft::guard::statements(text, table).is_ok_and(|s| s.len() == 1);
    one && crate::nft::guard::check(text, table).is_ok() && listing::parse(text) == *expected
}

/// The live table (`None` when absent) and the generation it was read at, from the cache
/// when the namespace's generation has not moved since it was recorded.
pub fn live_listing(
    kernel: &dyn Kernel,
    table: &str,
    notes: &Notes,
) -> Result<(Option<String>, Option<u32>), KernelError> {
    let generation = kernel.generation();
    if let (Some(now), Some((then, listing))) = (generation, read_generational(notes, table, LIVE))
    {
        if now == then {
            return Ok((Some(listing), generation));
        }
    }
    Ok((kernel.list_table(table)?, generation))
}

/// Records what the table holds after our commit of `listing`, when the generation shows
/// that our commit was the only one since the plan read the table at `planned`.
pub fn committed(
    kernel: &dyn Kernel,
    table: &str,
    planned: Option<u32>,
    listing: &str,
    notes: &Notes,
) {
    match (planned, kernel.generation()) {
        (Some(before), Some(after)) if after == before.wrapping_add(1) => {
            if state::write_sealed(table, LIVE, &format!("{after}\n{listing}")).is_err() {
                forget_live(table);
            }
            // Our commit touched only our table: what was true of the others still is.
            match read_generational(notes, table, FOREIGN) {
                Some((then, text)) if then == before => {
                    let _ = state::write_sealed(table, FOREIGN, &format!("{after}\n{text}"));
                }
                _ => state::remove(table, FOREIGN),
            }
        }
        _ => forget_live(table),
    }
}

/// Foreign base chains with a drop policy (see [`crate::preflight`]), from the cache while
/// the generation stays, else from `list`.
pub fn foreign_drop_chains(
    kernel: &dyn Kernel,
    table: &str,
    notes: &Notes,
    list: impl FnOnce() -> Option<Vec<(String, String, String, String)>>,
) -> Vec<(String, String, String, String)> {
    let generation = kernel.generation();
    if let (Some(now), Some((then, text))) = (generation, read_generational(notes, table, FOREIGN))
    {
        if now == then {
            if let Ok(chains) = serde_json::from_str(&text) {
                return chains;
            }
        }
    }
    let Some(chains) = list() else {
        return Vec::new();
    };
    if let (Some(now), Ok(text)) = (generation, serde_json::to_string(&chains)) {
        let _ = state::write_sealed(table, FOREIGN, &format!("{now}\n{text}"));
    }
    chains
}

/// Drops the remembered live table (after destroy, or whenever it may be wrong).
pub fn forget_live(table: &str) {
    state::remove(table, LIVE);
    state::remove(table, FOREIGN);
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "table inet sp {
\tcounter c_web {
\t\tcomment \"web\"
\t}

\tmap route_filter {
\t\ttype mark : verdict
\t\telements = { 0x00010000 : jump f_web }
\t}

\tchain f_web {
\t\tcounter name \"c_web\"
\t}
}
";

    fn web() -> CachedRoute {
        let listing = listing::parse(LISTING);
        CachedRoute::of("k".to_owned(), &listing.routes["web"])
    }

    fn counter(c: &CachedRoute) -> usize {
        c.objects
            .iter()
            .position(|o| o.kind == "counter")
            .expect("web has a counter")
    }

    #[test]
    fn a_cached_unit_of_its_own_route_is_sound() {
        assert!(unit_is_sound("sp", "web", &web()));
    }

    #[test]
    fn a_cached_unit_with_an_injected_statement_or_a_foreign_object_is_not() {
        let mut c = web();
        let k = counter(&c);
        c.objects[k].text = c.objects[k].text.replace(
            "comment \"web\"",
            "comment \"web\" } add table inet rtinj3 {",
        );
        assert!(!unit_is_sound("sp", "web", &c), "a `}}` closing the table");
        let mut c = web();
        let k = counter(&c);
        c.objects[k].text = c.objects[k].text.replace(
            "comment \"web\"",
            "comment \"web\"\n}\nadd table inet rtinj3 {",
        );
        assert!(!unit_is_sound("sp", "web", &c), "lines closing the table");
        let mut c = web();
        let k = counter(&c);
        c.objects[k].name = "c_api".to_owned();
        c.objects[k].text = c.objects[k].text.replace("c_web", "c_api");
        assert!(!unit_is_sound("sp", "web", &c), "another route's counter");
        let mut c = web();
        c.elements[0].1 = "0x00020000 : jump f_api".to_owned();
        assert!(!unit_is_sound("sp", "web", &c), "another route's element");
        let mut c = web();
        c.elements[0].1 = "0x00010000 : jump f_web, 0x3 : jump nat_x".to_owned();
        assert!(!unit_is_sound("sp", "web", &c), "two elements in one");
        let mut c = web();
        c.objects.push(Object {
            kind: "chain".to_owned(),
            name: "f_web_in".to_owned(),
            text: "chain f_web {\n\ttype filter hook input priority 0; policy drop;\n}".to_owned(),
            elements: Vec::new(),
        });
        assert!(!unit_is_sound("sp", "web", &c), "a base chain");
    }

    #[test]
    fn a_cached_table_part_with_a_foreign_base_chain_is_not_sound() {
        let listing = listing::parse(LISTING);
        let mut n = Normalised {
            table_comment: Some("managed by smartproxy".to_owned()),
            table: listing.table.clone(),
            ..Normalised::default()
        };
        assert!(table_part_is_sound("sp", &n));
        n.table.push(Object {
            kind: "chain".to_owned(),
            name: "evil".to_owned(),
            text: "chain evil {\n\ttype filter hook input priority -400; policy drop;\n}"
                .to_owned(),
            elements: Vec::new(),
        });
        n.table.sort();
        assert!(!table_part_is_sound("sp", &n));
    }
}
