//! The fake kernel's ruleset: tables of counters, sets, maps and chains, changed one
//! statement at a time the way nftables changes them, and listed the way `nft list table`
//! prints them.
//!
//! What nftables refuses, this refuses with the same error: an object that is absent
//! (`No such file or directory`), one that exists already for `create` or is declared
//! again differently (`File exists`), a chain, set or counter still referenced by a rule
//! or a map element (`Device or resource busy`), a reference to something that does not
//! exist at the end of its statement. A statement this model does not know is an error,
//! never ignored.

use std::collections::BTreeMap;

use super::script::{Item, Stmt};

/// Why a statement was refused: nft's message and the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub statement: String,
}

impl Refusal {
    /// As nft prints it on stderr.
    pub fn render(&self) -> String {
        format!("{}\n{}", self.message, self.statement)
    }
}

const NOENT: &str = "Error: Could not process rule: No such file or directory";
const EXIST: &str = "Error: Could not process rule: File exists";
const BUSY: &str = "Error: Could not process rule: Device or resource busy";
const NOTSUP: &str = "Error: Could not process rule: Operation not supported";

fn refuse(message: &str, s: &Stmt) -> Refusal {
    Refusal {
        message: message.to_owned(),
        statement: s.shown(),
    }
}

fn unsupported(s: &Stmt) -> Refusal {
    refuse(
        "Error: syntax error, a statement the fake kernel does not model",
        s,
    )
}

const FAMILIES: &[&str] = &["inet", "ip", "ip6", "arp", "bridge", "netdev"];

#[derive(Clone, Debug, Default)]
pub struct Ruleset {
    /// By (family, name).
    pub tables: BTreeMap<(String, String), Table>,
}

#[derive(Clone, Debug, Default)]
pub struct Table {
    pub comment: Option<String>,
    pub counters: BTreeMap<String, Counter>,
    /// Sets and maps.
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
    /// The creation order of the next object (nft lists objects in creation order).
    next: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    seq: u64,
    pub comment: Option<String>,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    seq: u64,
    pub map: bool,
    /// The declaration's lines (`type …`, `flags …`, `size …`), as written.
    pub head: Vec<String>,
    /// Elements in the order they were added (`key` or `key : value`).
    pub elements: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    pub kind: String,
    pub hook: String,
    pub priority: String,
    pub policy: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    seq: u64,
    pub comment: Option<String>,
    pub base: Option<Base>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub text: String,
    pub refs: Vec<Ref>,
}

/// What a rule or a map element refers to by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ref {
    Chain(String),
    Set(String),
    Counter(String),
}

fn clean(name: &str) -> String {
    name.trim_end_matches([',', ')', ';']).to_owned()
}

/// The names the items of a rule refer to: `jump|goto CHAIN`, `@SET`, `counter name "C"`.
fn refs_of(items: &[Item], out: &mut Vec<Ref>) {
    for (i, it) in items.iter().enumerate() {
        match it {
            Item::Word(w) if w == "jump" || w == "goto" => {
                if let Some(Item::Word(target)) = items.get(i + 1) {
                    out.push(Ref::Chain(clean(target)));
                }
            }
            Item::Word(w) if w.starts_with('@') => out.push(Ref::Set(clean(&w[1..]))),
            Item::Word(w) if w == "counter" => {
                if let (Some(Item::Word(n)), Some(Item::Str(c) | Item::Word(c))) =
                    (items.get(i + 1), items.get(i + 2))
                {
                    if n == "name" {
                        out.push(Ref::Counter(c.clone()));
                    }
                }
            }
            Item::Block(b) => {
                for s in b {
                    refs_of(&s.items, out);
                }
            }
            _ => {}
        }
    }
}

/// The verdict's chain of a map element (`key : jump CHAIN`).
fn element_ref(element: &str) -> Option<Ref> {
    let (_, verdict) = element.split_once(" : ")?;
    let target = verdict
        .strip_prefix("jump ")
        .or_else(|| verdict.strip_prefix("goto "))?;
    Some(Ref::Chain(target.trim().to_owned()))
}

fn key_of(element: &str) -> &str {
    element.split_once(" : ").map_or(element, |(k, _)| k)
}

/// The elements of an `elements = { … }` or `add element … { … }` block.
fn elements_of(block: &[Stmt]) -> Vec<String> {
    let text: Vec<String> = block.iter().map(Stmt::text).collect();
    text.join(" ")
        .split(',')
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .collect()
}

