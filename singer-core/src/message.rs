//! Singer messages: SCHEMA, RECORD, STATE and ACTIVATE_VERSION.
//!
//! A line is parsed into one flat struct keyed by its `type` string (an
//! internally tagged enum is markedly slower with serde), then checked into a
//! [`Message`]. A record keeps its `record` object as raw JSON text, so numbers
//! pass through with every digit and a target decides how to decode each field.
//! The same scan also notes where each of the record's top-level members is
//! ([`Members`]), so that a target need not parse the record a second time.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// One Singer message.
#[derive(Debug, Clone)]
pub enum Message {
    Schema(SchemaMessage),
    Record(RecordMessage),
    State(StateMessage),
    ActivateVersion(ActivateVersionMessage),
}

impl Message {
    /// The stream a message belongs to; `None` for STATE.
    pub fn stream(&self) -> Option<&str> {
        match self {
            Message::Schema(m) => Some(&m.stream),
            Message::Record(m) => Some(&m.stream),
            Message::ActivateVersion(m) => Some(&m.stream),
            Message::State(_) => None,
        }
    }
}

/// `{"type":"SCHEMA","stream":…,"schema":…,"key_properties":[…]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaMessage {
    pub stream: String,
    pub schema: Value,
    /// Missing `key_properties` is read as none (some taps omit it).
    pub key_properties: Vec<String>,
    pub bookmark_properties: Option<Vec<String>>,
}

/// `{"type":"RECORD","stream":…,"record":{…}}`.
#[derive(Debug, Clone)]
pub struct RecordMessage {
    /// Shared by the consecutive records of one stream (no copy per record).
    pub stream: Arc<str>,
    /// The `record` value exactly as sent (a JSON object, checked by the parser).
    pub record: RecordText,
    pub version: Option<i64>,
    /// Shared like `stream`: a tap sends one for a whole table copy.
    pub time_extracted: Option<Arc<str>>,
    /// Where `record`'s top-level members are, as found while parsing the
    /// line; `None` when unknown (a record rewritten after parsing, or with
    /// an escaped member name): parse `record` then.
    pub members: Option<Members>,
}

/// A record's JSON object, as text: a slice of the block of lines the
/// reader read it in (shared by that block's records, no copy per record).
#[derive(Clone)]
pub struct RecordText {
    text: Arc<str>,
    range: std::ops::Range<usize>,
}

impl RecordText {
    #[inline]
    pub fn get(&self) -> &str {
        &self.text[self.range.clone()]
    }

    fn whole(text: &str) -> Self {
        RecordText {
            text: Arc::from(text),
            range: 0..text.len(),
        }
    }
}

impl std::fmt::Debug for RecordText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RecordText").field(&self.get()).finish()
    }
}

impl PartialEq for RecordText {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RecordText {}

/// A record made or rewritten after parsing (already checked JSON).
impl From<Box<RawValue>> for RecordText {
    fn from(raw: Box<RawValue>) -> Self {
        RecordText::whole(raw.get())
    }
}

/// The top-level members of a record's text, in order (a repeated name
/// appears twice, as in the text): byte ranges of each name (without its
/// quotes; never escaped) and of its raw JSON value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    spans: Vec<[usize; 4]>,
    plain: bool,
}

impl Members {
    /// `(name, raw JSON value)` of each member of `record`, the text these
    /// members were found in.
    pub fn iter<'r>(&'r self, record: &'r str) -> impl Iterator<Item = (&'r str, &'r str)> + 'r {
        self.spans
            .iter()
            .map(move |&[k0, k1, v0, v1]| (&record[k0..k1], &record[v0..v1]))
    }

    /// Whether the reader saw that no string in the record (a name or a
    /// value, at any depth) has an escape: each string's text is what is
    /// between its quotes. `false` when unknown.
    pub fn plain(&self) -> bool {
        self.plain
    }
}

