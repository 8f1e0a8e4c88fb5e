//! The dispatch maps, keyed by destination (`dnat4`, …) or by a route's mark
//! (`route_filter`, …), and their elements in the text script's order.

use std::borrow::Cow;
use std::net::IpAddr;

use nftables::expr::Expression;
use nftables::schema::{Map, NfListObject, SetFlag, SetType, SetTypeValue};
use nftables::types::NfFamily;
use serde_json::json;

use super::expr::{concat, jump_to, l4_name, num, ports, text, Expr};
use super::{flags, with_fields, Document};
use crate::model::{Family, KernelRoute, Snat};
use crate::nft::names;
use crate::render::values::hex;
use crate::render::RenderError;
use crate::types::{PortRange, L4};

impl Document<'_> {
    /// The dispatch maps, in the text script's order.
    pub(super) fn maps(&mut self, routes: &[KernelRoute]) -> Result<(), RenderError> {
        let mut dnat: [Vec<Element>; 4] = Default::default();
        let mut dnat_addr: [Vec<Element>; 4] = Default::default();
        let mut filter = Vec::new();
        let mut snat = Vec::new();
        let mut qos = Vec::new();
        for r in routes {
            for f in r.families() {
                let chain = names::nat_chain(f, &r.name);
                for &l4 in &r.l4 {
                    for &p in &r.ports {
                        let i = dnat_slot(f, p.first != p.last);
                        if r.addresses.is_empty() {
                            dnat[i].push(Element::dnat(None, l4, p, &chain));
                        }
                        for &a in r.addresses.iter().filter(|a| Family::of(a) == f) {
                            dnat_addr[i].push(Element::dnat(Some(a), l4, p, &chain));
                        }
                    }
                }
            }
            filter.push(Element::mark(r.mark, names::filter_chain(&r.name)));
            match r.snat {
                Snat::None => {}
                Snat::Masquerade => {
                    snat.push(Element::mark(r.mark, names::masquerade_chain(false).into()))
                }
                Snat::MasqueradeRandom => {
                    snat.push(Element::mark(r.mark, names::masquerade_chain(true).into()));
                }
            }
            if let Some(q) = r.qos {
                qos.push(Element::mark(r.mark, names::qos_chain(q)));
            }
        }
        let proto_port = || vec![SetType::InetProto, SetType::InetService];
        let dispatch = names::DNAT_MAPS.map(|(f, by_address, range)| {
            let key = match (by_address, f) {
                (false, _) => proto_port(),
                (true, Family::V4) => [vec![SetType::Ipv4Addr], proto_port()].concat(),
                (true, Family::V6) => [vec![SetType::Ipv6Addr], proto_port()].concat(),
            };
            let slot = &mut if by_address {
                &mut dnat_addr
            } else {
                &mut dnat
            }[dnat_slot(f, range)];
            (
                names::dnat_map(f, by_address, range),
                key,
                range,
                std::mem::take(slot),
            )
        });
        let by_mark = names::MARK_MAPS
            .into_iter()
            .zip([filter, snat, qos])
            .map(|(name, elements)| (name, vec![SetType::Mark], false, elements));
        for (name, key, interval, mut elements) in dispatch.into_iter().chain(by_mark) {
            // nft lists elements in the order they were added: the text script's order,
            // its element texts sorted as strings.
            elements.sort_by(|a, b| a.order.cmp(&b.order));
            let elements: Vec<Expr> = elements.into_iter().map(|e| e.expr).collect();
            let map = Map {
                family: NfFamily::INet,
                table: Cow::Borrowed(self.table),
                name: Cow::Borrowed(name),
                handle: None,
                set_type: match key.as_slice() {
                    [one] => SetTypeValue::Single(*one),
                    _ => SetTypeValue::Concatenated(Cow::Owned(key)),
                },
                // Overwritten below: `SetType` has no `verdict`.
                map: SetTypeValue::Single(SetType::Mark),
                policy: None,
                flags: flags(if interval { &[SetFlag::Interval] } else { &[] }),
                elem: (!elements.is_empty()).then_some(Cow::Owned(elements)),
                timeout: None,
                gc_interval: None,
                size: None,
                comment: None,
            };
            let map = NfListObject::Map(Box::new(map));
            self.maps
                .push(with_fields(map, vec![("map", json!("verdict"))])?);
        }
        Ok(())
    }
}

/// The index of a family's port or range map in `dnat` and `dnat_addr`.
fn dnat_slot(f: Family, range: bool) -> usize {
    2 * usize::from(f == Family::V6) + usize::from(range)
}

/// A map element and its text in the script, which orders the elements.
struct Element {
    order: String,
    expr: Expr,
}

impl Element {
    /// `[addr . ]l4 . ports : jump chain`.
    fn dnat(addr: Option<IpAddr>, l4: L4, p: PortRange, chain: &str) -> Self {
        let order = match addr {
            None => format!("{} . {p} : jump {chain}", l4.as_str()),
            Some(a) => format!("{a} . {} . {p} : jump {chain}", l4.as_str()),
        };
        let mut key: Vec<Expr> = addr.map(|a| text(a.to_string())).into_iter().collect();
        key.extend([l4_name(l4), ports(p)]);
        let expr = Expression::List(vec![
            concat(key),
            Expression::Verdict(jump_to(chain.to_owned())),
        ]);
        Element { order, expr }
    }

    /// `mark : jump chain`.
    fn mark(mark: u32, chain: String) -> Self {
        Element {
            order: format!("{} : jump {chain}", hex(mark)),
            expr: Expression::List(vec![num(mark), Expression::Verdict(jump_to(chain))]),
        }
    }
}