/// `create` (the object must not exist) or `add` (an existing one is kept or merged).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Add,
    Create,
}

impl Ruleset {
    /// Applies one top-level statement; on `Err` the ruleset may be half changed (the
    /// caller works on a copy).
    pub fn apply(&mut self, s: &Stmt) -> Result<(), Refusal> {
        let mut pending = Vec::new();
        let key = self.apply_inner(s, &mut pending)?;
        // References are resolved at the end of their statement (nft resolves a table
        // block's jumps between its chains, whatever their order).
        if let Some(table) = key.and_then(|k| self.tables.get(&k)) {
            for (r, stmt) in pending {
                if !table.has(&r) {
                    return Err(refuse(NOENT, &stmt));
                }
            }
        }
        Ok(())
    }

    fn table_key(s: &Stmt, at: usize) -> Result<(String, String), Refusal> {
        match (s.word(at), s.word(at + 1)) {
            (Some(f), Some(name)) if FAMILIES.contains(&f) => Ok((f.to_owned(), name.to_owned())),
            _ => Err(unsupported(s)),
        }
    }

    fn existing(&mut self, s: &Stmt, at: usize) -> Result<(&mut Table, String), Refusal> {
        let key = Self::table_key(s, at)?;
        let name = s.word(at + 2).ok_or_else(|| unsupported(s))?.to_owned();
        let table = self.tables.get_mut(&key).ok_or_else(|| refuse(NOENT, s))?;
        Ok((table, name))
    }

    fn apply_inner(
        &mut self,
        s: &Stmt,
        pending: &mut Vec<(Ref, Stmt)>,
    ) -> Result<Option<(String, String)>, Refusal> {
        let verb = s.word(0).unwrap_or_default();
        let kind = s.word(1).unwrap_or_default();
        match (verb, kind) {
            ("table", _) => {
                let key = self.declare_table(s, 1, Mode::Add, pending)?;
                Ok(Some(key))
            }
            ("add" | "create", "table") => {
                let mode = if verb == "add" {
                    Mode::Add
                } else {
                    Mode::Create
                };
                Ok(Some(self.declare_table(s, 2, mode, pending)?))
            }
            ("delete", "table") => {
                let key = Self::table_key(s, 2)?;
                if s.items.len() != 4 {
                    return Err(unsupported(s));
                }
                self.tables.remove(&key).ok_or_else(|| refuse(NOENT, s))?;
                Ok(None)
            }
            ("flush", "table") => {
                let key = Self::table_key(s, 2)?;
                let table = self.tables.get_mut(&key).ok_or_else(|| refuse(NOENT, s))?;
                for c in table.chains.values_mut() {
                    c.rules.clear();
                }
                Ok(None)
            }
            ("add" | "create", "counter" | "set" | "map" | "chain") => {
                let mode = if verb == "add" {
                    Mode::Add
                } else {
                    Mode::Create
                };
                let key = Self::table_key(s, 2)?;
                let name = s.word(4).ok_or_else(|| unsupported(s))?.to_owned();
                let body = match s.items.len() {
                    5 => &[][..],
                    6 => s.block(5).ok_or_else(|| unsupported(s))?,
                    _ => return Err(unsupported(s)),
                };
                let table = self.tables.get_mut(&key).ok_or_else(|| refuse(NOENT, s))?;
                table.declare(kind, &name, body, s, mode, pending)?;
                Ok(Some(key))
            }
            ("add", "rule") => {
                let key = Self::table_key(s, 2)?;
                let (table, chain) = self.existing(s, 2)?;
                let chain = table
                    .chains
                    .get_mut(&chain)
                    .ok_or_else(|| refuse(NOENT, s))?;
                let items = s.items.get(5..).unwrap_or_default();
                if items.is_empty() {
                    return Err(unsupported(s));
                }
                let rule = Stmt {
                    items: items.to_vec(),
                    line: s.line,
                };
                chain.rules.push(rule_of(&rule, pending));
                Ok(Some(key))
            }
            ("delete", "counter" | "set" | "map" | "chain") => {
                if s.items.len() != 5 {
                    return Err(unsupported(s));
                }
                let (table, name) = self.existing(s, 2)?;
                table.delete(kind, &name, s)?;
                Ok(None)
            }
            ("flush", "chain") => {
                let (table, name) = self.existing(s, 2)?;
                let chain = table
                    .chains
                    .get_mut(&name)
                    .ok_or_else(|| refuse(NOENT, s))?;
                chain.rules.clear();
                Ok(None)
            }
            ("flush", "set" | "map") => {
                let (table, name) = self.existing(s, 2)?;
                let set = table
                    .sets
                    .get_mut(&name)
                    .filter(|set| set.map == (kind == "map"));
                set.ok_or_else(|| refuse(NOENT, s))?.elements.clear();
                Ok(None)
            }
            ("add" | "create" | "delete", "element") => {
                let key = Self::table_key(s, 2)?;
                let (table, name) = self.existing(s, 2)?;
                let block = s.block(5).filter(|_| s.items.len() == 6);
                let elements = elements_of(block.ok_or_else(|| unsupported(s))?);
                let set = table.sets.get_mut(&name).ok_or_else(|| refuse(NOENT, s))?;
                match verb {
                    "delete" => {
                        for e in &elements {
                            let at = set.position(key_of(e)).ok_or_else(|| refuse(NOENT, s))?;
                            set.elements.remove(at);
                        }
                    }
                    _ => {
                        let mode = if verb == "add" {
                            Mode::Add
                        } else {
                            Mode::Create
                        };
                        set.add_elements(elements, s, mode, pending)?;
                    }
                }
                Ok(Some(key))
            }
            _ => Err(unsupported(s)),
        }
    }

