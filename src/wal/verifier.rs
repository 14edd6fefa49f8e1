//! The streaming WAL verifier (sans-IO): fed contiguous bytes in chunks of any size,
//! it checks every page header and every record (header sanity, `xl_prev` chain,
//! CRC-32C) and reports how far the WAL is verified.
//!
//! # Design
//!
//! The verifier is a small state machine (O(1) memory, no record reassembly):
//!
//! * at every page boundary it assembles the 24- or 40-byte page header (which may
//!   itself be split across chunks) and validates it: magic, flag bits, page address,
//!   long header iff segment start (system identifier, segment and page size), timeline
//!   not above the streamed one and never decreasing, and the continuation flag /
//!   `xlp_rem_len` against the record in progress;
//! * a record header (24 bytes, possibly split across pages) is checked for its length,
//!   resource manager id and `xl_prev` link;
//! * the record body is fed to CRC-32C one contiguous span at a time (at most one
//!   `crc32c_append` call per page fragment), then the first 20 header bytes, and the
//!   result is compared with `xl_crc`;
//! * after `XLOG_SWITCH` the rest of the segment must be zero (no page headers there);
//! * a page flagged `XLP_FIRST_IS_OVERWRITE_CONTRECORD` drops the record in progress.
//!
//! It can start at a segment boundary, at any page boundary (the continuation of a
//! record begun earlier is skipped using `xlp_rem_len`; the first record then gets the
//! weak `xl_prev < start` check), or at a known record boundary.
//!
//! Resuming: to check the record in progress at a resume point, the caller feeds the
//! WAL it already has from the page where that record began ([`page_starts_record`]
//! finds it from page headers alone, walking back), so nothing after the resume point
//! is skipped. When it cannot, [`Verifier::skipped_continuation`] says what was not
//! checked.
//!
//! Errors name the LSN and the failed [`Check`]; [`VerifyError::location`] turns the LSN
//! into a segment file name and offset. After an error the verifier stays failed.
//!
//! Layouts and rules: `wal-format.md` sections 2, 3, 4 and 6.

use std::fmt;

use super::page::{
    magic_for_major, major_for_magic, LongHeaderFields, PageHeader, LONG_HEADER_SIZE,
    SHORT_HEADER_SIZE, XLP_ALL_FLAGS, XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD,
    XLP_LONG_HEADER,
};
use crate::lsn::{is_valid_segment_size, wal_file_name, Lsn, TimeLineId};

/// Size of `XLogRecord`.
pub const RECORD_HEADER_SIZE: usize = 24;
/// Largest `xl_tot_len` accepted (PostgreSQL cannot allocate more; 16+ write at most
/// 1020 MiB).
pub const MAX_RECORD_LENGTH: u32 = 1 << 30;
/// `RM_XLOG_ID`.
pub const RM_XLOG_ID: u8 = 0;
/// `XLOG_SWITCH` (info high nibble, rmid 0).
pub const XLOG_SWITCH: u8 = 0x40;
/// `XLOG_OVERWRITE_CONTRECORD` (info high nibble, rmid 0).
pub const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;
/// Highest built-in resource manager id (13 to 18).
pub const RM_MAX_BUILTIN_ID: u8 = 21;
/// Lowest custom resource manager id (15+).
pub const RM_MIN_CUSTOM_ID: u8 = 128;

/// What the verifier needs to know about the server.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// `wal_segment_size` in bytes.
    pub segment_size: u64,
    /// WAL page size (`XLOG_BLCKSZ`), normally 8192.
    pub block_size: u32,
    /// System identifier every long page header must carry, when known. When `None`,
    /// the first long header's identifier is required of all later ones.
    pub system_id: Option<u64>,
    /// Timeline being streamed: no page may carry a higher timeline.
    pub timeline: TimeLineId,
    /// Server major version (13..=18) whose page magic is required; `None` accepts
    /// the magic of any supported version but requires it to stay the same.
    pub server_major: Option<u32>,
}

/// Which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

impl Check {
    /// Whether this check is about a page header (as opposed to a record).
    pub fn is_page_check(self) -> bool {
        matches!(
            self,
            Check::PageMagic
                | Check::PageFlags
                | Check::PageAddress
                | Check::PageTimeline
                | Check::LongHeader
                | Check::SystemId
                | Check::SegmentSize
                | Check::BlockSize
                | Check::ContinuationFlag
                | Check::RemainingLength
        )
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Check::PageMagic => "page magic",
            Check::PageFlags => "page flags",
            Check::PageAddress => "page address",
            Check::PageTimeline => "page timeline",
            Check::LongHeader => "long page header",
            Check::SystemId => "system identifier",
            Check::SegmentSize => "segment size",
            Check::BlockSize => "page size",
            Check::ContinuationFlag => "continuation flag",
            Check::RemainingLength => "remaining length",
            Check::RecordLength => "record length",
            Check::ResourceManager => "resource manager",
            Check::PrevLink => "prev-link",
            Check::Crc => "CRC",
            Check::SwitchTail => "switch tail",
            Check::Discontinuity => "discontinuity",
        };
        f.write_str(s)
    }
}

