//! One text codec per Postgres type: from the value's text form, as Postgres
//! prints it in a session pinned by pg-connect (UTC, ISO dates, ISO 8601
//! intervals, `extra_float_digits=3`, hex bytea), to JSON appended to a buffer.
//!
//! Transport-free on purpose: COPY text (after [`unescape_copy_field`]) and
//! pgoutput tuples carry the same text form, so every sync method shares it.
//! The one rule for values the plain JSON schema cannot hold (NaN,
//! ±Infinity, `infinity` dates, BC dates, years past 9999, times at 24:00,
//! offsets with seconds, arrays with explicit bounds): they travel as a JSON
//! string that Postgres parses back to the same value, and [`Codec::encode`]
//! says so, so that the stream's SCHEMA can admit that string first.

use singer_core::push_json_string;

/// How one column's text becomes JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codec {
    /// smallint, integer, bigint, oid, xid: the digits as a JSON number.
    Integer,
    /// numeric (and money, read as numeric), real, double precision: the
    /// digits as printed, as a JSON number; `NaN`/`Infinity`/`-Infinity` as strings.
    Number,
    /// `t`/`f`.
    Boolean,
    /// Any text form kept as a JSON string.
    Text,
    /// date: as printed (`2024-02-29`, `0044-03-15 BC`, `infinity`).
    Date,
    /// json, jsonb: the value itself.
    Json,
    /// bytea: lowercase hex without the `\x` prefix.
    Bytea,
    /// timestamp without time zone: ISO 8601 with `+00:00`.
    Timestamp,
    /// timestamp with time zone (printed in UTC): ISO 8601 with `+00:00`.
    Timestamptz,
    /// time with time zone: offset as `±HH:MM`.
    Timetz,
    /// hstore: an object of strings (NULL values as null).
    Hstore,
    /// An array of any element type, any number of dimensions, NULL elements as null.
    Array { element: Box<Codec>, delimiter: u8 },
}

impl Codec {
    /// Appends the JSON for one non-NULL value given in Postgres's text form.
    /// Returns whether the value is *special*: sent as its Postgres text form
    /// because the type's plain schema (`number`, `format: date`, ...) cannot
    /// hold it.
    pub fn encode(&self, text: &str, out: &mut String) -> bool {
        match self {
            Codec::Integer => out.push_str(text),
            Codec::Number => {
                // Digits start with a digit, `-` or `.`: look further only
                // at a letter (or `-I`), the row loop's most common type.
                let letter = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphabetic);
                let bytes = text.as_bytes();
                if (letter(bytes.first()) || (bytes.first() == Some(&b'-') && letter(bytes.get(1))))
                    && matches!(text, "NaN" | "Infinity" | "-Infinity")
                {
                    push_json_string(out, text);
                    return true;
                }
                out.push_str(text);
            }
            Codec::Boolean => out.push_str(if text.as_bytes() == b"t" {
                "true"
            } else {
                "false"
            }),
            Codec::Text => push_json_string(out, text),
            Codec::Date => {
                push_json_string(out, text);
                return special_date(text);
            }
            Codec::Json => encode_json(text, out),
            Codec::Bytea => {
                out.push('"');
                out.push_str(text.strip_prefix("\\x").unwrap_or(text));
                out.push('"');
            }
            Codec::Timestamp => return encode_timestamp(text, false, out),
            Codec::Timestamptz => return encode_timestamp(text, true, out),
            Codec::Timetz => return encode_timetz(text, out),
            Codec::Hstore => encode_hstore(text, out),
            Codec::Array { element, delimiter } => {
                return encode_array(text, element, *delimiter, out)
            }
        }
        false
    }
}

/// A date (or a timestamp's date part) RFC 3339's `full-date` cannot
/// express: `infinity`, `-infinity`, BC, a year past 9999.
fn special_date(text: &str) -> bool {
    text.ends_with("infinity")
        || text.ends_with(" BC")
        || position(text, b'-').is_some_and(|i| i > 4)
}

/// The first `byte` in `text` (an ASCII byte: the same index `str::find`
/// gives, without its general char search; these texts are short).
fn position(text: &str, byte: u8) -> Option<usize> {
    text.bytes().position(|b| b == byte)
}