    /// `table F T [{ … }]` (at = the index of the family).
    fn declare_table(
        &mut self,
        s: &Stmt,
        at: usize,
        mode: Mode,
        pending: &mut Vec<(Ref, Stmt)>,
    ) -> Result<(String, String), Refusal> {
        let key = Self::table_key(s, at)?;
        let body = match s.items.len() - at {
            2 => &[][..],
            3 => s.block(at + 2).ok_or_else(|| unsupported(s))?,
            _ => return Err(unsupported(s)),
        };
        if mode == Mode::Create && self.tables.contains_key(&key) {
            return Err(refuse(EXIST, s));
        }
        let table = self.tables.entry(key.clone()).or_default();
        for inner in body {
            match (inner.word(0), inner.items.len()) {
                (Some("comment"), 2) => {
                    table.comment = Some(inner.string(1).unwrap_or_default().to_owned());
                }
                (Some(kind @ ("counter" | "set" | "map" | "chain")), 3) => {
                    let name = inner.word(1).ok_or_else(|| unsupported(inner))?;
                    let block = inner.block(2).ok_or_else(|| unsupported(inner))?;
                    table.declare(kind, name, block, inner, Mode::Add, pending)?;
                }
                _ => return Err(unsupported(inner)),
            }
        }
        Ok(key)
    }
}

fn rule_of(s: &Stmt, pending: &mut Vec<(Ref, Stmt)>) -> Rule {
    let mut refs = Vec::new();
    refs_of(&s.items, &mut refs);
    pending.extend(refs.iter().map(|r| (r.clone(), s.clone())));
    Rule {
        text: s.text(),
        refs,
    }
}

impl Set {
    fn position(&self, key: &str) -> Option<usize> {
        self.elements.iter().position(|e| key_of(e) == key)
    }

    fn add_elements(
        &mut self,
        elements: Vec<String>,
        s: &Stmt,
        mode: Mode,
        pending: &mut Vec<(Ref, Stmt)>,
    ) -> Result<(), Refusal> {
        for e in elements {
            if self.map != e.contains(" : ") {
                return Err(refuse(
                    "Error: syntax error, an element that does not fit its set or map",
                    s,
                ));
            }
            match self.position(key_of(&e)) {
                Some(at) if mode == Mode::Create || self.elements[at] != e => {
                    return Err(refuse(EXIST, s));
                }
                Some(_) => {}
                None => {
                    if let Some(r) = element_ref(&e) {
                        pending.push((r, s.clone()));
                    }
                    self.elements.push(e);
                }
            }
        }
        Ok(())
    }
}

