//! Sans-IO knowledge of PostgreSQL's WAL format: page headers, records, the
//! record CRC-32C, and timeline history files. Nothing here touches a file or a
//! socket: callers feed bytes and get values or errors back.
//!
//! See `../shared/reference/wal-format.md` for the layouts this follows.

pub mod history;
pub mod page;
pub mod verifier;

pub use history::{parse_history, HistoryEntry, HistoryError};
pub use verifier::{
    find_end_of_wal, segment_location, Check, SegmentLocation, Verifier, VerifierConfig,
    VerifyError, WalEnd,
};
