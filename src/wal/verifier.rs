//! The streaming WAL verifier (sans-IO): fed contiguous bytes in chunks of any size,
//! it checks every page header and every record (header sanity, `xl_prev` chain,
//! CRC-32C) and reports how far the WAL is verified.

use crate::lsn::{Lsn, TimeLineId};

/// What the verifier needs to know about the server.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// `wal_segment_size` in bytes.
    pub segment_size: u64,
    /// WAL page size (`XLOG_BLCKSZ`), normally 8192.
    pub block_size: u32,
    /// System identifier every long page header must carry, when known.
    pub system_id: Option<u64>,
    /// Timeline being streamed: no page may carry a higher timeline.
    pub timeline: TimeLineId,
    /// Server major version (13..=18) whose page magic is required; `None` accepts
    /// the magic of any supported version but requires it to stay the same.
    pub server_major: Option<u32>,
}

/// Which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    PageMagic,
    PageFlags,
    PageAddress,
    PageTimeline,
    LongHeader,
    SystemId,
    SegmentSize,
    BlockSize,
    ContinuationFlag,
    RemainingLength,
    RecordLength,
    ResourceManager,
    PrevLink,
    Crc,
    SwitchTail,
    /// Bytes fed do not start where the verifier expected them.
    Discontinuity,
}

/// A verification failure, at the LSN where it was found.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("WAL verification failed at {lsn}: {check:?}: {detail}")]
pub struct VerifyError {
    pub lsn: Lsn,
    pub check: Check,
    pub detail: String,
}

/// Streaming verifier state (O(1) memory).
#[derive(Debug)]
pub struct Verifier {
    config: VerifierConfig,
}

impl Verifier {
    /// A verifier starting at `start`, which must be a segment boundary.
    pub fn at_segment_start(config: VerifierConfig, start: Lsn) -> Self {
        let _ = start;
        Verifier { config }
    }

    /// A verifier starting at any page boundary `start` (resync: the first record
    /// is found from the page's remaining-length field).
    pub fn at_page(config: VerifierConfig, start: Lsn) -> Self {
        let _ = start;
        Verifier { config }
    }

    /// Feeds the next bytes of WAL, which start at [`Verifier::position`].
    /// After an error the verifier stays failed and returns the same error.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), VerifyError> {
        let _ = (data, &self.config);
        todo!("helper B")
    }

    /// LSN of the next byte expected.
    pub fn position(&self) -> Lsn {
        todo!("helper B")
    }

    /// End of the last record that passed every check, MAXALIGNed (or the next
    /// segment's start once an XLOG_SWITCH tail is consumed). Safe to acknowledge.
    pub fn verified_end(&self) -> Lsn {
        todo!("helper B")
    }

    /// Number of records verified so far.
    pub fn records(&self) -> u64 {
        todo!("helper B")
    }
}
