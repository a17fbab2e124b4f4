//! COPY: a run of consecutive RECORDs of one stream goes through one COPY,
//! straight into the table or into the staging table as the batch policy
//! says, until the run ends, the batch is full, or a row must go elsewhere
//! (staging, or text COPY after a value binary can't write).

use std::io::Write;

use pg_connect::quote_ident;
use postgres::Client;
use singer_core::{Message, RecordMessage};

use super::error::{copy_error, db_err};
use super::policy::{Batch, BatchKeys, BatchPolicy, Decision, Keying, RunKeys, Verdict};
use super::prepare::Prepare;
use super::{Input, Item, LoadError, Loader, StreamLoad};
use crate::row::{append_row, Binary, RowContext, RowFailure, RowFormat, SentStamp, Text};
use crate::settings::LoadMethod;
use crate::stream::StreamShape;
use crate::types::ColumnType;

/// Why a COPY ended.
enum RunEnd {
    /// The run of records ended (another message, or the end of input).
    Done,
    /// The batch is full: flush.
    Full,
    /// This record and the rest of the batch go through staging.
    Stage(usize, RecordMessage, BatchKeys),
    /// A value binary COPY can't write: this record on goes in text COPY.
    Text(usize, RecordMessage),
    /// A value beyond bigint in this column: widen it to numeric, then
    /// continue with this record.
    Widen(usize, RecordMessage, usize),
}

/// Bytes of rows sent to the server at a time.
const SEND_AT: usize = 256 * 1024;

/// What every COPY of a flush shares.
struct Run {
    batch_size: usize,
    strip_nul: bool,
    sequence_base: i64,
}

impl<W: Write> Loader<W> {
    /// Copies a run of consecutive RECORDs of one stream.
    pub(super) fn records<I: Iterator<Item = Item>>(
        &mut self,
        line: usize,
        first: RecordMessage,
        input: &mut Input<I>,
    ) -> Result<(), LoadError> {
        let stream = std::sync::Arc::clone(&first.stream);
        let stream: &str = &stream;
        if !self.streams.contains_key(stream) {
            return Err(LoadError::NoSchema {
                line,
                stream: stream.to_owned(),
            });
        }
        self.settle_if_done()?;
        let st = &self.streams[stream];
        let reads_table = !st.batch.pending()
            && (matches!(st.keying, Keying::Integer(RunKeys::Unknown))
                || (self.settings.load_method == LoadMethod::Overwrite
                    && !self.overwritten.contains(&st.shape.table)));
        if reads_table {
            // The table as the flush behind leaves it (its largest key, or
            // emptied for overwrite): wait for it to commit.
            self.settle()?;
        }
        self.begin()?;
        let run = Run {
            batch_size: self.settings.batch_size_rows,
            strip_nul: self.settings.sanitize_nul,
            sequence_base: self.sequence_base,
        };
        let deferred = self.deferred_version(stream);
        let Loader {
            client,
            streams,
            overwritten,
            settings,
            ..
        } = self;
        let st = streams.get_mut(stream).expect("checked above");
        let table = st.shape.table.clone();
        if settings.load_method == LoadMethod::Overwrite && !overwritten.contains(&table) {
            client
                .batch_execute(&format!("TRUNCATE {}", table.qualified()))
                .map_err(|e| db_err(stream, &table, "emptying the table (overwrite)", &e))?;
            overwritten.insert(table.clone());
            st.info.empty = true;
            if let Keying::Integer(run_keys) = &mut st.keying {
                *run_keys = RunKeys::Unknown;
            }
            st.batch = Batch::new();
        }
        if !st.batch.pending() {
            if st
                .keying
                .judges_table(st.info.empty, st.info.unique_on_keys)
            {
                // "Empty" and "largest key" are only true once no other writer
                // is in flight: a killed predecessor's backend may still be
                // committing its last batch, and a direct COPY would then fail
                // on the unique index. Wait for such writers, then look again.
                client
                    .batch_execute(&format!(
                        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
                        table.qualified()
                    ))
                    .map_err(|e| db_err(stream, &table, "locking the table", &e))?;
                if st.info.empty {
                    st.info.empty = client
                        .query_one(
                            &format!("SELECT NOT EXISTS (SELECT 1 FROM {})", table.qualified()),
                            &[],
                        )
                        .map_err(|e| db_err(stream, &table, "checking the table is empty", &e))?
                        .get(0);
                }
            }
            let decision = st
                .keying
                .decide(client, &st.shape, st.info.empty, st.info.unique_on_keys)
                .map_err(|e| db_err(stream, &table, "reading the table's largest key", &e))?;
            match decision {
                Decision::Direct(policy) => st.batch.policy = policy,
                Decision::Stage(keys) => stage(client, st, keys)?,
            }
        }
        let mut next = (line, st.prepare.record(line, first)?);
        let full = loop {
            let StreamLoad {
                shape,
                text,
                binary,
                stage: stage_name,
                keying,
                batch,
                grows,
                prepare,
                ..
            } = &mut *st;
            let mut dest = Dest {
                shape,
                grows,
                stage: stage_name,
                keying,
                batch,
                prepare,
                deferred,
            };
            // The format is chosen once per COPY: the row loop is monomorphized.
            let end = match binary {
                Some(kinds) => copy_run::<Binary, _>(client, &mut dest, kinds, &run, next, input)?,
                None => copy_run::<Text, _>(client, &mut dest, text, &run, next, input)?,
            };
            match end {
                RunEnd::Done => break false,
                RunEnd::Full => break true,
                RunEnd::Stage(line, rec, keys) => {
                    stage(client, st, keys)?;
                    next = (line, rec);
                }
                RunEnd::Widen(line, rec, col) => {
                    widen_to_numeric(client, st, col)?;
                    next = (line, rec);
                }
                RunEnd::Text(line, rec) => {
                    tracing::info!(stream = %stream, line, "continuing in text COPY");
                    st.binary = None;
                    next = (line, rec);
                }
            }
        };
        if full {
            self.flush_when_full()?;
        }
        Ok(())
    }
}

