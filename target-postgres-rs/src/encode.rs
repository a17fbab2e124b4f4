//! JSON values → Postgres COPY text, exactly: numbers pass through as the
//! digits sent, strings are unescaped then COPY-escaped, JSON columns get the
//! value's JSON text, Postgres arrays get array literals.

use std::borrow::Cow;

use serde_json::value::RawValue;

/// How a column's values are written as COPY text (from its type, see
/// [`crate::types::ColumnType::text_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// Parsed by Postgres from the value's text (numbers, booleans, text, dates...).
    Scalar,
    /// `timestamp[tz]`: text, with a doubled UTC offset repaired.
    Timestamp,
    /// `jsonb`: the value's JSON text, strings included (no `\u0000`: jsonb can't hold NUL).
    Json,
    /// `json`: the value's JSON text verbatim; `json` stores its text as
    /// given, so a `\u0000` escape is kept too.
    JsonText,
    /// A Postgres array: JSON arrays become array literals.
    Array(Element),
    /// `bytea`: hex strings get the `\x` prefix Postgres needs.
    Bytea,
    /// `hstore`: a JSON object of strings becomes an hstore literal.
    Hstore,
}

/// How the elements of an array column are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    /// Nested JSON arrays are dimensions; scalars are written as their text.
    Scalar,
    /// `jsonb[]`: each item of the top-level array is one JSON value
    /// (a JSON array item is a value, not a dimension).
    Json,
    /// `json[]`: as `jsonb[]`, each item kept verbatim (`\u0000` included).
    JsonText,
    /// `bytea[]`: hex strings with the `\x` prefix.
    Bytea,
    /// `hstore[]`: objects as hstore literals.
    Hstore,
}

/// Why a value can't be written (the caller names stream, line and column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("contains a NUL character (\\u0000), which text and jsonb columns can't hold; set `sanitize_null_text_characters: true` to strip it, or declare the column `json` (`x-sql-datatype`), which keeps it")]
    Nul,
    #[error("is not valid JSON: {0}")]
    Json(String),
}

/// Appends `s` with COPY text escaping (backslash, newline, carriage return, tab).
pub fn copy_escape(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

/// Appends one value (`raw` is its JSON text) in COPY text form for a column of `kind`.
pub fn encode_value(
    out: &mut Vec<u8>,
    raw: &str,
    kind: TextKind,
    strip_nul: bool,
) -> Result<(), EncodeError> {
    let bytes = raw.as_bytes();
    match bytes.first() {
        None => out.extend_from_slice(b"\\N"),
        Some(b'n') => out.extend_from_slice(b"\\N"),
        Some(b'"') => match kind {
            TextKind::Json => json_text(out, raw, strip_nul)?,
            TextKind::JsonText => copy_escape(out, bytes),
            _ => {
                let s = unescape(raw, strip_nul)?;
                match kind {
                    TextKind::Bytea => {
                        out.extend_from_slice(b"\\\\x");
                        copy_escape(out, bytea_hex(&s).as_bytes());
                    }
                    TextKind::Timestamp => copy_escape(out, repair_offset(&s).as_bytes()),
                    _ => copy_escape(out, s.as_bytes()),
                }
            }
        },
        Some(b'[') if matches!(kind, TextKind::Array(_)) => {
            let TextKind::Array(element) = kind else {
                unreachable!()
            };
            let mut lit = String::with_capacity(raw.len() + 2);
            array_literal(&mut lit, raw, element, strip_nul)?;
            copy_escape(out, lit.as_bytes());
        }
        Some(b'{') if kind == TextKind::Hstore => {
            let mut lit = String::with_capacity(raw.len());
            hstore_literal(&mut lit, raw, strip_nul)?;
            copy_escape(out, lit.as_bytes());
        }
        Some(b'[' | b'{') if kind == TextKind::JsonText => copy_escape(out, bytes),
        Some(b'[' | b'{') => json_text(out, raw, strip_nul)?,
        // Numbers and booleans: the exact text sent; it needs no escaping.
        Some(_) => out.extend_from_slice(bytes),
    }
    Ok(())
}

/// The string a JSON string literal holds; borrowed when it has no escapes.
pub fn unescape(raw: &str, strip_nul: bool) -> Result<Cow<'_, str>, EncodeError> {
    let inner = &raw[1..raw.len() - 1];
    if !inner.as_bytes().contains(&b'\\') {
        return Ok(Cow::Borrowed(inner));
    }
    let s: String = serde_json::from_str(raw).map_err(|e| EncodeError::Json(e.to_string()))?;
    if s.contains('\0') {
        if !strip_nul {
            return Err(EncodeError::Nul);
        }
        return Ok(Cow::Owned(s.replace('\0', "")));
    }
    Ok(Cow::Owned(s))
}

/// JSON text for a json/jsonb column (jsonb rejects `\u0000` too).
fn json_text(out: &mut Vec<u8>, raw: &str, strip_nul: bool) -> Result<(), EncodeError> {
    if has_nul_escape(raw) {
        if !strip_nul {
            return Err(EncodeError::Nul);
        }
        copy_escape(out, strip_nul_escapes(raw).as_bytes());
    } else {
        copy_escape(out, raw.as_bytes());
    }
    Ok(())
}

