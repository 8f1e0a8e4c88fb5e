//! The text script: routes rendered in slices (on threads) through the route templates,
//! their map elements gathered, then the whole table through `ruleset.nft.j2`.

use minijinja::value::Value;
use serde::Serialize;

use super::values::hex;
use super::views::RouteView;
use super::RenderError;
use crate::model::{Family, KernelRoute, Model, Snat};
use crate::nft::names;

const TEMPLATE: &str = include_str!("../../templates/ruleset.nft.j2");
const ROUTE_OBJECTS_TEMPLATE: &str = include_str!("../../templates/route-objects.nft.j2");
const ROUTE_CHAINS_TEMPLATE: &str = include_str!("../../templates/route-chains.nft.j2");

/// The templates, for caches of rendered-and-normalised output: another template text is
/// another output.
pub(crate) fn template_texts() -> String {
    [TEMPLATE, ROUTE_OBJECTS_TEMPLATE, ROUTE_CHAINS_TEMPLATE].concat()
}

/// The nft script for a model: `nft -f` ready, byte-identical for the same model.
///
/// Routes are rendered in slices, on as many threads as the machine offers, and the
/// slices are joined in route order: the text never depends on the number of threads.
pub fn render_script(model: &Model) -> Result<String, RenderError> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let slices = threads
        .min(model.kernel.len() / MIN_ROUTES_PER_SLICE)
        .max(1);
    render_in_slices(model, slices)
}

/// Below this many routes a slice (and its thread) costs more than it saves.
const MIN_ROUTES_PER_SLICE: usize = 512;

fn render_in_slices(model: &Model, slices: usize) -> Result<String, RenderError> {
    let env = environment()?;
    let keep_mask = hex(!model.mark_mask);
    let slices = render_route_slices(&env, model, &keep_mask, slices)?;
    let view = View::new(model, slices);
    Ok(env.get_template(RULESET)?.render(&view)?)
}

const RULESET: &str = "ruleset.nft";
const ROUTE_OBJECTS: &str = "route-objects.nft";
const ROUTE_CHAINS: &str = "route-chains.nft";

fn environment() -> Result<minijinja::Environment<'static>, RenderError> {
    let mut env = minijinja::Environment::new();
    env.set_keep_trailing_newline(true);
    env.add_template(RULESET, TEMPLATE)?;
    env.add_template(ROUTE_OBJECTS, ROUTE_OBJECTS_TEMPLATE)?;
    env.add_template(ROUTE_CHAINS, ROUTE_CHAINS_TEMPLATE)?;
    Ok(env)
}