/// Creates the staging table (in the open transaction; dropped at commit):
/// the rest of the batch goes there.
fn stage(client: &mut Client, st: &mut StreamLoad, keys: BatchKeys) -> Result<(), LoadError> {
    let table = &st.shape.table;
    client
        .batch_execute(&format!(
            "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA",
            quote_ident(&st.stage),
            st.shape
                .column_list
                .trim_start_matches('(')
                .trim_end_matches(')'),
            table.qualified()
        ))
        .map_err(|e| db_err(&st.shape.stream, table, "creating the staging table", &e))?;
    st.batch.policy = BatchPolicy::Staged(keys);
    Ok(())
}

/// Widens an unbounded integer column (and the staging table's, when the
/// batch is staged) to numeric, in the open transaction: the values so far
/// keep their digits, and every later value fits.
fn widen_to_numeric(client: &mut Client, st: &mut StreamLoad, col: usize) -> Result<(), LoadError> {
    let table = &st.shape.table;
    let name = quote_ident(&st.shape.columns[col].name);
    let mut targets = vec![table.qualified()];
    if st.batch.staged() {
        targets.push(quote_ident(&st.stage));
    }
    for t in targets {
        client
            .batch_execute(&format!(
                "ALTER TABLE {t} ALTER COLUMN {name} TYPE numeric USING {name}::numeric"
            ))
            .map_err(|e| db_err(&st.shape.stream, table, "widening a column to numeric", &e))?;
    }
    tracing::info!(table = %table.qualified(), column = %st.shape.columns[col].name,
        from = %st.info.types[col].sql(), to = "numeric", "widened column for a value beyond bigint");
    let numeric = ColumnType::parse("numeric");
    st.text[col] = numeric.text_kind();
    if let (Some(kinds), Some(k)) = (&mut st.binary, numeric.binary()) {
        kinds[col] = k;
    }
    st.info.types[col] = numeric;
    st.grows[col] = false;
    Ok(())
}

/// Where a COPY's rows go, and the batch they join.
struct Dest<'a> {
    shape: &'a StreamShape,
    grows: &'a [bool],
    stage: &'a str,
    keying: &'a mut Keying,
    batch: &'a mut Batch,
    prepare: &'a Prepare,
    /// A deferred ACTIVATE_VERSION's version: a record of another ends the
    /// COPY (the activation applies before it).
    deferred: Option<i64>,
}

