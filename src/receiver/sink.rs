//! The WAL sink of one timeline: verifies, writes and fsyncs, on the caller's
//! thread (the session's network task), so a commit's WAL goes from the socket
//! to the acknowledgement without crossing a thread.
//!
//! Why on the network task (measured; the figures are in the guide's design
//! notes, `docs/src/design.md`): the commit path is bound by latency and CPU, not by the disk. The
//! earlier design handed every message to a writer thread and the progress
//! back, which cost about two futex calls, two epoll waits and an eventfd write
//! per commit, and left the primary's commits slower than with pg_receivewal.
//! Here the session reads every message already received, verifies and writes
//! each, then fsyncs once for all of them (group commit: WAL that arrived while
//! an fdatasync ran is read, verified and written right after it and covered by
//! the next one) and reports.
//!
//! Work that the next acknowledgement does not need stays off this path: the
//! next segment file is padded and fsynced ahead of time on a helper thread
//! (`Preparer`), and a filled segment is fdatasynced and reported as flushed
//! before it is renamed ([`WalSink::complete_filled`], which the session calls
//! after sending the status update).
//!
//! Catch-up: a segment that the server already has whole when the stream
//! reaches it (the `wal_end` of the server's messages is past its end) is
//! written direct (see [`crate::archive::segment`]): no zeros first, no
//! fsync per batch, one fdatasync and a rename once complete. pg_receivewal
//! likewise reports nothing but completed segments when not `--synchronous`.
//!
//! Positions ([`WalSink::positions`]): `write` is the end of the last record
//! that is verified and written to the file, `flush` the end of the last one
//! that is verified and durable. Both are 0/0 until known, unless the session
//! starts from the archive's own durable files. Neither moves into a segment
//! written direct before it is complete and renamed: until then a crash
//! removes it; nor into a compressed segment streamed again aside before it
//! replaced its old `.partial` (see [`crate::archive::compressed`]).

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::feedback::Positions;
use crate::archive::compress_spec::CompressionSpec;
use crate::archive::names::Compression;
use crate::archive::{ArchiveError, CompressedWriter, PreparedSegment, SegmentSink, SegmentWriter};
use crate::lsn::{wal_file_name, Lsn, SegNo, TimeLineId};
use crate::wal::page::LONG_HEADER_SIZE;
use crate::wal::{Verifier, VerifierConfig, VerifyError};

/// Why the sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{error} (segment file {file}, offset {offset:#X}); nothing past {verified} is acknowledged")]
    Verify {
        error: VerifyError,
        file: String,
        offset: u64,
        verified: Lsn,
        /// The failing record began before the stream's start: its
        /// beginning is the archive's own WAL (read by the resume check).
        began_in_archive: bool,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Preparing or writing the file for the WAL at `at` failed (a full
    /// disk, EIO): nothing from `at` on is acknowledged.
    #[error("could not write the WAL at {at} (timeline {timeline}) into the archive: {source}")]
    Write {
        at: Lsn,
        timeline: TimeLineId,
        source: ArchiveError,
    },
    #[error("got WAL data at {got}, expected {expected}")]
    Discontinuity { expected: Lsn, got: Lsn },
    #[error("WAL data at {at} runs past the end of the LSN space")]
    PastLsnSpace { at: Lsn },
}

/// What the sink needs to know.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub directory: PathBuf,
    pub timeline: TimeLineId,
    pub segment_size: u64,
    /// fsync files and directories (`--no-sync` turns it off).
    pub sync: bool,
    /// Where the first chunk starts: a segment boundary.
    pub start: Lsn,
    /// The WAL before `start` is the archive's own durable files, so `start`
    /// may be reported as written and flushed before anything is received.
    pub start_is_durable: bool,
    pub verifier: VerifierConfig,
    /// A verifier already fed with the archive's WAL before `start` (see
    /// [`crate::archive::resume`]), positioned at `start`: the record in
    /// progress there is checked whole, and nothing after `start` is reported
    /// before it is. `None`: the verifier starts at `start`, and the
    /// continuation of a record begun earlier, if any, cannot be checked
    /// (logged once).
    pub primed: Option<Verifier>,
    /// `-Z`: segments are written through an encoder
    /// ([`crate::archive::compressed`]): never pre-padded nor written
    /// direct, and a position counts as written only once the encoder was
    /// flushed into the file.
    pub compression: CompressionSpec,
}