/// `{"type":"STATE","value":…}`.
#[derive(Debug, Clone, PartialEq)]
pub struct StateMessage {
    pub value: Value,
}

/// `{"type":"ACTIVATE_VERSION","stream":…,"version":…}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivateVersionMessage {
    pub stream: String,
    pub version: i64,
}

/// Why a line is not a valid Singer message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("a message must be a JSON object with a `type`")]
    NoType,
    #[error("unknown message type `{0}` (expected SCHEMA, RECORD, STATE or ACTIVATE_VERSION)")]
    UnknownType(String),
    #[error("BATCH messages are not supported: configure the tap to send RECORD messages")]
    BatchNotSupported,
    #[error("{kind} message has no `{field}`")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{kind} message: `{field}` {problem}")]
    InvalidField {
        kind: &'static str,
        field: &'static str,
        problem: String,
    },
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stream: Option<Cow<'a, str>>,
    record: Option<RecordScan>,
    schema: Option<Value>,
    key_properties: Option<Value>,
    bookmark_properties: Option<Value>,
    value: Option<Value>,
    // Raw: most are plain integers and strings, read without a `Value`.
    #[serde(borrow)]
    version: Option<&'a RawValue>,
    #[serde(borrow)]
    time_extracted: Option<&'a RawValue>,
}

/// The last stream name and `time_extracted` a reader saw, shared with the
/// next records that repeat them.
#[derive(Default)]
pub(crate) struct Recent {
    stream: Option<Arc<str>>,
    extracted: Option<Arc<str>>,
}

impl Recent {
    fn share(slot: &mut Option<Arc<str>>, text: &str) -> Arc<str> {
        match slot {
            Some(s) if **s == *text => Arc::clone(s),
            _ => Arc::clone(slot.insert(Arc::from(text))),
        }
    }
}

/// Parses one line. On error the stream name is returned when the line named one,
/// so that the caller can report it.
pub fn parse_message(line: &str) -> Result<Message, (MessageError, Option<String>)> {
    parse_message_sharing(line, None, &mut Recent::default())
}

/// [`parse_message`], sharing with `recent`; a record's text is a slice of
/// `block` (the text `line` is a slice of), or a copy without one.
pub(crate) fn parse_message_sharing(
    line: &str,
    block: Option<&Arc<str>>,
    recent: &mut Recent,
) -> Result<Message, (MessageError, Option<String>)> {
    match plain_record(line, block, recent) {
        Some(record) => Ok(Message::Record(record)),
        None => parse_any(line, block, recent),
    }
}

/// Any line, by serde.
fn parse_any(
    line: &str,
    block: Option<&Arc<str>>,
    recent: &mut Recent,
) -> Result<Message, (MessageError, Option<String>)> {
    let raw: RawMessage<'_> = serde_json::from_str(line).map_err(|e| {
        let err = if e.is_data() {
            MessageError::NoType
        } else {
            MessageError::NotJson(e.to_string())
        };
        (err, None)
    })?;
    let stream = raw.stream.as_deref().map(str::to_owned);
    parse_raw(line, block, raw, recent).map_err(|e| (e, stream))
}

