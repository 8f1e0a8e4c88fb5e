//! The last check before anything reaches `nft -f`: a script may only touch our own table.
//!
//! Scripts are built from route files, but also from what the state directory and a saved
//! plan hold (cached listings, rollback dumps, a plan's `desired_script`). Whatever their
//! origin, each top-level statement must be one of
//!
//! - `table inet T` with an optional `{ … }` block,
//! - `add|create|delete|flush <kind> inet T …` for the object kinds a table holds,
//!
//! no `include`/`define` (anywhere), no variables, and the only base chains (`type … hook
//! …`) are the ones templates/ruleset.nft.j2 creates, by name, type and hook, with policy
//! `accept`. The script is split into statements the way nft's scanner does (`"…"` strings
//! without escapes, `#` comments to the end of the line, newline and `;` between
//! statements), and at the top level a closing `}` also ends a statement, so nothing can
//! hide after a block on its line. Characters nft would read differently from us (`'`,
//! `\`, `` ` ``, `$` outside a string) are refused rather than guessed at.

/// The base chains the templates create: (chain, type, hook).
pub const BASE_CHAINS: &[(&str, &str, &str)] = &[
    (super::names::NAT_PREROUTING, "nat", "prerouting"),
    (super::names::NAT_OUTPUT, "nat", "output"),
    (super::names::NAT_POSTROUTING, "nat", "postrouting"),
    (super::names::FILTER_INPUT, "filter", "input"),
    (super::names::FILTER_FORWARD, "filter", "forward"),
    (super::names::FILTER_OUTPUT, "filter", "output"),
    (super::names::QOS_POSTROUTING, "filter", "postrouting"),
];

/// Object kinds a top-level `add|create|delete|flush` may name (all live inside a table).
const KINDS: &[&str] = &[
    "table", "chain", "rule", "set", "map", "element", "counter", "quota", "limit",
];

const VERBS: &[&str] = &["add", "create", "delete", "flush"];

/// Nesting deeper than this is refused (our scripts nest three levels).
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to run a script that does not only touch table inet {table}: {why} (line {line}: `{found}`); nothing was run")]
pub struct GuardError {
    pub table: String,
    pub why: String,
    pub line: usize,
    /// What was found, escaped and cut short.
    pub found: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Word(String),
    Str,
    Block(Vec<Statement>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    items: Vec<Item>,
    line: usize,
}

impl Statement {
    fn word(&self, i: usize) -> Option<&str> {
        match self.items.get(i) {
            Some(Item::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn blocks(&self) -> impl Iterator<Item = (usize, &Vec<Statement>)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, it)| match it {
                Item::Block(b) => Some((i, b)),
                _ => None,
            })
    }

