//! RECORD → one COPY row: the record is split field by field from its raw
//! JSON into column slots, then one row writer appends them through a
//! [`RowFormat`] (text or binary COPY, chosen per COPY and monomorphized, so
//! the per-field calls are static).

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use singer_core::{Members, RecordMessage};

use crate::binary::{self, BinError, BinKind, Fallback, Strings};
use crate::encode::{copy_escape, encode_value, EncodeError, TextKind};
use crate::stream::{Column, Source, StreamShape, DELETED_AT};

/// A record that can't become a row.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("record is missing key property `{0}`")]
    MissingKey(String),
    #[error("record is missing required property `{0}`")]
    MissingRequired(String),
    #[error("field `{field}` {source}")]
    Value { field: String, source: EncodeError },
    #[error("record is not a JSON object: {0}")]
    NotObject(String),
}

/// Why a row wasn't appended.
#[derive(Debug)]
pub enum RowFailure {
    /// A value binary COPY can't write exactly as Postgres would parse its
    /// text: the stream continues in text COPY (never from text COPY).
    Fallback,
    /// The value at this column index is beyond bigint in a column that
    /// widens to numeric for it.
    Widen(usize),
    Row(RowError),
}

/// Why one field wasn't written.
pub enum FieldError {
    Fallback,
    Invalid(EncodeError),
}

/// One COPY format: how a row starts, how each field is written, how it ends.
pub trait RowFormat {
    /// What the format needs to know about each column.
    type Kind: Copy;
    /// `COPY … FROM STDIN` options.
    const OPTIONS: &'static str;
    /// Bytes before the first row and after the last.
    const HEADER: &'static [u8];
    const TRAILER: &'static [u8];

    fn row_start(out: &mut Vec<u8>, columns: usize);
    fn between_fields(out: &mut Vec<u8>);
    fn row_end(out: &mut Vec<u8>);
    fn null(out: &mut Vec<u8>);
    /// A record field's raw JSON (`raw` is not JSON `null`'s absence: it may be `null`).
    fn field(
        out: &mut Vec<u8>,
        raw: &str,
        kind: Self::Kind,
        strings: Strings,
    ) -> Result<(), FieldError>;
    /// A timestamp the tap sent (`time_extracted`).
    fn sent_timestamp(out: &mut Vec<u8>, text: &str) -> Result<(), Fallback>;
    /// A timestamp the target made (RFC 3339, nothing to escape).
    fn own_timestamp(out: &mut Vec<u8>, text: &str) -> Result<(), Fallback>;
    fn int8(out: &mut Vec<u8>, v: i64);
}

/// COPY text: tab-separated, `\N` for NULL, one line per row.
pub struct Text;

impl RowFormat for Text {
    type Kind = TextKind;
    const OPTIONS: &'static str = "";
    const HEADER: &'static [u8] = b"";
    const TRAILER: &'static [u8] = b"";

    fn row_start(_: &mut Vec<u8>, _: usize) {}
    fn between_fields(out: &mut Vec<u8>) {
        out.push(b'\t');
    }
    fn row_end(out: &mut Vec<u8>) {
        out.push(b'\n');
    }
    fn null(out: &mut Vec<u8>) {
        out.extend_from_slice(b"\\N");
    }
    fn field(
        out: &mut Vec<u8>,
        raw: &str,
        kind: TextKind,
        strings: Strings,
    ) -> Result<(), FieldError> {
        // Text COPY (the rarer path) looks for escapes itself.
        let strip_nul = strings == Strings::Escaped { strip_nul: true };
        encode_value(out, raw, kind, strip_nul).map_err(FieldError::Invalid)
    }
    fn sent_timestamp(out: &mut Vec<u8>, text: &str) -> Result<(), Fallback> {
        copy_escape(out, text.as_bytes());
        Ok(())
    }
    fn own_timestamp(out: &mut Vec<u8>, text: &str) -> Result<(), Fallback> {
        out.extend_from_slice(text.as_bytes());
        Ok(())
    }
    fn int8(out: &mut Vec<u8>, v: i64) {
        // Into the row buffer directly: writing to a Vec can't fail.
        let _ = write!(out, "{v}");
    }
}

/// Binary COPY: a field count, then length-prefixed values per row.
pub struct Binary;