fn parse_raw(
    line: &str,
    block: Option<&Arc<str>>,
    raw: RawMessage<'_>,
    recent: &mut Recent,
) -> Result<Message, MessageError> {
    let kind = raw.kind.ok_or(MessageError::NoType)?;
    if kind.eq_ignore_ascii_case("RECORD") {
        let stream = match raw.stream.as_deref() {
            Some(s) if !s.is_empty() => Recent::share(&mut recent.stream, s),
            _ => {
                return Err(MessageError::MissingField {
                    kind: "RECORD",
                    field: "stream",
                })
            }
        };
        let record = raw.record.ok_or(MessageError::MissingField {
            kind: "RECORD",
            field: "record",
        })?;
        let RecordScan::Object { members, escaped } = record else {
            return Err(MessageError::InvalidField {
                kind: "RECORD",
                field: "record",
                problem: "must be a JSON object".into(),
            });
        };
        let (record, members) = record_text(line, block, members, escaped, false);
        Ok(Message::Record(RecordMessage {
            stream,
            record,
            members,
            version: optional_version("RECORD", raw.version)?,
            time_extracted: match raw.time_extracted.map(plain_string) {
                None => None,
                Some(Some(s)) => Some(Recent::share(&mut recent.extracted, s)),
                // Escaped, or not a string.
                Some(None) => match raw.time_extracted.map(value_of) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(Recent::share(&mut recent.extracted, &s)),
                    Some(_) => {
                        return Err(MessageError::InvalidField {
                            kind: "RECORD",
                            field: "time_extracted",
                            problem: "must be a date-time string".into(),
                        })
                    }
                },
            },
        }))
    } else if kind.eq_ignore_ascii_case("SCHEMA") {
        let stream = require_stream("SCHEMA", raw.stream)?;
        let schema = raw.schema.ok_or(MessageError::MissingField {
            kind: "SCHEMA",
            field: "schema",
        })?;
        Ok(Message::Schema(SchemaMessage {
            stream,
            schema,
            key_properties: string_list("key_properties", raw.key_properties)?.unwrap_or_default(),
            bookmark_properties: string_list("bookmark_properties", raw.bookmark_properties)?,
        }))
    } else if kind.eq_ignore_ascii_case("STATE") {
        let value = raw.value.ok_or(MessageError::MissingField {
            kind: "STATE",
            field: "value",
        })?;
        Ok(Message::State(StateMessage { value }))
    } else if kind.eq_ignore_ascii_case("ACTIVATE_VERSION") {
        let stream = require_stream("ACTIVATE_VERSION", raw.stream)?;
        let version = optional_version("ACTIVATE_VERSION", raw.version)?.ok_or(
            MessageError::MissingField {
                kind: "ACTIVATE_VERSION",
                field: "version",
            },
        )?;
        Ok(Message::ActivateVersion(ActivateVersionMessage {
            stream,
            version,
        }))
    } else if kind.eq_ignore_ascii_case("BATCH") {
        Err(MessageError::BatchNotSupported)
    } else {
        Err(MessageError::UnknownType(kind.into_owned()))
    }
}