    /// The statement as text for an error message: words, `"…"`, `{…}`; escaped, short.
    fn shown(&self) -> String {
        let mut out = String::new();
        for it in &self.items {
            if !out.is_empty() {
                out.push(' ');
            }
            match it {
                Item::Word(w) => out.push_str(w),
                Item::Str => out.push_str("\"…\""),
                Item::Block(_) => out.push_str("{…}"),
            }
        }
        escape_short(&out)
    }
}

fn escape_short(text: &str) -> String {
    let mut out: String = text
        .chars()
        .flat_map(|c| {
            if c.is_control() || !c.is_ascii() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .take(80)
        .collect();
    if out.len() >= 80 {
        out.push('…');
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Str,
    Open,
    Close,
    Sep,
}

/// Tokens with their line numbers (see the module docs for the rules).
fn tokens(
    script: &str,
    fail: &dyn Fn(usize, &str, String) -> GuardError,
) -> Result<Vec<(Token, usize)>, GuardError> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = script.chars().peekable();
    let mut word = String::new();
    // Whether the last character was a boundary (start, whitespace, brace, separator).
    let mut boundary = true;
    let flush = |word: &mut String, out: &mut Vec<(Token, usize)>, line: usize| {
        if !word.is_empty() {
            out.push((Token::Word(std::mem::take(word)), line));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                flush(&mut word, &mut out, line);
                out.push((Token::Sep, line));
                line += 1;
                boundary = true;
            }
            ';' => {
                flush(&mut word, &mut out, line);
                out.push((Token::Sep, line));
                boundary = true;
            }
            '{' | '}' => {
                flush(&mut word, &mut out, line);
                out.push((if c == '{' { Token::Open } else { Token::Close }, line));
                boundary = true;
            }
            '"' => {
                flush(&mut word, &mut out, line);
                let start = line;
                let mut closed = false;
                for s in chars.by_ref() {
                    if s == '"' {
                        closed = true;
                        break;
                    }
                    if s == '\n' {
                        return Err(fail(start, "a string spans lines", String::new()));
                    }
                }
                if !closed {
                    return Err(fail(start, "a string is not closed", String::new()));
                }
                out.push((Token::Str, start));
                boundary = false;
            }
            '#' => {
                if !boundary {
                    return Err(fail(line, "`#` inside a word", escape_short(&word)));
                }
                flush(&mut word, &mut out, line);
                while chars.peek().is_some_and(|&n| n != '\n') {
                    chars.next();
                }
            }
            '\'' | '\\' | '`' | '$' => {
                return Err(fail(
                    line,
                    "a character nft reads as syntax outside a string",
                    escape_short(&format!("{word}{c}")),
                ));
            }
            c if c.is_whitespace() => {
                flush(&mut word, &mut out, line);
                boundary = true;
            }
            c if c.is_control() => {
                return Err(fail(
                    line,
                    "a control character",
                    escape_short(&c.to_string()),
                ));
            }
            c => {
                word.push(c);
                boundary = false;
            }
        }
    }
    flush(&mut word, &mut out, line);
    Ok(out)
}

/// Splits a script into top-level statements (see the module docs).
pub fn statements(script: &str, table: &str) -> Result<Vec<Statement>, GuardError> {
    let fail = |line: usize, why: &str, found: String| GuardError {
        table: table.to_owned(),
        why: why.to_owned(),
        line,
        found,
    };
    let toks = tokens(script, &fail)?;
    // A stack of open blocks: each the statements so far and the one being built.
    let mut stack: Vec<(Vec<Statement>, Statement)> = vec![(
        Vec::new(),
        Statement {
            items: Vec::new(),
            line: 1,
        },
    )];
    let end = |done: &mut Vec<Statement>, cur: &mut Statement, line: usize| {
        if !cur.items.is_empty() {
            done.push(std::mem::replace(
                cur,
                Statement {
                    items: Vec::new(),
                    line,
                },
            ));
        } else {
            cur.line = line;
        }
    };
    for (tok, line) in toks {
        let depth = stack.len() - 1;
        let (done, cur) = stack.last_mut().expect("the stack holds the top level");
        if cur.items.is_empty() {
            cur.line = line;
        }
        match tok {
            Token::Word(w) => cur.items.push(Item::Word(w)),
            Token::Str => cur.items.push(Item::Str),
            Token::Sep => end(done, cur, line),
            Token::Open => {
                if depth >= MAX_DEPTH {
                    return Err(fail(line, "blocks nested too deep", String::new()));
                }
                stack.push((
                    Vec::new(),
                    Statement {
                        items: Vec::new(),
                        line,
                    },
                ));
            }
            Token::Close => {
                if depth == 0 {
                    return Err(fail(line, "a `}` closes nothing", "}".to_owned()));
                }
                let (mut inner, mut last) = stack.pop().expect("depth > 0");
                end(&mut inner, &mut last, line);
                let (done, cur) = stack.last_mut().expect("depth > 0");
                cur.items.push(Item::Block(inner));
                // At the top level a block ends its statement: nothing hides after `}`.
                if depth == 1 {
                    end(done, cur, line);
                }
            }
        }
    }
    if stack.len() > 1 {
        return Err(fail(
            stack[stack.len() - 1].1.line,
            "a `{` is not closed",
            String::new(),
        ));
    }
    let (mut done, mut cur) = stack.pop().expect("the top level");
    end(&mut done, &mut cur, 0);
    Ok(done)
}

/// Checks that `script` only ever touches `table inet {table}` (see the module docs).
pub fn check(script: &str, table: &str) -> Result<(), GuardError> {
    for s in statements(script, table)? {
        check_top(&s, table)?;
    }
    Ok(())
}

fn refuse(table: &str, s: &Statement, why: &str) -> GuardError {
    GuardError {
        table: table.to_owned(),
        why: why.to_owned(),
        line: s.line,
        found: s.shown(),
    }
}

fn check_top(s: &Statement, table: &str) -> Result<(), GuardError> {
    let ours = |at: usize| s.word(at) == Some("inet") && s.word(at + 1) == Some(table);
    match s.word(0) {
        Some("table") => {
            if !ours(1) {
                return Err(refuse(table, s, "another table or family"));
            }
            match s.items.len() {
                3 => Ok(()),
                4 => match &s.items[3] {
                    Item::Block(b) => check_body(b, table, Context::Table),
                    _ => Err(refuse(table, s, "more than `table inet T { … }`")),
                },
                _ => Err(refuse(table, s, "more than `table inet T { … }`")),
            }
        }
        Some(verb) if VERBS.contains(&verb) => {
            let kind = s.word(1).unwrap_or_default();
            if !KINDS.contains(&kind) {
                return Err(refuse(table, s, "not a command on an object of our table"));
            }
            if !ours(2) {
                return Err(refuse(table, s, "another table or family"));
            }
            for (i, b) in s.blocks() {
                let context = match kind {
                    "table" => Context::Table,
                    // `add chain inet T NAME { type … hook … }`
                    "chain" if i == 5 => Context::Chain(s.word(4).unwrap_or_default().to_owned()),
                    _ => Context::Other,
                };
                check_body(b, table, context)?;
            }
            Ok(())
        }
        _ => Err(refuse(
            table,
            s,
            "a statement that is not `table inet T`, nor add/create/delete/flush in it",
        )),
    }
}

#[derive(Clone, PartialEq, Eq)]
enum Context {
    Table,
    Chain(String),
    Other,
}

fn check_body(body: &[Statement], table: &str, context: Context) -> Result<(), GuardError> {
    for s in body {
        match s.word(0) {
            Some("include" | "define" | "redefine" | "undefine") => {
                return Err(refuse(table, s, "an include or a definition"));
            }
            Some("table") => return Err(refuse(table, s, "a table inside a table")),
            _ => {}
        }
        // In a table, an object is exactly `kind name { … }`: nothing rides after its block.
        let object = matches!(
            s.word(0),
            Some("chain" | "set" | "map" | "counter" | "quota" | "limit" | "ct" | "flowtable")
        );
        // `ct helper|timeout|expectation NAME { … }` has one word more.
        let words = if s.word(0) == Some("ct") { 3 } else { 2 };
        let declaration = s.items.len() == words + 1
            && (1..words).all(|i| s.word(i).is_some())
            && matches!(s.items[words], Item::Block(_));
        if context == Context::Table && object && !declaration {
            return Err(refuse(table, s, "more than `kind name { … }` in a table"));
        }
        let has_hook = s.items.iter().any(|i| *i == Item::Word("hook".to_owned()));
        match &context {
            Context::Chain(name) if has_hook || s.word(0) == Some("type") => {
                let kind = s.word(1).unwrap_or_default();
                let hook = s
                    .items
                    .iter()
                    .position(|i| *i == Item::Word("hook".to_owned()))
                    .and_then(|at| s.word(at + 1))
                    .unwrap_or_default();
                let known = s.word(0) == Some("type")
                    && s.word(2) == Some("hook")
                    && BASE_CHAINS.contains(&(name.as_str(), kind, hook));
                if !known {
                    return Err(refuse(table, s, "a base chain smartproxy does not create"));
                }
            }
            Context::Chain(_)
                if s.word(0) == Some("policy")
                    && (s.word(1) != Some("accept") || s.items.len() != 2) =>
            {
                return Err(refuse(table, s, "a base chain policy other than accept"));
            }
            _ if has_hook => return Err(refuse(table, s, "a hook outside a chain declaration")),
            _ => {}
        }
        for (i, b) in s.blocks() {
            let inner = match (&context, s.word(0)) {
                (Context::Table, Some("chain")) if i == 2 => {
                    Context::Chain(s.word(1).unwrap_or_default().to_owned())
                }
                _ => Context::Other,
            };
            check_body(b, table, inner)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "sp";

    fn ok(script: &str) {
        if let Err(e) = check(script, T) {
            panic!("refused:\n{script}\n{e}");
        }
    }

    fn refused(script: &str) -> String {
        match check(script, T) {
            Ok(()) => panic!("accepted:\n{script}"),
            Err(e) => e.to_string(),
        }
    }

    const RENDERED: &str =
        "# Generated by smartproxy from route files; do not edit. Load with `nft -f`.
table inet sp {}
delete table inet sp
table inet sp {
\tcomment \"managed by smartproxy; changes by hand are overwritten\"

\tcounter c_web {
\t\tcomment \"web; } add table inet evil { # not a statement\"
\t}

\tset block4_web {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 192.0.2.66, 192.0.2.128/25 }
\t}

\tchain f_web {
\t\tcounter name \"c_web\"
\t\tct direction original ip saddr @block4_web goto x_web
\t}

\tchain nat_prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tmeta nfproto ipv4 fib daddr type local meta l4proto . th dport vmap @dnat4
\t}

\tchain filter_input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiif != \"lo\" ct mark & 0xffff0000 vmap @route_filter
\t}

\tmap dnat4 {
\t\ttype inet_proto . inet_service : verdict
\t\tflags interval
\t\telements = { tcp . 80 : jump n4_web }
\t}
}
";

    #[test]
    fn our_scripts_pass() {
        ok(RENDERED);
        ok("delete element inet sp dnat4 { tcp . 443 }\nflush chain inet sp n4_api\ndelete counter inet sp c_api\ntable inet sp {\n\tchain n4_api {\n\t\tmeta l4proto tcp dnat ip to 198.51.100.4:443\n\t}\n}\nadd element inet sp dnat4 { tcp . 443 : jump n4_api }\n");
        ok("delete table inet sp\n");
        ok("");
        ok("add chain inet sp filter_forward { type filter hook forward priority filter; policy accept; }\n");
    }

    #[test]
    fn every_template_base_chain_is_known() {
        let template = include_str!("../../templates/ruleset.nft.j2");
        let mut found = 0;
        let mut chain = "";
        for line in template.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("chain ") {
                chain = rest.trim_end_matches(" {");
            }
            if let Some(rest) = line.strip_prefix("type ").filter(|r| r.contains(" hook ")) {
                let words: Vec<&str> = rest.split_whitespace().collect();
                assert_eq!(words.get(1), Some(&"hook"), "{line}");
                assert!(
                    BASE_CHAINS.contains(&(chain, words[0], words[2])),
                    "{chain} {line} is not in BASE_CHAINS"
                );
                found += 1;
            }
        }
        assert_eq!(
            found,
            BASE_CHAINS.len(),
            "BASE_CHAINS lists exactly the template's"
        );
    }

