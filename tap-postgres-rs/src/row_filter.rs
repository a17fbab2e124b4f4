//! Row filters (`stream_options.<stream>.custom_where_clauses`), below every
//! sync method: each clause checked as one SQL condition, the clauses
//! combined into the one condition the reads and the publication use, and
//! checked against the database before any stream syncs.
//!
//! A clause is the user's own SQL, but it must not end the statement it is
//! put in and start another. Two guards: [`check_clause`] refuses a `;` and
//! unbalanced parentheses, quotes and comments (so a clause cannot close the
//! parentheses it is wrapped in); and every statement carrying a clause runs
//! through the extended protocol, which takes exactly one statement.

use std::collections::BTreeSet;

use pg_connect::quote_qualified;
use postgres::Client;
use singer_core::Catalog;

use crate::error::{QueryError, StreamError, SyncError};
use crate::plan;
use crate::settings::{Method, TapSettings};

/// Checks that `clause` is one SQL condition: not empty, no `;` outside
/// quotes and comments, and every parenthesis, quote, quoted identifier,
/// dollar quote and block comment closed. Returns the problem.
pub fn check_clause(clause: &str) -> Result<(), String> {
    if clause.trim().is_empty() {
        return Err("is empty: write a SQL condition such as \"id > 0\"".into());
    }
    let mut depth: usize = 0;
    let mut problem = None;
    let lexed = lex(clause, |piece| {
        if problem.is_some() {
            return;
        }
        match piece {
            Piece::Code(b'(') => depth += 1,
            Piece::Code(b')') => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => {
                    problem = Some(
                        "has a `)` without its `(`: a clause must be one whole condition".into(),
                    )
                }
            },
            Piece::Code(b';') => {
                problem = Some(
                    "contains `;`: a clause is one SQL condition, not statements (quote a literal `;` as ';')"
                        .into(),
                )
            }
            _ => {}
        }
    });
    // The first problem in the text: lexing stops at an unterminated quote
    // or comment, after any problem found before it.
    if let Some(problem) = problem {
        return Err(problem);
    }
    lexed?;
    if depth > 0 {
        return Err("has a `(` without its `)`: a clause must be one whole condition".into());
    }
    Ok(())
}

/// A condition as written, without what cannot change its meaning: its
/// comments, runs of whitespace (one space left, none just inside
/// parentheses or at the ends). Quoted text stays as it is. Two
/// conditions with one canonical form read the same rows.
pub fn canonical(condition: &str) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(condition.len());
    let mut space = false;
    // A pending space survives only between two pieces, and not inside
    // parentheses.
    let push = |out: &mut Vec<u8>, bytes: &[u8], space: &mut bool| {
        let inside = out.last() == Some(&b'(') || bytes.first() == Some(&b')');
        if std::mem::take(space) && !out.is_empty() && !inside {
            out.push(b' ');
        }
        out.extend_from_slice(bytes);
    };
    // An unbalanced condition is refused before any comparison; its form
    // here only needs to be deterministic.
    let _ = lex(condition, |piece| match piece {
        Piece::Code(c) if c.is_ascii_whitespace() => space = true,
        Piece::Comment => space = true,
        Piece::Code(c) => push(&mut out, &[c], &mut space),
        Piece::Quoted(q) => push(&mut out, q.as_bytes(), &mut space),
    });
    // Only whole UTF-8 sequences were dropped (ASCII whitespace, comments).
    String::from_utf8(out).unwrap_or_else(|_| condition.trim().to_owned())
}

/// A part of a condition, as [`lex`] sees it.
enum Piece<'a> {
    /// One byte outside quotes and comments.
    Code(u8),
    /// A string, quoted identifier or dollar-quoted string, quotes included.
    Quoted(&'a str),
    /// A `--` or (nested) block comment.
    Comment,
}