/// The sink of one timeline's stream.
pub struct WalSink {
    config: SinkConfig,
    verifier: Verifier,
    /// The open `.partial` being written.
    segment: Option<SegmentSink>,
    /// A full segment, fdatasynced, waiting for its rename.
    filled: Option<SegmentSink>,
    /// End of the last filled segment until its rename succeeded: flush
    /// stays below it, even after a failed rename took the writer away.
    unrenamed_end: Option<Lsn>,
    /// Next byte expected: the end of what was written.
    position: Lsn,
    /// End of what was written into files under a WAL name (`.partial` or
    /// complete): not into a segment written direct that is not renamed yet.
    named: Lsn,
    /// End of what the last fsync covered (under a WAL name).
    synced: Lsn,
    /// How far the server has WAL, from its messages' `wal_end`.
    server_end: Lsn,
    preparer: Preparer,
    /// Whether the first bytes may be a continuation that the verifier skips
    /// (it was not primed), still to be logged when it happens.
    report_skip: bool,
}

impl WalSink {
    pub fn new(mut config: SinkConfig) -> WalSink {
        let (verifier, report_skip) = match config.primed.take() {
            // A verifier that failed on the archive's bytes stays failed:
            // the first write reports its error.
            Some(v) if v.position() == config.start || v.error().is_some() => (v, false),
            other => {
                if let Some(v) = other {
                    tracing::warn!(
                        "primed verifier is at {}, not at the start {}: not used",
                        v.position(),
                        config.start
                    );
                }
                let v = Verifier::at_segment_start(config.verifier.clone(), config.start);
                (v, true)
            }
        };
        let preparer = if config.compression.method == Compression::None {
            Preparer::new(&config)
        } else {
            Preparer::disabled()
        };
        WalSink {
            report_skip,
            position: config.start,
            named: config.start,
            synced: config.start,
            server_end: Lsn::INVALID,
            verifier,
            segment: None,
            filled: None,
            unrenamed_end: None,
            preparer,
            config,
        }
    }

    /// The next byte the stream must bring.
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// The server says it has WAL up to `lsn` (the `wal_end` of its messages).
    pub fn server_has(&mut self, lsn: Lsn) {
        self.server_end = self.server_end.max(lsn);
        crate::metrics::global().server_wal_end(self.server_end);
    }

    /// Verifies `data` (which starts at `start`) and writes it, up to the end
    /// of the current segment at most; returns how many bytes were taken. When
    /// this fills the segment, the segment is fdatasynced (a direct one only
    /// by its completion) and waits for [`WalSink::complete_filled`]. Bytes
    /// that fail verification are never written.
    pub fn write(&mut self, start: Lsn, data: &[u8]) -> Result<usize, SinkError> {
        if start != self.position {
            return Err(SinkError::Discontinuity {
                expected: self.position,
                got: start,
            });
        }
        let seg_size = self.config.segment_size;
        let offset = self.position.segment_offset(seg_size);
        // Bounded by the segment size, so the cast cannot truncate.
        let n = (seg_size - offset).min(data.len() as u64) as usize;
        let piece = &data[..n];
        let records_before = self.verifier.records();
        let fed = self.verifier.feed(piece);
        let metrics = crate::metrics::global();
        metrics.wal_verified(
            self.verifier.verified_end(),
            self.verifier.records().saturating_sub(records_before),
        );
        if self.report_skip {
            self.log_skipped_continuation();
        }
        if let Err(error) = fed {
            metrics.verification_failed();
            return Err(self.verify_error(error));
        }
        let Some(end) = self.position.0.checked_add(n as u64) else {
            return Err(SinkError::PastLsnSpace { at: self.position });
        };
        let at = self.position;
        let timeline = self.config.timeline;
        let segment = self.current_segment().map_err(|e| match e {
            SinkError::Archive(source) => SinkError::Write {
                at,
                timeline,
                source,
            },
            other => other,
        })?;
        segment
            .write_at(offset, piece)
            .map_err(|source| SinkError::Write {
                at,
                timeline,
                source,
            })?;
        // A compressed segment's bytes are in the file only once its
        // encoder is flushed (by its sync).
        let named = !segment.is_direct() && !segment.buffers();
        self.position = Lsn(end);
        if named {
            self.named = self.position;
        }
        if offset + n as u64 == seg_size {
            if let Some(mut full) = self.segment.take() {
                // A direct segment is fsynced by its completion.
                if !full.is_direct() {
                    full.sync()?;
                    self.named = self.position;
                }
                self.unrenamed_end = Some(Lsn(end));
                self.filled = Some(full);
                self.mark_synced();
            }
        }
        Ok(n)
    }

    /// Whether a full segment waits for [`WalSink::complete_filled`].
    pub fn has_filled_segment(&self) -> bool {
        self.filled.is_some()
    }

    /// Renames the filled segment to its final name and fsyncs the directory
    /// (a direct one is fdatasynced first: its WAL becomes durable here).
    pub fn complete_filled(&mut self) -> Result<(), SinkError> {
        if let Some(full) = self.filled.take() {
            let end = Lsn(full.start_lsn().0.saturating_add(full.segment_size()));
            let path = full.complete()?;
            crate::metrics::global().segment_completed();
            self.unrenamed_end = None;
            self.named = self.named.max(end);
            self.mark_synced();
            tracing::info!(
                "finished segment at {} (timeline {}): {}",
                self.position,
                self.config.timeline,
                path.display()
            );
        }
        Ok(())
    }

