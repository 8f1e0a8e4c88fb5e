//! nft's script syntax as far as the fake kernel needs it: a script split into statements
//! (newline and `;` between them, `{ … }` blocks nested, `"…"` strings kept whole, `#`
//! comments to the end of the line, a `}` at the top level ending its statement), the way
//! nft's scanner reads our scripts. What a statement means is [`super::ruleset`]'s job.

/// One part of a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Word(String),
    /// A `"…"` string, without its quotes.
    Str(String),
    Block(Vec<Stmt>),
}

/// One statement: its items and the line it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stmt {
    pub items: Vec<Item>,
    pub line: usize,
}

impl Stmt {
    pub fn word(&self, i: usize) -> Option<&str> {
        match self.items.get(i) {
            Some(Item::Word(w)) => Some(w),
            _ => None,
        }
    }

    pub fn string(&self, i: usize) -> Option<&str> {
        match self.items.get(i) {
            Some(Item::Str(s) | Item::Word(s)) => Some(s),
            _ => None,
        }
    }

    pub fn block(&self, i: usize) -> Option<&[Stmt]> {
        match self.items.get(i) {
            Some(Item::Block(b)) => Some(b),
            _ => None,
        }
    }

    /// The statement as one line of nft text: words and strings as written, a block as
    /// `{ … }` with its statements joined by `; `.
    pub fn text(&self) -> String {
        join(&self.items, true)
    }

    /// [`Stmt::text`] with blocks shown as `{ … }`, for error messages.
    pub fn shown(&self) -> String {
        join(&self.items, false)
    }
}

fn join(items: &[Item], blocks: bool) -> String {
    let mut out = String::new();
    for it in items {
        if !out.is_empty() {
            out.push(' ');
        }
        match it {
            Item::Word(w) => out.push_str(w),
            Item::Str(s) => {
                out.push('"');
                out.push_str(s);
                out.push('"');
            }
            Item::Block(b) if blocks && b.is_empty() => out.push_str("{ }"),
            Item::Block(b) if blocks => {
                out.push_str("{ ");
                let inner: Vec<String> = b.iter().map(Stmt::text).collect();
                out.push_str(&inner.join("; "));
                out.push_str(" }");
            }
            Item::Block(_) => out.push_str("{ … }"),
        }
    }
    out
}

enum Token {
    Word(String),
    Str(String),
    Open,
    Close,
    Sep,
}

fn tokens(script: &str) -> Result<Vec<(Token, usize)>, String> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut word = String::new();
    let mut chars = script.chars().peekable();
    let flush = |word: &mut String, out: &mut Vec<(Token, usize)>, line: usize| {
        if !word.is_empty() {
            out.push((Token::Word(std::mem::take(word)), line));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' | ';' => {
                flush(&mut word, &mut out, line);
                out.push((Token::Sep, line));
                if c == '\n' {
                    line += 1;
                }
            }
            '{' | '}' => {
                flush(&mut word, &mut out, line);
                out.push((if c == '{' { Token::Open } else { Token::Close }, line));
            }
            '"' => {
                flush(&mut word, &mut out, line);
                let mut s = String::new();
                let mut closed = false;
                for n in chars.by_ref() {
                    if n == '"' {
                        closed = true;
                        break;
                    }
                    if n == '\n' {
                        break;
                    }
                    s.push(n);
                }
                if !closed {
                    return Err(format!(
                        "Error: syntax error, unterminated string (line {line})"
                    ));
                }
                out.push((Token::Str(s), line));
            }
            '#' if word.is_empty() => {
                while chars.peek().is_some_and(|&n| n != '\n') {
                    chars.next();
                }
            }
            c if c.is_whitespace() => flush(&mut word, &mut out, line),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out, line);
    Ok(out)
}

/// Splits a script into its top-level statements.
pub fn parse(script: &str) -> Result<Vec<Stmt>, String> {
    let new = |line| Stmt {
        items: Vec::new(),
        line,
    };
    let end = |done: &mut Vec<Stmt>, cur: &mut Stmt| {
        if !cur.items.is_empty() {
            let line = cur.line;
            done.push(std::mem::replace(
                cur,
                Stmt {
                    items: Vec::new(),
                    line,
                },
            ));
        }
    };
    let mut stack: Vec<(Vec<Stmt>, Stmt)> = vec![(Vec::new(), new(1))];
    for (tok, line) in tokens(script)? {
        let depth = stack.len() - 1;
        let (done, cur) = stack.last_mut().expect("the top level is never popped");
        if cur.items.is_empty() {
            cur.line = line;
        }
        match tok {
            Token::Word(w) => cur.items.push(Item::Word(w)),
            Token::Str(s) => cur.items.push(Item::Str(s)),
            Token::Sep => end(done, cur),
            Token::Open => stack.push((Vec::new(), new(line))),
            Token::Close => {
                if depth == 0 {
                    return Err(format!(
                        "Error: syntax error, unexpected '}}' (line {line})"
                    ));
                }
                let (mut inner, mut last) = stack.pop().expect("depth > 0");
                end(&mut inner, &mut last);
                let (done, cur) = stack.last_mut().expect("depth > 0");
                cur.items.push(Item::Block(inner));
                if depth == 1 {
                    end(done, cur);
                }
            }
        }
    }
    if stack.len() > 1 {
        return Err("Error: syntax error, unexpected end of file, expecting '}'".to_owned());
    }
    let (mut done, mut cur) = stack.pop().expect("the top level");
    end(&mut done, &mut cur);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_blocks_strings_and_comments() {
        let s = parse(
            "# header\ntable inet t {}\ndelete table inet t; table inet t {\n\tcomment \"a; } b\"\n\tchain c {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tvmap { 0 : jump x, 1 : jump y } # tail\n\t}\n}\n",
        )
        .expect("parses");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].text(), "table inet t { }");
        assert_eq!(s[1].text(), "delete table inet t");
        assert_eq!((s[0].line, s[1].line, s[2].line), (2, 3, 3));
        let body = s[2].block(3).expect("block");
        assert_eq!(body[0].string(1), Some("a; } b"));
        let chain = body[1].block(2).expect("chain block");
        assert_eq!(chain[0].text(), "type nat hook prerouting priority dstnat");
        assert_eq!(chain[1].text(), "policy accept");
        assert_eq!(chain[2].text(), "vmap { 0 : jump x, 1 : jump y }");
        assert_eq!(s[2].shown(), "table inet t { … }");
    }

    #[test]
    fn broken_scripts_are_syntax_errors() {
        assert!(parse("table inet t {\n").is_err());
        assert!(parse("}\n").is_err());
        assert!(parse("table inet t { comment \"open\n}\n").is_err());
        assert_eq!(parse("\n# only a comment\n;;\n").expect("empty"), []);
    }
}
