//! Timeline history files (`TTTTTTTT.history`): parsing and lookups.
//!
//! Format: one line per ancestor timeline, `parentTLI<TAB>X/X<TAB>reason`; blank
//! lines and lines starting with `#` are skipped; parent TLIs strictly increase.

use crate::lsn::{Lsn, TimeLineId};

/// One ancestor: timeline `parent` was the history up to `switchpoint` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent: TimeLineId,
    pub switchpoint: Lsn,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistoryError {
    #[error("line {line}: {what}")]
    Syntax { line: usize, what: String },
}

/// Parses the content of a history file, oldest ancestor first.
pub fn parse_history(content: &[u8]) -> Result<Vec<HistoryEntry>, HistoryError> {
    let _ = content;
    todo!("helper B")
}