impl RowFormat for Binary {
    type Kind = BinKind;
    const OPTIONS: &'static str = " (FORMAT binary)";
    const HEADER: &'static [u8] = binary::HEADER;
    const TRAILER: &'static [u8] = binary::TRAILER;

    fn row_start(out: &mut Vec<u8>, columns: usize) {
        out.extend_from_slice(&(columns as i16).to_be_bytes());
    }
    fn between_fields(_: &mut Vec<u8>) {}
    fn row_end(_: &mut Vec<u8>) {}
    fn null(out: &mut Vec<u8>) {
        binary::null_field(out);
    }
    fn field(
        out: &mut Vec<u8>,
        raw: &str,
        kind: BinKind,
        strings: Strings,
    ) -> Result<(), FieldError> {
        binary::encode_field(out, raw, kind, strings).map_err(|e| match e {
            BinError::Fallback => FieldError::Fallback,
            BinError::Nul => FieldError::Invalid(EncodeError::Nul),
        })
    }
    fn sent_timestamp(out: &mut Vec<u8>, text: &str) -> Result<(), Fallback> {
        binary::timestamptz_field(out, text)
    }
    fn own_timestamp(out: &mut Vec<u8>, text: &str) -> Result<(), Fallback> {
        binary::timestamptz_field(out, text)
    }
    fn int8(out: &mut Vec<u8>, v: i64) {
        binary::int8_field(out, v);
    }
}

/// Per-batch values the metadata columns take.
pub struct RowContext<'a> {
    /// `_sdc_received_at` and `_sdc_batched_at` as written in this COPY's
    /// format (encoded once per COPY); `None` when the format can't.
    pub received_at: Option<&'a [u8]>,
    pub batched_at: Option<&'a [u8]>,
    /// The last `time_extracted` and its field: a tap sends the same one
    /// for a whole table copy.
    pub extracted: SentStamp,
    pub sequence: i64,
    pub strip_nul: bool,
    /// Per column: a number beyond bigint makes the row a [`RowFailure::Widen`].
    pub grows: &'a [bool],
}

/// A timestamp the tap sent, with its field as last written.
#[derive(Default)]
pub struct SentStamp {
    text: String,
    field: Vec<u8>,
}

impl SentStamp {
    fn write<F: RowFormat>(&mut self, out: &mut Vec<u8>, text: &str) -> Result<(), Fallback> {
        if self.text != text {
            self.text.clear();
            self.field.clear();
            F::sent_timestamp(&mut self.field, text)?;
            self.text.push_str(text);
        }
        out.extend_from_slice(&self.field);
        Ok(())
    }
}

/// Columns whose slots [`append_row`] keeps on the stack.
const STACK_SLOTS: usize = 64;

/// Appends the record as one COPY row in format `F` (`kinds`: one per
/// column). Returns whether it is a delete (`_sdc_deleted_at` set); with
/// `key_out`, the key's text (for duplicate detection). On failure nothing
/// of the row stays in `out`.
pub fn append_row<F: RowFormat>(
    shape: &StreamShape,
    kinds: &[F::Kind],
    record: &RecordMessage,
    ctx: &mut RowContext<'_>,
    out: &mut Vec<u8>,
    key_out: Option<&mut Vec<u8>>,
) -> Result<bool, RowFailure> {
    // On the stack for all but the widest tables: no allocation per row.
    let mut on_stack = [None; STACK_SLOTS];
    let mut on_heap = Vec::new();
    let slots: &mut [Option<&str>] = if shape.columns.len() <= STACK_SLOTS {
        &mut on_stack[..shape.columns.len()]
    } else {
        on_heap.resize(shape.columns.len(), None);
        &mut on_heap
    };
    fill_slots(shape, record, slots).map_err(RowFailure::Row)?;
    let strings = if record.members.as_ref().is_some_and(Members::plain) {
        Strings::Plain
    } else {
        Strings::Escaped {
            strip_nul: ctx.strip_nul,
        }
    };
    let row_start = out.len();
    F::row_start(out, shape.columns.len());
    let mut deleted = false;
    for (i, col) in shape.columns.iter().enumerate() {
        if i > 0 {
            F::between_fields(out);
        }
        let written = match &col.source {
            Source::Field(_) => match slots[i] {
                None => {
                    F::null(out);
                    Ok(())
                }
                Some(v) if ctx.grows[i] && beyond_bigint(v) => Err(RowFailure::Widen(i)),
                Some(v) => {
                    deleted |= col.name == DELETED_AT && v != "null";
                    F::field(out, v, kinds[i], strings).map_err(|e| match e {
                        FieldError::Fallback => RowFailure::Fallback,
                        FieldError::Invalid(source) => RowFailure::Row(RowError::Value {
                            field: field_name(shape, i),
                            source,
                        }),
                    })
                }
            },
            Source::ExtractedAt => match &record.time_extracted {
                Some(t) => ctx
                    .extracted
                    .write::<F>(out, t)
                    .map_err(|_| RowFailure::Fallback),
                None => {
                    F::null(out);
                    Ok(())
                }
            },
            Source::ReceivedAt => own_stamp(out, ctx.received_at),
            Source::BatchedAt => own_stamp(out, ctx.batched_at),
            Source::Sequence => {
                F::int8(out, ctx.sequence);
                Ok(())
            }
            Source::TableVersion => {
                match record.version {
                    Some(v) => F::int8(out, v),
                    None => F::null(out),
                }
                Ok(())
            }
        };
        if let Err(e) = written {
            out.truncate(row_start);
            return Err(e);
        }
    }
    F::row_end(out);
    write_key(shape, slots, key_out);
    Ok(deleted)
}