/// Whether JSON text has a `\u0000` escape (an escaped backslash before `u0000` is not one).
fn has_nul_escape(raw: &str) -> bool {
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'u') && b.get(i + 2..i + 6) == Some(b"0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

fn strip_nul_escapes(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'u') && b.get(i + 2..i + 6) == Some(b"0000") {
                i += 6;
                continue;
            }
            out.extend_from_slice(&b[i..(i + 2).min(b.len())]);
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    // Only ASCII escapes were removed, so this is still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// The hex digits of a bytea string as taps send it: Postgres' `\x` prefix
/// or a `0x` prefix stripped, an odd count left-padded with `0` (`"0xabc"`
/// is the bytes `0a bc`). Anything else is left for Postgres to judge.
pub fn bytea_hex(s: &str) -> Cow<'_, str> {
    let hex = ["\\x", "0x", "0X"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .unwrap_or(s);
    if hex.len() % 2 == 1 {
        Cow::Owned(format!("0{hex}"))
    } else {
        Cow::Borrowed(hex)
    }
}

/// A JSON array as a Postgres array literal: `{1,NULL,"a\"b",{2,3}}`.
fn array_literal(
    lit: &mut String,
    raw: &str,
    element: Element,
    strip_nul: bool,
) -> Result<(), EncodeError> {
    let items: Vec<&RawValue> =
        serde_json::from_str(raw).map_err(|e| EncodeError::Json(e.to_string()))?;
    lit.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            lit.push(',');
        }
        let t = item.get();
        match (t.as_bytes().first(), element) {
            (Some(b'n'), _) => lit.push_str("NULL"),
            // Each item of a json[] is one JSON value, whatever its shape.
            (Some(_), Element::JsonText) => quote_element(lit, t),
            (Some(_), Element::Json) => {
                if has_nul_escape(t) && !strip_nul {
                    return Err(EncodeError::Nul);
                }
                quote_element(lit, &strip_nul_escapes(t))
            }
            (Some(b'['), _) => array_literal(lit, t, element, strip_nul)?,
            (Some(b'"'), Element::Bytea) => {
                let s = unescape(t, strip_nul)?;
                quote_element(lit, &format!("\\x{}", bytea_hex(&s)))
            }
            (Some(b'{'), Element::Hstore) => {
                let mut h = String::new();
                hstore_literal(&mut h, t, strip_nul)?;
                quote_element(lit, &h)
            }
            (Some(b'"'), _) => quote_element(lit, &unescape(t, strip_nul)?),
            (Some(b'{'), _) => {
                if has_nul_escape(t) && !strip_nul {
                    return Err(EncodeError::Nul);
                }
                quote_element(lit, &strip_nul_escapes(t))
            }
            _ => lit.push_str(t),
        }
    }
    lit.push('}');
    Ok(())
}

/// A JSON object of strings (or nulls) as an hstore literal: `"k"=>"v", "n"=>NULL`.
fn hstore_literal(lit: &mut String, raw: &str, strip_nul: bool) -> Result<(), EncodeError> {
    let pairs: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(raw).map_err(|e| EncodeError::Json(e.to_string()))?;
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            lit.push_str(", ");
        }
        quote_element(lit, &nul_checked(k, strip_nul)?);
        lit.push_str("=>");
        match v {
            serde_json::Value::Null => lit.push_str("NULL"),
            serde_json::Value::String(s) => quote_element(lit, &nul_checked(s, strip_nul)?),
            other => quote_element(lit, &other.to_string()),
        }
    }
    Ok(())
}

fn nul_checked(s: &str, strip_nul: bool) -> Result<Cow<'_, str>, EncodeError> {
    if !s.contains('\0') {
        return Ok(Cow::Borrowed(s));
    }
    if !strip_nul {
        return Err(EncodeError::Nul);
    }
    Ok(Cow::Owned(s.replace('\0', "")))
}

fn quote_element(lit: &mut String, s: &str) {
    lit.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            lit.push('\\');
        }
        lit.push(c);
    }
    lit.push('"');
}