/// The RECORD line a tap like ours writes (no whitespace around the
/// envelope's members, which come in this order, nothing escaped in names
/// or strings), read in one scan: the message the general parse gives, or
/// `None` (for anything else) to leave the line to it. What it accepts is
/// valid JSON of the shape `RawMessage` takes, so nothing is read
/// differently.
fn plain_record(
    line: &str,
    block: Option<&Arc<str>>,
    recent: &mut Recent,
) -> Option<RecordMessage> {
    let mut s = Scan {
        b: line.as_bytes(),
        at: 0,
    };
    s.eat(br#"{"type":"RECORD","stream":"#)?;
    let (a, z) = s.plain_string()?;
    let stream = line.get(a..z).filter(|t| !t.is_empty())?;
    s.eat(br#","record":{"#)?;
    let mut members = Vec::with_capacity(16);
    let base = line.as_ptr() as usize;
    s.ws();
    if s.eat(b"}").is_none() {
        loop {
            let (k0, k1) = s.plain_string()?;
            s.ws();
            s.eat(b":")?;
            s.ws();
            let v0 = s.at;
            s.value(MAX_DEPTH)?;
            members.push([base + k0, k1 - k0, base + v0, s.at - v0]);
            s.ws();
            if s.eat(b",").is_some() {
                s.ws();
            } else {
                s.eat(b"}")?;
                break;
            }
        }
    }
    let mut version = None;
    if s.eat(br#","version":"#).is_some() {
        let v0 = s.at;
        s.number()?;
        version = Some(line[v0..s.at].parse::<i64>().ok()?);
    }
    let mut time_extracted = None;
    if s.eat(br#","time_extracted":"#).is_some() {
        let (a, z) = s.plain_string()?;
        time_extracted = Some(Recent::share(&mut recent.extracted, &line[a..z]));
    }
    s.eat(b"}")?;
    if s.at != line.len() {
        return None;
    }
    // The scan took no string with an escape.
    let (record, members) = record_text(line, block, members, false, true);
    Some(RecordMessage {
        stream: Recent::share(&mut recent.stream, stream),
        record,
        version,
        time_extracted,
        members,
    })
}

/// Nesting [`plain_record`] reads below a record's members (serde_json's
/// own limit is 128 for the whole line; deeper goes to it).
const MAX_DEPTH: u32 = 100;

/// A cursor over JSON text for [`plain_record`]: each step reads one
/// valid piece or gives `None`.
struct Scan<'a> {
    b: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    fn eat(&mut self, lit: &[u8]) -> Option<()> {
        if self.b[self.at..].starts_with(lit) {
            self.at += lit.len();
            Some(())
        } else {
            None
        }
    }

    /// JSON's whitespace.
    fn ws(&mut self) {
        while matches!(self.b.get(self.at), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string with nothing escaped (nor a control character): where its
    /// text is, without the quotes.
    fn plain_string(&mut self) -> Option<(usize, usize)> {
        if self.b.get(self.at) != Some(&b'"') {
            return None;
        }
        let start = self.at + 1;
        let end = first_to_escape(self.b, start)?;
        if self.b[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        Some((start, end))
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        let b = self.b;
        let mut i = self.at;
        let digits = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits(i + 1),
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            let end = digits(i + 1);
            if end == i + 1 {
                return None;
            }
            i = end;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let end = digits(i);
            if end == i {
                return None;
            }
            i = end;
        }
        self.at = i;
        Some(())
    }

    /// Any JSON value, nested at most `depth` deep.
    fn value(&mut self, depth: u32) -> Option<()> {
        match *self.b.get(self.at)? {
            b'"' => self.plain_string().map(|_| ()),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.eat(b"true"),
            b'f' => self.eat(b"false"),
            b'n' => self.eat(b"null"),
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                let depth = depth.checked_sub(1)?;
                self.at += 1;
                self.ws();
                if self.eat(&[close]).is_some() {
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.plain_string()?;
                        self.ws();
                        self.eat(b":")?;
                        self.ws();
                    }
                    self.value(depth)?;
                    self.ws();
                    if self.eat(b",").is_some() {
                        self.ws();
                    } else {
                        return self.eat(&[close]);
                    }
                }
            }
            _ => None,
        }
    }
}

/// A RECORD's `record` as the envelope's parse saw it: an object's members
/// (where each name and raw value is in the line), or something else.
enum RecordScan {
    Object {
        /// Where each name and value is: `[name address, name length, value
        /// address, value length]` (the line's bytes; made relative to the
        /// record's text in place, by [`record_text`]).
        members: Vec<[usize; 4]>,
        /// A member name had escapes: it is not a slice of the line.
        escaped: bool,
    },
    NotObject,
}

impl<'de> Deserialize<'de> for RecordScan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RecordScanVisitor)
    }
}

struct RecordScanVisitor;

impl<'de> serde::de::Visitor<'de> for RecordScanVisitor {
    type Value = RecordScan;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Most records fit without growing.
        let mut members = Vec::with_capacity(16);
        let mut escaped = false;
        while let Some(name) = map.next_key::<Name<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            match name {
                Name::Borrowed(n) => {
                    let v = value.get();
                    members.push([n.as_ptr() as usize, n.len(), v.as_ptr() as usize, v.len()]);
                }
                Name::Escaped => escaped = true,
            }
        }
        Ok(RecordScan::Object { members, escaped })
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(RecordScan::NotObject)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(RecordScan::NotObject)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(RecordScan::NotObject)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(RecordScan::NotObject)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(RecordScan::NotObject)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(RecordScan::NotObject)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(RecordScan::NotObject)
    }
}

