//! The archive directory: one walrcv per directory (a lock), the scan that picks
//! the start point as pg_receivewal does, the identity check against the server,
//! the segment writer (`.partial`, pre-padding, durable rename) and history files.
//!
//! Durability rules (DESIGN.md): a file is renamed only once all its bytes are
//! fsynced, every rename is followed by an fsync of the directory, and a failed
//! fsync is never retried on the same descriptor.

pub mod durable;
pub mod scan;
pub mod segment;

use std::path::PathBuf;

use crate::lsn::{Lsn, SegNo, TimeLineId};

pub use scan::{ArchiveDir, Scan, SegmentFile, StartPoint};
pub use segment::SegmentWriter;

/// Errors about the archive directory and its files, naming the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("could not access \"{path}\": {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("could not fsync \"{path}\": {source}")]
    Fsync { path: PathBuf, source: std::io::Error },
    #[error("directory \"{0}\" does not exist or is not a directory")]
    NotADirectory(PathBuf),
    #[error("directory \"{path}\" is already in use by another walrcv (or pg_receivewal-compatible) process")]
    Locked { path: PathBuf },
    #[error("WAL file \"{path}\" has {size} bytes, should be 0 or {expected}; remove or fix it (a partial file is normally pre-padded to the segment size)")]
    WrongSize { path: PathBuf, size: u64, expected: u64 },
    #[error("WAL file \"{path}\" belongs to database system {found}, but the server's system identifier is {expected}: this directory archives another cluster")]
    OtherCluster { path: PathBuf, found: u64, expected: u64 },
    #[error("WAL file \"{path}\" was written with wal_segment_size {found}, but the server uses {expected}")]
    SegmentSizeMismatch { path: PathBuf, found: u64, expected: u64 },
    #[error("WAL file \"{path}\" does not start with a valid long page header: {what}")]
    NotWal { path: PathBuf, what: String },
    #[error("history file name {name:?} from the server is not a valid timeline history file name (expected {expected})")]
    BadHistoryName { name: String, expected: String },
    #[error("write to \"{path}\" at offset {offset} failed: {source}")]
    Write { path: PathBuf, offset: u64, source: std::io::Error },
    #[error("segment writer for \"{path}\" is poisoned by an earlier fsync failure; the session must end")]
    Poisoned { path: PathBuf },
}

impl ArchiveError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ArchiveError::Io { path: path.into(), source }
    }
}

/// Silence unused warnings in the skeleton.
#[allow(dead_code)]
fn _types(_: Lsn, _: SegNo, _: TimeLineId) {}