/// The last `+` or `-` in `text` (as `str::rfind(['+', '-'])`).
fn last_sign(text: &str) -> Option<usize> {
    text.bytes().rposition(|b| b == b'+' || b == b'-')
}

/// A `time with time zone` RFC 3339's `full-time` cannot express: hour 24,
/// or an offset with seconds (`+05:30:15`).
fn special_time(time: &str) -> bool {
    time.starts_with("24") || last_sign(time).is_some_and(|i| time.len() - i > 6)
}

/// json text may hold newlines between tokens (never inside strings, where
/// JSON forbids raw control characters): make it one line.
fn encode_json(text: &str, out: &mut String) {
    if memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_some() {
        out.extend(text.chars().map(|c| match c {
            '\n' | '\r' => ' ',
            c => c,
        }));
    } else {
        out.push_str(text);
    }
}

/// `2024-01-02 03:04:05.123456+00` → `2024-01-02T03:04:05.123456+00:00`;
/// `infinity`, `-infinity` kept; ` BC` kept as a suffix (Postgres parses it
/// back). Returns whether the value is special (see [`special_date`]).
fn encode_timestamp(text: &str, with_tz: bool, out: &mut String) -> bool {
    if text.ends_with("infinity") {
        push_json_string(out, text);
        return true;
    }
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(b) => (b, true),
        None => (text, false),
    };
    out.push('"');
    match position(body, b' ').map(|i| (&body[..i], &body[i + 1..])) {
        Some((date, time)) => {
            out.push_str(date);
            out.push('T');
            if with_tz {
                push_time_with_offset(time, out);
            } else {
                out.push_str(time);
                out.push_str("+00:00");
            }
        }
        None => out.push_str(body),
    }
    if bc {
        out.push_str(" BC");
    }
    out.push('"');
    bc || special_date(body)
}

/// `03:04:05+02` → `03:04:05+02:00`; `+05:30` and `+05:30:15` kept.
fn push_time_with_offset(time: &str, out: &mut String) {
    match last_sign(time) {
        Some(i) if time.len() - i == 3 => {
            out.push_str(time);
            out.push_str(":00");
        }
        _ => out.push_str(time),
    }
}

fn encode_timetz(text: &str, out: &mut String) -> bool {
    out.push('"');
    push_time_with_offset(text, out);
    out.push('"');
    special_time(text)
}

/// `"a"=>"1", "b"=>NULL` (hstore always quotes keys and values).
fn encode_hstore(text: &str, out: &mut String) {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut scratch = String::new();
    let mut first = true;
    out.push('{');
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = read_quoted(text, i, &mut scratch);
                if !first {
                    out.push(',');
                }
                first = false;
                push_json_string(out, &scratch);
                out.push(':');
                // Skip `=>` and spaces.
                while i < bytes.len() && matches!(bytes[i], b' ' | b'=' | b'>') {
                    i += 1;
                }
                if bytes.get(i) == Some(&b'"') {
                    i = read_quoted(text, i, &mut scratch);
                    push_json_string(out, &scratch);
                } else {
                    out.push_str("null");
                    while i < bytes.len() && !matches!(bytes[i], b',' | b' ') {
                        i += 1;
                    }
                }
            }
            _ => i += 1,
        }
    }
    out.push('}');
}

/// Reads a `"..."` token with backslash escapes starting at `start` (the
/// opening quote) into `into`; returns the index after the closing quote.
fn read_quoted(text: &str, start: usize, into: &mut String) -> usize {
    into.clear();
    let bytes = text.as_bytes();
    let mut i = start + 1;
    let mut run = i;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                into.push_str(&text[run..i]);
                run = i + 1;
                i += 2;
            }
            b'"' => {
                into.push_str(&text[run..i]);
                return i + 1;
            }
            _ => i += 1,
        }
    }
    into.push_str(&text[run.min(bytes.len())..]);
    bytes.len()
}