/// A member name: a slice of the line, or (escaped) not.
enum Name<'a> {
    Borrowed(&'a str),
    Escaped,
}

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(NameVisitor(std::marker::PhantomData))
    }
}

struct NameVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> serde::de::Visitor<'de> for NameVisitor<'a> {
    type Value = Name<'a>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Name::Borrowed(v))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Name::Escaped)
    }
}

/// The record object's text, cut from the line around the members the
/// parse found (JSON allows only whitespace between `{` and the first name,
/// and between the last value and `}`), with the members' ranges in it.
/// With an escaped name not every member is a slice of the line: the record
/// is then found by a second parse, without members.
fn record_text(
    line: &str,
    block: Option<&Arc<str>>,
    mut members: Vec<[usize; 4]>,
    escaped: bool,
    plain: bool,
) -> (RecordText, Option<Members>) {
    let base = line.as_ptr() as usize;
    let bytes = line.as_bytes();
    let (Some(&[first, ..]), Some(&[.., last, last_len]), false) =
        (members.first(), members.last(), escaped)
    else {
        if escaped {
            return (reparse_record(line), None);
        }
        return (RecordText::whole("{}"), Some(Members::default()));
    };
    // Before the first name's opening quote: whitespace back to `{`.
    let mut start = first - base - 1;
    while bytes[start - 1] != b'{' {
        start -= 1;
    }
    start -= 1;
    let mut end = last - base + last_len;
    while bytes[end] != b'}' {
        end += 1;
    }
    let origin = base + start;
    for m in &mut members {
        let [k, kl, v, vl] = *m;
        *m = [k - origin, k - origin + kl, v - origin, v - origin + vl];
    }
    let record = match block {
        Some(block) => {
            let at = base - block.as_ptr() as usize;
            debug_assert!(at + line.len() <= block.len());
            RecordText {
                text: Arc::clone(block),
                range: at + start..at + end + 1,
            }
        }
        None => RecordText::whole(&line[start..=end]),
    };
    (
        record,
        Some(Members {
            spans: members,
            plain,
        }),
    )
}

/// The `record` of a line already parsed once, as raw text (the rare path).
fn reparse_record(line: &str) -> RecordText {
    #[derive(Deserialize)]
    struct Only<'a> {
        #[serde(borrow)]
        record: &'a RawValue,
    }
    serde_json::from_str::<Only<'_>>(line)
        .expect("the line parsed a moment ago")
        .record
        .to_owned()
        .into()
}

/// Whether JSON needs `b` escaped in a string.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The index of the first byte at or after `from` that JSON needs escaped:
/// eight bytes at a time (most strings have none).
pub(crate) fn first_to_escape(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while i + 8 <= bytes.len() {
        let w = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        // The classic "some byte is zero" and "some byte is below n" tests
        // (each byte's high bit, read little-endian).
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let hits = ((w.wrapping_sub(ONES * 0x20) & !w)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash))
            & HIGH;
        if hits != 0 {
            // A borrow only flags bytes above a real match, so the lowest
            // flag is the first match.
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    bytes[i..]
        .iter()
        .position(|&b| needs_escape(b))
        .map(|k| i + k)
}

/// A JSON string's text when it has nothing to unescape.
fn plain_string(raw: &RawValue) -> Option<&str> {
    let t = raw.get();
    let inner = t.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

fn value_of(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).expect("a raw value the parser checked")
}

fn require_stream(
    kind: &'static str,
    stream: Option<Cow<'_, str>>,
) -> Result<String, MessageError> {
    match stream {
        Some(s) if !s.is_empty() => Ok(s.into_owned()),
        _ => Err(MessageError::MissingField {
            kind,
            field: "stream",
        }),
    }
}

fn optional_version(kind: &'static str, v: Option<&RawValue>) -> Result<Option<i64>, MessageError> {
    let Some(raw) = v else { return Ok(None) };
    // The usual case: a plain integer.
    if let Ok(n) = raw.get().parse::<i64>() {
        return Ok(Some(n));
    }
    match Some(value_of(raw)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| MessageError::InvalidField {
                kind,
                field: "version",
                problem: format!("must be an integer, not {n}"),
            }),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| MessageError::InvalidField {
            kind,
            field: "version",
            problem: format!("must be an integer, not {s:?}"),
        }),
        Some(other) => Err(MessageError::InvalidField {
            kind,
            field: "version",
            problem: format!("must be an integer, not {other}"),
        }),
    }
}