    #[test]
    fn other_tables_and_families_are_refused() {
        for s in [
            "table inet other {}\n",
            "table ip sp {}\n",
            "add table inet rtinj1\n",
            "delete table inet docker\n",
            "add table sp\n",
            "flush ruleset\n",
            "list ruleset\n",
            "add rule ip filter input drop\n",
            "delete table inet sp; add table inet rtinj2\n",
            "table inet sp {} table inet rtinj3 {}\n",
            "table inet sp inet other {}\n",
            "add element inet spx dnat4 { tcp . 80 : jump a }\n",
            "add chain inet sp\n add table inet x\n",
            "monitor\n",
        ] {
            refused(s);
        }
    }

    #[test]
    fn statements_hidden_after_a_brace_are_found() {
        let e = refused("table inet sp {\n\tcounter c_a {\n\t}\n} add table inet rtinj3\n");
        assert!(e.contains("rtinj3"), "{e}");
        let e = refused(
            "table inet sp {\n\tchain f_a {\n\t\tcounter name \"c_a\"\n\t}\n}; add table inet rtinj3 { }\n",
        );
        assert!(e.contains("another table"), "{e}");
        // A cached unit whose text closes the table block early.
        let e = refused("table inet sp {\n\tcounter c_a {\n\t\tcomment \"a\"\n\t} } add table inet rtinj3 {\n\t}\n}\n");
        assert!(e.contains("rtinj3") || e.contains("closes nothing"), "{e}");
        refused("delete element inet sp dnat4 { tcp . 80 } add table inet x\n");
        // Inside the table: an object followed by more on its line.
        refused("table inet sp {\n\tcounter c_a {\n\t\tcomment \"a\" } add table inet rtinj3 {\n\t}\n}\n");
        ok("table inet sp {\n\tct timeout ct_a {\n\t\tprotocol tcp\n\t}\n}\n");
        refused("table inet sp {\n\tct timeout ct_a { } chain x {\n\t}\n}\n");
    }

