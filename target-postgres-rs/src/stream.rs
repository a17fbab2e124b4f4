//! One stream's shape (columns from its SCHEMA) and its rows: a RECORD is
//! split field by field from the raw JSON and appended as one COPY line
//! (text, or a binary tuple when every column has a binary form).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use singer_core::{JsonSchema, RecordMessage, SchemaMessage};

use crate::binary::{self, BinKind};
use crate::encode::{copy_escape, encode_value, EncodeError};
use crate::naming::{identifier, TableName};
use crate::types::ColumnKind;

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A record field (a schema property, or `_sdc_deleted_at` sent by the tap).
    Field(String),
    ExtractedAt,
    ReceivedAt,
    BatchedAt,
    Sequence,
    TableVersion,
}

/// A destination column.
#[derive(Debug, Clone)]
pub struct Column {
    /// The column name in the destination (the property name, shortened past 63 bytes).
    pub name: String,
    pub source: Source,
    /// The type wanted from the SCHEMA; the table's actual type may be wider.
    pub wanted_type: String,
}

pub const DELETED_AT: &str = "_sdc_deleted_at";
pub const TABLE_VERSION: &str = "_sdc_table_version";

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

/// Everything about a stream that comes from its SCHEMA message.
#[derive(Debug)]
pub struct StreamShape {
    pub stream: String,
    pub table: TableName,
    pub message: SchemaMessage,
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the key properties.
    pub keys: Vec<usize>,
    required: Vec<usize>,
    fields: HashMap<String, usize>,
    /// `("a","b",...)` for COPY and INSERT.
    pub column_list: String,
}

/// A property's wanted SQL type, decided by the caller (it knows the destination).
pub type TypeFor<'a> = dyn FnMut(&str, &JsonSchema) -> String + 'a;

impl StreamShape {
    /// Builds the column list. `schema` has been checked to be an object schema.
    pub fn new(
        message: SchemaMessage,
        schema: &JsonSchema,
        table: TableName,
        add_metadata: bool,
        use_keys: bool,
        type_for: &mut TypeFor<'_>,
    ) -> Result<StreamShape, String> {
        let mut columns = Vec::new();
        let mut names = HashSet::new();
        for (prop, sub) in &schema.properties {
            let ty = type_for(prop, sub);
            let name = identifier(prop);
            if !names.insert(name.clone()) {
                continue;
            }
            columns.push(Column {
                name,
                source: Source::Field(prop.clone()),
                wanted_type: ty,
            });
        }
        if add_metadata {
            let meta = [
                (
                    "_sdc_extracted_at",
                    Source::ExtractedAt,
                    "timestamp with time zone",
                ),
                (
                    "_sdc_received_at",
                    Source::ReceivedAt,
                    "timestamp with time zone",
                ),
                (
                    "_sdc_batched_at",
                    Source::BatchedAt,
                    "timestamp with time zone",
                ),
                (
                    DELETED_AT,
                    Source::Field(DELETED_AT.into()),
                    "timestamp with time zone",
                ),
                ("_sdc_sequence", Source::Sequence, "bigint"),
                (TABLE_VERSION, Source::TableVersion, "bigint"),
            ];
            for (name, source, ty) in meta {
                if names.insert(name.to_owned()) {
                    columns.push(Column {
                        name: name.to_owned(),
                        source,
                        wanted_type: ty.to_owned(),
                    });
                }
            }
        }
        let mut fields = HashMap::new();
        for (i, c) in columns.iter().enumerate() {
            if let Source::Field(f) = &c.source {
                fields.insert(f.clone(), i);
            }
        }
        let mut keys = Vec::new();
        if use_keys {
            for k in &message.key_properties {
                let i = *fields.get(k).ok_or_else(|| {
                    format!("key property `{k}` is not in the schema's properties")
                })?;
                if !keys.contains(&i) {
                    keys.push(i);
                }
            }
        }
        let required = message
            .schema
            .get("required")
            .and_then(|r| r.as_array())
            .map(|r| {
                r.iter()
                    .filter_map(|n| n.as_str().and_then(|n| fields.get(n).copied()))
                    .collect()
            })
            .unwrap_or_default();
        let column_list = format!(
            "({})",
            columns
                .iter()
                .map(|c| pg_connect::quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(StreamShape {
            stream: message.stream.clone(),
            table,
            message,
            columns,
            keys,
            required,
            fields,
            column_list,
        })
    }

    pub fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.name == name)
    }
}

/// Per-batch values the metadata columns take.
pub struct RowContext<'a> {
    pub received_at: &'a str,
    pub batched_at: &'a str,
    pub sequence: i64,
    pub strip_nul: bool,
}

/// Appends the record as one COPY line. Returns whether it is a delete
/// (`_sdc_deleted_at` set); with `key_out`, the key's text (for duplicate detection).
pub fn append_row(
    shape: &StreamShape,
    kinds: &[ColumnKind],
    record: &RecordMessage,
    ctx: &RowContext<'_>,
    out: &mut Vec<u8>,
    key_out: Option<&mut Vec<u8>>,
) -> Result<bool, RowError> {
    let mut slots: Vec<Option<&RawValue>> = vec![None; shape.columns.len()];
    fill_and_write(shape, kinds, record, ctx, &mut slots, out, key_out)
}

