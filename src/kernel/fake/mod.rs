//! An in-memory kernel for tests that behaves like nftables on smartproxy's scripts,
//! modelled on knftables' `fake.go`: it holds a ruleset ([`ruleset`]); [`Kernel::run`]
//! applies a script's statements ([`script`]) to a copy and keeps the copy only when every
//! statement succeeded, so a refused transaction changes nothing, as in nft. Each commit
//! moves the generation by one. Listings come out in `nft list table`'s form, counter
//! values included in the dump; normalisation is the table after loading a script on an
//! empty ruleset. Tests can make the next transaction fail, see the scripts that
//! committed, set counter values (traffic) and decide what the capability probe answers.

mod ruleset;
mod script;

use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::{json, Value};

use super::{Kernel, KernelError};
use ruleset::Ruleset;

/// The fake kernel; `Default` is an empty ruleset.
pub struct FakeKernel {
    state: Mutex<State>,
}

struct State {
    ruleset: Ruleset,
    generation: u32,
    transactions: Vec<String>,
    fail_next: Option<String>,
    capability: Result<(), String>,
    conntrack: Option<String>,
}

impl Default for FakeKernel {
    fn default() -> Self {
        Self::new()
    }
}

fn failed(stderr: String) -> KernelError {
    KernelError::Command {
        cmd: "nft -f -".into(),
        status: "exit status: 1".into(),
        stderr,
    }
}

/// Applies a script to a copy of `ruleset`: the copy when every statement succeeded.
fn load(ruleset: &Ruleset, script: &str) -> Result<Option<Ruleset>, KernelError> {
    let statements = script::parse(script).map_err(failed)?;
    if statements.is_empty() {
        return Ok(None);
    }
    let mut copy = ruleset.clone();
    for s in &statements {
        copy.apply(s).map_err(|r| failed(r.render()))?;
    }
    Ok(Some(copy))
}