/// One COPY in format `F` (`kinds`: one per column), from `first` on.
fn copy_run<F: RowFormat, I: Iterator<Item = Item>>(
    client: &mut Client,
    st: &mut Dest<'_>,
    kinds: &[F::Kind],
    run: &Run,
    first: (usize, RecordMessage),
    input: &mut Input<I>,
) -> Result<RunEnd, LoadError> {
    let shape = st.shape;
    let stream = &shape.stream;
    let table = &shape.table;
    let into = if st.batch.staged() {
        quote_ident(st.stage)
    } else {
        table.qualified()
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut stamp = Vec::new();
    let stamp = F::own_timestamp(&mut stamp, &now)
        .is_ok()
        .then_some(&stamp[..]);
    let mut ctx = RowContext {
        received_at: stamp,
        batched_at: stamp,
        extracted: SentStamp::default(),
        sequence: 0,
        strip_nul: run.strip_nul,
        grows: st.grows,
    };
    let mut writer = client
        .copy_in(&format!(
            "COPY {into} {} FROM STDIN{}",
            shape.column_list,
            F::OPTIONS
        ))
        .map_err(|e| db_err(stream, table, "starting COPY", &e))?;
    let copy_failed = |e: std::io::Error| LoadError::Session {
        what: "COPY",
        message: e.to_string(),
    };
    let mut failed: Option<LoadError> = None;
    // Rows gather here and go to the server SEND_AT bytes at a time: one
    // CopyData message and one socket write each, not one per 4 kB.
    let mut rows = Vec::with_capacity(SEND_AT + 64 * 1024);
    rows.extend_from_slice(F::HEADER);
    let mut lines: Vec<usize> = Vec::new();
    let mut key = Vec::new();
    let mut next = Some(first);
    let mut end = RunEnd::Done;
    while let Some((line, rec)) = next.take() {
        let row_start = rows.len();
        ctx.sequence = run.sequence_base + line as i64;
        let want_key = st.keying.wants_key(&st.batch.policy);
        match append_row::<F>(
            shape,
            kinds,
            &rec,
            &mut ctx,
            &mut rows,
            want_key.then_some(&mut key),
        ) {
            Ok(deleted) => st.batch.deletes |= deleted,
            Err(RowFailure::Widen(col)) => {
                end = RunEnd::Widen(line, rec, col);
                break;
            }
            Err(RowFailure::Fallback) => {
                // A value only Postgres' text parser can judge: this
                // stream continues in text COPY from this row on.
                end = RunEnd::Text(line, rec);
                break;
            }
            Err(RowFailure::Row(source)) => {
                failed = Some(LoadError::Row {
                    line,
                    stream: stream.clone(),
                    source,
                });
                break;
            }
        }
        if let Verdict::Stage(keys) = st.keying.admit(&mut st.batch.policy, &key) {
            rows.truncate(row_start);
            end = RunEnd::Stage(line, rec, keys);
            break;
        }
        if rows.len() >= SEND_AT {
            if let Err(e) = writer.write_all(&rows) {
                failed = Some(copy_failed(e));
                break;
            }
            rows.clear();
        }
        lines.push(line);
        st.batch.rows += 1;
        // Once per batch: a batch a key-less stream keeps open past its size
        // (until the next STATE) goes on in one COPY.
        if st.batch.rows == run.batch_size {
            end = RunEnd::Full;
            break;
        }
        match input.next() {
            Some(Ok((l, Message::Record(r))))
                if *r.stream == **stream && st.deferred.is_none_or(|v| r.version == Some(v)) =>
            {
                match st.prepare.record(l, r) {
                    Ok(r) => next = Some((l, r)),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            Some(other) => {
                input.push_back(other);
                break;
            }
            None => break,
        }
    }
    if failed.is_none() {
        rows.extend_from_slice(F::TRAILER);
        if let Err(e) = writer.write_all(&rows) {
            failed = Some(copy_failed(e));
        }
    }
    if let Some(e) = failed {
        // Abandon the COPY: dropping the writer without finishing aborts it.
        drop(writer);
        return Err(e);
    }
    writer.finish().map_err(|e| copy_error(&e, shape, &lines))?;
    Ok(end)
}
