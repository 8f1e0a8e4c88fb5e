//! Expressions and statements in the `nftables` crate's types, and the one statement it
//! cannot say ([`Stmt::SetWith`]); each mirrors a helper of the text renderer.

use std::borrow::Cow;

use ipnet::IpNet;
use nftables::expr::{
    BinaryOperation, Expression, Map as MapExpr, Meta, MetaKey, NamedExpression, Payload,
    PayloadField, Prefix, Range, SetItem, Verdict, CT,
};
use nftables::stmt::{
    self, JumpTarget, Mangle, Match, NATFamily, Operator, SetOp, Statement, VerdictMap, NAT,
};
use serde_json::{json, Value};

use super::small;
use crate::model::{Family, KernelPort, KernelTarget};
use crate::render::values::{byte_burst, fam_nfproto, net_text};
use crate::render::RenderError;
use crate::types::{ByteRate, PortRange, Rate, L4};

pub(super) type Expr = Expression<'static>;

pub(super) fn text(s: impl Into<String>) -> Expr {
    Expression::String(Cow::Owned(s.into()))
}

pub(super) fn num(n: u32) -> Expr {
    Expression::Number(n)
}

pub(super) fn meta(key: MetaKey) -> Expr {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(super) fn ct(key: &'static str) -> Expr {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

pub(super) fn payload(protocol: &'static str, field: &'static str) -> Expr {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

pub(super) fn anonymous_set(items: Vec<Expr>) -> Expr {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

pub(super) fn concat(items: Vec<Expr>) -> Expr {
    Expression::Named(NamedExpression::Concat(items))
}

pub(super) fn and(left: Expr, right: Expr) -> Expr {
    Expression::BinaryOperation(Box::new(BinaryOperation::AND(left, right)))
}

pub(super) fn range(first: u32, last: u32) -> Expr {
    if first == last {
        num(first)
    } else {
        Expression::Range(Box::new(Range {
            range: [num(first), num(last)],
        }))
    }
}

pub(super) fn ports(p: PortRange) -> Expr {
    range(u32::from(p.first), u32::from(p.last))
}

/// A set element: a host as an address, a network as a prefix (like `net_text`).
pub(super) fn net(n: &IpNet) -> Expr {
    if n.prefix_len() == n.max_prefix_len() {
        text(net_text(n))
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(text(n.addr().to_string())),
            len: u32::from(n.prefix_len()),
        }))
    }
}

pub(super) fn jump_to(chain: String) -> Verdict<'static> {
    Verdict::Jump(JumpTarget {
        target: Cow::Owned(chain),
    })
}

/// `ct mark & mask`: the route id of a connection.
pub(super) fn route_id(mask: u32) -> Expr {
    and(ct("mark"), num(mask))
}

pub(super) fn l4_name(l4: L4) -> Expr {
    text(l4.as_str())
}

// ---- statements -------------------------------------------------------------------------

/// One statement of a rule: the crate's own, or a set update it cannot express.
pub(super) enum Stmt {
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
    pub(super) fn to_value(&self) -> Result<Value, RenderError> {
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

pub(super) fn matches(left: Expr, op: Operator, right: Expr) -> Stmt {
    Statement::Match(Match { left, right, op }).into()
}

pub(super) fn is(left: Expr, right: Expr) -> Stmt {
    matches(left, Operator::EQ, right)
}

pub(super) fn goto(chain: &str) -> Stmt {
    Statement::Goto(JumpTarget {
        target: Cow::Owned(chain.to_owned()),
    })
    .into()
}

pub(super) fn drop_it() -> Stmt {
    Statement::Drop(None).into()
}

pub(super) fn vmap(key: Expr, data: Expr) -> Stmt {
    Statement::VerdictMap(VerdictMap { key, data }).into()
}

/// `meta l4proto tcp` or `meta l4proto { tcp, udp }` (like `l4_match`).
pub(super) fn l4_match(l4: &[L4]) -> Stmt {
    let right = match l4 {
        [one] => l4_name(*one),
        many => anonymous_set(many.iter().copied().map(l4_name).collect()),
    };
    is(meta(MetaKey::L4proto), right)
}

pub(super) fn direction(dir: &'static str) -> Stmt {
    is(ct("direction"), text(dir))
}

pub(super) fn nfproto(f: Family) -> Stmt {
    is(meta(MetaKey::Nfproto), text(fam_nfproto(f)))
}

pub(super) fn ct_state_new() -> Stmt {
    matches(ct("state"), Operator::IN, text("new"))
}

/// `ct mark set ct mark & keep | mark`.
pub(super) fn set_mark(keep: u32, mark: u32) -> Stmt {
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
pub(super) fn packet_limit(r: &Rate, over: bool) -> Result<stmt::Limit<'static>, RenderError> {
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
pub(super) fn byte_limit(r: &ByteRate) -> Result<stmt::Limit<'static>, RenderError> {
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
pub(super) fn port_map(from: PortRange, to_first: u16) -> Expr {
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
pub(super) fn target_rule(l4: &[L4], family: Family, t: &KernelTarget) -> Vec<Stmt> {
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

pub(super) fn set_stmt(op: SetOp, elem: Expr, set: &str) -> stmt::Set<'static> {
    stmt::Set {
        op,
        elem,
        set: Cow::Owned(format!("@{set}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::values::{byte_rate_text, rate_text};
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
            assert_eq!(limit_text(&limit), rate_text(&r));
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
            assert_eq!(limit_text(&limit), byte_rate_text(&r));
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
}
