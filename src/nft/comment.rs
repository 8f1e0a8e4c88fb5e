//! Free text inside an nft comment: the only user text that reaches a script.

/// Makes free text safe inside an nft comment: no `"`, no `\\`, no control characters
/// (each becomes a space), no bidi controls or invisible separators (dropped: they would
/// make the listing read other than it is), at most 128 bytes (cut on a character boundary).
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(128));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == '"' || c == '\\' || crate::diag::is_bidi_or_invisible(c) {
            continue;
        }
        if out.len() + c.len_utf8() > 128 {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_comment_drops_bidi_and_invisible_characters() {
        assert_eq!(
            sanitize("a\u{202e}b\u{200b}c\u{1b}d\u{2028}e\u{feff}\"f\\"),
            "abc def"
        );
    }

    #[test]
    fn comments_lose_quotes_backslashes_and_control_characters() {
        assert_eq!(
            sanitize("a \"b\" \\c\nflush ruleset;}"),
            "a b c flush ruleset;}"
        );
        let long = "é".repeat(100);
        let cut = sanitize(&long);
        assert!(cut.len() <= 128 && cut.chars().all(|c| c == 'é'));
    }
}
