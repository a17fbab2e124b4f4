//! One RECORD's JSON, for every sync method: COPY rows and pgoutput tuples
//! both arrive as Postgres's text form, and both become records here, in one
//! reused buffer. Also the fields LOG_BASED adds (`_sdc_lsn`,
//! `_sdc_deleted_at`) and the one format of the times the tap writes.
//!
//! Also the schema a stream's records are promised to validate against:
//! each column starts with its plain schema (`number`, `format: date`, ...)
//! and, on its first special value (NaN, `infinity`, a BC date, an array with
//! bounds...; see [`crate::codec::Codec::encode`]), is widened to admit the
//! Postgres text form; the caller then writes the new SCHEMA before the record.

use std::borrow::Cow;
use std::cell::Cell;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use singer_core::push_json_string;

use crate::discover::Column;

/// Where a change is in the source's WAL.
const SDC_LSN: &str = "_sdc_lsn";
/// When a DELETE committed.
const SDC_DELETED_AT: &str = "_sdc_deleted_at";

/// What identifies a row of a key-less FULL_TABLE stream (a table without a
/// primary key, a view): sent as the stream's key, so that rows sent again
/// after a resume or a re-copy replace the rows at the same identity in any
/// target instead of landing twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowIdentity {
    /// `_sdc_source_ctid`: the row's `ctid`, stable while the heap file is
    /// (a rewrite restarts the copy as a new version).
    Ctid,
    /// `_sdc_row_number`: the row's position in the copy, for relations
    /// without `ctid` (views, partitioned parents, foreign tables), whose
    /// interrupted copy always starts over.
    RowNumber,
}

impl RowIdentity {
    pub const CTID: &'static str = "_sdc_source_ctid";
    pub const ROW_NUMBER: &'static str = "_sdc_row_number";

    /// The property's name.
    pub fn property(self) -> &'static str {
        match self {
            RowIdentity::Ctid => Self::CTID,
            RowIdentity::RowNumber => Self::ROW_NUMBER,
        }
    }

    /// The property's schema.
    pub fn schema(self) -> Value {
        match self {
            RowIdentity::Ctid => json!({"type": "string",
                "description": "The source row's ctid (page,item): the row's identity within this table version"}),
            RowIdentity::RowNumber => json!({"type": "integer", "minimum": 1, "maximum": i64::MAX,
                "description": "The row's position in the copy: the row's identity within this table version"}),
        }
    }
}

/// A time as the tap writes it (`time_extracted`, `_sdc_deleted_at`).
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

/// The extra properties every LOG_BASED stream's SCHEMA carries.
pub fn log_properties() -> Vec<(String, Value)> {
    vec![
        (
            SDC_LSN.into(),
            json!({"type": ["null", "integer"], "minimum": 0, "description": "LSN of the change in the source's WAL"}),
        ),
        (
            SDC_DELETED_AT.into(),
            json!({"type": ["null", "string"], "format": "date-time", "description": "Commit time of the DELETE that removed the row"}),
        ),
    ]
}

/// Which of a stream's columns its SCHEMA in force declares widened. Shared
/// by every builder of the stream in a run (the initial copy and the log),
/// so a SCHEMA once widened is never narrowed again.
#[derive(Debug, Clone)]
pub struct Widening {
    widened: Vec<Cell<bool>>,
    /// A column was widened since the last SCHEMA.
    changed: Cell<bool>,
}

impl Widening {
    /// `from_start`: declare every column that can hold a special value
    /// widened in the first SCHEMA (for targets that cannot take a SCHEMA
    /// change mid-stream).
    pub fn new(columns: &[Column], from_start: bool) -> Widening {
        Widening {
            widened: columns
                .iter()
                .map(|c| Cell::new(from_start && c.ty.can_be_special()))
                .collect(),
            changed: Cell::new(false),
        }
    }

    /// The same widening for another list of the stream's columns (its
    /// table changed in the log): matched by name, new columns plain.
    pub fn remap(&self, old: &[Column], new: &[Column]) -> Widening {
        Widening {
            widened: new
                .iter()
                .map(|c| {
                    let was = old.iter().position(|o| o.name == c.name);
                    Cell::new(was.is_some_and(|i| self.is_widened(i)))
                })
                .collect(),
            changed: Cell::new(false),
        }
    }