/// A verification failure, at the LSN where it was found: the page start for page
/// header checks, the record start for record checks (including the CRC), the first
/// non-zero byte for [`Check::SwitchTail`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("WAL verification failed at {lsn}: {check:?}: {detail}")]
pub struct VerifyError {
    pub lsn: Lsn,
    pub check: Check,
    pub detail: String,
}

/// Where an LSN lives on disk: segment file name and offset in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentLocation {
    pub file_name: String,
    pub offset: u64,
}

impl fmt::Display for SegmentLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "file {} offset {} (0x{:X})",
            self.file_name, self.offset, self.offset
        )
    }
}

/// The segment file name (on timeline `tli`) and offset holding `lsn`.
pub fn segment_location(lsn: Lsn, tli: TimeLineId, segment_size: u64) -> SegmentLocation {
    let seg = segment_size.max(1);
    SegmentLocation {
        file_name: wal_file_name(tli, lsn.0 / seg, seg),
        offset: lsn.0 % seg,
    }
}

impl VerifyError {
    /// The segment file and offset of the failure, for messages.
    pub fn location(&self, tli: TimeLineId, segment_size: u64) -> SegmentLocation {
        segment_location(self.lsn, tli, segment_size)
    }

    /// One line for logs: "WAL verification failed at LSN 0/3000028 (file ... offset ...):
    /// CRC: ...".
    pub fn describe(&self, tli: TimeLineId, segment_size: u64) -> String {
        format!(
            "WAL verification failed at LSN {} ({}): {} check: {}",
            self.lsn,
            self.location(tli, segment_size),
            self.check,
            self.detail
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the first page header: its CONTRECORD flag decides what follows.
    Start,
    /// A new record starts at `pos`.
    NewRecord,
    /// Alignment padding up to `until` (never beyond the page end).
    Padding { until: u64 },
    /// Assembling a record header.
    RecordHeader,
    /// Streaming a record body into the CRC.
    RecordBody,
    /// Skipping the continuation of a record begun before the first boundary.
    SkipContinuation { remaining: u32 },
    /// The zero tail after `XLOG_SWITCH`, up to `until` (a segment start).
    SwitchTail { until: u64 },
}

/// Streaming verifier state (O(1) memory).
#[derive(Debug, Clone)]
pub struct Verifier {
    config: VerifierConfig,
    seg_size: u64,
    blcksz: u64,
    /// LSN of the next byte expected.
    pos: u64,
    mode: Mode,
    /// A page header is being assembled at `page_lsn`.
    in_header: bool,
    page_lsn: u64,
    ph_buf: [u8; LONG_HEADER_SIZE],
    ph_have: usize,
    /// Page magic required (from the config or the first page).
    magic: Option<u16>,
    major: Option<u32>,
    system_id: Option<u64>,
    last_tli: Option<TimeLineId>,
    // Record in progress.
    rec_start: u64,
    rec_hdr: [u8; RECORD_HEADER_SIZE],
    hdr_have: usize,
    tot_len: u32,
    got: u32,
    crc: u32,
    // Chain.
    prev_start: Option<u64>,
    first_record: Option<u64>,
    verified_end: u64,
    records: u64,
    overwritten: Option<u64>,
    /// The dropped record's start still awaits its XLOG_OVERWRITE_CONTRECORD record.
    overwrite_pending: bool,
    /// The continuation skipped at the first page (its page LSN and length).
    skipped: Option<(u64, u32)>,
    /// First body bytes of an XLOG_OVERWRITE_CONTRECORD record (data header + LSN).
    ow_buf: [u8; 10],
    ow_have: usize,
    failed: Option<VerifyError>,
}

impl Verifier {
    fn new(config: VerifierConfig, start: Lsn, mode: Mode) -> Self {
        let seg_size = config.segment_size;
        let blcksz = u64::from(config.block_size);
        let magic = config.server_major.and_then(magic_for_major);
        let mut v = Verifier {
            seg_size: seg_size.max(1),
            blcksz: blcksz.max(1),
            pos: start.0,
            mode,
            in_header: false,
            page_lsn: start.0,
            ph_buf: [0; LONG_HEADER_SIZE],
            ph_have: 0,
            magic,
            major: magic.and(config.server_major),
            system_id: config.system_id,
            last_tli: None,
            rec_start: start.0,
            rec_hdr: [0; RECORD_HEADER_SIZE],
            hdr_have: 0,
            tot_len: 0,
            got: 0,
            crc: 0,
            prev_start: None,
            first_record: None,
            verified_end: start.0,
            records: 0,
            overwritten: None,
            overwrite_pending: false,
            skipped: None,
            ow_buf: [0; 10],
            ow_have: 0,
            failed: None,
            config,
        };
        v.failed = v.check_config();
        if v.pos % v.blcksz == 0 {
            v.in_header = true;
        }
        v
    }

    fn check_config(&self) -> Option<VerifyError> {
        let at = Lsn(self.pos);
        let c = &self.config;
        if !is_valid_segment_size(c.segment_size) {
            return Some(err(
                at,
                Check::SegmentSize,
                format!("invalid segment size {}", c.segment_size),
            ));
        }
        if !crate::lsn::is_valid_block_size(u64::from(c.block_size)) {
            return Some(err(
                at,
                Check::BlockSize,
                format!("invalid WAL page size {}", c.block_size),
            ));
        }
        if let Some(m) = c.server_major {
            if magic_for_major(m).is_none() {
                return Some(err(
                    at,
                    Check::PageMagic,
                    format!("unsupported server major version {m}"),
                ));
            }
        }
        None
    }

    /// A verifier starting at `start`, which must be a segment boundary. If the
    /// segment begins with the continuation of an earlier record, that continuation
    /// is skipped (not verifiable) and verification starts at the next record.
    pub fn at_segment_start(config: VerifierConfig, start: Lsn) -> Self {
        let mut v = Verifier::new(config, start, Mode::Start);
        if v.failed.is_none() && start.0 % v.seg_size != 0 {
            v.failed = Some(err(
                start,
                Check::Discontinuity,
                format!("{start} is not a segment boundary"),
            ));
        }
        v
    }

    /// A verifier starting at any page boundary `start` (resync: the first record
    /// is found from the page's remaining-length field).
    pub fn at_page(config: VerifierConfig, start: Lsn) -> Self {
        let mut v = Verifier::new(config, start, Mode::Start);
        if v.failed.is_none() && start.0 % v.blcksz != 0 {
            v.failed = Some(err(
                start,
                Check::Discontinuity,
                format!("{start} is not a page boundary"),
            ));
        }
        v
    }

    /// A verifier starting at a known record boundary `start` (for instance a
    /// persisted [`Verifier::verified_end`]), with `prev_record` the start of the
    /// record before it when known (checked strictly against the first `xl_prev`).
    /// `start` must be 8-aligned and not inside a page header.
    pub fn at_record_boundary(
        config: VerifierConfig,
        start: Lsn,
        prev_record: Option<Lsn>,
    ) -> Self {
        let mut v = Verifier::new(config, start, Mode::NewRecord);
        v.prev_start = prev_record.map(|l| l.0);
        if v.failed.is_none() {
            let in_page = start.0 % v.blcksz;
            let hdr = if start.0 % v.seg_size < v.blcksz {
                LONG_HEADER_SIZE
            } else {
                SHORT_HEADER_SIZE
            } as u64;
            if start.0 % 8 != 0 || (in_page != 0 && in_page < hdr) {
                v.failed = Some(err(
                    start,
                    Check::Discontinuity,
                    format!("{start} cannot be a record boundary"),
                ));
            }
        }
        v
    }

    /// Feeds the next bytes of WAL, which start at [`Verifier::position`].
    /// After an error the verifier stays failed and returns the same error.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), VerifyError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut rest = data;
        while !rest.is_empty() {
            match self.step(rest) {
                Ok(n) => rest = rest.get(n..).unwrap_or(&[]),
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Like [`Verifier::feed`], checking first that `data` starts at `start` (the
    /// XLogData `dataStart`); a mismatch is a [`Check::Discontinuity`] error (which
    /// does not poison the verifier).
    pub fn feed_at(&mut self, start: Lsn, data: &[u8]) -> Result<(), VerifyError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if start.0 != self.pos {
            return Err(err(
                start,
                Check::Discontinuity,
                format!(
                    "data starts at {start} but the verifier expects {}",
                    Lsn(self.pos)
                ),
            ));
        }
        self.feed(data)
    }

    /// LSN of the next byte expected.
    pub fn position(&self) -> Lsn {
        Lsn(self.pos)
    }

    /// End of the last record that passed every check, MAXALIGNed (or the next
    /// segment's start once an XLOG_SWITCH tail is consumed). Safe to acknowledge.
    /// Before any record is verified it is the starting LSN.
    pub fn verified_end(&self) -> Lsn {
        Lsn(self.verified_end)
    }

    /// Number of records verified so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The error the verifier stopped at, if any.
    pub fn error(&self) -> Option<&VerifyError> {
        self.failed.as_ref()
    }

    /// Whether the bytes fed so far end inside a record (its header, body, or a
    /// skipped continuation), i.e. bytes after [`Verifier::verified_end`] belong to
    /// a record not yet complete.
    pub fn in_record(&self) -> bool {
        match self.mode {
            Mode::RecordHeader | Mode::RecordBody | Mode::SkipContinuation { .. } => true,
            Mode::Start | Mode::NewRecord | Mode::Padding { .. } | Mode::SwitchTail { .. } => false,
        }
    }

    /// The continuation of a record begun before the starting page, skipped
    /// unchecked: the LSN of that first page and the length skipped (from its
    /// `xlp_rem_len`). `None` when the first page starts a record (or no page
    /// header has been seen yet).
    pub fn skipped_continuation(&self) -> Option<(Lsn, u32)> {
        self.skipped.map(|(page, len)| (Lsn(page), len))
    }

    /// Start LSN of the record in progress (header or body being read), if any.
    pub fn current_record_start(&self) -> Option<Lsn> {
        match self.mode {
            Mode::RecordHeader | Mode::RecordBody => Some(Lsn(self.rec_start)),
            _ => None,
        }
    }

    /// Whether the verifier is inside the zero tail after an `XLOG_SWITCH`.
    pub fn in_switch_tail(&self) -> bool {
        matches!(self.mode, Mode::SwitchTail { .. })
    }

    /// Start LSN of the last verified record (the expected `xl_prev` of the next one).
    pub fn last_record_start(&self) -> Option<Lsn> {
        self.prev_start.map(Lsn)
    }

    /// Start LSN of the first verified record.
    pub fn first_record_start(&self) -> Option<Lsn> {
        self.first_record.map(Lsn)
    }

    /// Start of the last record dropped because of an OVERWRITE_CONTRECORD page.
    pub fn overwritten_record(&self) -> Option<Lsn> {
        self.overwritten.map(Lsn)
    }

    /// Timeline of the last validated page header.
    pub fn page_timeline(&self) -> Option<TimeLineId> {
        self.last_tli
    }

    /// Server major version of the page magic seen (or configured).
    pub fn server_major(&self) -> Option<u32> {
        self.major
    }

    /// System identifier seen in a long header (or configured).
    pub fn system_id(&self) -> Option<u64> {
        self.system_id
    }

    /// The configuration.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Raises the streamed timeline (after a timeline switch, when the bytes of
    /// the new timeline continue the same byte stream). Lowering it is ignored.
    pub fn set_timeline(&mut self, tli: TimeLineId) {
        if tli > self.config.timeline {
            self.config.timeline = tli;
        }
    }

    // ------------------------------------------------------------------ internals

    fn advance(&mut self, n: usize) {
        self.pos += n as u64;
        if self.pos % self.blcksz == 0 {
            self.in_header = true;
            self.ph_have = 0;
            self.page_lsn = self.pos;
        }
    }

    /// Consumes a prefix of `data` (possibly empty when only the mode changes).
    fn step(&mut self, data: &[u8]) -> Result<usize, VerifyError> {
        if self.in_header {
            return self.step_page_header(data);
        }
        let page_left = self.blcksz - self.pos % self.blcksz;
        let avail = (data.len() as u64).min(page_left) as usize;
        match self.mode {
            Mode::SwitchTail { until } => {
                let n = (data.len() as u64).min(until - self.pos) as usize;
                let chunk = data.get(..n).unwrap_or(&[]);
                if let Some(i) = first_nonzero(chunk) {
                    let at = Lsn(self.pos + i as u64);
                    return Err(err(
                        at,
                        Check::SwitchTail,
                        format!("non-zero byte after XLOG_SWITCH at {at} (the rest of the segment must be zero)"),
                    ));
                }
                self.pos += n as u64;
                if self.pos == until {
                    self.verified_end = until;
                    self.mode = Mode::NewRecord;
                    self.in_header = true;
                    self.ph_have = 0;
                    self.page_lsn = until;
                }
                Ok(n)
            }
            Mode::Start => {
                // Only reachable through a constructor whose start check failed.
                Err(err(
                    Lsn(self.pos),
                    Check::Discontinuity,
                    "verifier not started at a page boundary".into(),
                ))
            }
            Mode::NewRecord => {
                self.rec_start = self.pos;
                self.ow_have = 0;
                self.hdr_have = 0;
                self.got = 0;
                self.tot_len = 0;
                self.mode = Mode::RecordHeader;
                Ok(0)
            }
            Mode::Padding { until } => {
                let n = (avail as u64).min(until - self.pos) as usize;
                if self.pos + n as u64 == until {
                    self.mode = Mode::NewRecord;
                }
                self.advance(n);
                Ok(n)
            }
            Mode::SkipContinuation { remaining } => {
                let n = (avail as u64).min(u64::from(remaining)) as usize;
                let left = remaining - n as u32;
                if left == 0 {
                    self.mode = self.after_record_end(self.pos + n as u64);
                } else {
                    self.mode = Mode::SkipContinuation { remaining: left };
                }
                self.advance(n);
                Ok(n)
            }
            Mode::RecordHeader => {
                let n = avail.min(RECORD_HEADER_SIZE - self.hdr_have);
                let src = data.get(..n).unwrap_or(&[]);
                if let Some(dst) = self.rec_hdr.get_mut(self.hdr_have..self.hdr_have + n) {
                    dst.copy_from_slice(src);
                }
                let before = self.hdr_have;
                self.hdr_have += n;
                self.got += n as u32;
                if before < 4 && self.hdr_have >= 4 {
                    self.check_record_length()?;
                }
                self.advance(n);
                if self.hdr_have == RECORD_HEADER_SIZE {
                    self.check_record_header()?;
                    self.crc = 0;
                    if self.tot_len as usize == RECORD_HEADER_SIZE {
                        self.finish_record()?;
                    } else {
                        self.mode = Mode::RecordBody;
                    }
                }
                Ok(n)
            }
            Mode::RecordBody => {
                let n = (avail as u64).min(u64::from(self.tot_len - self.got)) as usize;
                let body = data.get(..n).unwrap_or(&[]);
                self.crc = crc32c::crc32c_append(self.crc, body);
                if self.ow_have < self.ow_buf.len() && self.is_overwrite_record() {
                    let k = n.min(self.ow_buf.len() - self.ow_have);
                    if let (Some(dst), Some(src)) = (
                        self.ow_buf.get_mut(self.ow_have..self.ow_have + k),
                        body.get(..k),
                    ) {
                        dst.copy_from_slice(src);
                    }
                    self.ow_have += k;
                }
                self.got += n as u32;
                self.advance(n);
                if self.got == self.tot_len {
                    self.finish_record()?;
                }
                Ok(n)
            }
        }
    }

    /// Mode after a record (or skipped continuation) ending at `end`.
    fn after_record_end(&self, end: u64) -> Mode {
        let aligned = Lsn(end).max_align().0;
        if aligned == end {
            Mode::NewRecord
        } else {
            Mode::Padding { until: aligned }
        }
    }

    fn check_record_length(&mut self) -> Result<(), VerifyError> {
        let tot = u32::from_le_bytes([
            self.rec_hdr[0],
            self.rec_hdr[1],
            self.rec_hdr[2],
            self.rec_hdr[3],
        ]);
        let at = Lsn(self.rec_start);
        if (tot as usize) < RECORD_HEADER_SIZE {
            return Err(err(
                at,
                Check::RecordLength,
                format!("invalid record length at {at}: expected at least {RECORD_HEADER_SIZE}, got {tot}"),
            ));
        }
        if tot > MAX_RECORD_LENGTH {
            return Err(err(
                at,
                Check::RecordLength,
                format!("record length {tot} at {at} too long (limit {MAX_RECORD_LENGTH})"),
            ));
        }
        self.tot_len = tot;
        Ok(())
    }

    fn check_record_header(&mut self) -> Result<(), VerifyError> {
        let h = &self.rec_hdr;
        let at = Lsn(self.rec_start);
        let rmid = h[17];
        let custom_ok = self.major.is_none_or(|m| m >= 15);
        if rmid > RM_MAX_BUILTIN_ID && !(custom_ok && rmid >= RM_MIN_CUSTOM_ID) {
            return Err(err(
                at,
                Check::ResourceManager,
                format!("invalid resource manager ID {rmid} at {at}"),
            ));
        }
        let prev = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        match self.prev_start {
            Some(p) if prev != p => {
                return Err(err(
                    at,
                    Check::PrevLink,
                    format!(
                        "record with incorrect prev-link {} at {at} (expected {})",
                        Lsn(prev),
                        Lsn(p)
                    ),
                ));
            }
            None if prev >= self.rec_start => {
                return Err(err(
                    at,
                    Check::PrevLink,
                    format!(
                        "record with incorrect prev-link {} at {at} (not before the record)",
                        Lsn(prev)
                    ),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn finish_record(&mut self) -> Result<(), VerifyError> {
        let h = self.rec_hdr;
        let stored = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
        let computed = crc32c::crc32c_append(self.crc, &h[..20]);
        let at = Lsn(self.rec_start);
        if computed != stored {
            return Err(err(
                at,
                Check::Crc,
                format!(
                    "incorrect resource manager data checksum in record at {at}: stored {stored:08X}, computed {computed:08X}"
                ),
            ));
        }
        if self.is_overwrite_record() {
            self.check_overwritten_lsn()?;
        }
        self.records += 1;
        self.prev_start = Some(self.rec_start);
        if self.first_record.is_none() {
            self.first_record = Some(self.rec_start);
        }
        let end = self.pos;
        self.verified_end = Lsn(end).max_align().0;
        let is_switch = h[17] == RM_XLOG_ID && h[16] & 0xF0 == XLOG_SWITCH;
        if is_switch {
            let until = end.div_ceil(self.seg_size).saturating_mul(self.seg_size);
            if until == end {
                self.mode = Mode::NewRecord;
            } else {
                self.mode = Mode::SwitchTail { until };
                // No page headers inside the tail.
                self.in_header = false;
            }
        } else {
            self.mode = self.after_record_end(end);
        }
        Ok(())
    }

    fn is_overwrite_record(&self) -> bool {
        self.rec_hdr[17] == RM_XLOG_ID && self.rec_hdr[16] & 0xF0 == XLOG_OVERWRITE_CONTRECORD
    }

    /// An XLOG_OVERWRITE_CONTRECORD record must name the record this verifier dropped
    /// (when it saw one): main data `0xFF, 16, overwritten_lsn (u64), time (i64)`.
    fn check_overwritten_lsn(&mut self) -> Result<(), VerifyError> {
        if !self.overwrite_pending {
            return Ok(());
        }
        self.overwrite_pending = false;
        let Some(dropped) = self.overwritten else {
            return Ok(());
        };
        let b = self.ow_buf;
        let named = (self.ow_have == b.len() && b[0] == 0xFF && b[1] >= 8)
            .then(|| u64::from_le_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]));
        if named != Some(dropped) {
            let at = Lsn(self.rec_start);
            return Err(err(
                at,
                Check::ContinuationFlag,
                format!(
                    "overwrite-contrecord record at {at} names {} but the record dropped at the overwrite page started at {}",
                    named.map_or_else(|| "no record".to_string(), |l| Lsn(l).to_string()),
                    Lsn(dropped)
                ),
            ));
        }
        Ok(())
    }

    fn step_page_header(&mut self, data: &[u8]) -> Result<usize, VerifyError> {
        let info_known = self.ph_have >= 4;
        let long = info_known
            && u16::from_le_bytes([self.ph_buf[2], self.ph_buf[3]]) & XLP_LONG_HEADER != 0;
        let need = if long {
            LONG_HEADER_SIZE
        } else {
            SHORT_HEADER_SIZE
        };
        let n = data.len().min(need - self.ph_have);
        if let (Some(dst), Some(src)) = (
            self.ph_buf.get_mut(self.ph_have..self.ph_have + n),
            data.get(..n),
        ) {
            dst.copy_from_slice(src);
        }
        self.ph_have += n;
        self.pos += n as u64;
        if self.ph_have < need {
            return Ok(n);
        }
        let long_now = u16::from_le_bytes([self.ph_buf[2], self.ph_buf[3]]) & XLP_LONG_HEADER != 0;
        if long_now && self.ph_have < LONG_HEADER_SIZE {
            return Ok(n); // the next step reads the long part
        }
        let Some(h) = PageHeader::parse(self.ph_buf.get(..self.ph_have).unwrap_or(&[])) else {
            // Cannot happen (enough bytes were gathered); never loop on it.
            let at = Lsn(self.page_lsn);
            return Err(err(
                at,
                Check::LongHeader,
                format!("incomplete page header at {at}"),
            ));
        };
        self.validate_page_header(&h)?;
        self.in_header = false;
        Ok(n)
    }

    /// Validates the page header just assembled at `page_lsn`, in the order of
    /// PostgreSQL's `XLogReaderValidatePageHeader`: the first check that fails
    /// names the error. Checks 1, 3 and 5 learn what the first page tells
    /// (magic, system identifier, timeline); check 6 sets the mode for the
    /// bytes after the header.
    fn validate_page_header(&mut self, h: &PageHeader) -> Result<(), VerifyError> {
        self.check_page_magic(h)?;
        self.check_page_flags(h)?;
        self.check_long_header(h)?;
        self.check_page_address(h)?;
        self.check_page_timeline(h)?;
        self.check_continuation(h)
    }

    /// The one builder of page header errors: at the page's LSN, `detail` given
    /// that LSN and the page's segment file and offset. The location (a file
    /// name, so an allocation) is worked out only for an error: every page of
    /// the stream passes through here.
    fn page_error(
        &self,
        check: Check,
        detail: impl FnOnce(Lsn, &SegmentLocation) -> String,
    ) -> VerifyError {
        let at = Lsn(self.page_lsn);
        let loc = segment_location(at, self.config.timeline, self.seg_size);
        err(at, check, detail(at, &loc))
    }

    /// Check 1, magic: the configured major's, or, when none is configured, a
    /// supported one, which all later pages must then carry.
    fn check_page_magic(&mut self, h: &PageHeader) -> Result<(), VerifyError> {
        match self.magic {
            Some(m) if h.magic != m => Err(self.page_error(Check::PageMagic, |at, loc| {
                format!(
                    "invalid magic number {:04X} in WAL segment {}, LSN {at}, offset {} (expected {m:04X})",
                    h.magic, loc.file_name, loc.offset
                )
            })),
            Some(_) => Ok(()),
            None => match major_for_magic(h.magic) {
                Some(major) => {
                    self.magic = Some(h.magic);
                    self.major = Some(major);
                    Ok(())
                }
                None => Err(self.page_error(Check::PageMagic, |at, loc| {
                    format!(
                        "invalid magic number {:04X} in WAL segment {}, LSN {at}, offset {} (not PostgreSQL {} to {} WAL)",
                        h.magic, loc.file_name, loc.offset, crate::MIN_SERVER_MAJOR, crate::MAX_SERVER_MAJOR
                    )
                })),
            },
        }
    }

    /// Check 2, flags: no bit outside `XLP_ALL_FLAGS`.
    fn check_page_flags(&self, h: &PageHeader) -> Result<(), VerifyError> {
        if h.info & !XLP_ALL_FLAGS != 0 {
            return Err(self.page_error(Check::PageFlags, |at, loc| {
                format!(
                    "invalid info bits {:04X} in WAL segment {}, LSN {at}, offset {}",
                    h.info, loc.file_name, loc.offset
                )
            }));
        }
        Ok(())
    }

    /// Check 3, long header: one iff the page starts a segment, with the server's
    /// system identifier, segment size and page size.
    fn check_long_header(&mut self, h: &PageHeader) -> Result<(), VerifyError> {
        let seg_start = self.page_lsn % self.seg_size == 0;
        match (&h.long, seg_start) {
            (None, true) => Err(self.page_error(Check::LongHeader, |at, _| {
                format!("missing long page header at segment start {at}")
            })),
            (Some(_), false) => Err(self.page_error(Check::LongHeader, |at, _| {
                format!("unexpected long page header at {at} (not a segment start)")
            })),
            (Some(l), true) => self.check_long_fields(l),
            (None, false) => Ok(()),
        }
    }

    fn check_long_fields(&mut self, l: &LongHeaderFields) -> Result<(), VerifyError> {
        match self.system_id {
            Some(id) if id != l.system_id => {
                return Err(self.page_error(Check::SystemId, |_, loc| {
                    format!(
                        "WAL segment {} is from a different database system: WAL file database system identifier is {}, expected {}",
                        loc.file_name, l.system_id, id
                    )
                }));
            }
            Some(_) => {}
            None => self.system_id = Some(l.system_id),
        }
        if u64::from(l.segment_size) != self.seg_size {
            return Err(self.page_error(Check::SegmentSize, |_, loc| {
                format!(
                    "WAL segment {} has segment size {}, expected {}",
                    loc.file_name, l.segment_size, self.seg_size
                )
            }));
        }
        if u64::from(l.block_size) != self.blcksz {
            return Err(self.page_error(Check::BlockSize, |_, loc| {
                format!(
                    "WAL segment {} has page size {}, expected {}",
                    loc.file_name, l.block_size, self.blcksz
                )
            }));
        }
        Ok(())
    }

    /// Check 4, page address: the page's own LSN.
    fn check_page_address(&self, h: &PageHeader) -> Result<(), VerifyError> {
        if h.page_address.0 != self.page_lsn {
            return Err(self.page_error(Check::PageAddress, |at, loc| {
                format!(
                    "unexpected pageaddr {} in WAL segment {}, LSN {at}, offset {}",
                    h.page_address, loc.file_name, loc.offset
                )
            }));
        }
        Ok(())
    }

    /// Check 5, timeline: not 0, not above the streamed one, never decreasing.
    fn check_page_timeline(&mut self, h: &PageHeader) -> Result<(), VerifyError> {
        if h.timeline == 0 || h.timeline > self.config.timeline {
            return Err(self.page_error(Check::PageTimeline, |at, _| {
                format!(
                    "page at {at} has timeline {}, above the streamed timeline {}",
                    h.timeline, self.config.timeline
                )
            }));
        }
        if let Some(last) = self.last_tli {
            if h.timeline < last {
                return Err(self.page_error(Check::PageTimeline, |at, _| {
                    format!(
                        "out-of-sequence timeline ID {} (after {last}) at {at}",
                        h.timeline
                    )
                }));
            }
        }
        self.last_tli = Some(h.timeline);
        Ok(())
    }

    /// Check 6, continuation: the contrecord flag and `xlp_rem_len` against the
    /// record in progress (or, at the first page, what to skip).
    fn check_continuation(&mut self, h: &PageHeader) -> Result<(), VerifyError> {
        let contrec = h.info & XLP_FIRST_IS_CONTRECORD != 0;
        let overwrite = h.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0;
        if contrec && overwrite {
            return Err(self.page_error(Check::ContinuationFlag, |at, _| {
                format!("page at {at} has both the contrecord and the overwrite-contrecord flags")
            }));
        }
        match self.mode {
            Mode::Start => self.continuation_at_start(h, contrec, overwrite),
            Mode::RecordHeader | Mode::RecordBody => {
                self.continuation_in_record(h, contrec, overwrite)
            }
            Mode::SkipContinuation { remaining } => {
                self.continuation_in_skip(h, contrec, overwrite, remaining)
            }
            Mode::NewRecord | Mode::Padding { .. } | Mode::SwitchTail { .. } => {
                if contrec {
                    return Err(self.page_error(Check::ContinuationFlag, |at, _| {
                        format!("contrecord is requested by {at}")
                    }));
                }
                self.no_remaining_length_without_contrecord(h.rem_len, overwrite)?;
                self.mode = Mode::NewRecord;
                Ok(())
            }
        }
    }

    /// The first page: a continuation there is skipped (it began before the
    /// start), else a record starts after the header.
    fn continuation_at_start(
        &mut self,
        h: &PageHeader,
        contrec: bool,
        overwrite: bool,
    ) -> Result<(), VerifyError> {
        if contrec {
            if h.rem_len == 0 {
                return Err(self.page_error(Check::RemainingLength, |at, _| {
                    format!("contrecord page at {at} with remaining length 0")
                }));
            }
            self.mode = Mode::SkipContinuation {
                remaining: h.rem_len,
            };
            self.skipped = Some((self.page_lsn, h.rem_len));
        } else {
            self.no_remaining_length_without_contrecord(h.rem_len, overwrite)?;
            self.mode = Mode::NewRecord;
        }
        Ok(())
    }

    /// A record in progress: the page must continue it with the length it
    /// still needs (once its length is known), or overwrite it.
    fn continuation_in_record(
        &mut self,
        h: &PageHeader,
        contrec: bool,
        overwrite: bool,
    ) -> Result<(), VerifyError> {
        if overwrite {
            self.overwritten = Some(self.rec_start);
            self.overwrite_pending = true;
            self.mode = Mode::NewRecord;
        } else if !contrec {
            return Err(self.page_error(Check::ContinuationFlag, |at, _| {
                format!(
                    "there is no contrecord flag at {at} (record at {} continues)",
                    Lsn(self.rec_start)
                )
            }));
        } else if self.hdr_have >= 4 {
            let expected = self.tot_len - self.got;
            if h.rem_len != expected || h.rem_len == 0 {
                return Err(self.page_error(Check::RemainingLength, |at, _| {
                    format!(
                        "invalid contrecord length {} (expected {expected}) at {at} for record at {}",
                        h.rem_len,
                        Lsn(self.rec_start)
                    )
                }));
            }
        }
        Ok(())
    }

    /// A skipped continuation in progress: the page must go on with exactly
    /// what is left of it, or overwrite it.
    fn continuation_in_skip(
        &mut self,
        h: &PageHeader,
        contrec: bool,
        overwrite: bool,
        remaining: u32,
    ) -> Result<(), VerifyError> {
        if overwrite {
            self.mode = Mode::NewRecord;
        } else if !contrec {
            return Err(self.page_error(Check::ContinuationFlag, |at, _| {
                format!("there is no contrecord flag at {at}")
            }));
        } else if h.rem_len != remaining {
            return Err(self.page_error(Check::RemainingLength, |at, _| {
                format!(
                    "invalid contrecord length {} (expected {remaining}) at {at}",
                    h.rem_len
                )
            }));
        }
        Ok(())
    }

    /// A page where a new record starts must not claim continuation bytes (an
    /// overwrite-contrecord page may, as the record it replaces was lost).
    fn no_remaining_length_without_contrecord(
        &self,
        rem_len: u32,
        overwrite: bool,
    ) -> Result<(), VerifyError> {
        if !overwrite && rem_len != 0 {
            return Err(self.page_error(Check::RemainingLength, |at, _| {
                format!("page at {at} has remaining length {rem_len} without the contrecord flag")
            }));
        }
        Ok(())
    }
}

fn err(lsn: Lsn, check: Check, detail: String) -> VerifyError {
    VerifyError { lsn, check, detail }
}

/// Whether a record starts on the page whose header is `header` (at least the
/// first 24 bytes of the page; `page_lsn` its address), judged from the header
/// alone: true for a page that does not continue a record, or whose continuation
/// (`xlp_rem_len`) ends before the page does. False for a page that is all
/// continuation, and for a page never written (all zeros: the tail of a
/// segment after `XLOG_SWITCH`), so a walk back from a resume point goes on.
///
/// A header that is not one (wrong address, unknown flag bits) counts as a
/// record start: the walk stops there and the verifier, started at that page,
/// reports what is wrong with it.
pub fn page_starts_record(header: &[u8], page_lsn: Lsn, block_size: u64) -> bool {
    if header.iter().all(|&b| b == 0) {
        return false;
    }
    let Some(h) = PageHeader::parse(header) else {
        return true;
    };
    if h.page_address != page_lsn || h.info & !XLP_ALL_FLAGS != 0 {
        return true;
    }
    if h.info & XLP_FIRST_IS_CONTRECORD == 0 {
        return true;
    }
    let continuation_end = (h.size() as u64).saturating_add(u64::from(h.rem_len));
    Lsn(continuation_end).max_align().0 < block_size
}

/// Index of the first non-zero byte (64-byte blocks are OR-reduced, which vectorizes).
fn first_nonzero(b: &[u8]) -> Option<usize> {
    let mut base = 0;
    for chunk in b.chunks(64) {
        if chunk.iter().fold(0u8, |a, &x| a | x) != 0 {
            return chunk.iter().position(|&x| x != 0).map(|i| base + i);
        }
        base += chunk.len();
    }
    None
}

/// Where valid WAL ends in a file's bytes (for `.partial` files and the last segment of
/// an archive). See [`find_end_of_wal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEnd {
    /// [`Verifier::verified_end`] when the checks stopped (or at the end of the bytes).
    pub verified_end: Lsn,
    /// Records verified.
    pub records: u64,
    /// Start of the first verified record.
    pub first_record: Option<Lsn>,
    /// Start of the last verified record.
    pub last_record: Option<Lsn>,
    /// The check that ended the valid WAL, if one failed before the end of the bytes.
    pub error: Option<VerifyError>,
    /// Whether every byte from `verified_end` to the end of the bytes is zero (a clean
    /// end of WAL: never-written, pre-zeroed space).
    pub zero_after: bool,
    /// Whether the bytes end (before any failure) inside a record.
    pub ended_mid_record: bool,
}

/// Runs a verifier over `bytes` (which start at `start`, a page boundary; a segment
/// start is the usual case) and reports where the valid WAL ends. `start` is
/// verified with [`Verifier::at_page`] semantics.
pub fn find_end_of_wal(config: VerifierConfig, start: Lsn, bytes: &[u8]) -> WalEnd {
    let mut v = Verifier::at_page(config, start);
    let result = v.feed(bytes);
    let end = v.verified_end();
    let off = end.0.saturating_sub(start.0);
    let tail = usize::try_from(off)
        .ok()
        .and_then(|o| bytes.get(o..))
        .unwrap_or(&[]);
    WalEnd {
        verified_end: end,
        records: v.records(),
        first_record: v.first_record_start(),
        last_record: v.last_record_start(),
        zero_after: first_nonzero(tail).is_none(),
        ended_mid_record: result.is_ok() && v.in_record(),
        error: result.err(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
