//! What happens to a record before it becomes a row: checked against its
//! SCHEMA (`validate_records`), then flattened (`flattening_enabled`). With
//! both off the record goes on as read, at the cost of one branch.

use singer_core::RecordMessage;

use super::LoadError;
use crate::validate::RecordValidator;

/// One stream's record preparation, from its SCHEMA.
#[derive(Default)]
pub(super) struct Prepare {
    pub validator: Option<RecordValidator>,
}

impl Prepare {
    pub fn record(&self, line: usize, rec: RecordMessage) -> Result<RecordMessage, LoadError> {
        if let Some(v) = &self.validator {
            v.check(&rec.record).map_err(|m| LoadError::Invalid {
                line,
                stream: rec.stream.clone(),
                pointer: m.pointer,
                message: m.message,
            })?;
        }
        Ok(rec)
    }
}