/// Postgres array text: `{1,2}`, `{{1,NULL},{3,4}}`, `{"a b","c\"d"}`,
/// `[0:1]={1,2}`. An array with explicit bounds is special: a JSON array
/// has nowhere to keep them, so it travels as its text form, whole.
/// Returns whether the value (or one of its elements) is special.
fn encode_array(text: &str, element: &Codec, delimiter: u8, out: &mut String) -> bool {
    if text.starts_with('[') {
        push_json_string(out, text);
        return true;
    }
    if !text.starts_with('{') {
        // Not array syntax (e.g. int2vector's `1 2 3`): keep the text.
        push_json_string(out, text);
        return false;
    }
    let mut special = false;
    let bytes = text.as_bytes();
    let mut scratch = String::new();
    // Whether the next element in the current array needs a comma first.
    let mut need_comma = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                if need_comma {
                    out.push(',');
                }
                out.push('[');
                need_comma = false;
                i += 1;
            }
            b'}' => {
                out.push(']');
                need_comma = true;
                i += 1;
            }
            b if b == delimiter || b == b' ' => i += 1,
            b'"' => {
                i = read_quoted(text, i, &mut scratch);
                if need_comma {
                    out.push(',');
                }
                special |= element.encode(&scratch, out);
                need_comma = true;
            }
            _ => {
                let start = i;
                while i < bytes.len() && bytes[i] != delimiter && bytes[i] != b'}' {
                    i += 1;
                }
                let item = &text[start..i];
                if need_comma {
                    out.push(',');
                }
                if item.eq_ignore_ascii_case("NULL") {
                    out.push_str("null");
                } else {
                    special |= element.encode(item, out);
                }
                need_comma = true;
            }
        }
    }
    special
}