fn own_stamp(out: &mut Vec<u8>, field: Option<&[u8]>) -> Result<(), RowFailure> {
    out.extend_from_slice(field.ok_or(RowFailure::Fallback)?);
    Ok(())
}

/// A JSON number bigint can't hold (beyond its range, or not an integer's text).
fn beyond_bigint(raw: &str) -> bool {
    raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) && raw.parse::<i64>().is_err()
}

/// The record's fields into column slots: from the members the reader's
/// parse found, or (unknown) by parsing the record.
fn fill_slots<'r>(
    shape: &StreamShape,
    record: &'r RecordMessage,
    slots: &mut [Option<&'r str>],
) -> Result<(), RowError> {
    let text = record.record.get();
    match &record.members {
        Some(members) => {
            let mut expected = 0usize;
            for (name, value) in members.iter(text) {
                if let Some(i) = column_of(shape, expected, name) {
                    slots[i] = Some(value);
                    expected = i + 1;
                }
            }
        }
        None => {
            let mut de = serde_json::Deserializer::from_str(text);
            de.deserialize_map(FieldSlots { shape, slots })
                .map_err(|e| RowError::NotObject(e.to_string()))?;
        }
    }
    for &k in &shape.keys {
        if slots[k].is_none_or(|v| v == "null") {
            return Err(RowError::MissingKey(field_name(shape, k)));
        }
    }
    for &r in &shape.required {
        if slots[r].is_none() {
            return Err(RowError::MissingRequired(field_name(shape, r)));
        }
    }
    Ok(())
}

/// The column a field goes to. Fields usually arrive in schema order: the
/// column after the last one filled is tried first.
fn column_of(shape: &StreamShape, expected: usize, name: &str) -> Option<usize> {
    match shape.columns.get(expected) {
        Some(Column {
            source: Source::Field(f),
            ..
        }) if f.as_str() == name => Some(expected),
        _ => shape.fields.get(name).copied(),
    }
}

fn write_key(shape: &StreamShape, slots: &[Option<&str>], key_out: Option<&mut Vec<u8>>) {
    if let Some(key) = key_out {
        key.clear();
        for &k in &shape.keys {
            key.extend_from_slice(slots[k].unwrap_or("").as_bytes());
            key.push(0);
        }
    }
}

fn field_name(shape: &StreamShape, i: usize) -> String {
    match &shape.columns[i].source {
        Source::Field(f) => f.clone(),
        _ => shape.columns[i].name.clone(),
    }
}

/// Deserializes a record object straight into column slots, borrowing each
/// value's raw JSON text: no maps, no per-value allocation.
struct FieldSlots<'a, 'r> {
    shape: &'a StreamShape,
    slots: &'a mut [Option<&'r str>],
}

impl<'de, 'a> Visitor<'de> for FieldSlots<'a, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut expected = 0usize;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let idx = column_of(self.shape, expected, &key);
            let value: &'de RawValue = map.next_value()?;
            if let Some(i) = idx {
                self.slots[i] = Some(value.get());
                expected = i + 1;
            }
        }
        Ok(())
    }
}

impl<'de, 'a> DeserializeSeed<'de> for FieldSlots<'a, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}
