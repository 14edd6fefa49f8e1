//! `walrcv verify DIR`: checks a whole archive offline.
//!
//! What is checked:
//!
//! * every segment file (complete and `.partial`): page headers, record headers,
//!   CRC-32C, with the [`Verifier`] carried over from one segment to the next so that
//!   `xl_prev` continuity and records crossing segment boundaries are checked too;
//! * one system identifier throughout (the most common one wins; others are reported);
//!   segment and page size from the first long header;
//! * timeline history files parse, and the segments' timelines agree with them: every
//!   timeline with segments is the newest one or one of its ancestors, no segment of an
//!   ancestor lies after the ancestor's switch point, and the newest timeline has a
//!   history file when it is not 1;
//! * gaps: the segments are followed through the timeline history (for segment number
//!   `s`, the file of the timeline that owns the end of `s`, else a `.partial` of its
//!   parent at the switch segment); a segment number between the first and last with
//!   no file is a gap.
//!
//! A `.partial` file's valid WAL ends at the first failed check; zeros after it are the
//! normal end of WAL (reported as where the WAL ends, not as a problem). Non-zero bytes
//! after it are a problem, except stale pages of a recycled segment (wrong page
//! address), which are a warning.
//!
//! Files are read through memory maps. A progress line goes to stderr when it is a
//! terminal. The result is a [`VerifyReport`] (serializable to JSON) rendered for humans
//! by [`render_human`]; [`VerifyReport::exit_code`] gives 0 (no problem), 1 (problems)
//! or 2 (a file could not be read).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Serialize, Serializer};

use crate::lsn::{
    is_valid_segment_size, parse_history_file_name, parse_wal_file_name, wal_file_name, Lsn, SegNo,
    TimeLineId,
};
use crate::wal::history::{check_history_for, parse_history, timeline_range, HistoryEntry};
use crate::wal::page::{major_for_magic, PageHeader, LONG_HEADER_SIZE, XLP_LONG_HEADER};
use crate::wal::verifier::{Check, Verifier, VerifierConfig, VerifyError};

/// `walrcv verify` command-line arguments (mount with `#[command(flatten)]` or as a
/// subcommand's args).
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Archive directory to check.
    pub dir: PathBuf,
    /// Print the report as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Never print the progress line.
    #[arg(long)]
    pub no_progress: bool,
}

/// Options of [`verify_archive`].
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Show a progress line on stderr if it is a terminal.
    pub progress: bool,
    /// At most this many corruption problems per file (then one "more problems" line).
    pub max_problems_per_file: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            progress: true,
            max_problems_per_file: 10,
        }
    }
}

/// Errors that stop the tool before any verification (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum VerifyToolError {
    #[error("archive directory {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot read directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How bad a problem is. Only errors make the archive fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Kind of a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A WAL check failed (see `check`).
    Corrupt,
    /// A segment number is missing.
    Gap,
    /// A file has the wrong size (truncated or too long).
    WrongSize,
    /// A file with a WAL name holds no WAL (or no usable long header).
    NotWal,
    /// A segment of another database system.
    SystemId,
    /// History file unreadable, malformed, missing, or in conflict with the segments.
    History,
    /// A file could not be read.
    Unreadable,
    /// Bytes after the end of valid WAL in a `.partial` file.
    TrailingGarbage,
    /// A file name not valid for the archive's segment size, or a compressed file.
    Name,
}

/// One problem, with where it is.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub kind: ProblemKind,
    /// File name (relative to the archive directory; for a gap, the missing name).
    pub file: String,
    /// Byte offset in the file, when meaningful.
    pub offset: Option<u64>,
    #[serde(serialize_with = "ser_opt_lsn")]
    pub lsn: Option<Lsn>,
    pub check: Option<Check>,
    pub message: String,
}

/// Per-file result.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub name: String,
    pub timeline: TimeLineId,
    pub segno: SegNo,
    pub partial: bool,
    pub size: u64,
    /// Records that completed in this file.
    pub records: u64,
    /// Whether the file is part of the verified sequence (else: superseded by a newer
    /// timeline's file of the same segment number, verified on its own).
    pub in_sequence: bool,
    /// Where valid WAL ends in this file (for `.partial` files, or where checks failed).
    #[serde(serialize_with = "ser_opt_lsn")]
    pub valid_end: Option<Lsn>,
    /// Why the valid WAL ends there (the failed check's message), if it does.
    pub end_reason: Option<String>,
    /// The verifier's verified end after this file (end of the last verified record, or
    /// the next segment start after a switch tail).
    #[serde(serialize_with = "ser_opt_lsn")]
    pub verified_end: Option<Lsn>,
}