    /// Makes everything written durable (one fdatasync for all of it),
    /// except in a segment written direct, or a compressed one the server
    /// has whole: nothing in it can be reported before it is complete, and
    /// the server already has the rest of it, so its fdatasync waits for its
    /// completion.
    pub fn sync(&mut self) -> Result<(), SinkError> {
        let server_end = self.server_end;
        match self.segment.as_mut() {
            // Nothing in it could be reported before it is complete.
            Some(segment) if segment.is_direct() => return Ok(()),
            // Catch-up into a compressed segment the server has whole: as
            // for a direct one, its encoder is flushed and the file
            // fdatasynced once, when it is complete (a flush per batch would
            // cost an fdatasync each and compress worse).
            Some(segment) if segment.buffers() && server_end >= segment.end_lsn() => return Ok(()),
            Some(segment) => {
                segment.sync()?;
                // Everything written is in the file now, compressed or not,
                // and under the WAL name unless it is still written aside
                // (a compressed segment streamed again, not yet as long as
                // its old file: see `crate::archive::compressed`).
                if !segment.is_aside() {
                    self.named = self.position;
                }
            }
            None => {}
        }
        self.mark_synced();
        Ok(())
    }

    /// Where the record the verifier is inside begins, when its bytes
    /// are written but it is not complete yet.
    pub fn record_in_progress(&self) -> Option<Lsn> {
        self.verifier.in_record().then(|| {
            self.verifier
                .current_record_start()
                .unwrap_or(self.verifier.verified_end())
        })
    }

    /// What may be reported: see the module documentation.
    pub fn positions(&self) -> Positions {
        let named = self.named;
        let durable = if self.config.sync { self.synced } else { named };
        // The verified end is MAXALIGNed; the padding after a record is no
        // data, so a position inside it covers the record.
        let verified = self.verifier.verified_end();
        let known = |lsn: Lsn| {
            if self.config.start_is_durable || lsn > self.config.start {
                lsn
            } else {
                Lsn::INVALID
            }
        };
        let mut flush = known(verified.min(durable.max_align()));
        // A filled segment waits for its rename: until then a slot must not
        // move past it (after a crash the segment would still be `.partial`,
        // the next start would ask the server for it again, and the server
        // may have removed it), so flush stops one byte short of its end.
        if let Some(end) = self.unrenamed_end {
            flush = flush.min(Lsn(end.0 - 1));
        }
        Positions {
            write: known(verified.min(named.max_align())),
            flush,
        }
    }

    /// Ends the stream: completes a filled segment, makes the open one durable
    /// and keeps its `.partial` name, and removes a prepared file not used.
    pub fn close(mut self) -> Result<Positions, SinkError> {
        self.preparer.shut_down();
        self.complete_filled()?;
        if let Some(segment) = self.segment.take() {
            // A direct segment has now become an ordinary `.partial` too;
            // a compressed one still aside was dropped (its old file kept).
            if segment.close_partial()? {
                self.named = self.position;
                self.mark_synced();
            }
        }
        Ok(self.positions())
    }

    fn mark_synced(&mut self) {
        if self.config.sync {
            self.synced = self.named;
        }
    }

    fn current_segment(&mut self) -> Result<&mut SegmentSink, SinkError> {
        let segment = match self.segment.take() {
            Some(segment) => segment,
            None => self.next_segment()?,
        };
        Ok(self.segment.insert(segment))
    }

    /// Opens the segment at the current position: installed from the prepared
    /// file when there is one (the first of a session is opened directly: it
    /// may be a `.partial` being resumed), and asks for the one after it.
    fn next_segment(&mut self) -> Result<SegmentSink, SinkError> {
        // A filled segment is renamed before the next one gets its name, so a
        // crash never leaves it `.partial` behind a newer `.partial`.
        self.complete_filled()?;
        let seg_size = self.config.segment_size;
        let segno = self.position.segment_number(seg_size);
        if self.config.compression.method != Compression::None {
            // Nothing to prepare: a compressed file starts empty.
            return Ok(SegmentSink::Compressed(Box::new(CompressedWriter::open(
                &self.config.directory,
                self.config.timeline,
                segno,
                seg_size,
                self.config.sync,
                self.config.compression,
            )?)));
        }
        let prepared = self.preparer.take(segno);
        if self.server_end.0 >= self.position.0.saturating_add(seg_size) {
            // Catch-up: the whole segment is there to stream. (A prepared
            // file, if any, is dropped first: it has the same temporary name.)
            drop(prepared);
            return Ok(SegmentSink::Plain(SegmentWriter::create_direct(
                &self.config.directory,
                self.config.timeline,
                segno,
                seg_size,
                self.config.sync,
            )?));
        }
        let writer = match prepared {
            Some(Ok(prepared)) => SegmentWriter::install(prepared)?,
            // A disk that fails to take zeros will not take WAL either: end
            // the session (the next one retries after a backoff).
            Some(Err(e)) => return Err(e.into()),
            None => self.open_segment(segno)?,
        };
        self.preparer.request(segno + 1);
        Ok(SegmentSink::Plain(writer))
    }

