//! Model -> nftables JSON (`nft -j -f`), built from the `nftables` crate's types.
//!
//! The document is the text script's ruleset, replacing our table in one transaction the
//! same way: add the table, delete it, add it again; then every counter, every set, every
//! chain (route chains, then base chains), the maps (after the chains their elements jump
//! to: nft refuses a `jump` to a chain it does not know yet), and last the rules. Each kind
//! is created in the text script's order, because nft lists sets, counters and chains in
//! creation order: both forms then list back identically.
//!
//! What `nftables` 0.6.3 cannot say is filled in on the serialised `serde_json::Value`:
//! - `schema::Table` and `schema::Counter` have no `comment` (added by [`with_fields`]);
//! - `schema::SetType` has no `verdict`, so a map's `"map": "verdict"` is written by hand;
//! - `stmt::Set` has no `stmt`, the `ct count` / `limit` inside `add @s { ip saddr … }`
//!   ([`Stmt::SetWith`]);
//! - `schema::Counter.bytes` is serialised as `null` when unset: the key is dropped;
//! - flags are `HashSet`s, serialised in random order: every `flags` array is sorted
//!   ([`sort_flags`]), so the output is byte-stable.
//!
//! And what nft 1.0.6 reads differently from its text parser:
//! - `"flags": ["dynamic"]` is refused ("Invalid set flag"): it is left out, and nft sets
//!   it itself on a set that a rule adds to or updates;
//! - a table `comment` is ignored (read from nft 1.0.7 on): it is still written, so newer
//!   nft keeps it.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use nftables::expr::{
    BinaryOperation, CTDir, Expression, Fib, FibFlag, FibResult, JHash, Map as MapExpr, Meta,
    MetaKey, NamedExpression, NgMode, Numgen, Payload, PayloadField, Prefix, Range, SetItem,
    Verdict, CT,
};
use nftables::schema::{
    Chain, Counter, Map, NfCmd, NfListObject, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{
    self, Counter as CounterStmt, JumpTarget, Log, Mangle, Match, NATFamily, NATFlag, Operator,
    Reject, RejectType, SetOp, Statement, VerdictMap, NAT,
};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::ser::Error as _;
use serde_json::{json, Value};

use super::{
    byte_burst, fam_ip, fam_n, fam_nfproto, hex, net_text, rate_timeout, refuses, slots,
    RenderError, CLOSED_TIMEOUT,
};
use crate::model::{Family, KernelAction, KernelPort, KernelRoute, KernelTarget, Model, Snat};
use crate::nft::names;
use crate::types::{ByteRate, PortRange, Rate, L4};

/// The same ruleset as `render_script`, as an `nft -j -f` document (pretty-printed,
/// byte-identical for the same model).
pub fn render_json(model: &Model) -> Result<String, RenderError> {
    let commands = Document::new(model)?.commands()?;
    let mut doc = json!({ "nftables": commands });
    sort_flags(&mut doc);
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    Ok(text)
}

/// A number the crate holds in `u32` (limits, timeouts), or a render error naming it.
fn small(value: u64, what: &str) -> Result<u32, RenderError> {
    u32::try_from(value).map_err(|_| {
        RenderError::Json(serde_json::Error::custom(format!(
            "{what} `{value}` does not fit nftables' 32 bits"
        )))
    })
}

// ---- expressions ------------------------------------------------------------------------

type Expr = Expression<'static>;

fn text(s: impl Into<String>) -> Expr {
    Expression::String(Cow::Owned(s.into()))
}

fn num(n: u32) -> Expr {
    Expression::Number(n)
}

fn meta(key: MetaKey) -> Expr {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct(key: &'static str) -> Expr {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expr {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

fn anonymous_set(items: Vec<Expr>) -> Expr {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

fn concat(items: Vec<Expr>) -> Expr {
    Expression::Named(NamedExpression::Concat(items))
}

fn and(left: Expr, right: Expr) -> Expr {
    Expression::BinaryOperation(Box::new(BinaryOperation::AND(left, right)))
}

fn range(first: u32, last: u32) -> Expr {
    if first == last {
        num(first)
    } else {
        Expression::Range(Box::new(Range {
            range: [num(first), num(last)],
        }))
    }
}

fn ports(p: PortRange) -> Expr {
    range(u32::from(p.first), u32::from(p.last))
}

/// A set element: a host as an address, a network as a prefix (like `net_text`).
fn net(n: &IpNet) -> Expr {
    if n.prefix_len() == n.max_prefix_len() {
        text(net_text(n))
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(text(n.addr().to_string())),
            len: u32::from(n.prefix_len()),
        }))
    }
}

fn jump_to(chain: String) -> Verdict<'static> {
    Verdict::Jump(JumpTarget {
        target: Cow::Owned(chain),
    })
}

