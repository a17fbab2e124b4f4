//! Quoting for SQL text. Every identifier goes through [`quote_ident`]; every
//! literal that can't be a bind parameter (COPY takes none) through
//! [`quote_literal`].

/// `"name"` with embedded quotes doubled. Always quotes, so case, spaces,
/// reserved words and unicode are kept exactly.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        // NUL can't appear in an identifier; drop it rather than cut the name.
        if c != '\0' {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// `"schema"."name"`.
pub fn quote_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// `'text'` with quotes doubled. Sessions run with
/// `standard_conforming_strings = on` (see [`crate::SESSION_SETUP`]), so a
/// backslash is an ordinary character; the `E''` form is used when the text
/// has one anyway, so the literal means the same under either setting.
pub fn quote_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    if text.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => {}
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes() {
        let cases = [
            ("users", "\"users\""),
            ("Order", "\"Order\""),
            ("a\"b", "\"a\"\"b\""),
            ("with space", "\"with space\""),
            ("ünï", "\"ünï\""),
        ];
        for (input, want) in cases {
            assert_eq!(quote_ident(input), want);
        }
        assert_eq!(quote_qualified("s", "t"), "\"s\".\"t\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    }
}
