//! The chains: per route its NAT and target chains, its filter chain and refusal; the
//! shared helper chains; the base chains that dispatch to them.

use std::borrow::Cow;

use ipnet::IpNet;
use nftables::expr::{
    CTDir, Expression, Fib, FibFlag, FibResult, JHash, MetaKey, NamedExpression, NgMode, Numgen,
    SetItem, CT,
};
use nftables::stmt::{
    self, Counter as CounterStmt, Log, Mangle, Match, NATFlag, Operator, Reject, RejectType, SetOp,
    Statement, NAT,
};
use nftables::types::{NfChainType, NfHook};

use super::expr::{
    anonymous_set, byte_limit, concat, ct, ct_state_new, direction, drop_it, goto, is, jump_to,
    l4_match, matches, meta, net, nfproto, num, packet_limit, payload, range, route_id, set_mark,
    set_stmt, target_rule, text, vmap, Expr, Stmt,
};
use super::{small, Document, SetKind};
use crate::model::{Family, KernelAction, KernelRoute, Snat};
use crate::nft::names;
use crate::render::values::{fam_ip, rate_timeout, refuses, slots, CLOSED_TIMEOUT};
use crate::render::RenderError;
use crate::types::{Rate, L4};

/// A chain and its rules; `base` = (type, hook, priority) of a base chain.
pub(super) struct ChainDef {
    pub(super) name: String,
    pub(super) base: Option<(NfChainType, NfHook, i32)>,
    pub(super) rules: Vec<Vec<Stmt>>,
}

impl ChainDef {
    pub(super) fn new(name: String) -> Self {
        ChainDef {
            name,
            base: None,
            rules: Vec::new(),
        }
    }

    pub(super) fn rule(mut self, stmts: Vec<Stmt>) -> Self {
        self.rules.push(stmts);
        self
    }
}