/// `2019-12-18T13:19:44+00:00+00:00` (a doubled offset some taps send) →
/// `2019-12-18T13:19:44+00:00`. Anything else is left for Postgres to judge.
fn repair_offset(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    if b.len() > 12 {
        let (head, tail) = s.split_at(s.len() - 6);
        let is_offset = |t: &str| {
            let t = t.as_bytes();
            t.len() == 6
                && (t[0] == b'+' || t[0] == b'-')
                && t[1].is_ascii_digit()
                && t[2].is_ascii_digit()
                && t[3] == b':'
                && t[4].is_ascii_digit()
                && t[5].is_ascii_digit()
        };
        if is_offset(tail) && head.len() > 6 && is_offset(&head[head.len() - 6..]) {
            return Cow::Owned(head.to_owned());
        }
    }
    Cow::Borrowed(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(raw: &str, kind: TextKind) -> String {
        let mut out = Vec::new();
        encode_value(&mut out, raw, kind, false).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn scalars() {
        use TextKind::*;
        assert_eq!(enc("null", Scalar), "\\N");
        assert_eq!(enc("null", Json), "\\N");
        assert_eq!(
            enc("123456789012345678901234567890.000000001", Scalar),
            "123456789012345678901234567890.000000001"
        );
        assert_eq!(enc("true", Scalar), "true");
        assert_eq!(enc(r#""NaN""#, Scalar), "NaN");
        assert_eq!(enc(r#""a\tb\nc\\d\"e""#, Scalar), "a\\tb\\nc\\\\d\"e");
        assert_eq!(enc(r#""\u00e9漢""#, Scalar), "é漢");
        assert_eq!(enc(r#""\\u0000""#, Scalar), "\\\\u0000");
    }

    #[test]
    fn json_columns_keep_the_exact_json() {
        use TextKind::*;
        assert_eq!(enc(r#""abc""#, Json), r#""abc""#);
        assert_eq!(
            enc(r#"{"a":"x\ny","b":1.50}"#, Json),
            r#"{"a":"x\\ny","b":1.50}"#
        );
        assert_eq!(enc("[1,2,3]", Json), "[1,2,3]");
        assert_eq!(enc("1.0", Json), "1.0");
        assert_eq!(enc(r#"{"a":[1]}"#, Scalar), r#"{"a":[1]}"#);
    }

    #[test]
    fn arrays_become_literals() {
        use TextKind::*;
        let array = Array(Element::Scalar);
        assert_eq!(enc("[1,null,3]", array), "{1,NULL,3}");
        assert_eq!(enc("[[1,2],[3,4]]", array), "{{1,2},{3,4}}");
        assert_eq!(
            enc(r#"["a,b","q\"t","back\\s","NULL"]"#, array),
            r#"{"a,b","q\\"t","back\\\\s","NULL"}"#
        );
        assert_eq!(enc("[]", array), "{}");
        // json[]: a JSON array item is a value, not a dimension.
        assert_eq!(
            enc(r#"[{"a":1},[1,2],"s",null]"#, Array(Element::Json)),
            r#"{"{\\"a\\":1}","[1,2]","\\"s\\"",NULL}"#
        );
        // bytea[]: hex gets the \x prefix inside the element.
        assert_eq!(
            enc(r#"["00ff","",null]"#, Array(Element::Bytea)),
            r#"{"\\\\x00ff","\\\\x",NULL}"#
        );
    }

    #[test]
    fn hstore_objects_become_literals() {
        assert_eq!(
            enc(r#"{"a":"1","b c":null,"q\"uote":"x"}"#, TextKind::Hstore),
            r#""a"=>"1", "b c"=>NULL, "q\\"uote"=>"x""#
        );
        assert_eq!(enc("{}", TextKind::Hstore), "");
    }

    #[test]
    fn bytea_and_timestamps() {
        use TextKind::*;
        assert_eq!(enc(r#""deadbeef""#, Bytea), "\\\\xdeadbeef");
        assert_eq!(enc(r#""\\xdeadbeef""#, Bytea), "\\\\xdeadbeef");
        assert_eq!(enc(r#""0xDEADBEEF""#, Bytea), "\\\\xDEADBEEF");
        assert_eq!(enc(r#""abc""#, Bytea), "\\\\x0abc");
        assert_eq!(enc(r#""0x""#, Bytea), "\\\\x");
        assert_eq!(enc(r#""""#, Bytea), "\\\\x");
        assert_eq!(
            enc(r#""2019-12-18T13:19:44+00:00+00:00""#, Timestamp),
            "2019-12-18T13:19:44+00:00"
        );
        assert_eq!(
            enc(r#""2019-12-18T13:19:44+02:00""#, Timestamp),
            "2019-12-18T13:19:44+02:00"
        );
        assert_eq!(enc(r#""infinity""#, Timestamp), "infinity");
    }

    #[test]
    fn json_keeps_nul_escapes_verbatim() {
        use TextKind::*;
        assert_eq!(enc(r#"{"k":"a\u0000b"}"#, JsonText), r#"{"k":"a\\u0000b"}"#);
        assert_eq!(enc(r#""\u0000""#, JsonText), r#""\\u0000""#);
        assert_eq!(
            enc(r#"["\u0000",null]"#, Array(Element::JsonText)),
            r#"{"\\"\\\\u0000\\"",NULL}"#
        );
    }

    #[test]
    fn nul_fails_or_is_stripped() {
        let mut out = Vec::new();
        assert_eq!(
            encode_value(&mut out, r#""a\u0000b""#, TextKind::Scalar, false),
            Err(EncodeError::Nul)
        );
        assert_eq!(
            encode_value(&mut out, r#"{"k":"a\u0000b"}"#, TextKind::Json, false),
            Err(EncodeError::Nul)
        );
        out.clear();
        encode_value(&mut out, r#""a\u0000b""#, TextKind::Scalar, true).unwrap();
        assert_eq!(out, b"ab");
        out.clear();
        encode_value(&mut out, r#"{"k":"a\u0000b\\u0000"}"#, TextKind::Json, true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"k":"ab\\\\u0000"}"#);
    }
}