impl Table {
    fn seq(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn has(&self, r: &Ref) -> bool {
        match r {
            Ref::Chain(c) => self.chains.contains_key(c),
            Ref::Set(s) => self.sets.contains_key(s),
            Ref::Counter(c) => self.counters.contains_key(c),
        }
    }

    /// Whether anything but `except`'s own rules refers to `r`.
    fn referenced(&self, r: &Ref, except: Option<&str>) -> bool {
        let by_rules = self
            .chains
            .iter()
            .filter(|(name, _)| Some(name.as_str()) != except)
            .flat_map(|(_, c)| &c.rules)
            .any(|rule| rule.refs.contains(r));
        let by_elements = self
            .sets
            .values()
            .flat_map(|s| &s.elements)
            .any(|e| element_ref(e).as_ref() == Some(r));
        by_rules || by_elements
    }

    fn declare(
        &mut self,
        kind: &str,
        name: &str,
        body: &[Stmt],
        s: &Stmt,
        mode: Mode,
        pending: &mut Vec<(Ref, Stmt)>,
    ) -> Result<(), Refusal> {
        let exists = match kind {
            "counter" => self.counters.contains_key(name),
            "chain" => self.chains.contains_key(name),
            _ => self.sets.contains_key(name),
        };
        if exists && mode == Mode::Create {
            return Err(refuse(EXIST, s));
        }
        match kind {
            "counter" => {
                let counter = counter_of(body)?;
                if !exists {
                    let seq = self.seq();
                    self.counters
                        .insert(name.to_owned(), Counter { seq, ..counter });
                }
            }
            "chain" => {
                let (comment, base, rules) = chain_of(body, pending)?;
                match self.chains.get_mut(name) {
                    Some(chain) => {
                        if base.is_some() && chain.base != base {
                            return Err(refuse(NOTSUP, s));
                        }
                        if comment.is_some() {
                            chain.comment = comment;
                        }
                        chain.rules.extend(rules);
                    }
                    None => {
                        let seq = self.seq();
                        let chain = Chain {
                            seq,
                            comment,
                            base,
                            rules,
                        };
                        self.chains.insert(name.to_owned(), chain);
                    }
                }
            }
            _ => {
                let map = kind == "map";
                let (head, elements) = set_of(body)?;
                match self.sets.get_mut(name) {
                    Some(set) => {
                        if set.map != map || (!head.is_empty() && set.head != head) {
                            return Err(refuse(EXIST, s));
                        }
                        set.add_elements(elements, s, Mode::Add, pending)?;
                    }
                    None => {
                        if !head
                            .iter()
                            .any(|l| l.starts_with("type ") || l.starts_with("typeof "))
                        {
                            return Err(refuse("Error: set definition does not specify key", s));
                        }
                        let seq = self.seq();
                        let mut set = Set {
                            seq,
                            map,
                            head,
                            elements: Vec::new(),
                        };
                        set.add_elements(elements, s, Mode::Add, pending)?;
                        self.sets.insert(name.to_owned(), set);
                    }
                }
            }
        }
        Ok(())
    }

    fn delete(&mut self, kind: &str, name: &str, s: &Stmt) -> Result<(), Refusal> {
        let (present, r) = match kind {
            "counter" => (
                self.counters.contains_key(name),
                Ref::Counter(name.to_owned()),
            ),
            "chain" => (self.chains.contains_key(name), Ref::Chain(name.to_owned())),
            _ => (
                self.sets
                    .get(name)
                    .is_some_and(|set| set.map == (kind == "map")),
                Ref::Set(name.to_owned()),
            ),
        };
        if !present {
            return Err(refuse(NOENT, s));
        }
        let own = (kind == "chain").then_some(name);
        if self.referenced(&r, own) {
            return Err(refuse(BUSY, s));
        }
        match kind {
            "counter" => drop(self.counters.remove(name)),
            "chain" => drop(self.chains.remove(name)),
            _ => drop(self.sets.remove(name)),
        }
        Ok(())
    }
}

fn counter_of(body: &[Stmt]) -> Result<Counter, Refusal> {
    let mut c = Counter::default();
    for s in body {
        match (s.word(0), s.items.len()) {
            (Some("comment"), 2) => c.comment = s.string(1).map(str::to_owned),
            (Some("packets"), 4) if s.word(2) == Some("bytes") => {
                let n = |i| s.word(i).and_then(|w| w.parse().ok());
                c.packets = n(1).ok_or_else(|| unsupported(s))?;
                c.bytes = n(3).ok_or_else(|| unsupported(s))?;
            }
            _ => return Err(unsupported(s)),
        }
    }
    Ok(c)
}

type ChainParts = (Option<String>, Option<Base>, Vec<Rule>);

fn chain_of(body: &[Stmt], pending: &mut Vec<(Ref, Stmt)>) -> Result<ChainParts, Refusal> {
    let (mut comment, mut base, mut policy, mut rules) = (None, None, None, Vec::new());
    for s in body {
        match s.word(0) {
            Some("comment") if s.items.len() == 2 => comment = s.string(1).map(str::to_owned),
            Some("type") => {
                let words: Vec<Option<&str>> = (0..6).map(|i| s.word(i)).collect();
                match (s.items.len(), &words[..]) {
                    (
                        6,
                        [_, Some(kind), Some("hook"), Some(hook), Some("priority"), Some(prio)],
                    ) => {
                        base = Some(Base {
                            kind: (*kind).to_owned(),
                            hook: (*hook).to_owned(),
                            priority: (*prio).to_owned(),
                            policy: String::new(),
                        });
                    }
                    _ => return Err(unsupported(s)),
                }
            }
            Some("policy") if s.items.len() == 2 => {
                policy = Some(s.word(1).ok_or_else(|| unsupported(s))?.to_owned());
            }
            _ => rules.push(rule_of(s, pending)),
        }
    }
    if let Some(b) = base.as_mut() {
        b.policy = policy.unwrap_or_else(|| "accept".to_owned());
    } else if let Some(s) = policy.and(body.iter().find(|s| s.word(0) == Some("policy"))) {
        return Err(refuse("Error: policy is only allowed on base chains", s));
    }
    Ok((comment, base, rules))
}

fn set_of(body: &[Stmt]) -> Result<(Vec<String>, Vec<String>), Refusal> {
    let (mut head, mut elements) = (Vec::new(), Vec::new());
    for s in body {
        match s.word(0) {
            Some("elements") if s.word(1) == Some("=") && s.items.len() == 3 => {
                elements.extend(elements_of(s.block(2).ok_or_else(|| unsupported(s))?));
            }
            Some(
                "type" | "typeof" | "flags" | "size" | "timeout" | "comment" | "auto-merge"
                | "policy" | "gc-interval",
            ) if !s.items.iter().any(|i| matches!(i, Item::Block(_))) => head.push(s.text()),
            _ => return Err(unsupported(s)),
        }
    }
    Ok((head, elements))
}

impl Table {
    /// The table as `nft list table F NAME` prints it (`-s`: without counter values).
    pub fn print(&self, family: &str, name: &str, stateless: bool) -> String {
        let mut blocks: Vec<(u64, String)> = Vec::new();
        for (n, c) in &self.counters {
            let mut b = format!("\tcounter {n} {{\n");
            if let Some(comment) = &c.comment {
                b.push_str(&format!("\t\tcomment \"{comment}\"\n"));
            }
            if !stateless {
                b.push_str(&format!("\t\tpackets {} bytes {}\n", c.packets, c.bytes));
            }
            blocks.push((c.seq, b));
        }
        for (n, set) in &self.sets {
            let kind = if set.map { "map" } else { "set" };
            let mut b = format!("\t{kind} {n} {{\n");
            for line in &set.head {
                b.push_str(&format!("\t\t{line}\n"));
            }
            if !set.elements.is_empty() {
                b.push_str(&format!(
                    "\t\telements = {{ {} }}\n",
                    set.elements.join(", ")
                ));
            }
            blocks.push((set.seq, b));
        }
        let mut chains: Vec<(u64, String)> = Vec::new();
        for (n, c) in &self.chains {
            let mut b = format!("\tchain {n} {{\n");
            if let Some(comment) = &c.comment {
                b.push_str(&format!("\t\tcomment \"{comment}\"\n"));
            }
            if let Some(base) = &c.base {
                b.push_str(&format!(
                    "\t\ttype {} hook {} priority {}; policy {};\n",
                    base.kind, base.hook, base.priority, base.policy
                ));
            }
            for r in &c.rules {
                b.push_str(&format!("\t\t{}\n", r.text));
            }
            chains.push((c.seq, b));
        }
        // nft lists named objects, then sets and maps, then chains.
        let counters = self.counters.len();
        blocks[..counters].sort();
        blocks[counters..].sort();
        chains.sort();
        let mut out = format!("table {family} {name} {{\n");
        if let Some(c) = &self.comment {
            out.push_str(&format!("\tcomment \"{c}\"\n"));
        }
        let all: Vec<String> = blocks
            .into_iter()
            .chain(chains)
            .map(|(_, b)| format!("{b}\t}}\n"))
            .collect();
        out.push_str(&all.join("\n"));
        out.push_str("}\n");
        out
    }
}