/// `ct mark & mask`: the route id of a connection.
fn route_id(mask: u32) -> Expr {
    and(ct("mark"), num(mask))
}

fn l4_name(l4: L4) -> Expr {
    text(l4.as_str())
}

// ---- statements -------------------------------------------------------------------------

/// One statement of a rule: the crate's own, or a set update it cannot express.
enum Stmt {
    Typed(Statement<'static>),
    /// `add|update @set { elem stmt }`: `stmt::Set` has no field for the inner statement.
    SetWith(stmt::Set<'static>, Statement<'static>),
}

impl From<Statement<'static>> for Stmt {
    fn from(s: Statement<'static>) -> Self {
        Stmt::Typed(s)
    }
}

impl Stmt {
    fn to_value(&self) -> Result<Value, RenderError> {
        Ok(match self {
            Stmt::Typed(s) => serde_json::to_value(s)?,
            Stmt::SetWith(set, inner) => {
                let mut v = serde_json::to_value(Statement::Set(set.clone()))?;
                if let Some(obj) = v.get_mut("set").and_then(Value::as_object_mut) {
                    obj.insert("stmt".into(), json!([serde_json::to_value(inner)?]));
                }
                v
            }
        })
    }
}

fn matches(left: Expr, op: Operator, right: Expr) -> Stmt {
    Statement::Match(Match { left, right, op }).into()
}

fn is(left: Expr, right: Expr) -> Stmt {
    matches(left, Operator::EQ, right)
}

fn goto(chain: &str) -> Stmt {
    Statement::Goto(JumpTarget {
        target: Cow::Owned(chain.to_owned()),
    })
    .into()
}

fn drop_it() -> Stmt {
    Statement::Drop(None).into()
}

fn vmap(key: Expr, data: Expr) -> Stmt {
    Statement::VerdictMap(VerdictMap { key, data }).into()
}

/// `meta l4proto tcp` or `meta l4proto { tcp, udp }` (like `l4_match`).
fn l4_match(l4: &[L4]) -> Stmt {
    let right = match l4 {
        [one] => l4_name(*one),
        many => anonymous_set(many.iter().copied().map(l4_name).collect()),
    };
    is(meta(MetaKey::L4proto), right)
}

fn direction(dir: &'static str) -> Stmt {
    is(ct("direction"), text(dir))
}

fn nfproto(f: Family) -> Stmt {
    is(meta(MetaKey::Nfproto), text(fam_nfproto(f)))
}

fn ct_state_new() -> Stmt {
    matches(ct("state"), Operator::IN, text("new"))
}

/// `ct mark set ct mark & keep | mark`.
fn set_mark(keep: u32, mark: u32) -> Stmt {
    Statement::Mangle(Mangle {
        key: ct("mark"),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
            and(ct("mark"), num(keep)),
            num(mark),
        ]))),
    })
    .into()
}

/// `limit rate [over] N/unit burst M packets`.
fn packet_limit(r: &Rate, over: bool) -> Result<stmt::Limit<'static>, RenderError> {
    Ok(stmt::Limit {
        rate: small(r.count, "rate")?,
        rate_unit: Some(Cow::Borrowed("packets")),
        per: Some(Cow::Borrowed(r.unit.as_str())),
        burst: Some(small(r.burst, "burst")?),
        burst_unit: None,
        inv: over.then_some(true),
    })
}

/// `limit rate over N size/unit [burst B bytes]`, as `byte_rate_text` writes it.
fn byte_limit(r: &ByteRate) -> Result<stmt::Limit<'static>, RenderError> {
    let burst = match byte_burst(r) {
        0 => None,
        b => Some(small(b, "byte burst")?),
    };
    Ok(stmt::Limit {
        rate: small(r.amount, "byte rate")?,
        rate_unit: Some(Cow::Borrowed(r.size.as_str())),
        per: Some(Cow::Borrowed(r.unit.as_str())),
        burst,
        burst_unit: burst.map(|_| Cow::Borrowed("bytes")),
        inv: Some(true),
    })
}

