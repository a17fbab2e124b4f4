//! What happens to a record before it becomes a row: checked against its
//! SCHEMA (`validate_records`), then flattened (`flattening_enabled`). With
//! both off the record goes on as read, at the cost of one branch.

use singer_core::RecordMessage;

use super::LoadError;
use crate::flatten::RecordPlan;
use crate::validate::RecordValidator;

/// One stream's record preparation, from its SCHEMA.
pub(super) struct Prepare {
    /// Checks the record as sent (before flattening).
    pub validator: Option<RecordValidator>,
    pub flatten: Option<RecordPlan>,
}

impl Prepare {
    // Called per record: inlined, both off is two untaken branches.
    #[inline]
    pub fn record(&self, line: usize, rec: RecordMessage) -> Result<RecordMessage, LoadError> {
        if let Some(v) = &self.validator {
            v.check(rec.record.get()).map_err(|m| LoadError::Invalid {
                line,
                stream: rec.stream.to_string(),
                pointer: m.pointer,
                message: m.message,
            })?;
        }
        match &self.flatten {
            None => Ok(rec),
            Some(plan) => match plan.record(rec.record.get()) {
                // Rewritten: its members are no longer where the reader found them.
                Ok(record) => Ok(RecordMessage {
                    record: record.into(),
                    members: None,
                    ..rec
                }),
                Err(e) => Err(LoadError::Schema {
                    line,
                    stream: rec.stream.to_string(),
                    problem: e.to_string(),
                }),
            },
        }
    }
}