    #[test]
    fn comments_and_strings_hide_nothing_and_cannot_be_abused() {
        // A `}` or a statement inside a string or after `#` is no statement.
        ok("table inet sp {\n\tcomment \"} add table inet x {\"\n}\n# add table inet x\n");
        ok("table inet sp { # a comment } add table inet x\n}\n");
        // Escapes are not nft's: a `\\\"` is refused instead of guessed at.
        refused("table inet sp {\n\tcomment \"a\\\" } add table inet x { \"\n}\n");
        refused("table inet sp {\n\tcomment \"open\n}\n");
        refused("table inet sp {\n\tcomment \"never closed\n");
        refused("table inet sp {}\nadd#x table inet sp\n");
        refused("add rule inet sp f_a ip saddr $evil drop\n");
        refused("table inet sp {\n\tcomment 'a } add table inet x'\n}\n");
    }

    #[test]
    fn includes_definitions_and_nesting_are_refused() {
        refused("include \"/etc/nftables.conf\"\n");
        refused("define x = 1\n");
        refused("table inet sp {\n\tinclude \"/tmp/x\"\n}\n");
        refused("table inet sp {\n\tchain f_a {\n\t\tdefine y = 2\n\t}\n}\n");
        refused("table inet sp {\n\ttable inet x {\n\t}\n}\n");
        refused("table inet sp {\n}\n}\n");
        refused("table inet sp {\n");
        let deep = format!("table inet sp {}{}\n", "{".repeat(40), "}".repeat(41));
        refused(&deep);
    }