/// Splits `clause` into pieces, or says what is left unterminated.
fn lex<'a>(clause: &'a str, mut each: impl FnMut(Piece<'a>)) -> Result<(), String> {
    let b = clause.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let prev = i.checked_sub(1).map(|p| b[p]);
        let start = i;
        match c {
            b'\'' => {
                // E'...' takes backslash escapes; other strings only ''.
                let escapes = matches!(prev, Some(b'e' | b'E'))
                    && !i.checked_sub(2).is_some_and(|p| ident(b[p]));
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err("has an unterminated string ('...')".into()),
                        Some(b'\\') if escapes => i += 1,
                        Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 1,
                        Some(b'\'') => break,
                        _ => {}
                    }
                    i += 1;
                }
                each(Piece::Quoted(&clause[start..=i]));
            }
            b'"' => {
                i += 1;
                loop {
                    match b.get(i) {
                        None => {
                            return Err("has an unterminated quoted identifier (\"...\")".into())
                        }
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 1,
                        Some(b'"') => break,
                        _ => {}
                    }
                    i += 1;
                }
                each(Piece::Quoted(&clause[start..=i]));
            }
            b'$' if !prev.is_some_and(ident) => {
                // $tag$...$tag$ (or $$...$$); $1 is a parameter.
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c >= 0x80))
                    .map(|n| i + 1 + n);
                let starts_tag = b.get(i + 1).is_some_and(|c| !c.is_ascii_digit());
                if let Some(end) = tag_end.filter(|e| b[*e] == b'$' && starts_tag) {
                    let delimiter = &clause[i..=end];
                    let body = end + 1;
                    let close = clause[body..]
                        .find(delimiter)
                        .ok_or_else(|| format!("has an unterminated dollar quote ({delimiter})"))?;
                    i = body + close + delimiter.len() - 1;
                    each(Piece::Quoted(&clause[start..=i]));
                } else {
                    each(Piece::Code(c));
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                // To the end of the line; the wrapping puts a newline after the clause.
                i = b[i..]
                    .iter()
                    .position(|c| *c == b'\n')
                    .map_or(b.len(), |n| i + n);
                each(Piece::Comment);
                // The newline itself is whitespace.
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Block comments nest.
                let mut nested = 0usize;
                loop {
                    match (b.get(i), b.get(i + 1)) {
                        (None, _) => return Err("has an unterminated comment (/* ...)".into()),
                        (Some(b'/'), Some(b'*')) => {
                            nested += 1;
                            i += 1;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            nested -= 1;
                            i += 1;
                            if nested == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                each(Piece::Comment);
            }
            _ => each(Piece::Code(c)),
        }
        i += 1;
    }
    Ok(())
}

/// The clauses as one condition: each in parentheses (a newline before the
/// closing one ends a trailing `--` comment), ANDed. `None` without clauses.
pub fn combine(clauses: &[String]) -> Option<String> {
    if clauses.is_empty() {
        return None;
    }
    let parts: Vec<String> = clauses
        .iter()
        .map(|c| format!("({}\n)", c.trim()))
        .collect();
    Some(parts.join(" AND "))
}