impl FakeKernel {
    /// An empty ruleset at generation 1; the capability probe answers `Ok`.
    pub fn new() -> FakeKernel {
        FakeKernel {
            state: Mutex::new(State {
                ruleset: Ruleset::default(),
                generation: 1,
                transactions: Vec::new(),
                fail_next: None,
                capability: Ok(()),
                conntrack: None,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `run` fails with this stderr and changes nothing.
    pub fn fail_next(&self, nft_message: &str) {
        self.state().fail_next = Some(nft_message.to_owned());
    }

    /// The scripts that committed, in order.
    pub fn transactions(&self) -> Vec<String> {
        self.state().transactions.clone()
    }

    /// What [`Kernel::capability`] answers (`Ok` by default).
    pub fn set_capability(&self, r: Result<(), String>) {
        self.state().capability = r;
    }

    /// What [`Kernel::conntrack_entries`] answers (`None`, conntrack-tools missing, by
    /// default).
    pub fn set_conntrack(&self, entries: Option<&str>) {
        self.state().conntrack = entries.map(str::to_owned);
    }

    /// Sets the values of counter `name` in `inet table`, as traffic would (no commit, the
    /// generation stays); `false` when there is no such counter.
    pub fn set_counter(&self, table: &str, name: &str, packets: u64, bytes: u64) -> bool {
        let mut state = self.state();
        let counter = state
            .ruleset
            .tables
            .get_mut(&("inet".to_owned(), table.to_owned()))
            .and_then(|t| t.counters.get_mut(name));
        match counter {
            Some(c) => {
                c.packets = packets;
                c.bytes = bytes;
                true
            }
            None => false,
        }
    }

    fn print(&self, table: &str, stateless: bool) -> Option<String> {
        let state = self.state();
        let t = state
            .ruleset
            .tables
            .get(&("inet".to_owned(), table.to_owned()))?;
        Some(t.print("inet", table, stateless))
    }
}

impl Kernel for FakeKernel {
    fn list_table(&self, table: &str) -> Result<Option<String>, KernelError> {
        Ok(self.print(table, true))
    }

    fn list_tables(&self) -> Result<Vec<String>, KernelError> {
        Ok(self
            .state()
            .ruleset
            .tables
            .keys()
            .filter(|(family, _)| family == "inet")
            .map(|(_, name)| name.clone())
            .collect())
    }

    fn dump_table(&self, table: &str) -> Result<Option<String>, KernelError> {
        Ok(self.print(table, false))
    }

    fn run(&self, script: &str) -> Result<(), KernelError> {
        let mut state = self.state();
        if let Some(msg) = state.fail_next.take() {
            return Err(failed(msg));
        }
        if let Some(next) = load(&state.ruleset, script)? {
            state.ruleset = next;
            state.generation = state.generation.wrapping_add(1);
            state.transactions.push(script.to_owned());
        }
        Ok(())
    }

    fn normalise(&self, script: &str, table: &str) -> Result<String, KernelError> {
        let loaded = load(&Ruleset::default(), script)?.unwrap_or_default();
        let key = ("inet".to_owned(), table.to_owned());
        match loaded.tables.get(&key) {
            Some(t) => Ok(t.print("inet", table, true)),
            None => Err(KernelError::Command {
                cmd: format!("nft -s list table inet {table}"),
                status: "exit status: 1".into(),
                stderr: format!("Error: No such file or directory\nlist table inet {table}"),
            }),
        }
    }

    fn list_chains_json(&self) -> Result<String, KernelError> {
        let state = self.state();
        let mut items = vec![metainfo()];
        let mut handle = 0;
        for ((family, name), table) in &state.ruleset.tables {
            for (chain, c) in &table.chains {
                handle += 1;
                let mut obj = json!({
                    "family": family, "table": name, "name": chain, "handle": handle,
                });
                if let Some(b) = &c.base {
                    obj["type"] = json!(b.kind);
                    obj["hook"] = json!(b.hook);
                    obj["prio"] = priority(&b.priority);
                    obj["policy"] = json!(b.policy);
                }
                items.push(json!({ "chain": obj }));
            }
        }
        Ok(json!({ "nftables": items }).to_string())
    }

    fn generation(&self) -> Option<u32> {
        Some(self.state().generation)
    }

    fn version(&self) -> String {
        "fake".to_owned()
    }

    fn list_table_json(&self, table: &str) -> Result<Option<String>, KernelError> {
        let state = self.state();
        let Some(t) = state
            .ruleset
            .tables
            .get(&("inet".to_owned(), table.to_owned()))
        else {
            return Ok(None);
        };
        Ok(Some(table_json(table, t).to_string()))
    }

    fn conntrack_entries(&self) -> Result<Option<String>, KernelError> {
        Ok(self.state().conntrack.clone())
    }

    fn capability(&self) -> Result<(), String> {
        self.state().capability.clone()
    }
}

fn metainfo() -> Value {
    json!({ "metainfo": { "version": "fake", "release_name": "fake", "json_schema_version": 1 } })
}

/// A priority name as nft's JSON gives it: a number.
fn priority(p: &str) -> Value {
    let n = match p {
        "raw" => -300,
        "mangle" => -150,
        "dstnat" => -100,
        "filter" => 0,
        "security" => 50,
        "srcnat" => 100,
        other => other.parse().unwrap_or(0),
    };
    json!(n)
}

fn number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// A minimal `nft -j list table inet NAME`: the table, its counters with values, its
/// maps' verdict elements and the `ct mark & MASK vmap @MAP` lookups of its rules.
fn table_json(name: &str, t: &ruleset::Table) -> Value {
    let mut items = vec![
        metainfo(),
        json!({ "table": { "family": "inet", "name": name, "handle": 1 } }),
    ];
    for (n, c) in &t.counters {
        let mut obj = json!({
            "family": "inet", "name": n, "table": name,
            "packets": c.packets, "bytes": c.bytes,
        });
        if let Some(comment) = &c.comment {
            obj["comment"] = json!(comment);
        }
        items.push(json!({ "counter": obj }));
    }
    for (n, set) in t.sets.iter().filter(|(_, s)| s.map) {
        let elem: Vec<Value> = set
            .elements
            .iter()
            .filter_map(|e| {
                let (key, verdict) = e.split_once(" : ")?;
                let (kind, target) = verdict.split_once(' ')?;
                let key = number(key).map_or_else(|| json!(key), |k| json!(k));
                Some(json!([key, { kind: { "target": target } }]))
            })
            .collect();
        items.push(json!({ "map": { "family": "inet", "name": n, "table": name, "elem": elem } }));
    }
    for (chain, c) in &t.chains {
        for r in &c.rules {
            let words: Vec<&str> = r.text.split_whitespace().collect();
            let Some(at) = words.iter().position(|w| *w == "vmap") else {
                continue;
            };
            let data = words.get(at + 1).copied().unwrap_or_default();
            let key = match &words[..at] {
                [.., "ct", "mark", "&", mask] => match number(mask) {
                    Some(m) => json!({ "&": [{ "ct": { "key": "mark" } }, m] }),
                    None => continue,
                },
                [.., "ct", "mark"] => json!({ "ct": { "key": "mark" } }),
                _ => continue,
            };
            let expr = json!([{ "vmap": { "key": key, "data": data } }]);
            items.push(json!({ "rule": {
                "family": "inet", "table": name, "chain": chain, "expr": expr,
            } }));
        }
    }
    json!({ "nftables": items })
}

#[cfg(test)]
mod tests;