/// `th dport map { from.first : to_first, … }` (like `port_map_text`).
fn port_map(from: PortRange, to_first: u16) -> Expr {
    let pairs = (u32::from(from.first)..=u32::from(from.last))
        .zip(u32::from(to_first)..)
        .map(|(p, to)| SetItem::Mapping(num(p), num(to)))
        .collect();
    Expression::Named(NamedExpression::Map(Box::new(MapExpr {
        key: payload("th", "dport"),
        data: Expression::Named(NamedExpression::Set(pairs)),
    })))
}

/// The protocol match and the NAT statement that send a connection to one target (like
/// `target_stmt`).
fn target_rule(l4: &[L4], family: Family, t: &KernelTarget) -> Vec<Stmt> {
    let port = match t.port {
        KernelPort::Fixed { port } => Some(num(u32::from(port))),
        KernelPort::Preserve => None,
        KernelPort::Map { from, to_first } => Some(port_map(from, to_first)),
    };
    let nat = match t.addr {
        None => Statement::Redirect(port.map(|port| NAT {
            addr: None,
            family: None,
            port: Some(port),
            flags: None,
        })),
        Some(addr) => Statement::DNAT(Some(NAT {
            addr: Some(text(addr.to_string())),
            family: Some(match family {
                Family::V4 => NATFamily::IP,
                Family::V6 => NATFamily::IP6,
            }),
            port,
            flags: None,
        })),
    };
    vec![l4_match(l4), nat.into()]
}

// ---- objects ----------------------------------------------------------------------------

/// A chain and its rules; `base` = (type, hook, priority) of a base chain.
struct ChainDef {
    name: String,
    base: Option<(NfChainType, NfHook, i32)>,
    rules: Vec<Vec<Stmt>>,
}

impl ChainDef {
    fn new(name: String) -> Self {
        ChainDef {
            name,
            base: None,
            rules: Vec::new(),
        }
    }

    fn rule(mut self, stmts: Vec<Stmt>) -> Self {
        self.rules.push(stmts);
        self
    }
}

/// The document, kind by kind; serialised as `{"nftables": [commands]}`.
struct Document<'m> {
    table: &'m str,
    log_group: u16,
    counters: Vec<Value>,
    sets: Vec<Value>,
    chains: Vec<ChainDef>,
    maps: Vec<Value>,
}

/// `{"add": {kind: object}}` with the fields the crate's type lacks; a `null` value
/// removes the field instead.
fn with_fields(object: NfListObject<'_>, extra: Vec<(&str, Value)>) -> Result<Value, RenderError> {
    let mut cmd = serde_json::to_value(NfCmd::Add(object))?;
    if let Some(obj) = cmd
        .get_mut("add")
        .and_then(Value::as_object_mut)
        .and_then(|add| add.values_mut().next())
        .and_then(Value::as_object_mut)
    {
        for (key, value) in extra {
            if value.is_null() {
                obj.remove(key);
            } else {
                obj.insert(key.to_owned(), value);
            }
        }
    }
    Ok(cmd)
}

fn add(object: NfListObject<'_>) -> Result<Value, RenderError> {
    with_fields(object, Vec::new())
}

/// A route's address set: static intervals (elements may be empty), or filled by rules.
enum SetKind {
    Interval(Vec<Expr>),
    Dynamic { timeout: Option<u32> },
}

fn addr_type(f: Family) -> SetTypeValue<'static> {
    SetTypeValue::Single(match f {
        Family::V4 => SetType::Ipv4Addr,
        Family::V6 => SetType::Ipv6Addr,
    })
}

fn flags(list: &[SetFlag]) -> Option<HashSet<SetFlag>> {
    (!list.is_empty()).then(|| list.iter().copied().collect())
}

impl<'m> Document<'m> {
    fn new(model: &'m Model) -> Result<Self, RenderError> {
        let mut doc = Document {
            table: &model.table,
            log_group: model.log_group,
            counters: Vec::new(),
            sets: Vec::new(),
            chains: Vec::new(),
            maps: Vec::new(),
        };
        for r in &model.kernel {
            doc.counter(r)?;
            doc.nat_chains(r, !model.mark_mask);
            doc.filter_chains(r)?;
        }
        doc.helper_chains(&model.kernel);
        doc.base_chains(model.mark_mask);
        doc.maps(&model.kernel)?;
        Ok(doc)
    }

