//! The WAL before a resume point, fed to the verifier so that the record in
//! progress there is checked whole.
//!
//! walrcv resumes at a segment start (pg_receivewal's rule: the newest
//! `.partial` is streamed again from its start, or the segment after the newest
//! complete one). A record that began in an earlier segment continues there; a
//! verifier started at the resume point could only skip that continuation
//! unchecked, on almost every reconnect. The archive holds the record's
//! beginning: [`ArchiveDir::resume_verifier`] walks back from the resume point
//! one page header at a time (40 bytes read per page, normally one or two) to
//! the page on which that record began ([`page_starts_record`]), and feeds the
//! verifier the archive's WAL from there to the resume point. After an
//! `XLOG_SWITCH` (the page before the resume point is zeros) no record
//! continues, and the verifier requires that instead of reading the segment.
//! Only complete segments are read: a `.partial` may end in zeros that are not WAL, and the
//! bytes before a segment-start resume point are always in complete segments.
//! A compressed one (`.gz`, `.lz4`, `.zst`) is decompressed whole when the
//! walk reaches it (one segment in memory at a time). A file under a complete
//! name that is not a complete segment (a `.gz` damaged inside, which the
//! start-up scan, checking its trailer's size as pg_receivewal does, lets
//! through; a file damaged since the scan) is an error naming it
//! ([`ArchiveError::BadCompressedFile`], [`ArchiveError::WrongSize`]), as
//! damage in a plain segment is a verification error: taking it for a
//! missing segment would leave the record in progress unchecked.
//!
//! A record in progress whose beginning is not in the archive (a fresh archive
//! started mid-record at the server's position, or a segment moved away by
//! Barman) cannot be checked: [`Resume::NotInArchive`], and the verifier starts
//! at the resume point as before.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::inspect::read_complete_segment;
use super::names::{segment_file_name, Compression, SegmentName};
use super::{ArchiveDir, ArchiveError};
use crate::lsn::{wal_file_name, Lsn, SegNo, TimeLineId};
use crate::wal::history::{parse_history, timeline_of, HistoryEntry};
use crate::wal::page::LONG_HEADER_SIZE;
use crate::wal::verifier::{page_starts_record, MAX_RECORD_LENGTH};
use crate::wal::{Verifier, VerifierConfig, VerifyError};

/// How far back a walk may go: a record is at most [`MAX_RECORD_LENGTH`]
/// bytes, plus its page headers (well under as much again).
const MAX_WALK_BACK: u64 = 2 * MAX_RECORD_LENGTH as u64;

/// Bytes read at a time when feeding the verifier.
const READ_CHUNK: usize = 1 << 20;

/// How the verifier of a session starts.
#[derive(Debug)]
pub enum Resume {
    /// Fed with the archive's WAL from `from` (a page boundary) up to the
    /// resume point: every record ending after it is checked whole.
    Primed { verifier: Box<Verifier>, from: Lsn },
    /// The archive's own WAL before the resume point fails verification in
    /// the complete segment `path`: no retry can mend it.
    Corrupt { path: PathBuf, error: VerifyError },
    /// The archive does not hold the WAL just before the resume point (the
    /// segment named here is missing), or the resume point is LSN 0.
    NotInArchive { missing: Option<String> },
}

impl ArchiveDir {
    /// A verifier for a stream starting at `start` (a page boundary) on the
    /// timeline `config.timeline`, fed with the archive's WAL before `start`
    /// (see the module documentation). Blocking: reads files.
    pub fn resume_verifier(
        &self,
        config: VerifierConfig,
        start: Lsn,
    ) -> Result<Resume, ArchiveError> {
        let block = u64::from(config.block_size).max(1);
        let seg = config.segment_size.max(1);
        if start.0 < block || start.0 % block != 0 {
            return Ok(Resume::NotInArchive { missing: None });
        }
        let mut files = Files::new(self, config.timeline, seg);
        let mut page = start.0 - block;
        let mut header = [0u8; LONG_HEADER_SIZE];
        loop {
            let Some(file) = files.get(page / seg)? else {
                return Ok(Resume::NotInArchive {
                    missing: Some(files.wanted_name(page / seg)),
                });
            };
            file.read_at(&mut header, page % seg)?;
            if page == start.0 - block && header.iter().all(|&b| b == 0) {
                // The segment before ends in the zero tail of an XLOG_SWITCH
                // (a complete segment has no other zero page): no record
                // continues at `start`, which the verifier then requires.
                let verifier = Verifier::at_record_boundary(config, start, None);
                return Ok(Resume::Primed {
                    verifier: Box::new(verifier),
                    from: start,
                });
            }
            if page_starts_record(&header, Lsn(page), block) {
                break;
            }
            if page < block || start.0 - page >= MAX_WALK_BACK {
                return Ok(Resume::NotInArchive { missing: None });
            }
            page -= block;
        }
        let from = Lsn(page);
        let mut verifier = Verifier::at_page(config, from);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut at = page;
        while at < start.0 {
            let segno = at / seg;
            let Some(file) = files.get(segno)? else {
                return Ok(Resume::NotInArchive {
                    missing: Some(files.wanted_name(segno)),
                });
            };
            let end = start.0.min((segno + 1) * seg);
            // Bounded by READ_CHUNK, so the cast cannot truncate.
            let n = (end - at).min(READ_CHUNK as u64) as usize;
            let chunk = &mut buf[..n];
            file.read_at(chunk, at % seg)?;
            if let Err(error) = verifier.feed(chunk) {
                return Ok(Resume::Corrupt {
                    path: file.path.clone(),
                    error,
                });
            }
            at += n as u64;
        }
        Ok(Resume::Primed {
            verifier: Box::new(verifier),
            from,
        })
    }
}