impl Document<'_> {
    /// `n<f>_<route>` per family, and `t<f>_<route>_<i>` per target when spread.
    pub(super) fn nat_chains(&mut self, r: &KernelRoute, keep: u32) {
        for f in r.families() {
            let mut chain =
                ChainDef::new(names::nat_chain(f, &r.name)).rule(vec![set_mark(keep, r.mark)]);
            let Some(spread) = r.spread(f) else {
                self.chains.push(chain);
                continue;
            };
            if let [one] = spread.targets.as_slice() {
                self.chains.push(chain.rule(target_rule(&r.l4, f, one)));
                continue;
            }
            let (total, slot_list) = slots(spread);
            let target_chain = |i: usize| names::target_chain(f, &r.name, i);
            let selector = match spread.affinity {
                crate::types::Affinity::None => {
                    Expression::Named(NamedExpression::Numgen(Numgen {
                        mode: NgMode::Random,
                        ng_mod: total,
                        offset: None,
                    }))
                }
                crate::types::Affinity::Source => {
                    Expression::Named(NamedExpression::JHash(JHash {
                        hash_mod: total,
                        offset: None,
                        expr: Box::new(payload(fam_ip(f), "saddr")),
                        seed: None,
                    }))
                }
            };
            let verdicts = slot_list
                .iter()
                .enumerate()
                .map(|(i, &(a, b))| {
                    SetItem::Mapping(range(a, b), Expression::Verdict(jump_to(target_chain(i))))
                })
                .collect();
            chain = chain.rule(vec![vmap(
                selector,
                Expression::Named(NamedExpression::Set(verdicts)),
            )]);
            self.chains.push(chain);
            for (i, t) in spread.targets.iter().enumerate() {
                self.chains
                    .push(ChainDef::new(target_chain(i)).rule(target_rule(&r.l4, f, t)));
            }
        }
    }

    /// The route's sets, `f_<route>` (count, refuse, cap) and `x_<route>` (refusal).
    pub(super) fn filter_chains(&mut self, r: &KernelRoute) -> Result<(), RenderError> {
        let refusal = names::refusal_chain(&r.name);
        let mut filter =
            ChainDef::new(names::filter_chain(&r.name)).rule(vec![Statement::Counter(
                CounterStmt::Named(Cow::Owned(names::counter(&r.name))),
            )
            .into()]);
        if matches!(r.action, KernelAction::Block) {
            // The original direction only: the reset the refusal sends carries the
            // connection's mark, and must not be refused in turn.
            filter = filter.rule(vec![direction("original"), goto(&refusal)]);
        }
        for f in r.families() {
            let saddr = || payload(fam_ip(f), "saddr");
            let elements = |list: &[IpNet]| -> Vec<Expr> {
                list.iter()
                    .filter(|n| Family::of(&n.addr()) == f)
                    .map(net)
                    .collect()
            };
            let block = elements(&r.block);
            if !block.is_empty() {
                let right = if r.use_ip_sets {
                    let name = names::set(names::SetKind::Block, f, &r.name);
                    self.set(&name, f, SetKind::Interval(block))?;
                    text(format!("@{name}"))
                } else {
                    anonymous_set(block)
                };
                filter = filter.rule(vec![
                    direction("original"),
                    is(saddr(), right),
                    goto(&refusal),
                ]);
            }
            if let Some(list) = &r.allow {
                let allow = elements(list);
                let refuse = if r.use_ip_sets {
                    let name = names::set(names::SetKind::Allow, f, &r.name);
                    self.set(&name, f, SetKind::Interval(allow))?;
                    matches(saddr(), Operator::NEQ, text(format!("@{name}")))
                } else if allow.is_empty() {
                    nfproto(f)
                } else {
                    matches(saddr(), Operator::NEQ, anonymous_set(allow))
                };
                filter = filter.rule(vec![direction("original"), refuse, goto(&refusal)]);
            }
            if let Some(max) = r.max_connections {
                // See `CLOSED_TIMEOUT`: an over-limit count is refused only from a source
                // that closed nothing lately; otherwise the SYN is dropped and counted
                // again on its retransmission.
                let name = names::set(names::SetKind::Conn, f, &r.name);
                self.set(&name, f, SetKind::Dynamic { timeout: None })?;
                let closed = names::set(names::SetKind::Closed, f, &r.name);
                let timeout = Some(small(CLOSED_TIMEOUT, "timeout")?);
                self.set(&closed, f, SetKind::Dynamic { timeout })?;
                let count = || {
                    Statement::CTCount(stmt::CTCount {
                        val: num(max),
                        inv: Some(true),
                    })
                };
                // `ct original ip saddr`: nft 1.0.6 reads `"family": "ip"` beside `"key":
                // "saddr"` into a rule that it then cannot list (an assertion in
                // `netlink_parse_concat_key`); the key with the family in it is what it
                // lists itself.
                let original_saddr = Expression::Named(NamedExpression::CT(CT {
                    key: Cow::Owned(format!("{} saddr", fam_ip(f))),
                    family: None,
                    dir: Some(CTDir::Original),
                }));
                filter = filter.rule(vec![
                    matches(ct("state"), Operator::IN, text("established")),
                    nfproto(f),
                    matches(
                        payload("tcp", "flags"),
                        Operator::IN,
                        Expression::List(vec![text("fin"), text("rst")]),
                    ),
                    Statement::Set(set_stmt(SetOp::Update, original_saddr, &closed)).into(),
                ]);
                let in_closed = |op| matches(saddr(), op, text(format!("@{closed}")));
                filter = filter.rule(vec![
                    ct_state_new(),
                    nfproto(f),
                    in_closed(Operator::EQ),
                    Stmt::SetWith(set_stmt(SetOp::Add, saddr(), &name), count()),
                    drop_it(),
                ]);
                filter = filter.rule(vec![
                    ct_state_new(),
                    nfproto(f),
                    in_closed(Operator::NEQ),
                    Stmt::SetWith(set_stmt(SetOp::Add, saddr(), &name), count()),
                    goto(&refusal),
                ]);
            }
            if let Some(rate) = &r.rate_limit {
                let name = names::set(names::SetKind::Rate, f, &r.name);
                let timeout = Some(small(rate_timeout(rate), "timeout")?);
                self.set(&name, f, SetKind::Dynamic { timeout })?;
                let limit = Statement::Limit(packet_limit(rate, true)?);
                filter = filter.rule(vec![
                    ct_state_new(),
                    nfproto(f),
                    Stmt::SetWith(set_stmt(SetOp::Update, saddr(), &name), limit),
                    goto(&refusal),
                ]);
            }
        }
        if let Some(max_rate) = &r.max_rate {
            for dir in ["original", "reply"] {
                filter = filter.rule(vec![
                    direction(dir),
                    Statement::Limit(byte_limit(max_rate)?).into(),
                    drop_it(),
                ]);
            }
        }
        self.chains.push(filter);
        if refuses(r) {
            let mut x = ChainDef::new(refusal);
            if r.log {
                let log_rate = Rate {
                    count: 10,
                    unit: crate::types::TimeUnit::Second,
                    burst: 20,
                };
                let mut log = Log::new((self.log_group != 0).then(|| u32::from(self.log_group)));
                log.prefix = Some(Cow::Owned(format!("smartproxy {} refused: ", r.name)));
                x = x.rule(vec![
                    Statement::Limit(packet_limit(&log_rate, false)?).into(),
                    Statement::Log(Some(log)).into(),
                ]);
            }
            x = x
                .rule(vec![
                    l4_match(&[L4::Tcp]),
                    Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None))).into(),
                ])
                .rule(vec![drop_it()]);
            self.chains.push(x);
        }
        Ok(())
    }

    /// `masq`, `masq_random` and `qos_cs<N>`, shared by the routes that need them.
    pub(super) fn helper_chains(&mut self, routes: &[KernelRoute]) {
        if routes.iter().any(|r| r.snat == Snat::Masquerade) {
            self.chains.push(
                ChainDef::new(names::masquerade_chain(false).into())
                    .rule(vec![Statement::Masquerade(None).into()]),
            );
        }
        if routes.iter().any(|r| r.snat == Snat::MasqueradeRandom) {
            let nat = NAT {
                addr: None,
                family: None,
                port: None,
                flags: Some([NATFlag::FullyRandom, NATFlag::Persistent].into()),
            };
            self.chains.push(
                ChainDef::new(names::masquerade_chain(true).into())
                    .rule(vec![Statement::Masquerade(Some(nat)).into()]),
            );
        }
        let mut classes: Vec<u8> = routes.iter().filter_map(|r| r.qos).collect();
        classes.sort_unstable();
        classes.dedup();
        for q in classes {
            let mangle = |key: Expr, value: String| -> Stmt {
                Statement::Mangle(Mangle {
                    key,
                    value: text(value),
                })
                .into()
            };
            self.chains.push(
                ChainDef::new(names::qos_chain(q))
                    .rule(vec![mangle(payload("ip", "dscp"), format!("cs{q}"))])
                    .rule(vec![mangle(payload("ip6", "dscp"), format!("cs{q}"))])
                    .rule(vec![mangle(meta(MetaKey::Priority), format!("1:{q}"))]),
            );
        }
    }

    pub(super) fn base_chains(&mut self, mask: u32) {
        let base = |name: &str, kind, hook, prio| ChainDef {
            name: name.to_owned(),
            base: Some((kind, hook, prio)),
            rules: Vec::new(),
        };
        let dnat_rules = |mut chain: ChainDef| {
            let l4_port = || vec![meta(MetaKey::L4proto), payload("th", "dport")];
            let local = Statement::Match(Match {
                left: Expression::Named(NamedExpression::Fib(Fib {
                    result: FibResult::Type,
                    flags: [FibFlag::Daddr].into(),
                })),
                right: text("local"),
                op: Operator::EQ,
            });
            // Single ports in a hash map, ranges in an interval map (see render).
            for (f, by_address, ranged) in names::DNAT_MAPS {
                let map = text(format!("@{}", names::dnat_map(f, by_address, ranged)));
                chain = chain.rule(if by_address {
                    let key = [vec![payload(fam_ip(f), "daddr")], l4_port()].concat();
                    vec![vmap(concat(key), map)]
                } else {
                    vec![
                        nfproto(f),
                        local.clone().into(),
                        vmap(concat(l4_port()), map),
                    ]
                });
            }
            chain
        };
        let by_route = |map: &str| vmap(route_id(mask), text(format!("@{map}")));
        self.chains.extend([
            dnat_rules(base(
                names::NAT_PREROUTING,
                NfChainType::NAT,
                NfHook::Prerouting,
                -100,
            )),
            // `priority dstnat` is refused for the output hook: -100 is its value.
            dnat_rules(base(
                names::NAT_OUTPUT,
                NfChainType::NAT,
                NfHook::Output,
                -100,
            )),
            base(
                names::NAT_POSTROUTING,
                NfChainType::NAT,
                NfHook::Postrouting,
                100,
            )
            .rule(vec![direction("original"), by_route(names::ROUTE_SNAT)]),
            base(names::FILTER_INPUT, NfChainType::Filter, NfHook::Input, 0).rule(vec![
                matches(meta(MetaKey::Iif), Operator::NEQ, text("lo")),
                by_route(names::ROUTE_FILTER),
            ]),
            base(
                names::FILTER_FORWARD,
                NfChainType::Filter,
                NfHook::Forward,
                0,
            )
            .rule(vec![by_route(names::ROUTE_FILTER)]),
            base(names::FILTER_OUTPUT, NfChainType::Filter, NfHook::Output, 0)
                .rule(vec![by_route(names::ROUTE_FILTER)]),
            base(
                names::QOS_POSTROUTING,
                NfChainType::Filter,
                NfHook::Postrouting,
                0,
            )
            .rule(vec![by_route(names::ROUTE_QOS)]),
        ]);
    }
}