    /// Adds a set of source addresses of one family.
    fn set(&mut self, name: &str, f: Family, kind: SetKind) -> Result<(), RenderError> {
        let (flag_list, elem, timeout, size): (&[SetFlag], _, _, _) = match kind {
            SetKind::Interval(elem) => (&[SetFlag::Interval], Some(elem), None, None),
            // No `dynamic` flag: nft 1.0.6 refuses it in JSON, and sets it itself on a set
            // that a rule adds to or updates.
            SetKind::Dynamic { timeout: None } => (&[], None, None, Some(65535)),
            SetKind::Dynamic { timeout } => (&[SetFlag::Timeout], None, timeout, Some(65535)),
        };
        let set = Set {
            family: NfFamily::INet,
            table: Cow::Borrowed(self.table),
            name: Cow::Owned(name.to_owned()),
            handle: None,
            set_type: addr_type(f),
            policy: None,
            flags: flags(flag_list),
            elem: elem.filter(|e| !e.is_empty()).map(Cow::Owned),
            timeout,
            gc_interval: None,
            size,
            comment: None,
        };
        self.sets.push(add(NfListObject::Set(Box::new(set)))?);
        Ok(())
    }

    fn counter(&mut self, r: &KernelRoute) -> Result<(), RenderError> {
        let counter = Counter {
            family: NfFamily::INet,
            table: Cow::Borrowed(self.table),
            name: Cow::Owned(names::counter(&r.name)),
            handle: None,
            packets: None,
            bytes: None,
        };
        let extra = vec![("comment", json!(r.comment)), ("bytes", Value::Null)];
        self.counters
            .push(with_fields(NfListObject::Counter(counter), extra)?);
        Ok(())
    }