    #[test]
    fn base_chains_must_be_the_templates() {
        let e = refused("table inet sp {\n\tchain sneaky {\n\t\ttype filter hook input priority -500; policy accept;\n\t}\n}\n");
        assert!(e.contains("base chain"), "{e}");
        // A known name with another hook or type.
        refused("table inet sp {\n\tchain filter_input {\n\t\ttype filter hook prerouting priority 0; policy accept;\n\t}\n}\n");
        refused("table inet sp {\n\tchain filter_input {\n\t\ttype nat hook input priority 0; policy accept;\n\t}\n}\n");
        refused("table inet sp {\n\tchain filter_input {\n\t\ttype filter hook input priority 0; policy drop;\n\t}\n}\n");
        refused("table inet sp {\n\tchain f_a {\n\t\ttype filter hook ingress device eth0 priority 0;\n\t}\n}\n");
        refused("add chain inet sp x { type filter hook input priority 0; }\n");
        refused("table inet sp {\n\tset s {\n\t\thook input\n\t}\n}\n");
        refused("table inet sp {\n\tchain f_a { } chain evil {\n\t\ttype filter hook input priority 0;\n\t}\n}\n");
    }

    #[test]
    fn errors_say_what_was_found_escaped() {
        let e = refused("add table inet \u{1b}]0;x\u{7}\n");
        assert!(!e.contains('\u{1b}'), "{e}");
        let e = refused("flush ruleset\n");
        assert!(e.contains("flush ruleset"), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }
}
