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
//!
//! One concern a file: [`expr`] (expressions and statements in the crate's types),
//! [`chains`] (the route, helper and base chains), [`maps`] (the dispatch maps); this file
//! holds the document and its commands in load order.

mod chains;
mod expr;
mod maps;

use std::borrow::Cow;
use std::collections::HashSet;

use nftables::schema::{
    Chain, Counter, NfCmd, NfListObject, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::types::{NfChainPolicy, NfFamily};
use serde::ser::Error as _;
use serde_json::{json, Value};

use self::chains::ChainDef;
use self::expr::{Expr, Stmt};
use super::RenderError;
use crate::model::{Family, KernelRoute, Model};
use crate::nft::names;

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
    use nftables::stmt::{self, SetOp, Statement};

    use super::expr::{num, payload, set_stmt};
    use super::*;

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