    /// `n<f>_<route>` per family, and `t<f>_<route>_<i>` per target when spread.
    fn nat_chains(&mut self, r: &KernelRoute, keep: u32) {
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
    fn filter_chains(&mut self, r: &KernelRoute) -> Result<(), RenderError> {
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
    fn helper_chains(&mut self, routes: &[KernelRoute]) {
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

    fn base_chains(&mut self, mask: u32) {
        let base = |name: &str, kind, hook, prio| ChainDef {
            name: name.to_owned(),
            base: Some((kind, hook, prio)),
            rules: Vec::new(),
        };
        let dnat_rules = |mut chain: ChainDef| {
            for f in [Family::V4, Family::V6] {
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
                for suffix in ["", "_range"] {
                    chain = chain.rule(vec![
                        nfproto(f),
                        local.clone().into(),
                        vmap(
                            concat(l4_port()),
                            text(format!("@dnat{}{suffix}", fam_n(f))),
                        ),
                    ]);
                }
                for suffix in ["", "_range"] {
                    chain = chain.rule(vec![vmap(
                        concat([vec![payload(fam_ip(f), "daddr")], l4_port()].concat()),
                        text(format!("@dnat{}_addr{suffix}", fam_n(f))),
                    )]);
                }
            }
            chain
        };
        let by_route = |map: &str| vmap(route_id(mask), text(format!("@{map}")));
        self.chains.extend([
            dnat_rules(base(
                "nat_prerouting",
                NfChainType::NAT,
                NfHook::Prerouting,
                -100,
            )),
            // `priority dstnat` is refused for the output hook: -100 is its value.
            dnat_rules(base("nat_output", NfChainType::NAT, NfHook::Output, -100)),
            base(
                "nat_postrouting",
                NfChainType::NAT,
                NfHook::Postrouting,
                100,
            )
            .rule(vec![direction("original"), by_route(names::ROUTE_SNAT)]),
            base("filter_input", NfChainType::Filter, NfHook::Input, 0).rule(vec![
                matches(meta(MetaKey::Iif), Operator::NEQ, text("lo")),
                by_route(names::ROUTE_FILTER),
            ]),
            base("filter_forward", NfChainType::Filter, NfHook::Forward, 0)
                .rule(vec![by_route(names::ROUTE_FILTER)]),
            base("filter_output", NfChainType::Filter, NfHook::Output, 0)
                .rule(vec![by_route(names::ROUTE_FILTER)]),
            base(
                "qos_postrouting",
                NfChainType::Filter,
                NfHook::Postrouting,
                0,
            )
            .rule(vec![by_route(names::ROUTE_QOS)]),
        ]);
    }

    /// The dispatch maps, in the text script's order.
    fn maps(&mut self, routes: &[KernelRoute]) -> Result<(), RenderError> {
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
                        let i = 2 * usize::from(f == Family::V6) + usize::from(p.first != p.last);
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
        let [dnat4, dnat4_range, dnat6, dnat6_range] = dnat;
        let [dnat4_addr, dnat4_addr_range, dnat6_addr, dnat6_addr_range] = dnat_addr;
        let proto_port = || vec![SetType::InetProto, SetType::InetService];
        let with_addr = |a| [vec![a], proto_port()].concat();
        let maps = [
            ("dnat4", proto_port(), dnat4),
            ("dnat4_range", proto_port(), dnat4_range),
            ("dnat4_addr", with_addr(SetType::Ipv4Addr), dnat4_addr),
            (
                "dnat4_addr_range",
                with_addr(SetType::Ipv4Addr),
                dnat4_addr_range,
            ),
            ("dnat6", proto_port(), dnat6),
            ("dnat6_range", proto_port(), dnat6_range),
            ("dnat6_addr", with_addr(SetType::Ipv6Addr), dnat6_addr),
            (
                "dnat6_addr_range",
                with_addr(SetType::Ipv6Addr),
                dnat6_addr_range,
            ),
            (names::ROUTE_FILTER, vec![SetType::Mark], filter),
            (names::ROUTE_SNAT, vec![SetType::Mark], snat),
            (names::ROUTE_QOS, vec![SetType::Mark], qos),
        ];
        for (name, key, mut elements) in maps {
            // nft lists elements in the order they were added: the text script's order,
            // its element texts sorted as strings.
            elements.sort_by(|a, b| a.order.cmp(&b.order));
            let elements: Vec<Expr> = elements.into_iter().map(|e| e.expr).collect();
            let interval = name.ends_with("_range");
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

    /// Every command, in load order.
    fn commands(&self) -> Result<Vec<Value>, RenderError> {
        let table = || Table {
            family: NfFamily::INet,
            name: Cow::Borrowed(self.table),
            handle: None,
        };
        let mut out = vec![
            add(NfListObject::Table(table()))?,
            serde_json::to_value(NfCmd::Delete(NfListObject::Table(table())))?,
            with_fields(
                NfListObject::Table(table()),
                vec![("comment", json!(TABLE_COMMENT))],
            )?,
        ];
        out.extend(self.counters.iter().cloned());
        out.extend(self.sets.iter().cloned());
        for c in &self.chains {
            let (kind, hook, prio) = c
                .base
                .map_or((None, None, None), |(t, h, p)| (Some(t), Some(h), Some(p)));
            out.push(add(NfListObject::Chain(Chain {
                family: NfFamily::INet,
                table: Cow::Borrowed(self.table),
                name: Cow::Borrowed(&c.name),
                newname: None,
                handle: None,
                _type: kind,
                hook,
                prio,
                dev: None,
                policy: c.base.map(|_| NfChainPolicy::Accept),
            }))?);
        }
        out.extend(self.maps.iter().cloned());
        for c in &self.chains {
            for stmts in &c.rules {
                let rule = Rule {
                    family: NfFamily::INet,
                    table: Cow::Borrowed(self.table),
                    chain: Cow::Borrowed(&c.name),
                    expr: Cow::Owned(Vec::new()),
                    handle: None,
                    index: None,
                    comment: None,
                };
                let expr = stmts
                    .iter()
                    .map(Stmt::to_value)
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(with_fields(
                    NfListObject::Rule(rule),
                    vec![("expr", Value::Array(expr))],
                )?);
            }
        }
        Ok(out)
    }
}

/// The table comment of the text script.
const TABLE_COMMENT: &str = "managed by smartproxy; changes by hand are overwritten";

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

fn set_stmt(op: SetOp, elem: Expr, set: &str) -> stmt::Set<'static> {
    stmt::Set {
        op,
        elem,
        set: Cow::Owned(format!("@{set}")),
    }
}

/// Sorts every `flags` array: the crate keeps flags in a `HashSet`, whose order changes
/// from run to run.
fn sort_flags(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if let (true, Value::Array(items)) = (key == "flags", &mut *v) {
                    items.sort_by_key(ToString::to_string);
                }
                sort_flags(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(sort_flags),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{SizeUnit, TimeUnit};

    /// A limit statement in nft's text syntax, to compare with the text renderer's.
    fn limit_text(l: &stmt::Limit<'_>) -> String {
        let unit = |u: &Option<Cow<'_, str>>| u.as_deref().unwrap_or_default().to_owned();
        let burst = l.burst.unwrap_or_default();
        match (l.burst_unit.as_deref(), l.rate_unit.as_deref()) {
            (None, Some(size)) if size != "packets" && l.burst.is_none() => {
                format!("{} {size}/{}", l.rate, unit(&l.per))
            }
            (Some(b), _) => format!(
                "{} {}/{} burst {burst} {b}",
                l.rate,
                unit(&l.rate_unit),
                unit(&l.per)
            ),
            (None, _) => format!(
                "{}/{} burst {burst} {}",
                l.rate,
                unit(&l.per),
                unit(&l.rate_unit)
            ),
        }
    }

    #[test]
    fn limits_say_what_the_text_script_says() {
        for (count, unit, burst) in [(20, TimeUnit::Second, 40), (10, TimeUnit::Minute, 5)] {
            let r = Rate { count, unit, burst };
            let limit = packet_limit(&r, true).expect("fits");
            assert_eq!(limit_text(&limit), super::super::rate_text(&r));
            assert_eq!(limit.inv, Some(true));
        }
        for (amount, size, unit) in [
            (10, SizeUnit::Mbytes, TimeUnit::Second),
            (512, SizeUnit::Kbytes, TimeUnit::Second),
            (100, SizeUnit::Bytes, TimeUnit::Minute),
            (3, SizeUnit::Kbytes, TimeUnit::Day),
            (128, SizeUnit::Kbytes, TimeUnit::Second),
            (127, SizeUnit::Kbytes, TimeUnit::Second),
        ] {
            let r = ByteRate { amount, size, unit };
            let limit = byte_limit(&r).expect("fits");
            assert_eq!(limit_text(&limit), super::super::byte_rate_text(&r));
        }
    }

    #[test]
    fn numbers_beyond_32_bits_are_an_error_not_a_panic() {
        let r = ByteRate {
            amount: u64::MAX,
            size: SizeUnit::Mbytes,
            unit: TimeUnit::Second,
        };
        assert!(byte_limit(&r).is_err());
        let r = Rate {
            count: u64::from(u32::MAX) + 1,
            unit: TimeUnit::Second,
            burst: 5,
        };
        assert!(packet_limit(&r, true).is_err());
    }

    #[test]
    fn flags_are_sorted_wherever_they_are() {
        let mut v = json!({"a": [{"flags": ["persistent", "fully-random"]}], "flags": ["timeout", "interval"]});
        sort_flags(&mut v);
        assert_eq!(
            v,
            json!({"a": [{"flags": ["fully-random", "persistent"]}], "flags": ["interval", "timeout"]})
        );
    }

    #[test]
    fn fields_the_crate_lacks_are_filled_in() {
        let counter = Counter {
            family: NfFamily::INet,
            table: "t".into(),
            name: "c_x".into(),
            handle: None,
            packets: None,
            bytes: None,
        };
        let v = with_fields(
            NfListObject::Counter(counter),
            vec![("comment", json!("x: y")), ("bytes", Value::Null)],
        )
        .expect("serialises");
        assert_eq!(
            v,
            json!({"add": {"counter": {"family": "inet", "table": "t", "name": "c_x", "comment": "x: y"}}})
        );
        let set = Stmt::SetWith(
            set_stmt(SetOp::Add, payload("ip", "saddr"), "conn4_x"),
            Statement::CTCount(stmt::CTCount {
                val: num(3),
                inv: Some(true),
            }),
        );
        assert_eq!(
            set.to_value().expect("serialises"),
            json!({"set": {"op": "add", "elem": {"payload": {"protocol": "ip", "field": "saddr"}},
                "set": "@conn4_x", "stmt": [{"ct count": {"val": 3, "inv": true}}]}})
        );
    }
}