/// Per-timeline summary.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineSummary {
    pub timeline: TimeLineId,
    /// Parent timeline and switch point into this one, from the history.
    pub parent: Option<TimeLineId>,
    #[serde(serialize_with = "ser_opt_lsn")]
    pub switchpoint: Option<Lsn>,
    /// Start of the first verified record in this timeline's files.
    #[serde(serialize_with = "ser_opt_lsn")]
    pub first_lsn: Option<Lsn>,
    /// Verified end (MAXALIGNed end of the last verified record) in this timeline's files.
    #[serde(serialize_with = "ser_opt_lsn")]
    pub last_lsn: Option<Lsn>,
    pub segments: u64,
    pub partial_segments: u64,
    pub records: u64,
    /// Bytes of the files read.
    pub bytes: u64,
}

/// Everything `walrcv verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub directory: PathBuf,
    pub system_id: Option<u64>,
    pub segment_size: Option<u64>,
    pub block_size: Option<u32>,
    pub server_major: Option<u32>,
    /// The newest timeline found (segments or history files).
    pub newest_timeline: Option<TimeLineId>,
    pub timelines: Vec<TimelineSummary>,
    pub files: Vec<FileReport>,
    pub problems: Vec<Problem>,
    /// Records verified in the sequence of files followed through the timeline history
    /// (records of a superseded parent `.partial` are in its timeline's summary only).
    pub records: u64,
    /// Whether no problem of severity error was found.
    pub ok: bool,
}

impl VerifyReport {
    /// Problems of severity [`Severity::Error`].
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }

    /// 0: no error; 1: problems; 2: a file could not be read.
    pub fn exit_code(&self) -> i32 {
        if self
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Unreadable)
        {
            2
        } else if self.ok {
            0
        } else {
            1
        }
    }
}

fn ser_opt_lsn<S: Serializer>(v: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(l) => s.serialize_str(&l.to_string()),
        None => s.serialize_none(),
    }
}

/// Runs `walrcv verify` as the CLI does: prints the report (human or JSON) on stdout
/// and returns the exit status (0 ok, 1 problems, 2 usage/IO error).
pub fn run(args: &VerifyArgs) -> i32 {
    let opts = VerifyOptions {
        progress: !args.no_progress,
        ..VerifyOptions::default()
    };
    match verify_archive(&args.dir, &opts) {
        Ok(report) => {
            let text = if args.json {
                serde_json::to_string_pretty(&report)
                    .map(|s| s + "\n")
                    .unwrap_or_default()
            } else {
                render_human(&report)
            };
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => {
                    eprintln!("walrcv verify: cannot write the report: {e}");
                    return 2;
                }
            }
            report.exit_code()
        }
        Err(e) => {
            eprintln!("walrcv verify: {e}");
            2
        }
    }
}

// ---------------------------------------------------------------------------- scan

#[derive(Debug, Clone)]
struct SegFile {
    name: String,
    path: PathBuf,
    partial: bool,
    size: u64,
    /// (timeline, segno) once the segment size is known.
    tli: TimeLineId,
    segno: SegNo,
}

fn is_hex24(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

struct Progress {
    enabled: bool,
    started: Instant,
    bytes: u64,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        // SAFETY: isatty only inspects the file descriptor.
        let tty = unsafe { libc::isatty(2) } == 1;
        Progress {
            enabled: enabled && tty,
            started: Instant::now(),
            bytes: 0,
        }
    }

    fn file(&mut self, i: usize, n: usize, name: &str, size: u64) {
        self.bytes += size;
        if self.enabled {
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            eprint!(
                "\r\x1b[Kverifying {name} ({}/{n}, {:.0} MB/s)",
                i + 1,
                self.bytes as f64 / secs / 1e6
            );
        }
    }

    fn done(&self) {
        if self.enabled {
            eprint!("\r\x1b[K");
        }
    }
}

/// A read-only view of a file's bytes.
enum Bytes {
    Empty,
    Map(memmap2::Mmap),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Empty => &[],
            Bytes::Map(m) => m,
        }
    }
}