fn fill_slots<'r>(
    shape: &StreamShape,
    record: &'r RecordMessage,
    slots: &mut [Option<&'r RawValue>],
) -> Result<(), RowError> {
    let mut de = serde_json::Deserializer::from_str(record.record.get());
    de.deserialize_map(FieldSlots {
        fields: &shape.fields,
        columns: &shape.columns,
        slots,
    })
    .map_err(|e| RowError::NotObject(e.to_string()))?;
    for &k in &shape.keys {
        if slots[k].is_none_or(|v| v.get() == "null") {
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

fn write_key(shape: &StreamShape, slots: &[Option<&RawValue>], key_out: Option<&mut Vec<u8>>) {
    if let Some(key) = key_out {
        key.clear();
        for &k in &shape.keys {
            key.extend_from_slice(slots[k].map_or("", |v| v.get()).as_bytes());
            key.push(0);
        }
    }
}

fn is_delete(shape: &StreamShape, i: usize, v: &RawValue) -> bool {
    shape.columns[i].name == DELETED_AT && v.get() != "null"
}

fn fill_and_write<'r>(
    shape: &StreamShape,
    kinds: &[ColumnKind],
    record: &'r RecordMessage,
    ctx: &RowContext<'_>,
    slots: &mut [Option<&'r RawValue>],
    out: &mut Vec<u8>,
    key_out: Option<&mut Vec<u8>>,
) -> Result<bool, RowError> {
    fill_slots(shape, record, slots)?;
    let row_start = out.len();
    let mut deleted = false;
    for (i, col) in shape.columns.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match &col.source {
            Source::Field(_) => match slots[i] {
                None => out.extend_from_slice(b"\\N"),
                Some(v) => {
                    deleted |= is_delete(shape, i, v);
                    encode_value(out, v.get(), kinds[i], ctx.strip_nul).map_err(|source| {
                        out.truncate(row_start);
                        RowError::Value {
                            field: field_name(shape, i),
                            source,
                        }
                    })?;
                }
            },
            Source::ExtractedAt => match &record.time_extracted {
                Some(t) => copy_escape(out, t.as_bytes()),
                None => out.extend_from_slice(b"\\N"),
            },
            Source::ReceivedAt => out.extend_from_slice(ctx.received_at.as_bytes()),
            Source::BatchedAt => out.extend_from_slice(ctx.batched_at.as_bytes()),
            Source::Sequence => out.extend_from_slice(ctx.sequence.to_string().as_bytes()),
            Source::TableVersion => match record.version {
                Some(v) => out.extend_from_slice(v.to_string().as_bytes()),
                None => out.extend_from_slice(b"\\N"),
            },
        }
    }
    out.push(b'\n');
    write_key(shape, slots, key_out);
    Ok(deleted)
}

/// A row that can't be written in binary (the stream falls back to text), or a real error.
#[derive(Debug)]
pub enum BinaryRowError {
    Fallback,
    Row(RowError),
}

/// Appends the record as one binary COPY tuple; see [`append_row`].
pub fn append_row_binary(
    shape: &StreamShape,
    bins: &[BinKind],
    record: &RecordMessage,
    ctx: &RowContext<'_>,
    out: &mut Vec<u8>,
    key_out: Option<&mut Vec<u8>>,
) -> Result<bool, BinaryRowError> {
    let mut slots: Vec<Option<&RawValue>> = vec![None; shape.columns.len()];
    fill_slots(shape, record, &mut slots).map_err(BinaryRowError::Row)?;
    let row_start = out.len();
    let fallback = |out: &mut Vec<u8>| {
        out.truncate(row_start);
        BinaryRowError::Fallback
    };
    out.extend_from_slice(&(shape.columns.len() as i16).to_be_bytes());
    let mut deleted = false;
    for (i, col) in shape.columns.iter().enumerate() {
        match &col.source {
            Source::Field(_) => match slots[i] {
                None => binary::null_field(out),
                Some(v) => {
                    deleted |= is_delete(shape, i, v);
                    if let Err(e) = binary::encode_field(out, v, bins[i], ctx.strip_nul) {
                        out.truncate(row_start);
                        return Err(match e {
                            binary::BinError::Fallback => BinaryRowError::Fallback,
                            binary::BinError::Nul => BinaryRowError::Row(RowError::Value {
                                field: field_name(shape, i),
                                source: EncodeError::Nul,
                            }),
                        });
                    }
                }
            },
            Source::ExtractedAt => match &record.time_extracted {
                Some(t) => {
                    if binary::timestamptz_field(out, t).is_err() {
                        return Err(fallback(out));
                    }
                }
                None => binary::null_field(out),
            },
            Source::ReceivedAt | Source::BatchedAt => {
                let t = if col.source == Source::ReceivedAt {
                    ctx.received_at
                } else {
                    ctx.batched_at
                };
                if binary::timestamptz_field(out, t).is_err() {
                    return Err(fallback(out));
                }
            }
            Source::Sequence => binary::int8_field(out, ctx.sequence),
            Source::TableVersion => match record.version {
                Some(v) => binary::int8_field(out, v),
                None => binary::null_field(out),
            },
        }
    }
    write_key(shape, &slots, key_out);
    Ok(deleted)
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
    fields: &'a HashMap<String, usize>,
    columns: &'a [Column],
    slots: &'a mut [Option<&'r RawValue>],
}

impl<'de, 'a> Visitor<'de> for FieldSlots<'a, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut expected = 0usize;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            // Fields usually arrive in schema order: try the next column first.
            let idx = match self.columns.get(expected) {
                Some(Column {
                    source: Source::Field(f),
                    ..
                }) if f.as_str() == key.as_ref() => Some(expected),
                _ => self.fields.get(key.as_ref()).copied(),
            };
            let value: &'de RawValue = map.next_value()?;
            if let Some(i) = idx {
                self.slots[i] = Some(value);
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
