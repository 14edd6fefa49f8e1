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
//!   no file is a gap;
//! * files set aside after a failover (`*.divergent.tmp`): never part of the
//!   above (not segments, so never a gap or a timeline problem), reported as
//!   warnings, one range per tail ([`divergent`]), counted in the summary.
//!
//! A `.partial` file's valid WAL ends at the first failed check; zeros after it are the
//! normal end of WAL (reported as where the WAL ends, not as a problem). Non-zero bytes
//! after it are a problem, except stale pages of a recycled segment (wrong page
//! address), which are a warning.
//!
//! Compressed files (`.gz`, `.lz4`, `.zst`, complete or `.partial`) are
//! decompressed and verified like plain ones: a complete one must decompress
//! to exactly the segment size and finish its stream.
//!
//! The work is a pipeline of small stages: [`inventory`] (IO: the directory
//! through `ArchiveName::classify`, file bytes), [`params`] (segment and page
//! size, system identifier), [`timelines`] (history files), [`plan`] (the
//! sequence through the history, gaps), [`check`] (one file's bytes),
//! [`divergent`] (set-aside files as ranges),
//! [`report`] (the data) and [`render`] (human; JSON is the serialization).
//! Only the inventory and this module's glue touch the disk (or the bucket:
//! `walrcv verify s3://BUCKET/PREFIX` reads the same stages through
//! [`inventory::Source`], see [`verify_bucket`]).
//!
//! Files are read through memory maps. A progress line goes to stderr when it is a
//! terminal. The result is a [`VerifyReport`] (serializable to JSON) rendered for humans
//! by [`render_human`]; [`VerifyReport::exit_code`] gives 0 (no problem), 1 (problems)
//! or 2 (a file could not be read).

mod check;
mod divergent;
mod inventory;
mod lsn_json;
mod params;
mod plan;
mod render;
mod report;
mod timelines;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::lsn::{history_file_name, Lsn, SegNo, TimeLineId};
use crate::wal::verifier::{Check, Verifier};

pub use divergent::{DivergentFile, DivergentRange};
pub use render::render_human;
pub use report::{FileReport, Problem, ProblemKind, Severity, TimelineSummary, VerifyReport};

use check::{Content, Context, FileMeta};
use inventory::{Bytes, LoadError, Progress, SegFile, Source};

use crate::tools::bucket::{Bucket, BucketError};
use timelines::Timelines;

/// `walrcv verify` command-line arguments (mount with `#[command(flatten)]` or as a
/// subcommand's args).
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Archive directory to check, or `s3://BUCKET/PREFIX` for an archive
    /// uploaded by `walrcv stream --upload`.
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
    #[error(transparent)]
    Bucket(#[from] BucketError),
}