/// Before any stream syncs: warns of `stream_options` for streams the catalog
/// does not have; checks each selected stream's filter against its table
/// (parsed and analysed, never run); refuses a filtered LOG_BASED stream on a
/// server before PostgreSQL 15, which has no publication row filters.
pub fn check_all(
    client: &mut Client,
    catalog: &Catalog,
    settings: &TapSettings,
) -> Result<(), SyncError> {
    let known: BTreeSet<&str> = catalog
        .streams
        .iter()
        .map(|s| s.tap_stream_id.as_str())
        .collect();
    let unknown: Vec<&str> = settings
        .stream_options
        .keys()
        .map(String::as_str)
        .filter(|id| !known.contains(id))
        .collect();
    if !unknown.is_empty() {
        tracing::warn!(
            streams = %unknown.join(", "),
            "stream_options names streams the catalog does not have (options are keyed by tap_stream_id, such as public-orders): they apply to nothing"
        );
    }
    let mut server: Option<u32> = None;
    for entry in catalog.selected_streams() {
        let id = entry.tap_stream_id.as_str();
        let Some(filter) = settings
            .stream_options
            .get(id)
            .and_then(|o| combine(&o.where_clauses))
        else {
            continue;
        };
        let (schema, table) = plan::table_of(entry);
        let sql = format!(
            "SELECT 1 FROM {} WHERE {filter}",
            quote_qualified(&schema, &table)
        );
        // Prepared only: parse analysis names a bad clause, nothing runs.
        client
            .prepare(&sql)
            .map_err(|e| StreamError::BadRowFilter(QueryError(e)).at(id))?;
        let method = entry
            .replication_method()
            .and_then(|m| Method::parse(&m))
            .unwrap_or(settings.default_method);
        if method == Method::LogBased {
            let version = match server {
                Some(v) => v,
                None => {
                    let v =
                        pg_logical::slot::server_version(client).map_err(SyncError::LogBased)?;
                    *server.insert(v)
                }
            };
            if version < 150000 {
                return Err(StreamError::RowFilterBeforePg15 {
                    version: format!("{}.{}", version / 10000, version % 10000),
                }
                .at(id));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_condition_only() {
        for ok in [
            "id > 0",
            "name = 'a;b' AND (x IS NULL OR x <> ')')",
            "note = 'it''s'",
            "\"odd;col\" = 1",
            "body = $$a;)$$ OR body = $t$;$t$",
            "a$b = 1",
            "x = E'\\';'",
            "id > 0 -- trailing comment",
            "/* a /* nested */ comment; */ id > 0",
        ] {
            assert_eq!(check_clause(ok), Ok(()), "{ok}");
        }
        let refused = |c: &str| check_clause(c).unwrap_err();
        assert!(refused("1=1); DROP TABLE x; --").starts_with("has a `)` without its `(`"));
        assert!(refused("1=1; DROP TABLE x").starts_with("contains `;`"));
        assert!(refused("id > 0) OR (true").starts_with("has a `)` without its `(`"));
        assert!(refused("(id > 0").starts_with("has a `(` without its `)`"));
        assert_eq!(refused("x = 'open"), "has an unterminated string ('...')");
        assert_eq!(refused("x = E'\\'"), "has an unterminated string ('...')");
        assert_eq!(
            refused("\"x = 1"),
            "has an unterminated quoted identifier (\"...\")"
        );
        assert_eq!(
            refused("x = $q$ open"),
            "has an unterminated dollar quote ($q$)"
        );
        assert_eq!(
            refused("x = 1 /* open"),
            "has an unterminated comment (/* ...)"
        );
        assert!(refused("  ").starts_with("is empty"));
    }

    #[test]
    fn canonical_forms_drop_comments_and_spacing_only() {
        for (written, form) in [
            ("id  >\n\t2 -- why\n", "id > 2"),
            ("(id > 2\n) AND (b -- note\n)", "(id > 2) AND (b)"),
            ("a/* x /* y */ */b", "a b"),
            ("a - -1", "a - -1"),
            (
                "name = 'a  b' AND \"odd  col\" = $t$x  -- y$t$",
                "name = 'a  b' AND \"odd  col\" = $t$x  -- y$t$",
            ),
            ("x = E'\\'  '", "x = E'\\'  '"),
        ] {
            assert_eq!(canonical(written), form, "{written:?}");
        }
        let combined = |c: &[&str]| {
            let clauses: Vec<String> = c.iter().map(|c| (*c).to_owned()).collect();
            canonical(&combine(&clauses).unwrap())
        };
        assert_eq!(
            combined(&["region = 'eu'", "id > 2 -- recent"]),
            combined(&[" region =  'eu' ", "id >\n 2"])
        );
        assert_ne!(combined(&["region = 'eu'"]), combined(&["region = 'eu '"]));
    }

    #[test]
    fn combined_in_parentheses() {
        assert_eq!(combine(&[]), None);
        assert_eq!(
            combine(&["a > 1".into(), "b -- note".into()]).unwrap(),
            "(a > 1\n) AND (b -- note\n)"
        );
    }
}