    /// Whether column `i` is declared widened.
    pub fn is_widened(&self, i: usize) -> bool {
        self.widened[i].get()
    }

    fn widen(&self, i: usize) {
        if !self.widened[i].replace(true) {
            self.changed.set(true);
        }
    }

    /// Whether the SCHEMA must be written again before the record being
    /// built; resets.
    pub fn take_change(&self) -> bool {
        self.changed.replace(false)
    }
}

/// Builds records of one stream's columns, one at a time.
pub struct RecordBuilder<'c> {
    columns: Cow<'c, [Column]>,
    widening: Cow<'c, Widening>,
    /// `"name":` of each column, escaped once.
    keys: Vec<String>,
    record: String,
    empty: bool,
}

impl<'c> RecordBuilder<'c> {
    pub fn new(columns: &'c [Column], widening: &'c Widening) -> Self {
        Self::with(Cow::Borrowed(columns), Cow::Borrowed(widening))
    }

    /// A builder that owns its columns (LOG_BASED's change when the table's
    /// does), with the widening carried over by column name.
    pub fn owned(columns: Vec<Column>, widening: Widening) -> RecordBuilder<'static> {
        RecordBuilder::with(Cow::Owned(columns), Cow::Owned(widening))
    }

    fn with(columns: Cow<'c, [Column]>, widening: Cow<'c, Widening>) -> Self {
        let keys = columns
            .iter()
            .map(|c| {
                let mut k = String::new();
                push_json_string(&mut k, &c.name);
                k.push(':');
                k
            })
            .collect();
        RecordBuilder {
            columns,
            widening,
            keys,
            record: String::with_capacity(4096),
            empty: true,
        }
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Which of [`Self::columns`] the SCHEMA in force declares widened.
    pub fn widening(&self) -> &Widening {
        &self.widening
    }

    /// Starts a new record.
    pub fn begin(&mut self) {
        self.record.clear();
        self.record.push('{');
        self.empty = true;
    }

    /// The comma before the next field, unless it is the first.
    fn separate(&mut self) {
        if !self.empty {
            self.record.push(',');
        }
        self.empty = false;
    }

    /// Adds column `i` (of the builder's columns): NULL, or its text form.
    /// A special value widens the column (see [`Widening::take_change`]).
    pub fn field(&mut self, i: usize, text: Option<&str>) {
        self.separate();
        self.record.push_str(&self.keys[i]);
        match text {
            None => self.record.push_str("null"),
            Some(t) => {
                if self.columns[i].codec.encode(t, &mut self.record) {
                    self.widening.widen(i);
                }
            }
        }
    }

    /// Whether the stream's SCHEMA must be written again (widened) before
    /// this record; resets.
    pub fn schema_changed(&self) -> bool {
        self.widening.take_change()
    }

    /// Adds LOG_BASED's `_sdc_lsn` and `_sdc_deleted_at`.
    pub fn log_position(&mut self, lsn: u64, deleted_at: Option<&str>) {
        self.separate();
        push_json_string(&mut self.record, SDC_LSN);
        self.record.push(':');
        self.record.push_str(&lsn.to_string());
        self.separate();
        push_json_string(&mut self.record, SDC_DELETED_AT);
        self.record.push(':');
        match deleted_at {
            Some(t) => push_json_string(&mut self.record, t),
            None => self.record.push_str("null"),
        }
    }

    /// Adds the row's identity: its `ctid`, or its 1-based `row` in the copy.
    pub fn identity(&mut self, identity: RowIdentity, ctid: &str, row: u64) {
        self.separate();
        push_json_string(&mut self.record, identity.property());
        self.record.push(':');
        match identity {
            RowIdentity::Ctid => push_json_string(&mut self.record, ctid),
            RowIdentity::RowNumber => self.record.push_str(&row.to_string()),
        }
    }

    /// The finished record.
    pub fn finish(&mut self) -> &str {
        self.record.push('}');
        &self.record
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times() {
        let t = chrono::DateTime::from_timestamp(946_684_800, 0).unwrap();
        assert_eq!(super::format_time(t), "2000-01-01T00:00:00.000000+00:00");
    }
}