/// Undoes COPY text escaping (`\t`, `\n`, `\\`, ...) of one field into `into`.
/// Returns the field itself when it has nothing escaped (the common case).
pub fn unescape_copy_field<'a>(field: &'a str, into: &'a mut String) -> &'a str {
    if !field.as_bytes().contains(&b'\\') {
        return field;
    }
    into.clear();
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            into.push(c);
            continue;
        }
        match chars.next() {
            Some('b') => into.push('\u{8}'),
            Some('f') => into.push('\u{c}'),
            Some('n') => into.push('\n'),
            Some('r') => into.push('\r'),
            Some('t') => into.push('\t'),
            Some('v') => into.push('\u{b}'),
            Some(other) => into.push(other),
            None => into.push('\\'),
        }
    }
    into
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(codec: &Codec, text: &str) -> String {
        let mut out = String::new();
        codec.encode(text, &mut out);
        out
    }

    fn special(codec: &Codec, text: &str) -> bool {
        codec.encode(text, &mut String::new())
    }

    #[test]
    fn special_values() {
        let array = |element| Codec::Array {
            element: Box::new(element),
            delimiter: b',',
        };
        for (codec, text) in [
            (Codec::Number, "NaN"),
            (Codec::Number, "-Infinity"),
            (Codec::Date, "infinity"),
            (Codec::Date, "0044-03-15 BC"),
            (Codec::Date, "10000-01-01"),
            (Codec::Timestamp, "-infinity"),
            (Codec::Timestamptz, "0044-03-15 00:00:00+00 BC"),
            (Codec::Timestamp, "10000-01-01 00:00:00"),
            (Codec::Timetz, "24:00:00-15:59"),
            (Codec::Timetz, "13:14:15+05:30:15"),
            (array(Codec::Integer), "[0:1]={7,8}"),
            (array(Codec::Number), "{1,NaN}"),
            (array(Codec::Date), "{2024-01-01,infinity}"),
        ] {
            assert!(special(&codec, text), "{codec:?} {text}");
        }
        for (codec, text) in [
            (Codec::Number, "-1.5e+300"),
            (Codec::Date, "2024-02-29"),
            (Codec::Date, "0001-01-01"),
            (Codec::Timestamptz, "2024-01-02 03:04:05.5+00"),
            (Codec::Timetz, "23:59:59.999999-15:59"),
            (Codec::Text, "infinity"),
            (array(Codec::Number), "{1,NULL}"),
            (array(Codec::Text), "{NaN}"),
        ] {
            assert!(!special(&codec, text), "{codec:?} {text}");
        }
    }

    #[test]
    fn scalars() {
        let cases: &[(Codec, &str, &str)] = &[
            (
                Codec::Integer,
                "-9223372036854775808",
                "-9223372036854775808",
            ),
            (
                Codec::Number,
                "12345678901234567890.000001",
                "12345678901234567890.000001",
            ),
            (Codec::Number, "NaN", "\"NaN\""),
            (Codec::Number, "-Infinity", "\"-Infinity\""),
            (Codec::Number, "1e+308", "1e+308"),
            (Codec::Boolean, "t", "true"),
            (Codec::Boolean, "f", "false"),
            (Codec::Text, "a\"b\\c\td\n", "\"a\\\"b\\\\c\\td\\n\""),
            (Codec::Json, "{\"a\":\n 1}", "{\"a\":  1}"),
            (Codec::Bytea, "\\x00ff", "\"00ff\""),
            (
                Codec::Timestamptz,
                "2024-01-02 03:04:05.5+00",
                "\"2024-01-02T03:04:05.5+00:00\"",
            ),
            (Codec::Timestamptz, "infinity", "\"infinity\""),
            (
                Codec::Timestamptz,
                "0044-03-15 00:00:00+00 BC",
                "\"0044-03-15T00:00:00+00:00 BC\"",
            ),
            (
                Codec::Timestamp,
                "2024-01-02 03:04:05",
                "\"2024-01-02T03:04:05+00:00\"",
            ),
            (
                Codec::Timestamp,
                "10000-01-01 00:00:00",
                "\"10000-01-01T00:00:00+00:00\"",
            ),
            (Codec::Timetz, "13:14:15+05:30", "\"13:14:15+05:30\""),
            (Codec::Timetz, "24:00:00-15", "\"24:00:00-15:00\""),
            (
                Codec::Hstore,
                "\"a\"=>\"1\", \"b c\"=>NULL, \"q\\\"\"=>\"x\"",
                "{\"a\":\"1\",\"b c\":null,\"q\\\"\":\"x\"}",
            ),
            (Codec::Hstore, "", "{}"),
        ];
        for (codec, text, want) in cases {
            assert_eq!(enc(codec, text), *want, "{codec:?} {text}");
        }
    }

    #[test]
    fn arrays() {
        let int = Codec::Array {
            element: Box::new(Codec::Integer),
            delimiter: b',',
        };
        assert_eq!(enc(&int, "{{1,NULL},{NULL,4}}"), "[[1,null],[null,4]]");
        assert_eq!(enc(&int, "{}"), "[]");
        assert_eq!(enc(&int, "[0:1]={7,8}"), "\"[0:1]={7,8}\"");
        assert_eq!(enc(&int, "{{{1},{2}},{{3},{4}}}"), "[[[1],[2]],[[3],[4]]]");
        assert_eq!(enc(&int, "1 2 3"), "\"1 2 3\"");
        let text = Codec::Array {
            element: Box::new(Codec::Text),
            delimiter: b',',
        };
        assert_eq!(
            enc(&text, r#"{a,"b c","d,e","f\"g","h\\i","",NULL,"NULL"}"#),
            r#"["a","b c","d,e","f\"g","h\\i","",null,"NULL"]"#
        );
        let json = Codec::Array {
            element: Box::new(Codec::Json),
            delimiter: b',',
        };
        assert_eq!(
            enc(&json, r#"{"{\"a\": 1}","[1, 2]",null}"#),
            r#"[{"a": 1},[1, 2],null]"#
        );
        let boxes = Codec::Array {
            element: Box::new(Codec::Text),
            delimiter: b';',
        };
        assert_eq!(
            enc(&boxes, "{(1,1),(0,0);(2,2),(1,1)}"),
            r#"["(1,1),(0,0)","(2,2),(1,1)"]"#
        );
    }

    #[test]
    fn copy_unescape() {
        let mut s = String::new();
        assert_eq!(unescape_copy_field("plain", &mut s), "plain");
        assert_eq!(
            unescape_copy_field("a\\tb\\nc\\\\d\\r", &mut s),
            "a\tb\nc\\d\r"
        );
    }
}