/// Renders the routes in at most `slices` consecutive slices, one thread each, returned in
/// route order.
fn render_route_slices(
    env: &minijinja::Environment<'static>,
    model: &Model,
    keep_mask: &str,
    slices: usize,
) -> Result<Vec<RouteSlice>, RenderError> {
    let routes = &model.kernel;
    let log_group = model.log_group;
    if slices <= 1 || routes.len() <= 1 {
        return Ok(vec![RouteSlice::render(env, routes, keep_mask, log_group)?]);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = routes
            .chunks(routes.len().div_ceil(slices))
            .map(|slice| scope.spawn(move || RouteSlice::render(env, slice, keep_mask, log_group)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Consecutive routes, rendered: their counters and sets, their chains, and their elements
/// of the dispatch maps.
struct RouteSlice {
    objects: String,
    chains: String,
    maps: MapElements,
}

/// What a slice of routes adds to the maps and helper chains after the route chains.
#[derive(Default)]
struct MapElements {
    /// `[v4 ports, v4 ranges, v6 ports, v6 ranges]`: single ports go to hash maps, ranges
    /// to interval maps (nft backs those with pipapo, whose lookup grows with its size).
    dnat: [Vec<String>; 4],
    dnat_addr: [Vec<String>; 4],
    filter: Vec<String>,
    snat: Vec<String>,
    qos: Vec<String>,
    qos_classes: Vec<u8>,
    masquerade: bool,
    masquerade_random: bool,
}

impl RouteSlice {
    fn render(
        env: &minijinja::Environment<'static>,
        routes: &[KernelRoute],
        keep_mask: &str,
        log_group: u16,
    ) -> Result<Self, RenderError> {
        let mut maps = MapElements::default();
        let routes: Value = routes
            .iter()
            .map(|r| {
                let mark = hex(r.mark);
                maps.add(r, &mark);
                Value::from_object(RouteView::new(r, mark))
            })
            .collect();
        maps.sort();
        let view = minijinja::context! { routes, keep_mask, log_group };
        Ok(RouteSlice {
            objects: env.get_template(ROUTE_OBJECTS)?.render(&view)?,
            chains: env.get_template(ROUTE_CHAINS)?.render(&view)?,
            maps,
        })
    }
}

/// The index of a family's port or range map in [`MapElements`]'s `dnat` and `dnat_addr`.
fn dnat_slot(f: Family, range: bool) -> usize {
    2 * usize::from(f == Family::V6) + usize::from(range)
}

impl MapElements {
    fn add(&mut self, r: &KernelRoute, mark: &str) {
        for f in r.families() {
            for l4 in &r.l4 {
                for p in &r.ports {
                    let i = dnat_slot(f, p.first != p.last);
                    if r.addresses.is_empty() {
                        self.dnat[i].push(format!(
                            "{} . {p} : jump {}",
                            l4.as_str(),
                            names::nat_chain(f, &r.name)
                        ));
                    }
                    for a in r.addresses.iter().filter(|a| Family::of(a) == f) {
                        self.dnat_addr[i].push(format!(
                            "{a} . {} . {p} : jump {}",
                            l4.as_str(),
                            names::nat_chain(f, &r.name)
                        ));
                    }
                }
            }
        }
        self.filter
            .push(format!("{mark} : jump {}", names::filter_chain(&r.name)));
        match r.snat {
            Snat::None => {}
            Snat::Masquerade => {
                self.masquerade = true;
                self.snat
                    .push(format!("{mark} : jump {}", names::masquerade_chain(false)));
            }
            Snat::MasqueradeRandom => {
                self.masquerade_random = true;
                self.snat
                    .push(format!("{mark} : jump {}", names::masquerade_chain(true)));
            }
        }
        if let Some(q) = r.qos {
            self.qos
                .push(format!("{mark} : jump {}", names::qos_chain(q)));
            self.qos_classes.push(q);
        }
    }

    /// Sorts each map's elements in this slice, so that sorting the joined slices (by a
    /// sort that merges sorted runs) is cheap and happens on the worker threads.
    fn sort(&mut self) {
        let lists = self.dnat.iter_mut().chain(&mut self.dnat_addr);
        for list in lists.chain([&mut self.filter, &mut self.snat, &mut self.qos]) {
            list.sort();
        }
    }

    fn append(&mut self, other: MapElements) {
        let pairs = self.dnat.iter_mut().chain(&mut self.dnat_addr);
        for (mine, theirs) in pairs.zip(other.dnat.into_iter().chain(other.dnat_addr)) {
            mine.extend(theirs);
        }
        self.filter.extend(other.filter);
        self.snat.extend(other.snat);
        self.qos.extend(other.qos);
        self.qos_classes.extend(other.qos_classes);
        self.masquerade |= other.masquerade;
        self.masquerade_random |= other.masquerade_random;
    }
}

// ---- the view of the table: what ruleset.nft.j2 needs -----------------------------------

#[derive(Serialize)]
struct View<'a> {
    table: &'a str,
    mask: String,
    route_objects: Vec<String>,
    route_chains: Vec<String>,
    masquerade: bool,
    masquerade_random: bool,
    qos_classes: Vec<u8>,
    maps: Vec<MapView>,
}

#[derive(Serialize)]
struct MapView {
    name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    interval: bool,
    elements: Vec<String>,
}

impl<'a> View<'a> {
    fn new(model: &'a Model, slices: Vec<RouteSlice>) -> Self {
        let mut elements = MapElements::default();
        let mut route_objects = Vec::with_capacity(slices.len());
        let mut route_chains = Vec::with_capacity(slices.len());
        for slice in slices {
            route_objects.push(slice.objects);
            route_chains.push(slice.chains);
            elements.append(slice.maps);
        }
        let MapElements {
            mut dnat,
            mut dnat_addr,
            filter,
            snat,
            qos,
            mut qos_classes,
            masquerade,
            masquerade_random,
        } = elements;
        qos_classes.sort_unstable();
        qos_classes.dedup();
        let ports = "inet_proto . inet_service : verdict";
        let dispatch = names::DNAT_MAPS.iter().map(|&(f, by_address, range)| {
            let slot = &mut if by_address {
                &mut dnat_addr
            } else {
                &mut dnat
            }[dnat_slot(f, range)];
            let kind = match (by_address, f) {
                (false, _) => ports,
                (true, Family::V4) => "ipv4_addr . inet_proto . inet_service : verdict",
                (true, Family::V6) => "ipv6_addr . inet_proto . inet_service : verdict",
            };
            MapView {
                name: names::dnat_map(f, by_address, range),
                kind,
                interval: range,
                elements: std::mem::take(slot),
            }
        });
        let by_mark =
            names::MARK_MAPS
                .into_iter()
                .zip([filter, snat, qos])
                .map(|(name, elements)| MapView {
                    name,
                    kind: "mark : verdict",
                    interval: false,
                    elements,
                });
        let maps = dispatch
            .collect::<Vec<_>>()
            .into_iter()
            .chain(by_mark)
            .map(|mut m| {
                m.elements.sort();
                if m.elements.len() > 4 {
                    m.elements = vec![m.elements.join(",\n\t\t\t     ")];
                }
                m
            })
            .collect();
        View {
            table: &model.table,
            mask: hex(model.mark_mask),
            route_objects,
            route_chains,
            masquerade,
            masquerade_random,
            qos_classes,
            maps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_does_not_depend_on_how_many_slices_render_it() {
        let model = crate::lower::testing::fixture("json/everything.toml");
        let whole = render_in_slices(&model, 1).expect("renders");
        for slices in 2..=model.kernel.len() + 1 {
            let sliced = render_in_slices(&model, slices).expect("renders");
            assert!(sliced == whole, "{slices} slices render differently");
        }
        assert_eq!(render_script(&model).expect("renders"), whole);
    }
}