fn string_list(field: &'static str, v: Option<Value>) -> Result<Option<Vec<String>>, MessageError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                other => Err(MessageError::InvalidField {
                    kind: "SCHEMA",
                    field,
                    problem: format!("must be a list of strings, found {other}"),
                }),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        // A single name is a common hand-written slip; take it as a list of one.
        Some(Value::String(s)) => Ok(Some(vec![s])),
        Some(other) => Err(MessageError::InvalidField {
            kind: "SCHEMA",
            field,
            problem: format!("must be a list of strings, found {other}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_each_type_case_insensitively() {
        let m = parse_message(r#"{"type":"record","stream":"s","record":{"a":1.50}}"#).unwrap();
        let Message::Record(r) = m else {
            panic!("{m:?}")
        };
        assert_eq!(&*r.stream, "s");
        assert_eq!(r.record.get(), r#"{"a":1.50}"#);

        let m = parse_message(r#"{"type":"Schema","stream":"s","schema":{"type":"object"},"key_properties":["id"],"extra":1}"#).unwrap();
        let Message::Schema(s) = m else { panic!() };
        assert_eq!(s.key_properties, vec!["id".to_string()]);
        assert_eq!(s.schema, json!({"type":"object"}));

        let m = parse_message(r#"{"type":"STATE","value":{"bookmarks":{}}}"#).unwrap();
        assert!(
            matches!(m, Message::State(StateMessage { value }) if value == json!({"bookmarks":{}}))
        );

        let m =
            parse_message(r#"{"type":"ACTIVATE_VERSION","stream":"s","version":1700000000000}"#)
                .unwrap();
        assert!(matches!(
            m,
            Message::ActivateVersion(ActivateVersionMessage {
                version: 1700000000000,
                ..
            })
        ));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let cases = [
            (
                "THIS IS A TEST",
                "not valid JSON: expected value at line 1 column 1",
            ),
            (
                r#"{"stream":"s"}"#,
                "a message must be a JSON object with a `type`",
            ),
            ("[1,2]", "a message must be a JSON object with a `type`"),
            (
                r#"{"type":"NOPE"}"#,
                "unknown message type `NOPE` (expected SCHEMA, RECORD, STATE or ACTIVATE_VERSION)",
            ),
            (
                r#"{"type":"BATCH","stream":"s"}"#,
                "BATCH messages are not supported: configure the tap to send RECORD messages",
            ),
            (
                r#"{"type":"RECORD","record":{}}"#,
                "RECORD message has no `stream`",
            ),
            (
                r#"{"type":"RECORD","stream":"s"}"#,
                "RECORD message has no `record`",
            ),
            (
                r#"{"type":"RECORD","stream":"s","record":[1]}"#,
                "RECORD message: `record` must be a JSON object",
            ),
            (
                r#"{"type":"SCHEMA","stream":"s"}"#,
                "SCHEMA message has no `schema`",
            ),
            (r#"{"type":"STATE"}"#, "STATE message has no `value`"),
            (
                r#"{"type":"ACTIVATE_VERSION","stream":"s"}"#,
                "ACTIVATE_VERSION message has no `version`",
            ),
            (
                r#"{"type":"RECORD","stream":"s","record":{},"version":"x"}"#,
                "RECORD message: `version` must be an integer, not \"x\"",
            ),
        ];
        for (line, want) in cases {
            let (err, _) = parse_message(line).unwrap_err();
            assert_eq!(err.to_string(), want, "for {line}");
        }
    }

    #[test]
    fn error_keeps_the_stream_name() {
        let (_, stream) = parse_message(r#"{"type":"RECORD","stream":"users"}"#).unwrap_err();
        assert_eq!(stream.as_deref(), Some("users"));
    }

    fn record(line: &str) -> RecordMessage {
        match parse_message(line).unwrap() {
            Message::Record(r) => r,
            other => panic!("{other:?}"),
        }
    }

    /// The members found by the envelope's parse are those a parse of the
    /// record text alone finds: same names, same raw values, same order.
    #[test]
    fn members_are_the_records_own() {
        let lines = [
            r#"{"type":"RECORD","stream":"s","record":{"a":1.50,"b":"x\"y","c":{"d":[1,{"e":null}]},"a":true},"version":3}"#,
            r#"{ "record" : {  "id" : 1 , "s":"}{" } , "type":"RECORD","stream":"s"}"#,
            "{\"type\":\"RECORD\",\"stream\":\"s\",\"record\":{\n\t\"k\":\t[ ] \r\n}}",
            r#"{"type":"RECORD","stream":"s","record":{"é":"ü","":0}}"#,
        ];
        for line in lines {
            let r = record(line);
            let text = r.record.get();
            let by_serde: Vec<(String, String)> = {
                let v: Vec<(String, Box<RawValue>)> = {
                    struct V;
                    impl<'de> serde::de::Visitor<'de> for V {
                        type Value = Vec<(String, Box<RawValue>)>;
                        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                            f.write_str("map")
                        }
                        fn visit_map<A: serde::de::MapAccess<'de>>(
                            self,
                            mut m: A,
                        ) -> Result<Self::Value, A::Error> {
                            let mut out = Vec::new();
                            while let Some(e) = m.next_entry()? {
                                out.push(e);
                            }
                            Ok(out)
                        }
                    }
                    use serde::Deserializer as _;
                    serde_json::Deserializer::from_str(text)
                        .deserialize_map(V)
                        .unwrap()
                };
                v.into_iter()
                    .map(|(k, v)| (k, v.get().to_owned()))
                    .collect()
            };
            let found: Vec<(String, String)> = r
                .members
                .as_ref()
                .expect("members")
                .iter(text)
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(found, by_serde, "{line}");
            assert!(text.starts_with('{') && text.ends_with('}'), "{text}");
        }
    }

    #[test]
    fn an_escaped_name_leaves_members_unknown_and_the_record_whole() {
        let r = record(r#"{"type":"RECORD","stream":"s","record":{"a\u0062":1, "c" : 2 }}"#);
        assert_eq!(r.record.get(), r#"{"a\u0062":1, "c" : 2 }"#);
        assert_eq!(r.members, None);
        let r = record(r#"{"type":"RECORD","stream":"s","record":{ }}"#);
        assert_eq!(r.record.get(), "{}");
        assert_eq!(r.members, Some(Members::default()));
    }

    #[test]
    fn a_record_that_is_not_an_object_is_refused_as_before() {
        for v in [
            "[1,[2]]",
            "1",
            "-1.5e3",
            "\"x\"",
            "true",
            "18446744073709551616",
        ] {
            let line = format!(r#"{{"type":"RECORD","stream":"s","record":{v}}}"#);
            let (e, stream) = parse_message(&line).unwrap_err();
            assert_eq!(
                e.to_string(),
                "RECORD message: `record` must be a JSON object",
                "{v}"
            );
            assert_eq!(stream.as_deref(), Some("s"));
        }
        let (e, _) = parse_message(r#"{"type":"RECORD","stream":"s","record":null}"#).unwrap_err();
        assert_eq!(e.to_string(), "RECORD message has no `record`");
    }

    /// The one-scan reading of a RECORD gives what serde's reading gives,
    /// for the lines it takes: lines near ours, with each byte deleted,
    /// replaced or preceded by one of JSON's special characters.
    #[test]
    fn plain_records_read_as_serde_reads_them() {
        let bases = [
            r#"{"type":"RECORD","stream":"public-t","record":{"id":1,"n":-1.5e+3,"s":"x y","b":true,"z":null,"j":{"k": [1, {"a":"b"}], "e":{}},"a":[]},"version":1796176698847,"time_extracted":"2026-12-02T01:58:18.846928+00:00"}"#,
            r#"{"type":"RECORD","stream":"s","record":{ "a" : 0 , "a":[ 0.5 ,"é"] },"version":-7}"#,
            r#"{"type":"RECORD","stream":"s","record":{},"time_extracted":""}"#,
            r#"{"type":"RECORD","stream":"s","record":{"":"","x":1E5}}"#,
        ];
        let specials = [
            "\"", "\\", ",", ":", "{", "}", "[", "]", " ", "\t", "0", "1", "e", "E", "-", "+", ".",
            "\u{1}", "n", "é",
        ];
        let mut lines: Vec<String> = Vec::new();
        for base in bases {
            lines.push(base.to_string());
            let chars: Vec<(usize, char)> = base.char_indices().collect();
            for &(i, c) in &chars {
                let (head, tail) = (&base[..i], &base[i + c.len_utf8()..]);
                lines.push(format!("{head}{tail}"));
                for sp in specials {
                    lines.push(format!("{head}{sp}{tail}"));
                    lines.push(format!("{head}{sp}{c}{tail}"));
                }
            }
        }
        let mut taken = 0;
        for line in &lines {
            let block: Arc<str> = Arc::from(format!("x\n{line}\n"));
            let in_block = &block[2..2 + line.len()];
            let Some(fast) = plain_record(in_block, Some(&block), &mut Recent::default()) else {
                continue;
            };
            taken += 1;
            let Ok(Message::Record(slow)) = parse_any(line, None, &mut Recent::default()) else {
                panic!("taken, but serde refuses or differs: {line}");
            };
            let spans = |r: &RecordMessage| -> Vec<(String, String)> {
                r.members
                    .as_ref()
                    .expect("members")
                    .iter(r.record.get())
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            };
            assert_eq!(
                (
                    &fast.stream,
                    fast.record.get(),
                    fast.version,
                    &fast.time_extracted,
                    spans(&fast)
                ),
                (
                    &slow.stream,
                    slow.record.get(),
                    slow.version,
                    &slow.time_extracted,
                    spans(&slow)
                ),
                "{line}"
            );
            // Plain as noted (an empty record is left unknown): no escape
            // anywhere in the record.
            let plain = fast.members.as_ref().is_some_and(Members::plain);
            assert!(plain || spans(&fast).is_empty(), "{line}");
            assert!(!fast.record.get().contains('\\'), "{line}");
        }
        // The bases and many near ones go the fast way.
        assert!(taken > 1000, "{taken} of {}", lines.len());
    }

    /// The first byte JSON escapes, at every place, after ASCII or not.
    #[test]
    fn first_to_escape_finds_the_first() {
        for fill in ["a", "é", "\u{7f}", "漢"] {
            for special in (0u8..0x20).chain([b'"', b'\\']) {
                for at in 0..24 {
                    let mut text: Vec<u8> = fill.repeat(24).into_bytes();
                    text.truncate(at);
                    text.push(special);
                    text.extend_from_slice(fill.repeat(3).as_bytes());
                    text.push(b'"');
                    let naive = text.iter().position(|&b| needs_escape(b));
                    assert_eq!(first_to_escape(&text, 0), naive, "{fill} {special} {at}");
                }
            }
            let plain = fill.repeat(20);
            assert_eq!(first_to_escape(plain.as_bytes(), 0), None);
        }
    }
}
