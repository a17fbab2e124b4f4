//! Quoting for SQL text, by libpq's rules as postgres-protocol implements
//! them. Every identifier goes through [`quote_ident`]; every literal that
//! can't be a bind parameter (COPY takes none) through [`quote_literal`].

use postgres_protocol::escape::{escape_identifier, escape_literal};

/// NUL can't appear in an identifier or a text value; drop it rather than let
/// the server cut the text there.
fn without_nul(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "").into()
    } else {
        text.into()
    }
}

/// `"name"` with embedded quotes doubled. Always quotes, so case, spaces,
/// reserved words and unicode are kept exactly.
pub fn quote_ident(name: &str) -> String {
    escape_identifier(&without_nul(name))
}

/// `"schema"."name"`.
pub fn quote_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// `'text'` with quotes doubled. Text with a backslash becomes ` E'...'`
/// (leading space included, so it never fuses with a preceding identifier)
/// with the backslash doubled, which means the same whatever
/// `standard_conforming_strings` is (sessions run with it on, see
/// [`crate::SESSION_SETUP`]).
pub fn quote_literal(text: &str) -> String {
    escape_literal(&without_nul(text))
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
            ("\"\"", "\"\"\"\"\"\""),
            ("with space", "\"with space\""),
            ("ünï", "\"ünï\""),
            ("a\\b", "\"a\\b\""),
            ("nu\0l", "\"nul\""),
        ];
        for (input, want) in cases {
            assert_eq!(quote_ident(input), want);
        }
        assert_eq!(quote_qualified("s", "t"), "\"s\".\"t\"");
        assert_eq!(quote_qualified("my\"s", "t t"), "\"my\"\"s\".\"t t\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("''"), "''''''");
        assert_eq!(quote_literal("a\\b'"), " E'a\\\\b'''");
        assert_eq!(quote_literal("\\"), " E'\\\\'");
        assert_eq!(quote_literal("nu\0l"), "'nul'");
        assert_eq!(quote_literal(""), "''");
    }
}