/// Runs `walrcv verify` as the CLI does: prints the report (human or JSON) on stdout
/// and returns the exit status (0 ok, 1 problems, 2 usage/IO error).
pub fn run(args: &VerifyArgs) -> i32 {
    let opts = VerifyOptions {
        progress: !args.no_progress,
        ..VerifyOptions::default()
    };
    let url = args.dir.to_str().filter(|d| d.starts_with("s3://"));
    let verified = match url {
        Some(url) => verify_bucket(url, &opts),
        None => verify_archive(&args.dir, &opts),
    };
    match verified {
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

/// Verifies the archive in `dir`. Only a missing or unreadable directory is an error;
/// everything wrong inside it is a [`Problem`] in the report.
pub fn verify_archive(dir: &Path, opts: &VerifyOptions) -> Result<VerifyReport, VerifyToolError> {
    let inventory = inventory::list(dir)?;
    Ok(verify_inventory(inventory, &Source::Dir, dir, opts))
}

/// Verifies the archive at `s3://BUCKET/PREFIX` (one LIST, then one object
/// at a time), as [`verify_archive`] does a directory. For a segment with
/// no complete object, the receivers' `.partial` copies compete: the one
/// with the longest valid WAL stands for the segment (as restore serves
/// it); copies superseded by the complete segment are not checked.
pub fn verify_bucket(url: &str, opts: &VerifyOptions) -> Result<VerifyReport, VerifyToolError> {
    let bucket = Bucket::open(url)?;
    let listing = bucket.list()?;
    let inventory = inventory::list_bucket(&listing);
    let label = PathBuf::from(bucket.url());
    Ok(verify_inventory(
        inventory,
        &Source::Bucket(&bucket),
        &label,
        opts,
    ))
}

fn verify_inventory(
    inventory: inventory::Inventory,
    source: &Source,
    dir: &Path,
    opts: &VerifyOptions,
) -> VerifyReport {
    let mut problems = inventory.problems;
    let headers: Vec<_> = inventory
        .segments
        .iter()
        // An unreadable file is reported when it is checked.
        .map(|s| {
            source
                .read_long_header(&s.path, s.compression, s.size)
                .ok()
                .flatten()
        })
        .collect();
    // An archive whose WAL was all set aside still has its sizes in those files.
    let params = params::parameters(&headers).or_else(|| {
        let aside: Vec<_> = inventory
            .divergent
            .iter()
            .map(|d| {
                source
                    .read_long_header(&d.path, d.compression, d.size)
                    .ok()
                    .flatten()
            })
            .collect();
        params::parameters(&aside)
    });
    let Some(params) = params else {
        problems.extend(
            inventory
                .segments
                .iter()
                .map(|s| Problem::no_parameters(&s.name, s.size)),
        );
        problems.extend(inventory.divergent.iter().map(|d| {
            Problem::divergent(
                &d.name,
                "set aside; no valid WAL long page header in any file: cannot tell its range"
                    .into(),
            )
        }));
        return VerifyReport {
            divergent_files: inventory.divergent.len(),
            ..empty_report(dir, problems)
        };
    };
    let ctx = Context {
        segment_size: params.segment_size,
        block_size: params.block_size,
        system_id: params.system_id,
        server_major: params.server_major,
        max_problems_per_file: opts.max_problems_per_file,
    };
    let named = with_segment_numbers(inventory.segments, ctx.segment_size, &mut problems);
    let named = longest_copies(named, source, &ctx, &mut problems);

    let histories = read_histories(source, &inventory.histories, &mut problems);
    let divergent = divergent_ranges(
        source,
        &inventory.divergent,
        &histories,
        &ctx,
        &mut problems,
    );
    let segment_timelines: Vec<TimeLineId> = named.iter().map(|s| s.tli).collect();
    let tl = timelines::timelines(&segment_timelines, &histories, &mut problems);
    for s in &named {
        problems.extend(timelines::segment_timeline_problems(
            &tl,
            &s.name,
            s.tli,
            s.segno,
            ctx.segment_size,
        ));
    }
    let slots: Vec<plan::Slot> = named
        .iter()
        .map(|s| plan::Slot {
            tli: s.tli,
            segno: s.segno,
            partial: s.partial,
        })
        .collect();
    let plan = plan::plan(&slots, &tl, ctx.segment_size);
    problems.extend(plan.gaps);

    let mut files = check_in_order(source, &named, &plan.order, &ctx, opts, &mut problems);
    problems.extend(branch_warnings(&files, &tl, ctx.segment_size));
    // Reclassify corruption found at a segment start because of the system identifier.
    for p in &mut problems {
        if p.check == Some(Check::SystemId) {
            p.kind = ProblemKind::SystemId;
        }
    }
    let timelines = summaries(source, &named, &files, &tl, &ctx);
    files.sort_by_key(|f| (f.segno, f.timeline, f.partial));
    problems.sort_by(|a, b| (a.lsn, &a.file).cmp(&(b.lsn, &b.file)));
    // Records of the verified sequence: a parent's `.partial` superseded by the child
    // timeline's copy of the same segment is not counted twice.
    let records = files
        .iter()
        .filter(|f| f.in_sequence)
        .map(|f| f.records)
        .sum();
    VerifyReport {
        directory: dir.to_path_buf(),
        system_id: ctx.system_id,
        segment_size: Some(ctx.segment_size),
        block_size: Some(ctx.block_size),
        server_major: ctx.server_major,
        newest_timeline: tl.newest,
        timelines,
        files,
        ok: !problems.iter().any(|p| p.severity == Severity::Error),
        problems,
        records,
        divergent_files: divergent.iter().map(|r| r.files.len()).sum(),
        divergent_bytes: divergent.iter().map(|r| r.bytes).sum(),
        divergent,
    }
}

/// The report of an archive where no segment size could be found.
fn empty_report(dir: &Path, problems: Vec<Problem>) -> VerifyReport {
    VerifyReport {
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
        divergent: Vec::new(),
        divergent_files: 0,
        divergent_bytes: 0,
    }
}

/// The segments whose names are valid for `segment_size`, with their
/// timeline and number; the others are problems.
fn with_segment_numbers(
    segments: Vec<SegFile>,
    segment_size: u64,
    problems: &mut Vec<Problem>,
) -> Vec<SegFile> {
    let mut named = Vec::new();
    for mut s in segments {
        match s.segment.segno(segment_size) {
            Some((tli, segno)) => {
                s.tli = tli;
                s.segno = segno;
                named.push(s);
            }
            None => problems.push(Problem::bad_name(&s.name, segment_size)),
        }
    }
    named
}

/// The set-aside files as ranges, each reported as a warning (after the
/// warnings about files that could not be measured).
fn divergent_ranges(
    source: &Source,
    entries: &[inventory::DivergentEntry],
    histories: &BTreeMap<TimeLineId, Option<Vec<u8>>>,
    ctx: &Context,
    problems: &mut Vec<Problem>,
) -> Vec<DivergentRange> {
    let measured = entries
        .iter()
        .filter_map(|d| measure_divergent(source, d, ctx.segment_size, problems))
        .collect();
    // Malformed history files are reported by the timelines stage.
    let parsed = histories
        .iter()
        .filter_map(|(&tli, content)| {
            let entries = crate::wal::history::parse_history(content.as_deref()?).ok()?;
            Some((tli, entries))
        })
        .collect();
    let ranges = divergent::ranges(measured, &parsed, ctx.segment_size);
    problems.extend(ranges.iter().map(Problem::divergent_range));
    ranges
}

/// Where a set-aside file's data ends. A file that cannot be read is taken
/// to run to its segment end (with a warning: it is set aside, so the
/// archive's own history is not affected).
fn measure_divergent(
    source: &Source,
    d: &inventory::DivergentEntry,
    segment_size: u64,
    problems: &mut Vec<Problem>,
) -> Option<divergent::Measured> {
    let warn = |message: String| Problem::divergent(&d.name, message);
    let Some((timeline, segno)) = d.segment.segno(segment_size) else {
        problems.push(warn(format!(
            "set aside, but not a valid segment name for {segment_size} byte segments"
        )));
        return None;
    };
    let start = crate::lsn::segment_start_lsn(segno, segment_size);
    // Saturating: the very last segment ends at 2^64.
    let segment_end = Lsn(start.0.saturating_add(segment_size));
    let data_end = if !d.partial {
        segment_end
    } else {
        // Decoded strictly, as before the bucket source: a set-aside
        // file's name does not end in `.partial`.
        match source.load(&d.path, d.compression, false) {
            Ok(bytes) => divergent::partial_data_end(start, bytes.as_slice(), segment_size),
            Err(e) => {
                let why = match e {
                    LoadError::Io(e) => format!("cannot read: {e}"),
                    LoadError::Decompress(e) => format!("cannot decompress: {e}"),
                };
                problems.push(warn(format!(
                    "set aside; {why}; its data is taken to run to the segment end"
                )));
                segment_end
            }
        }
    };
    Some(divergent::Measured {
        name: d.name.clone(),
        timeline,
        segno,
        partial: d.partial,
        size: d.size,
        data_end,
    })
}

/// Each history file's (decompressed) content; `None` when it could not be
/// read (reported here).
fn read_histories(
    source: &Source,
    files: &BTreeMap<TimeLineId, inventory::HistoryFile>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<TimeLineId, Option<Vec<u8>>> {
    files
        .iter()
        .map(|(&tli, h)| {
            let name = history_file_name(tli);
            let content = match source.load(&h.path, h.compression, false) {
                Ok(bytes) => Some(bytes.as_slice().to_vec()),
                Err(LoadError::Io(e)) => {
                    problems.push(Problem::unreadable(&name, &e));
                    None
                }
                Err(LoadError::Decompress(e)) => {
                    problems.push(Problem::history(&name, format!("cannot decompress: {e}")));
                    None
                }
            };
            (tli, content)
        })
        .collect()
}

/// Checks the files in the plan's order, carrying the verifier along the
/// sequence while it stays unbroken.
fn check_in_order(
    source: &Source,
    named: &[SegFile],
    order: &[(usize, bool)],
    ctx: &Context,
    opts: &VerifyOptions,
    problems: &mut Vec<Problem>,
) -> Vec<FileReport> {
    let mut files: Vec<FileReport> = Vec::new();
    let mut progress = Progress::new(opts.progress);
    let mut verifier: Option<Verifier> = None;
    let mut prev_in_seq: Option<(SegNo, bool)> = None; // (segno, complete)
    for (done, &(idx, chained)) in order.iter().enumerate() {
        let Some(s) = named.get(idx) else { continue };
        progress.file(done, named.len(), &s.name, s.size);
        let seg_start = Lsn(s.segno.saturating_mul(ctx.segment_size));
        let continues = chained
            && prev_in_seq.is_some_and(|(p, complete)| complete && p + 1 == s.segno)
            && verifier
                .as_ref()
                .is_some_and(|v| v.position() == seg_start && v.error().is_none());
        let v = match (continues, verifier.take()) {
            (true, Some(mut v)) => {
                v.set_timeline(s.tli);
                v
            }
            _ => Verifier::at_segment_start(ctx.config(s.tli), seg_start),
        };
        let meta = FileMeta {
            name: &s.name,
            tli: s.tli,
            segno: s.segno,
            partial: s.partial,
            compression: s.compression,
            size: s.size,
            in_sequence: chained,
        };
        let content = match source.load(&s.path, s.compression, s.partial) {
            Ok(b) => b,
            Err(e) => {
                problems.push(load_problem(e, &meta, seg_start));
                files.push(check::empty_report(&meta));
                if chained {
                    prev_in_seq = Some((s.segno, false));
                }
                continue;
            }
        };
        let finished = match &content {
            Bytes::Decoded(d) => d.finished,
            Bytes::Empty | Bytes::Map(_) | Bytes::Owned(_) => true,
        };
        let checked = check::check_file(
            &meta,
            Content {
                bytes: content.as_slice(),
                finished,
            },
            v,
            ctx,
        );
        problems.extend(checked.problems);
        if chained {
            prev_in_seq = Some((s.segno, checked.complete));
            verifier = checked.complete.then_some(checked.verifier);
        }
        files.push(checked.report);
    }
    progress.done();
    files
}

/// An ancestor's WAL continuing past the switch point (in its switch segment) is a
/// branch that the newer timeline does not contain.
fn branch_warnings(files: &[FileReport], tl: &Timelines, segment_size: u64) -> Vec<Problem> {
    let tip = tl.tip;
    let mut problems = Vec::new();
    for f in files.iter().filter(|f| f.timeline != tip) {
        let Some((_, Some(end))) = tl.range(f.timeline) else {
            continue;
        };
        let valid = f.valid_end.or(f.verified_end);
        if f.segno == end.0 / segment_size && valid.is_some_and(|v| v > end) {
            problems.push(Problem::history_warning(
                &f.name,
                format!(
                    "timeline {} WAL continues to {} past its switch point {end}: those records are not part of timeline {tip}",
                    f.timeline,
                    render::opt_lsn(valid)
                ),
            ));
        }
    }
    problems
}

/// Per-timeline summaries; the first LSN is read again from the timeline's
/// first file.
fn summaries(
    source: &Source,
    named: &[SegFile],
    files: &[FileReport],
    tl: &Timelines,
    ctx: &Context,
) -> Vec<TimelineSummary> {
    let tlis: BTreeSet<TimeLineId> = named.iter().map(|s| s.tli).collect();
    let mut timelines = Vec::new();
    for tli in tlis {
        let (parent, switchpoint) = tl.parent_of(tli);
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
        let mut of_timeline: Vec<&FileReport> =
            files.iter().filter(|f| f.timeline == tli).collect();
        for f in &of_timeline {
            sum.segments += 1;
            sum.partial_segments += u64::from(f.partial);
            sum.records += f.records;
            sum.bytes += f.size;
        }
        of_timeline.sort_by_key(|f| f.segno);
        if let Some(first) = of_timeline.first() {
            sum.first_lsn = first_record_lsn(source, named, first, ctx);
        }
        if let Some(last) = of_timeline.last() {
            sum.last_lsn = last.verified_end;
        }
        timelines.push(sum);
    }
    timelines
}

fn first_record_lsn(
    source: &Source,
    named: &[SegFile],
    f: &FileReport,
    ctx: &Context,
) -> Option<Lsn> {
    let s = named.iter().find(|s| s.name == f.name)?;
    let bytes = source.load(&s.path, s.compression, s.partial).ok()?;
    check::first_record_start(bytes.as_slice(), f.timeline, f.segno, ctx)
}

/// Of the receivers' `.partial` copies of one segment (from a bucket), only
/// the one with the longest valid WAL stays: each is checked on its own
/// first. Files that are no copies pass through. What a dropped copy's own
/// check found is reported as a warning: restore never serves that copy, but
/// a receiver that uploads damaged WAL has a problem of its own.
fn longest_copies(
    named: Vec<SegFile>,
    source: &Source,
    ctx: &Context,
    problems: &mut Vec<Problem>,
) -> Vec<SegFile> {
    let mut groups: BTreeMap<(TimeLineId, SegNo), Vec<usize>> = BTreeMap::new();
    for (i, s) in named.iter().enumerate() {
        if s.copy_of.is_some() {
            groups.entry((s.tli, s.segno)).or_default().push(i);
        }
    }
    let mut dropped = BTreeSet::new();
    for members in groups.values().filter(|m| m.len() > 1) {
        let checked: Vec<(usize, CopyCheck)> = members
            .iter()
            .filter_map(|&i| Some((i, check_copy(source, named.get(i)?, ctx))))
            .collect();
        // The longest; the first listed among equals.
        let best = checked
            .iter()
            .fold(None::<(usize, Lsn)>, |b, (i, c)| match b {
                Some((_, e)) if e >= c.valid_end => b,
                _ => Some((*i, c.valid_end)),
            })
            .map(|(i, _)| i);
        let best_name = best
            .and_then(|i| named.get(i))
            .map_or("another copy", |s| s.name.as_str());
        for (i, c) in checked.into_iter().filter(|(i, _)| Some(*i) != best) {
            dropped.insert(i);
            let superseded = c.problems.into_iter();
            problems.extend(superseded.map(|p| superseded_copy_problem(p, best_name)));
        }
    }
    named
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !dropped.contains(i))
        .map(|(_, s)| s)
        .collect()
}

/// A file that could not be loaded: unreadable (exit status 2), or a
/// compressed file that does not decode.
fn load_problem(e: LoadError, meta: &FileMeta, seg_start: Lsn) -> Problem {
    match e {
        LoadError::Io(e) => Problem::unreadable(meta.name, &e),
        LoadError::Decompress(e) => check::undecodable(meta, seg_start, &e.to_string()),
    }
}

/// A problem of a copy that a longer valid copy stands in for: a warning,
/// except a copy that could not be read (it might have been the longest).
fn superseded_copy_problem(p: Problem, best: &str) -> Problem {
    let severity = match p.kind {
        ProblemKind::Unreadable => p.severity,
        _ => Severity::Warning,
    };
    Problem {
        severity,
        message: format!(
            "{} (a receiver's .partial copy that restore does not use: \"{best}\" holds longer valid WAL)",
            p.message
        ),
        ..p
    }
}

/// One copy, checked on its own.
struct CopyCheck {
    /// Where its valid WAL ends (`Lsn(0)`: unreadable).
    valid_end: Lsn,
    problems: Vec<Problem>,
}

fn check_copy(source: &Source, s: &SegFile, ctx: &Context) -> CopyCheck {
    let seg_start = Lsn(s.segno.saturating_mul(ctx.segment_size));
    let meta = FileMeta {
        name: &s.name,
        tli: s.tli,
        segno: s.segno,
        partial: s.partial,
        compression: s.compression,
        size: s.size,
        in_sequence: false,
    };
    let content = match source.load(&s.path, s.compression, s.partial) {
        Ok(c) => c,
        Err(e) => {
            return CopyCheck {
                valid_end: Lsn(0),
                problems: vec![load_problem(e, &meta, seg_start)],
            }
        }
    };
    let finished = match &content {
        Bytes::Decoded(d) => d.finished,
        Bytes::Empty | Bytes::Map(_) | Bytes::Owned(_) => true,
    };
    let checked = check::check_file(
        &meta,
        Content {
            bytes: content.as_slice(),
            finished,
        },
        Verifier::at_segment_start(ctx.config(s.tli), seg_start),
        ctx,
    );
    let r = checked.report;
    CopyCheck {
        valid_end: r.valid_end.or(r.verified_end).unwrap_or(Lsn(0)),
        problems: checked.problems,
    }
}