/// One complete segment file, open for reading: plain, or decompressed.
struct OpenSegment {
    content: Content,
    path: PathBuf,
}

enum Content {
    File(File),
    Decompressed(Vec<u8>),
}

impl OpenSegment {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ArchiveError> {
        match &self.content {
            Content::File(file) => file
                .read_exact_at(buf, offset)
                .map_err(|e| ArchiveError::io(&self.path, e)),
            Content::Decompressed(bytes) => {
                let range = usize::try_from(offset)
                    .ok()
                    .and_then(|start| Some(start..start.checked_add(buf.len())?))
                    .filter(|r| r.end <= bytes.len());
                match range {
                    Some(r) => {
                        buf.copy_from_slice(&bytes[r]);
                        Ok(())
                    }
                    None => Err(ArchiveError::io(
                        &self.path,
                        std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                    )),
                }
            }
        }
    }
}

/// The complete segment files holding the WAL of the timeline `tip`'s history,
/// opened as the walk reaches them (the last one kept open).
struct Files<'a> {
    dir: &'a ArchiveDir,
    tip: TimeLineId,
    seg: u64,
    /// The tip's history (empty for timeline 1, or when its file is missing).
    history: Vec<HistoryEntry>,
    open: Option<(SegNo, Option<OpenSegment>)>,
}

impl<'a> Files<'a> {
    fn new(dir: &'a ArchiveDir, tip: TimeLineId, seg: u64) -> Self {
        let history = if tip > 1 {
            dir.read_history(tip)
                .and_then(|content| parse_history(&content).ok())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Files {
            dir,
            tip,
            seg,
            history,
            open: None,
        }
    }

    /// Timelines whose file of segment `segno` holds its WAL on the tip's
    /// history: the one the history gives for the segment's start, then the
    /// later ones of the history (the first segment of a timeline also holds
    /// the WAL before its switch point, copied from its parent).
    fn candidates(&self, segno: SegNo) -> Vec<TimeLineId> {
        let lsn = Lsn(segno.saturating_mul(self.seg));
        let first = timeline_of(&self.history, self.tip, lsn);
        let mut tlis: Vec<TimeLineId> = self
            .history
            .iter()
            .map(|e| e.parent)
            .chain(std::iter::once(self.tip))
            .filter(|&t| t >= first)
            .collect();
        tlis.dedup();
        tlis
    }

    fn wanted_name(&self, segno: SegNo) -> String {
        let tli = self.candidates(segno).first().copied().unwrap_or(self.tip);
        wal_file_name(tli, segno, self.seg)
    }

    /// The complete segment `segno` of the history, if the archive has it.
    fn get(&mut self, segno: SegNo) -> Result<Option<&OpenSegment>, ArchiveError> {
        if self.open.as_ref().is_none_or(|(s, _)| *s != segno) {
            let found = self.find(segno)?;
            self.open = Some((segno, found));
        }
        Ok(self.open.as_ref().and_then(|(_, f)| f.as_ref()))
    }

    fn find(&self, segno: SegNo) -> Result<Option<OpenSegment>, ArchiveError> {
        for tli in self.candidates(segno) {
            let Some(name) = SegmentName::parse(&wal_file_name(tli, segno, self.seg)) else {
                continue;
            };
            for compression in Compression::ALL {
                let path = self
                    .dir
                    .path()
                    .join(segment_file_name(&name, compression, false));
                if let Some(open) = self.open_complete(path, compression)? {
                    return Ok(Some(open));
                }
            }
        }
        Ok(None)
    }

    /// `path` if it is a complete segment (a compressed one decompressed);
    /// `None` when there is no such file. A file under a complete name that
    /// is not one (cut, corrupt, of another size) is an error naming it,
    /// never taken for a missing segment: the record continuing at the
    /// resume point would then go unchecked although its beginning is here.
    fn open_complete(
        &self,
        path: PathBuf,
        compression: Compression,
    ) -> Result<Option<OpenSegment>, ArchiveError> {
        if compression != Compression::None {
            return match read_complete_segment(&path, compression, self.seg) {
                Ok(Ok(bytes)) => Ok(Some(OpenSegment {
                    content: Content::Decompressed(bytes),
                    path,
                })),
                Ok(Err(what)) => Err(ArchiveError::BadCompressedFile { path, what }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(ArchiveError::io(path, e)),
            };
        }
        match File::open(&path) {
            Ok(file) => {
                let len = file
                    .metadata()
                    .map_err(|e| ArchiveError::io(&path, e))?
                    .len();
                if len != self.seg {
                    return Err(ArchiveError::WrongSize {
                        path,
                        size: len,
                        expected: self.seg,
                    });
                }
                Ok(Some(OpenSegment {
                    content: Content::File(file),
                    path,
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ArchiveError::io(path, e)),
        }
    }
}

#[cfg(test)]
mod tests;