fn read_file(path: &Path) -> std::io::Result<Bytes> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(Bytes::Empty);
    }
    // SAFETY: the archive is not expected to change under us; if another process
    // truncates a file while we read it, we may get SIGBUS, as any mmap reader would.
    let m = unsafe { memmap2::MmapOptions::new().map(&f)? };
    #[cfg(unix)]
    {
        let _ = m.advise(memmap2::Advice::Sequential);
    }
    Ok(Bytes::Map(m))
}

fn read_long_header(path: &Path) -> std::io::Result<Option<PageHeader>> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut buf = [0u8; LONG_HEADER_SIZE];
    let mut have = 0;
    while have < buf.len() {
        let n = f.read(buf.get_mut(have..).unwrap_or(&mut []))?;
        if n == 0 {
            break;
        }
        have += n;
    }
    Ok(PageHeader::parse(buf.get(..have).unwrap_or(&[])).filter(|h| h.info & XLP_LONG_HEADER != 0))
}

/// Verifies the archive in `dir`. Only a missing or unreadable directory is an error;
/// everything wrong inside it is a [`Problem`] in the report.
pub fn verify_archive(dir: &Path, opts: &VerifyOptions) -> Result<VerifyReport, VerifyToolError> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            VerifyToolError::NotFound {
                path: dir.to_path_buf(),
            }
        } else {
            VerifyToolError::ReadDir {
                path: dir.to_path_buf(),
                source: e,
            }
        }
    })?;
    if !meta.is_dir() {
        return Err(VerifyToolError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let rd = std::fs::read_dir(dir).map_err(|e| VerifyToolError::ReadDir {
        path: dir.to_path_buf(),
        source: e,
    })?;

    let mut problems: Vec<Problem> = Vec::new();
    let mut segs: Vec<SegFile> = Vec::new();
    let mut histories: BTreeMap<TimeLineId, PathBuf> = BTreeMap::new();
    for entry in rd {
        let entry = entry.map_err(|e| VerifyToolError::ReadDir {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let (base, partial) = match name.strip_suffix(".partial") {
            Some(b) => (b, true),
            None => (name.as_str(), false),
        };
        if is_hex24(base) {
            let size = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m.len(),
                Ok(_) => continue,
                Err(e) => {
                    problems.push(unreadable(&name, &e));
                    continue;
                }
            };
            segs.push(SegFile {
                name,
                path,
                partial,
                size,
                tli: 0,
                segno: 0,
            });
        } else if let Some(tli) = parse_history_file_name(&name) {
            histories.insert(tli, path);
        } else if [".gz", ".lz4", ".zst", ".gz.partial", ".lz4.partial"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(is_hex24))
        {
            problems.push(Problem {
                severity: Severity::Warning,
                kind: ProblemKind::Name,
                file: name.clone(),
                offset: None,
                lsn: None,
                check: None,
                message: "compressed segment: not verified".into(),
            });
        }
    }
    segs.sort_by(|a, b| a.name.cmp(&b.name));

    // Parameters: segment size and page size from the first usable long header; system
    // identifier by majority.
    let mut params: Option<(u64, u32, u16)> = None;
    let mut sysids: Vec<(u64, usize)> = Vec::new();
    for s in &segs {
        match read_long_header(&s.path) {
            Ok(Some(h)) => {
                let Some(l) = h.long else { continue };
                let seg_ok = is_valid_segment_size(u64::from(l.segment_size));
                let blk_ok =
                    l.block_size.is_power_of_two() && (1024..=65536).contains(&l.block_size);
                if major_for_magic(h.magic).is_none() || !seg_ok || !blk_ok {
                    continue;
                }
                if params.is_none() {
                    params = Some((u64::from(l.segment_size), l.block_size, h.magic));
                }
                match sysids.iter_mut().find(|(id, _)| *id == l.system_id) {
                    Some((_, n)) => *n += 1,
                    None => sysids.push((l.system_id, 1)),
                }
            }
            Ok(None) => {}
            Err(_) => {} // reported when the file is verified
        }
    }
    let system_id = sysids.iter().max_by_key(|(_, n)| *n).map(|(id, _)| *id);
    let Some((seg_size, blcksz, magic)) = params else {
        for s in &segs {
            problems.push(Problem {
                severity: Severity::Error,
                kind: ProblemKind::NotWal,
                file: s.name.clone(),
                offset: Some(0),
                lsn: None,
                check: None,
                message: if s.size == 0 {
                    "empty file".into()
                } else {
                    "no valid WAL long page header in any segment: cannot tell the segment size"
                        .into()
                },
            });
        }
        let report = VerifyReport {
            directory: dir.to_path_buf(),
            system_id: None,
            segment_size: None,
            block_size: None,
            server_major: None,
            newest_timeline: None,
            timelines: Vec::new(),
            files: Vec::new(),
            records: 0,
            ok: !problems.iter().any(|p| p.severity == Severity::Error),
            problems,
        };
        return Ok(report);
    };
    let server_major = major_for_magic(magic);

    let mut named: Vec<SegFile> = Vec::new();
    for mut s in segs {
        let base = s.name.trim_end_matches(".partial");
        match parse_wal_file_name(base, seg_size) {
            Some((tli, segno)) => {
                s.tli = tli;
                s.segno = segno;
                named.push(s);
            }
            None => problems.push(Problem {
                severity: Severity::Error,
                kind: ProblemKind::Name,
                file: s.name.clone(),
                offset: None,
                lsn: None,
                check: None,
                message: format!("not a valid segment name for {} byte segments", seg_size),
            }),
        }
    }

    // Timelines and histories.
    let newest = named
        .iter()
        .map(|s| s.tli)
        .chain(histories.keys().copied())
        .max();
    let mut history: Vec<HistoryEntry> = Vec::new();
    let mut parsed_histories: HashMap<TimeLineId, Vec<HistoryEntry>> = HashMap::new();
    for (&tli, path) in &histories {
        let name = crate::lsn::history_file_name(tli);
        match std::fs::read(path) {
            Err(e) => problems.push(unreadable(&name, &e)),
            Ok(content) => match parse_history(&content) {
                Err(e) => problems.push(history_problem(
                    &name,
                    format!("malformed history file: {e}"),
                )),
                Ok(entries) => {
                    if let Err(m) = check_history_for(tli, &entries) {
                        problems.push(history_problem(&name, m));
                    }
                    parsed_histories.insert(tli, entries);
                }
            },
        }
    }
    if let Some(tip) = newest {
        match parsed_histories.get(&tip) {
            Some(h) => history = h.clone(),
            None if tip > 1 && !histories.contains_key(&tip) => problems.push(history_problem(
                &crate::lsn::history_file_name(tip),
                format!("timeline {tip} has segments but no history file"),
            )),
            None => {}
        }
        // Older history files must be prefixes of the newest one.
        for (&tli, entries) in &parsed_histories {
            if tli != tip && !history.is_empty() {
                let prefix_ok = entries.len() <= history.len()
                    && entries.iter().zip(&history).all(|(a, b)| a == b)
                    && history.get(entries.len()).is_some_and(|e| e.parent == tli);
                if !prefix_ok {
                    problems.push(history_problem(
                        &crate::lsn::history_file_name(tli),
                        format!("history of timeline {tli} is not an ancestor of timeline {tip}'s history"),
                    ));
                }
            }
        }
    }
    let tip = newest.unwrap_or(1);
    // Without the newest timeline's history (already reported), timelines are assumed
    // to follow each other in numeric order.
    let history_known = tip == 1 || parsed_histories.contains_key(&tip);
    let in_chain =
        |tli: TimeLineId| !history_known || tli == tip || history.iter().any(|e| e.parent == tli);
    let tl_range = |tli: TimeLineId| timeline_range(&history, tip, tli);
    let seg_of = |l: Lsn| l.0 / seg_size;

    for s in &named {
        if !in_chain(s.tli) {
            problems.push(history_problem(
                &s.name,
                format!("timeline {} is not in the history of timeline {tip}", s.tli),
            ));
        } else if let Some((start, end)) = tl_range(s.tli) {
            if let Some(end) = end {
                // The switch segment of an ancestor may exist (as .partial or complete);
                // anything after it is WAL of a forked-off branch.
                if s.segno > seg_of(end) {
                    problems.push(history_problem(
                        &s.name,
                        format!(
                            "segment of timeline {} after its switch point {end} (timeline {tip}'s history moved on)",
                            s.tli
                        ),
                    ));
                }
            }
            if start.0 != 0 && s.segno < seg_of(start) {
                problems.push(Problem {
                    severity: Severity::Warning,
                    ..history_problem(
                        &s.name,
                        format!(
                            "segment of timeline {} before the timeline began at {start}",
                            s.tli
                        ),
                    )
                });
            }
        }
    }

    // The sequence to verify: per segment number, the owning timeline's file.
    let mut by_segno: BTreeMap<SegNo, Vec<usize>> = BTreeMap::new();
    for (i, s) in named.iter().enumerate() {
        if in_chain(s.tli) {
            by_segno.entry(s.segno).or_default().push(i);
        }
    }
    let owner = |segno: SegNo| -> TimeLineId {
        if !history_known {
            return by_segno
                .get(&segno)
                .and_then(|c| c.iter().filter_map(|&i| named.get(i).map(|s| s.tli)).max())
                .unwrap_or(tip);
        }
        let last_byte = Lsn(segno.saturating_mul(seg_size).saturating_add(seg_size - 1));
        crate::wal::history::timeline_of(&history, tip, last_byte)
    };
    let mut sequence: Vec<usize> = Vec::new();
    // Missing segment numbers, as runs (first, last): iterating over present numbers only,
    // so that far-apart names cannot make this loop long.
    let mut gaps: Vec<(SegNo, SegNo)> = Vec::new();
    let mut add_gap = |from: SegNo, to: SegNo| match gaps.last_mut() {
        Some(g) if g.1 + 1 == from => g.1 = to,
        _ => gaps.push((from, to)),
    };
    let last = by_segno.keys().next_back().copied().unwrap_or(0);
    let mut prev: Option<SegNo> = None;
    for (&segno, cands) in &by_segno {
        if let Some(p) = prev {
            if segno > p + 1 {
                add_gap(p + 1, segno - 1);
            }
        }
        prev = Some(segno);
        let own = owner(segno);
        let pick = cands
            .iter()
            .copied()
            .filter(|&i| named.get(i).is_some_and(|s| s.tli == own))
            .min_by_key(|&i| named.get(i).map(|s| s.partial))
            .or_else(|| {
                // An ancestor's file at the segment of a switch point, when the archive
                // ends there (the child's copy of the segment has not arrived yet);
                // before later segments, the child's copy missing is a gap.
                if segno != last {
                    return None;
                }
                cands
                    .iter()
                    .copied()
                    .max_by_key(|&i| named.get(i).map(|s| (s.tli, !s.partial)))
            });
        match pick {
            Some(i) => sequence.push(i),
            None => add_gap(segno, segno),
        }
    }
    for &(from, to) in &gaps {
        let own = owner(from);
        let name = wal_file_name(own, from, seg_size);
        let message = if from == to {
            format!("missing segment {name} (timeline {own}): gap in the WAL")
        } else {
            format!(
                "missing segments {name} to {} ({} segments): gap in the WAL",
                wal_file_name(owner(to), to, seg_size),
                to - from + 1
            )
        };
        problems.push(Problem {
            severity: Severity::Error,
            kind: ProblemKind::Gap,
            file: name,
            offset: None,
            lsn: Some(Lsn(from.saturating_mul(seg_size))),
            check: None,
            message,
        });
    }
    let in_sequence: BTreeSet<usize> = sequence.iter().copied().collect();

    // Verification.
    let config_for = |tli: TimeLineId| VerifierConfig {
        segment_size: seg_size,
        block_size: blcksz,
        system_id,
        timeline: tli,
        server_major,
    };
    let mut files: Vec<FileReport> = Vec::new();
    let mut progress = Progress::new(opts.progress);
    let total = named.len();
    let mut done = 0usize;
    let mut verifier: Option<Verifier> = None;
    let mut order: Vec<(usize, bool)> = sequence.iter().map(|&i| (i, true)).collect();
    order.extend(
        (0..named.len())
            .filter(|i| !in_sequence.contains(i))
            .map(|i| (i, false)),
    );
    let mut prev_in_seq: Option<(SegNo, bool)> = None; // (segno, complete)
    for (idx, chained) in order {
        let Some(s) = named.get(idx) else { continue };
        progress.file(done, total, &s.name, s.size);
        done += 1;
        let seg_start = Lsn(s.segno.saturating_mul(seg_size));
        let continues = chained
            && prev_in_seq.is_some_and(|(p, complete)| complete && p + 1 == s.segno)
            && verifier
                .as_ref()
                .is_some_and(|v| v.position() == seg_start && v.error().is_none());
        let mut v = match (continues, verifier.take()) {
            (true, Some(mut v)) => {
                v.set_timeline(s.tli);
                v
            }
            _ => Verifier::at_segment_start(config_for(s.tli), seg_start),
        };
        let mut fr = FileReport {
            name: s.name.clone(),
            timeline: s.tli,
            segno: s.segno,
            partial: s.partial,
            size: s.size,
            records: 0,
            in_sequence: chained,
            valid_end: None,
            end_reason: None,
            verified_end: None,
        };
        let bytes = match read_file(&s.path) {
            Ok(b) => b,
            Err(e) => {
                problems.push(unreadable(&s.name, &e));
                files.push(fr);
                if chained {
                    prev_in_seq = Some((s.segno, false));
                }
                continue;
            }
        };
        let data = bytes.as_slice();
        let data = data
            .get(..(seg_size.min(data.len() as u64) as usize))
            .unwrap_or(data);
        let complete_size = s.size == seg_size;
        if s.size == 0 {
            problems.push(Problem {
                severity: if s.partial {
                    Severity::Warning
                } else {
                    Severity::Error
                },
                kind: if s.partial {
                    ProblemKind::WrongSize
                } else {
                    ProblemKind::NotWal
                },
                file: s.name.clone(),
                offset: Some(0),
                lsn: Some(seg_start),
                check: None,
                message: "empty file".into(),
            });
        } else if s.size != seg_size && !s.partial {
            problems.push(Problem {
                severity: Severity::Error,
                kind: ProblemKind::WrongSize,
                file: s.name.clone(),
                offset: Some(s.size.min(seg_size)),
                lsn: Some(Lsn(seg_start.0 + s.size.min(seg_size))),
                check: None,
                message: format!(
                    "file has {} bytes, expected {seg_size}: {}",
                    s.size,
                    if s.size < seg_size {
                        "truncated segment"
                    } else {
                        "too long"
                    }
                ),
            });
        }
        let mut base = v.records();
        let mut per_file = 0usize;
        let mut suppressed = 0usize;
        let mut offset = 0usize;
        let mut ended: Option<VerifyError> = None;
        let mut resyncing = false;
        loop {
            let chunk = data.get(offset..).unwrap_or(&[]);
            let Err(e) = v.feed(chunk) else { break };
            if s.partial || !complete_size {
                // End of valid WAL in a partial (or truncated) file.
                ended = Some(e);
                break;
            }
            // While resynchronising after a failure, pages that do not verify belong to
            // the same damaged region: not reported again.
            let silent = resyncing && v.records() == 0;
            if !silent {
                if per_file < opts.max_problems_per_file {
                    problems.push(corrupt(&s.name, e.lsn.0.saturating_sub(seg_start.0), &e));
                } else {
                    suppressed += 1;
                }
                per_file += 1;
            }
            resyncing = true;
            if fr.valid_end.is_none() {
                fr.valid_end = Some(v.verified_end());
                fr.end_reason = Some(format!("{}: {}", e.check, e.detail));
            }
            // Resync at the next page after the failure.
            fr.records += v.records().saturating_sub(base);
            base = 0;
            let next_page = if e.check == Check::SwitchTail {
                // The tail runs to the segment end.
                seg_start.0 + seg_size
            } else {
                (e.lsn.0 / u64::from(blcksz) + 1) * u64::from(blcksz)
            };
            let next_off = next_page.saturating_sub(seg_start.0);
            if next_off >= data.len() as u64 {
                v = Verifier::at_page(config_for(s.tli), Lsn(seg_start.0 + data.len() as u64));
                break;
            }
            offset = next_off as usize;
            v = Verifier::at_page(config_for(s.tli), Lsn(next_page));
        }
        fr.records += v.records().saturating_sub(base);
        // A verifier restarted after a failure that verified nothing has no end to show.
        if per_file == 0 || v.records() > 0 {
            fr.verified_end = Some(v.verified_end());
        }
        if suppressed > 0 {
            problems.push(Problem {
                severity: Severity::Error,
                kind: ProblemKind::Corrupt,
                file: s.name.clone(),
                offset: None,
                lsn: None,
                check: None,
                message: format!("{suppressed} more problems in this file not shown"),
            });
        }
        if let Some(e) = ended {
            let end = v.verified_end();
            let off = end.0.saturating_sub(seg_start.0) as usize;
            let tail = data.get(off..).unwrap_or(&[]);
            let zero_after = tail.iter().all(|&b| b == 0);
            fr.valid_end = Some(end);
            fr.end_reason = Some(format!("{}: {}", e.check, e.detail));
            if !zero_after {
                let stale = e.check == Check::PageAddress;
                problems.push(Problem {
                    severity: if stale { Severity::Warning } else { Severity::Error },
                    kind: if e.check == Check::SystemId { ProblemKind::SystemId } else { ProblemKind::TrailingGarbage },
                    file: s.name.clone(),
                    offset: Some(e.lsn.0.saturating_sub(seg_start.0)),
                    lsn: Some(e.lsn),
                    check: Some(e.check),
                    message: format!(
                        "valid WAL ends at {end}; non-zero bytes follow ({} check failed at {}: {})",
                        e.check, e.lsn, e.detail
                    ),
                });
            }
        } else if s.partial {
            fr.valid_end = Some(v.verified_end());
            if v.in_record() {
                fr.end_reason = Some("file ends inside a record".into());
            }
        }
        if chained {
            prev_in_seq = Some((s.segno, complete_size && !s.partial));
            verifier = if complete_size && !s.partial {
                Some(v)
            } else {
                None
            };
        }
        files.push(fr);
    }
    progress.done();

    // An ancestor's WAL continuing past the switch point (in its switch segment) is a
    // branch that the newer timeline does not contain.
    for f in &files {
        if f.timeline == tip {
            continue;
        }
        let Some((_, Some(end))) = tl_range(f.timeline) else {
            continue;
        };
        let valid = f.valid_end.or(f.verified_end);
        if f.segno == seg_of(end) && valid.is_some_and(|v| v > end) {
            problems.push(Problem {
                severity: Severity::Warning,
                ..history_problem(
                    &f.name,
                    format!(
                        "timeline {} WAL continues to {} past its switch point {end}: those records are not part of timeline {tip}",
                        f.timeline,
                        opt_lsn(valid)
                    ),
                )
            });
        }
    }

    // Reclassify corruption found at a segment start because of the system identifier.
    for p in &mut problems {
        if p.check == Some(Check::SystemId) {
            p.kind = ProblemKind::SystemId;
        }
    }

    // Summaries per timeline.
    let mut timelines: Vec<TimelineSummary> = Vec::new();
    let tlis: BTreeSet<TimeLineId> = named.iter().map(|s| s.tli).collect();
    for tli in tlis {
        let (parent, switchpoint) = match history.iter().position(|e| e.parent == tli) {
            _ if tli == tip => (
                history.last().map(|e| e.parent),
                history.last().map(|e| e.switchpoint),
            ),
            Some(0) | None => (None, None),
            Some(i) => (
                history.get(i - 1).map(|e| e.parent),
                history.get(i - 1).map(|e| e.switchpoint),
            ),
        };
        let mut sum = TimelineSummary {
            timeline: tli,
            parent,
            switchpoint,
            first_lsn: None,
            last_lsn: None,
            segments: 0,
            partial_segments: 0,
            records: 0,
            bytes: 0,
        };
        for f in files.iter().filter(|f| f.timeline == tli) {
            sum.segments += 1;
            sum.partial_segments += u64::from(f.partial);
            sum.records += f.records;
            sum.bytes += f.size;
        }
        timelines.push(sum);
    }
    // First/last LSN per timeline: rerun-free approximation from file reports.
    for t in &mut timelines {
        let mut fs: Vec<&FileReport> = files.iter().filter(|f| f.timeline == t.timeline).collect();
        fs.sort_by_key(|f| f.segno);
        if let Some(first) = fs.first() {
            t.first_lsn = first_record_lsn(dir, first, seg_size, blcksz, system_id, server_major);
        }
        if let Some(last) = fs.last() {
            t.last_lsn = last.verified_end;
        }
    }
    files.sort_by_key(|f| (f.segno, f.timeline, f.partial));
    problems.sort_by(|a, b| (a.lsn, &a.file).cmp(&(b.lsn, &b.file)));
    // Records of the verified sequence: a parent's `.partial` superseded by the child
    // timeline's copy of the same segment is not counted twice.
    let records = files
        .iter()
        .filter(|f| f.in_sequence)
        .map(|f| f.records)
        .sum();
    Ok(VerifyReport {
        directory: dir.to_path_buf(),
        system_id,
        segment_size: Some(seg_size),
        block_size: Some(blcksz),
        server_major,
        newest_timeline: newest,
        timelines,
        files,
        ok: !problems.iter().any(|p| p.severity == Severity::Error),
        problems,
        records,
    })
}

/// Start of the first record in a file (verified on its own from the segment start).
fn first_record_lsn(
    dir: &Path,
    f: &FileReport,
    seg_size: u64,
    blcksz: u32,
    system_id: Option<u64>,
    server_major: Option<u32>,
) -> Option<Lsn> {
    let bytes = read_file(&dir.join(&f.name)).ok()?;
    let cfg = VerifierConfig {
        segment_size: seg_size,
        block_size: blcksz,
        system_id,
        timeline: f.timeline,
        server_major,
    };
    let mut v = Verifier::at_segment_start(cfg, Lsn(f.segno * seg_size));
    // Only the first records are needed: feed page by page until one is verified.
    for page in bytes.as_slice().chunks(blcksz as usize) {
        if v.feed(page).is_err() || v.first_record_start().is_some() {
            break;
        }
    }
    v.first_record_start()
}

fn unreadable(name: &str, e: &std::io::Error) -> Problem {
    Problem {
        severity: Severity::Error,
        kind: ProblemKind::Unreadable,
        file: name.to_string(),
        offset: None,
        lsn: None,
        check: None,
        message: format!("cannot read: {e}"),
    }
}

fn history_problem(name: &str, message: String) -> Problem {
    Problem {
        severity: Severity::Error,
        kind: ProblemKind::History,
        file: name.to_string(),
        offset: None,
        lsn: None,
        check: None,
        message,
    }
}

fn corrupt(name: &str, offset: u64, e: &VerifyError) -> Problem {
    Problem {
        severity: Severity::Error,
        kind: if e.check == Check::SystemId {
            ProblemKind::SystemId
        } else {
            ProblemKind::Corrupt
        },
        file: name.to_string(),
        offset: Some(offset),
        lsn: Some(e.lsn),
        check: Some(e.check),
        message: format!("{} check failed: {}", e.check, e.detail),
    }
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30))
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn opt_lsn(l: Option<Lsn>) -> String {
    l.map_or_else(|| "-".to_string(), |l| l.to_string())
}

/// The human-readable report.
pub fn render_human(r: &VerifyReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "archive {}", r.directory.display());
    match (r.system_id, r.segment_size, r.block_size) {
        (Some(id), Some(seg), Some(blk)) => {
            let _ = writeln!(
                s,
                "system identifier {id}, segment size {}, page size {blk}, PostgreSQL {}",
                human_bytes(seg),
                r.server_major
                    .map_or_else(|| "?".to_string(), |m| m.to_string())
            );
        }
        _ => {
            let _ = writeln!(s, "no WAL found");
        }
    }
    for t in &r.timelines {
        let from = match (t.parent, t.switchpoint) {
            (Some(p), Some(sp)) => format!(" (from timeline {p} at {sp})"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "timeline {}{from}: {} .. {}, {} segments ({} partial), {} records, {}",
            t.timeline,
            opt_lsn(t.first_lsn),
            opt_lsn(t.last_lsn),
            t.segments,
            t.partial_segments,
            t.records,
            human_bytes(t.bytes)
        );
    }
    for f in r
        .files
        .iter()
        .filter(|f| f.partial || f.end_reason.is_some())
    {
        let _ = writeln!(
            s,
            "  {}: valid WAL ends at {}{}",
            f.name,
            opt_lsn(f.valid_end),
            f.end_reason
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
    }
    let errors = r.errors().count();
    let warnings = r.problems.len() - errors;
    for p in &r.problems {
        let sev = match p.severity {
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
        };
        let mut at = p.file.clone();
        if let Some(o) = p.offset {
            let _ = write!(at, " offset {o} (0x{o:X})");
        }
        if let Some(l) = p.lsn {
            let _ = write!(at, " LSN {l}");
        }
        let _ = writeln!(s, "{sev}: {at}: {}", p.message);
    }
    if r.ok {
        let _ = writeln!(s, "OK: {} records verified, {warnings} warnings", r.records);
    } else {
        let _ = writeln!(
            s,
            "FAILED: {errors} problems, {warnings} warnings ({} records verified)",
            r.records
        );
    }
    s
}
