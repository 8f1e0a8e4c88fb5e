//! Route and table names: the syntax, and why a name is refused.

/// Why a name fails [`name_syntax_ok`], for a label: the first rule it breaks.
pub(super) fn name_problem(name: &str) -> String {
    let count = name.chars().count();
    match name.chars().next() {
        None => return "the name is empty".to_owned(),
        Some('a'..='z') => {}
        Some(c) => return format!("starts with `{c}`, not a lowercase letter"),
    }
    if let Some(c) = name.chars().find(|c| crate::diag::is_unsafe_char(*c)) {
        return format!(
            "holds `{c}`, a control, bidi or invisible character (lowercase letters, digits, `_`, `-`)"
        );
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
    {
        return format!("`{c}` is not allowed (lowercase letters, digits, `_`, `-`)");
    }
    if name.len() > 32 {
        return format!("{count} characters, at most 32");
    }
    "must match [a-z][a-z0-9_-]{0,31}".to_owned()
}

pub(super) fn name_syntax_ok(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 32
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

pub(super) fn table_name_ok(name: &str) -> bool {
    name_syntax_ok(name) && !name.contains('-') && !crate::nft::keywords::is_nft_keyword(name)
}

/// Why a table name is refused, for the label of E027.
pub(super) fn table_name_problem(name: &str) -> String {
    if name_syntax_ok(name) && crate::nft::keywords::is_nft_keyword(name) {
        format!("`{name}` is an nft keyword")
    } else if name.contains('-') && name_syntax_ok(name) {
        "`-` is not allowed in a table name".to_owned()
    } else {
        // The route-name wording, less the `-` a table name may not hold.
        name_problem(name).replace("digits, `_`, `-`)", "digits, `_`)")
    }
}

/// A table name refused by [`table_name`]: the name and why (the first rule it breaks).
/// Its text is what a user reads; both parts are escaped by [`crate::diag::escape`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid table name `{}`: {}; use [a-z][a-z0-9_]{{0,31}}, not an nft keyword",
    crate::diag::escape(.name),
    crate::diag::escape(.problem)
)]
pub struct InvalidTableName {
    /// The name as given.
    pub name: String,
    /// Why it is refused, unescaped (the label of E027).
    pub problem: String,
}

/// For the callers that still carry errors as text (a clap value parser, a saved plan's
/// check): the same message.
impl From<InvalidTableName> for String {
    fn from(e: InvalidTableName) -> Self {
        e.to_string()
    }
}

/// The one rule for a table name, wherever it comes from (`settings.table`, `--table`,
/// a saved plan, a state file's name): `Err` says why it is refused.
pub fn table_name(name: &str) -> Result<(), InvalidTableName> {
    if table_name_ok(name) {
        Ok(())
    } else {
        Err(InvalidTableName {
            name: name.to_owned(),
            problem: table_name_problem(name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_follow_the_syntax_and_say_what_is_wrong() {
        for ok in ["a", "web", "my_route-2", &"a".repeat(32)] {
            assert!(name_syntax_ok(ok), "{ok}");
        }
        for (bad, why) in [
            ("", "the name is empty"),
            ("Web", "starts with `W`, not a lowercase letter"),
            (
                "we.b",
                "`.` is not allowed (lowercase letters, digits, `_`, `-`)",
            ),
            (&"a".repeat(33), "33 characters, at most 32"),
        ] {
            assert!(!name_syntax_ok(bad), "{bad}");
            assert_eq!(name_problem(bad), why);
        }
    }

    #[test]
    fn a_refused_table_name_says_why_in_one_escaped_line() {
        assert_eq!(table_name("smartproxy"), Ok(()));
        let keyword = table_name("table").expect_err("a keyword");
        assert_eq!(keyword.problem, "`table` is an nft keyword");
        assert_eq!(
            keyword.to_string(),
            "invalid table name `table`: `table` is an nft keyword; use [a-z][a-z0-9_]{0,31}, not an nft keyword"
        );
        let dash = table_name("my-table").expect_err("a dash");
        assert_eq!(dash.problem, "`-` is not allowed in a table name");
        let dot = table_name("a.b").expect_err("a dot");
        assert_eq!(
            dot.problem,
            "`.` is not allowed (lowercase letters, digits, `_`)"
        );
        let control = table_name("a\u{1b}[31mb").expect_err("an escape sequence");
        assert!(!control.to_string().contains('\u{1b}'), "{control}");
        assert!(control.to_string().contains("a\\u{1b}[31mb"), "{control}");
        assert_eq!(String::from(control.clone()), control.to_string());
    }
}