    fn open_segment(&self, segno: SegNo) -> Result<SegmentWriter, ArchiveError> {
        SegmentWriter::open(
            &self.config.directory,
            self.config.timeline,
            segno,
            self.config.segment_size,
            self.config.sync,
        )
    }

    /// Logs, once, that the stream began with the continuation of a record
    /// whose beginning the archive does not have, so that record went
    /// unchecked (a fresh archive starting mid-record).
    fn log_skipped_continuation(&mut self) {
        if let Some((page, len)) = self.verifier.skipped_continuation() {
            self.report_skip = false;
            tracing::info!(
                "the stream starts at {page} inside a record begun earlier, which the archive does not hold: its last {len} bytes cannot be checked (every later record is)"
            );
        } else if self.verifier.position().0 >= self.config.start.0 + LONG_HEADER_SIZE as u64 {
            // The first page header (a long one: the start is a segment
            // boundary) was read: no continuation to skip.
            self.report_skip = false;
        }
    }

    fn verify_error(&self, error: VerifyError) -> SinkError {
        let seg = self.config.segment_size;
        SinkError::Verify {
            offset: error.lsn.segment_offset(seg),
            file: wal_file_name(self.config.timeline, error.lsn.segment_number(seg), seg),
            verified: self.verifier.verified_end(),
            began_in_archive: error.lsn < self.config.start,
            error,
        }
    }
}

impl Drop for WalSink {
    fn drop(&mut self) {
        self.preparer.shut_down();
    }
}

/// Pads the next segment file on a helper thread while the current one is
/// being written, so crossing a segment boundary costs a rename, not 16 MB of
/// zeros and an fsync. At most one request is in flight.
struct Preparer {
    requests: Option<mpsc::Sender<SegNo>>,
    results: mpsc::Receiver<Result<PreparedSegment, ArchiveError>>,
    pending: Option<SegNo>,
    thread: Option<JoinHandle<()>>,
}

impl Preparer {
    /// No thread: every segment is opened when reached (compressed ones).
    fn disabled() -> Preparer {
        let (_, results) = mpsc::channel();
        Preparer {
            requests: None,
            results,
            pending: None,
            thread: None,
        }
    }

    fn new(config: &SinkConfig) -> Preparer {
        let (req_tx, req_rx) = mpsc::channel::<SegNo>();
        let (res_tx, res_rx) = mpsc::channel();
        let (dir, tli) = (config.directory.clone(), config.timeline);
        let (seg_size, sync) = (config.segment_size, config.sync);
        let thread = std::thread::Builder::new()
            .name(format!("walrcv-prepare-tl{tli}"))
            .spawn(move || {
                while let Ok(segno) = req_rx.recv() {
                    let prepared = PreparedSegment::create(&dir, tli, segno, seg_size, sync);
                    // When the sink is gone, dropping the result removes the file.
                    if res_tx.send(prepared).is_err() {
                        break;
                    }
                }
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(
                    "no segment preparation thread ({e}): segments are created when reached"
                );
                None
            }
        };
        Preparer {
            requests: thread.as_ref().map(|_| req_tx),
            results: res_rx,
            pending: None,
            thread,
        }
    }

    /// Starts preparing `segno` (no-op without the thread).
    fn request(&mut self, segno: SegNo) {
        if self.pending.is_some() {
            return;
        }
        if let Some(tx) = &self.requests {
            if tx.send(segno).is_ok() {
                self.pending = Some(segno);
            }
        }
    }

    /// The prepared `segno`, waiting for it if it is still being made (only
    /// when the stream outruns the padding of one segment: the wait is
    /// bounded by writing and fsyncing one segment of zeros); `None` when it
    /// was not requested (a stale one is dropped, which removes it).
    fn take(&mut self, segno: SegNo) -> Option<Result<PreparedSegment, ArchiveError>> {
        let pending = self.pending.take()?;
        let result = self.results.recv().ok()?;
        (pending == segno).then_some(result)
    }

    /// Stops the thread and removes what it prepared but nobody used.
    fn shut_down(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("the segment preparation thread panicked");
            }
        }
        // Dropping the results removes their temporary files.
        while self.results.try_recv().is_ok() {}
        self.pending = None;
    }
}

#[cfg(test)]
mod tests;
