//! The IO shell of `walrcv restore`: list the archive, plan, read (memory-
//! mapped, or decompressed in memory), check, and write `%p` atomically.
//!
//! `%p` is written under a temporary name in its own directory (created with
//! `O_EXCL`) and renamed over `%p` once complete, so the startup process
//! never opens a half-written file. No fsync: PostgreSQL fetches the file
//! again after a crash (it is only a copy of archived WAL), and its own
//! `RestoreArchivedFile` does not ask for one either.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::archive::check::{
    check_history, check_partial, check_segment, Completeness, FileProblem, PartialCheck, ValidEnd,
};
use crate::archive::compression::{decompress, decompress_partial, DecompressError};
use crate::archive::names::{Compression, SegmentName};
use crate::lsn::{Lsn, TimeLineId, MAX_SEGMENT_SIZE};

use crate::wal::history::HistoryEntry;

use super::plan::{
    plan, set_aside_copies, switch_segment_copy, switch_segment_sources, Plan, Request, Source,
    SwitchCopy,
};

/// Largest history file read (they are a few lines per timeline).
const HISTORY_LIMIT: u64 = 64 << 20;

/// How often the archive is listed again when a planned file disappears
/// before it is opened (a concurrent `walrcv stream` renaming a `.partial`,
/// or `cleanup`).
const ATTEMPTS: usize = 3;

/// Why a request is refused. Each of these makes recovery stop.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{requested:?} is not a WAL segment, timeline history or backup history file name; check restore_command (it should be 'walrcv restore %f %p -D ARCHIVE')")]
    InvalidRequest { requested: String },
    #[error("cannot write \"{path}\": directory \"{dir}\" does not exist")]
    TargetDirMissing { path: PathBuf, dir: PathBuf },
    #[error("cannot read the archive directory \"{dir}\": {source}")]
    ArchiveUnreadable {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// A FIFO (whose open would wait for a writer, and recovery with it), a
    /// device, a directory or a symbolic link under an archive file's name.
    #[error("\"{path}\" is {what}, not a regular file: walrcv reads only regular files from the archive")]
    NotRegular { path: PathBuf, what: &'static str },
    /// A compressed file larger than any compressed form of a file within the
    /// size limit can be: not read at all.
    #[error("\"{path}\" is {size} bytes, larger than any {method} file of at most {limit} bytes can be ({max} bytes)")]
    CompressedTooLarge {
        path: PathBuf,
        method: &'static str,
        size: u64,
        limit: u64,
        max: u64,
    },
    #[error("cannot read \"{path}\": {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("\"{path}\": {source}")]
    Decompress {
        path: PathBuf,
        source: DecompressError,
    },
    #[error("\"{path}\": the {method} stream is truncated (no end of stream after {decoded} bytes), but the file claims to be complete")]
    Unfinished {
        path: PathBuf,
        method: &'static str,
        decoded: u64,
    },
    /// The file's content fails its checks ([`check_segment`], [`check_history`]).
    #[error("\"{path}\" fails its checks: {problem}")]
    Check { path: PathBuf, problem: FileProblem },
    #[error("segment {requested} exists only as \"{partial}\", but its timeline goes on in \"{later}\": the archive has a hole; not serving it, since recovery would end there")]
    Hole {
        requested: String,
        partial: String,
        later: String,
    },
    #[error("cannot write \"{path}\": {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot rename \"{from}\" to \"{to}\": {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
}

/// What was done for a request that was not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// `%p` now holds the file.
    File {
        from: String,
        /// For a segment: where its valid WAL ends (a `.partial`'s zeros start there).
        valid_end: Option<Lsn>,
        partial: bool,
    },
    /// Nothing in the archive answers.
    NotFound,
}

/// Where the answer goes: `%p` for `walrcv restore`, or memory for the
/// walsender of `walrcv serve` ([`read_segment`]), which must send exactly
/// the bytes restore would write.
enum Sink<'a> {
    File(&'a Path),
    Memory(&'a mut Option<SegmentBytes>),
}

impl Sink<'_> {
    /// Delivers the first `valid` bytes of `loaded` (zeros up to `total_len` after).
    fn put(&mut self, loaded: Loaded, valid: u64, total_len: u64) -> Result<(), RestoreError> {
        match self {
            Sink::File(target) => {
                let bytes = loaded.as_slice();
                let end = (valid as usize).min(bytes.len());
                write_atomically(target, bytes.get(..end).unwrap_or(&[]), total_len)
            }
            Sink::Memory(out) => {
                let valid = valid.min(loaded.len());
                **out = Some(SegmentBytes {
                    loaded,
                    valid,
                    growing: None,
                    from_partial: false,
                });
                Ok(())
            }
        }
    }

    /// Lets the segment just put be checked again incrementally as its file
    /// grows (walrcv serve; `walrcv restore` writes `%p` once).
    fn growing(&mut self, growing: Growing) {
        if let Sink::Memory(Some(bytes)) = self {
            bytes.growing = Some(growing);
        }
    }
}

/// The uncompressed `.partial` a [`SegmentBytes`] was read from, still
/// being written: its path and identity, where its check stopped, and the
/// segment's own name, under which its writer renames it once complete.
struct Growing {
    path: PathBuf,
    complete_path: PathBuf,
    id: FileId,
    check: PartialCheck,
}

/// A file's identity: a `.partial` renamed (completed into its segment,
/// set aside as divergent) or replaced under its name is no longer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
        }
    }
}

/// The verified bytes of one segment, as restore would serve them, kept
/// memory-mapped when the file is stored uncompressed (page cache, not
/// memory of this process).
pub struct SegmentBytes {
    loaded: Loaded,
    valid: u64,
    /// Set when read from the segment's own uncompressed `.partial`, the
    /// one copy of it: [`SegmentBytes::refresh`] can then go on from here.
    growing: Option<Growing>,
    /// Read from a `.partial` (which may hold WAL never fsynced when its
    /// writer died), not from a complete segment file.
    from_partial: bool,
}

impl SegmentBytes {
    /// Whether the bytes come from a `.partial`, however much valid WAL it
    /// holds (a complete segment file was fsynced before its rename).
    pub fn from_partial(&self) -> bool {
        self.from_partial
    }

    /// The verified WAL (for a `.partial`: up to its last valid record).
    pub fn valid(&self) -> &[u8] {
        let bytes = self.loaded.as_slice();
        bytes.get(..self.valid as usize).unwrap_or(bytes)
    }

    /// Brings a `.partial` still being written up to date without reading
    /// it again from its start: verifies only the bytes appended past where
    /// the last check stopped ([`PartialCheck::resume`]), in the mapping
    /// already held (it shows the writer's new bytes), then makes sure the
    /// `.partial`'s name is still this file. `true`: [`SegmentBytes::valid`]
    /// now ends where [`read_segment`] would end it. `false`: nothing was
    /// changed; read the segment again with [`read_segment`] (not a
    /// growing `.partial`, renamed or replaced, or a check it cannot resume).
    ///
    /// A `.partial` completed since (renamed to its segment's own name, the
    /// same file) is checked on to its end as a complete segment
    /// ([`PartialCheck::complete`]): `true` then means complete, no longer
    /// from a `.partial`, as [`read_segment`] would now read it.
    pub fn refresh(&mut self) -> bool {
        self.refresh_growing() || self.refresh_completed()
    }

    fn refresh_growing(&mut self) -> bool {
        let (Some(growing), Loaded::Mapped { map, .. }) = (&mut self.growing, &self.loaded) else {
            return false;
        };
        let Some(next) = growing.check.resume(map) else {
            return false;
        };
        // After the read: a file renamed before it may have been read in
        // part as its successor; one renamed after it was read whole as
        // the file it was, the same as a full read just before the rename.
        let same = std::fs::symlink_metadata(&growing.path)
            .is_ok_and(|meta| FileId::of(&meta) == growing.id);
        if !same {
            return false;
        }
        self.valid = next.valid().valid_bytes.min(map.len() as u64);
        growing.check = next;
        true
    }

    /// The `.partial` held, now under the segment's own name: its writer
    /// renames it there only after its last write and fsync, so its bytes
    /// are final, and as the uncompressed complete copy it is the first one
    /// [`read_segment`] tries (rule 1 of the plan), whose full check of it
    /// the continued check answers for. Anything else under that name
    /// (another file, a compressed copy only, nothing) is left to
    /// [`read_segment`].
    fn refresh_completed(&mut self) -> bool {
        let (Some(growing), Loaded::Mapped { map, .. }) = (&self.growing, &self.loaded) else {
            return false;
        };
        let ours = std::fs::symlink_metadata(&growing.complete_path)
            .is_ok_and(|meta| meta.file_type().is_file() && FileId::of(&meta) == growing.id);
        if !ours {
            return false;
        }
        let Some(end) = growing.check.complete(map) else {
            return false;
        };
        let checked = (map.len() as u64).saturating_sub(growing.check.checked_len());
        tracing::debug!(
            file = %growing.complete_path.display(),
            "\"{}\" completed: checked its last {checked} bytes, not the whole segment again",
            growing.complete_path.display()
        );
        self.valid = end.valid_bytes.min(map.len() as u64);
        self.growing = None;
        self.from_partial = false;
        true
    }
}

impl std::fmt::Debug for SegmentBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SegmentBytes({} valid bytes)", self.valid)
    }
}

/// The segment `name` as `walrcv restore` would serve it (same plan, same
/// checks, set-aside divergent copies never read): `None` when the archive
/// has nothing for it.
pub fn read_segment(dir: &Path, name: &SegmentName) -> Result<Option<SegmentBytes>, RestoreError> {
    let request = Request::Segment(name.clone());
    let mut out = None;
    match answer(dir, name.as_str(), &request, &mut Sink::Memory(&mut out))? {
        Served::NotFound => Ok(None),
        Served::File { partial, .. } => Ok(out.map(|bytes| SegmentBytes {
            from_partial: partial,
            ..bytes
        })),
    }
}

/// Answers `requested` (`%f`) from the archive `dir` into `target` (`%p`).
pub fn restore(dir: &Path, requested: &str, target: &Path) -> Result<Served, RestoreError> {
    let request = Request::parse(requested).ok_or_else(|| RestoreError::InvalidRequest {
        requested: requested.to_owned(),
    })?;
    let target_dir = parent_dir(target);
    if !target_dir.is_dir() {
        return Err(RestoreError::TargetDirMissing {
            path: target.to_owned(),
            dir: target_dir,
        });
    }
    answer(dir, requested, &request, &mut Sink::File(target))
}

fn answer(
    dir: &Path,
    requested: &str,
    request: &Request,
    target: &mut Sink<'_>,
) -> Result<Served, RestoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let names = list(dir)?;
        let plan = plan(request, names.iter().map(String::as_str));
        match execute(dir, request, plan, target) {
            Err(Attempt::Vanished(_)) if attempt < ATTEMPTS => continue,
            Err(Attempt::Vanished(path)) => {
                return Err(RestoreError::Read {
                    path,
                    source: std::io::ErrorKind::NotFound.into(),
                })
            }
            Err(Attempt::Failed(e)) => return Err(e),
            Ok(Served::NotFound) => {
                let aside = set_aside_copies(request, names.iter().map(String::as_str));
                // A warning: recovery that follows the new timeline asks for
                // its file of the segment first (`XLogFileReadAnyTLI`, newest
                // timeline first), so asking for this name means that file is
                // missing or recovery follows the old timeline; either way its
                // operator should know why it ends here.
                if !aside.is_empty() {
                    tracing::warn!(
                        file = %requested,
                        "{requested}: only set-aside divergent copies exist ({}), WAL past a timeline's switch point that is never restored",
                        aside.join(", ")
                    );
                }
                return Ok(Served::NotFound);
            }
            Ok(served) => return Ok(served),
        }
    }
}

/// An attempt fails for good, or because a listed file is gone.
enum Attempt {
    Failed(RestoreError),
    Vanished(PathBuf),
}

impl From<RestoreError> for Attempt {
    fn from(e: RestoreError) -> Self {
        Attempt::Failed(e)
    }
}

fn execute(
    dir: &Path,
    request: &Request,
    plan: Plan,
    target: &mut Sink<'_>,
) -> Result<Served, Attempt> {
    match (plan, request) {
        (Plan::NotFound, _) => Ok(Served::NotFound),
        (Plan::Hole { partial, later }, _) => Err(RestoreError::Hole {
            requested: request_name(request),
            partial,
            later,
        }
        .into()),
        (Plan::Complete(sources), Request::Segment(name)) => {
            serve_complete(dir, name, &sources, target)
        }
        (Plan::Partial(sources), Request::Segment(name)) => {
            serve_partial(dir, name, &sources, target)
        }
        (Plan::History { timeline, sources }, _) => serve_history(dir, timeline, &sources, target),
        (Plan::Backup(source), _) => {
            let bytes = load(dir, &source, HISTORY_LIMIT)?;
            let len = bytes.len();
            target.put(bytes, len, len)?;
            Ok(served(&source, None, false))
        }
        // The planner answers a segment request only with segment plans.
        (Plan::Complete(_) | Plan::Partial(_), _) => Ok(Served::NotFound),
    }
}

/// The first complete copy that passes its checks; when none does, the
/// first copy's problem.
fn serve_complete(
    dir: &Path,
    name: &SegmentName,
    sources: &[Source],
    target: &mut Sink<'_>,
) -> Result<Served, Attempt> {
    let mut first_problem = None;
    for source in sources {
        let checked = load(dir, source, MAX_SEGMENT_SIZE).and_then(|bytes| {
            bytes.require_finished(dir, source)?;
            let end = check_segment(bytes.as_slice(), name, Completeness::Complete)
                .map_err(|problem| failed_check(dir, source, problem))?;
            Ok((bytes, end))
        });
        match checked {
            Ok((bytes, end)) => {
                target.put(bytes, end.segment_size, end.segment_size)?;
                return Ok(served(source, Some(end.end), false));
            }
            Err(Attempt::Failed(e)) => {
                if sources.len() > 1 {
                    tracing::warn!(file = %source.file_name, "not serving this copy: {e}");
                }
                first_problem.get_or_insert(e);
            }
            Err(vanished) => return Err(vanished),
        }
    }
    Err(first_problem
        .map(Attempt::Failed)
        .unwrap_or(Attempt::Vanished(dir.to_owned())))
}

/// The `.partial` copy with the most valid WAL, its valid bytes then zeros
/// to the segment size. Any copy failing its checks refuses the request: a
/// damaged newest `.partial` is exactly where silent loss would happen.
fn serve_partial(
    dir: &Path,
    name: &SegmentName,
    sources: &[Source],
    target: &mut Sink<'_>,
) -> Result<Served, Attempt> {
    let mut best: Option<(Loaded, ValidEnd, &Source, Option<PartialCheck>)> = None;
    for source in sources {
        let bytes = load(dir, source, MAX_SEGMENT_SIZE)?;
        let (end, resumable) = match check_partial(bytes.as_slice(), name) {
            Ok(checked) => checked,
            Err(FileProblem::NothingWritten { .. }) => continue,
            Err(problem) => return Err(failed_check(dir, source, problem).into()),
        };
        if best.as_ref().is_none_or(|(_, b, _, _)| end.end > b.end) {
            best = Some((bytes, end, source, resumable));
        }
    }
    let mut switch_segment = false;
    if let Some((_, end, source, _)) = &best {
        if let Some(served) =
            serve_switch_segment(dir, name, end, source, target, &mut switch_segment)?
        {
            return Ok(served);
        }
    }
    match best {
        Some((bytes, end, source, resumable)) if end.valid_bytes > 0 => {
            // Resumable: the one copy, uncompressed, and not the segment of
            // a switch point it ends before (rule 4 may pick another file).
            let growing = match (&bytes, resumable) {
                (Loaded::Mapped { id, .. }, Some(check))
                    if sources.len() == 1 && !switch_segment =>
                {
                    Some(Growing {
                        path: dir.join(&source.file_name),
                        complete_path: dir.join(name.as_str()),
                        id: *id,
                        check,
                    })
                }
                _ => None,
            };
            target.put(bytes, end.valid_bytes, end.segment_size)?;
            if let Some(growing) = growing {
                target.growing(growing);
            }
            Ok(served(source, Some(end.end), true))
        }
        // Nothing valid yet: the same as no file, recovery ends before it.
        _ => Ok(Served::NotFound),
    }
}

/// Rule 4 of [`plan`](super::plan): the chosen `.partial` (`source`, valid up
/// to `end`) of the segment holding its timeline's switch point ends before
/// that point: serve the parent timeline's copy of the segment up to the
/// switch point instead, zeros after, once those bytes verify on the parent's
/// timeline. `None`: serve the `.partial` as today (not the switch segment,
/// no readable history, or no parent copy that verifies up to the switch).
fn serve_switch_segment(
    dir: &Path,
    name: &SegmentName,
    end: &ValidEnd,
    source: &Source,
    target: &mut Sink<'_>,
    applies: &mut bool,
) -> Result<Option<Served>, Attempt> {
    let Some(history) = read_history(dir, name.timeline())? else {
        return Ok(None);
    };
    let Some(copy) = switch_segment_copy(name, end.segment_size, &history, end.end) else {
        return Ok(None);
    };
    *applies = true;
    let names = list(dir)?;
    for parent in switch_segment_sources(&copy.parent_segment, names.iter().map(String::as_str)) {
        let bytes = match load(dir, &parent, MAX_SEGMENT_SIZE) {
            Ok(bytes) => bytes,
            Err(Attempt::Vanished(_)) => continue,
            Err(e) => return Err(e),
        };
        match verified_up_to_switch(bytes.as_slice(), &copy).map(<[u8]>::len) {
            Ok(prefix) => {
                tracing::warn!(
                    file = %name.as_str(),
                    from = %parent.file_name,
                    partial = %source.file_name,
                    switchpoint = %copy.switchpoint,
                    "{}: \"{}\" holds valid WAL only up to {}, before the switch point {} of timeline {}; serving \"{}\" up to the switch point, zeros after (what PostgreSQL writes at promotion), so that recovery replays the WAL acknowledged up to it",
                    name.as_str(),
                    source.file_name,
                    end.end,
                    copy.switchpoint,
                    name.timeline(),
                    parent.file_name
                );
                target.put(bytes, prefix as u64, end.segment_size)?;
                return Ok(Some(served(&parent, Some(copy.switchpoint), true)));
            }
            Err(why) => tracing::warn!(
                file = %name.as_str(),
                from = %parent.file_name,
                "{}: \"{}\" ends before the switch point {}, but \"{}\" cannot stand in for it: {why}",
                name.as_str(),
                source.file_name,
                copy.switchpoint,
                parent.file_name
            ),
        }
    }
    tracing::warn!(
        file = %name.as_str(),
        "{}: \"{}\" holds valid WAL only up to {}, before the switch point {} of timeline {}, and no copy of {} verifies up to it: serving it as it is, recovery ends at {}",
        name.as_str(),
        source.file_name,
        end.end,
        copy.switchpoint,
        name.timeline(),
        copy.parent_segment.as_str(),
        end.end
    );
    Ok(None)
}

/// The bytes of the parent's copy before the switch point, when they are WAL
/// of the parent's timeline with a record ending exactly there.
fn verified_up_to_switch<'a>(bytes: &'a [u8], copy: &SwitchCopy) -> Result<&'a [u8], String> {
    let prefix = bytes
        .get(..copy.upto as usize)
        .ok_or_else(|| format!("it holds only {} bytes", bytes.len()))?;
    let end = check_segment(prefix, &copy.parent_segment, Completeness::Partial)
        .map_err(|problem| problem.to_string())?;
    if end.end == copy.switchpoint {
        Ok(prefix)
    } else {
        Err(format!("its valid WAL ends at {}", end.end))
    }
}

/// The parsed history of `timeline` from the archive: `None` when it has
/// none that checks (timeline 1, or a history PostgreSQL will be refused
/// anyway when it asks for it).
fn read_history(dir: &Path, timeline: TimeLineId) -> Result<Option<Vec<HistoryEntry>>, Attempt> {
    let names = list(dir)?;
    let Plan::History { sources, .. } = plan(
        &Request::History(timeline),
        names.iter().map(String::as_str),
    ) else {
        return Ok(None);
    };
    for source in &sources {
        let bytes = match load(dir, source, HISTORY_LIMIT) {
            Ok(bytes) => bytes,
            Err(Attempt::Failed(_) | Attempt::Vanished(_)) => continue,
        };
        if bytes.require_finished(dir, source).is_err() {
            continue;
        }
        if let Ok(entries) = check_history(bytes.as_slice(), &source.file_name, timeline) {
            return Ok(Some(entries));
        }
    }
    Ok(None)
}

fn serve_history(
    dir: &Path,
    timeline: TimeLineId,
    sources: &[Source],
    target: &mut Sink<'_>,
) -> Result<Served, Attempt> {
    let mut first_problem = None;
    for source in sources {
        let checked = load(dir, source, HISTORY_LIMIT).and_then(|bytes| {
            bytes.require_finished(dir, source)?;
            check_history(bytes.as_slice(), &source.file_name, timeline)
                .map_err(|problem| failed_check(dir, source, problem).into())
                .map(|_| bytes)
        });
        match checked {
            Ok(bytes) => {
                let len = bytes.len();
                target.put(bytes, len, len)?;
                return Ok(served(source, None, false));
            }
            Err(Attempt::Failed(e)) => {
                first_problem.get_or_insert(e);
            }
            Err(vanished) => return Err(vanished),
        }
    }
    Err(first_problem
        .map(Attempt::Failed)
        .unwrap_or(Attempt::Vanished(dir.to_owned())))
}

fn failed_check(dir: &Path, source: &Source, problem: FileProblem) -> RestoreError {
    RestoreError::Check {
        path: dir.join(&source.file_name),
        problem,
    }
}

fn served(source: &Source, valid_end: Option<Lsn>, partial: bool) -> Served {
    Served::File {
        from: source.file_name.clone(),
        valid_end,
        partial,
    }
}

fn request_name(request: &Request) -> String {
    match request {
        Request::Segment(name) => name.as_str().to_owned(),
        Request::History(tli) => crate::lsn::history_file_name(*tli),
        Request::Backup(name) => name.clone(),
    }
}

/// The archive's file names (names that are not UTF-8 are foreign anyway).
pub(crate) fn list(dir: &Path) -> Result<Vec<String>, RestoreError> {
    let unreadable = |source| RestoreError::ArchiveUnreadable {
        dir: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// A file's content: memory-mapped when stored uncompressed, decoded into
/// memory otherwise.
enum Loaded {
    Empty,
    Mapped { map: memmap2::Mmap, id: FileId },
    Decoded { bytes: Vec<u8>, finished: bool },
}

impl Loaded {
    fn as_slice(&self) -> &[u8] {
        match self {
            Loaded::Empty => &[],
            Loaded::Mapped { map, .. } => map,
            Loaded::Decoded { bytes, .. } => bytes,
        }
    }

    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    /// A file not named `.partial` must hold a whole compressed stream: a
    /// cut one is a truncated file, even if what decodes looks fine.
    fn require_finished(&self, dir: &Path, source: &Source) -> Result<(), Attempt> {
        match self {
            Loaded::Decoded {
                finished: false,
                bytes,
            } => Err(RestoreError::Unfinished {
                path: dir.join(&source.file_name),
                method: source.compression.method_name(),
                decoded: bytes.len() as u64,
            }
            .into()),
            _ => Ok(()),
        }
    }
}

fn load(dir: &Path, source: &Source, limit: u64) -> Result<Loaded, Attempt> {
    let path = dir.join(&source.file_name);
    let read_error = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Attempt::Vanished(path.clone())
        } else {
            Attempt::Failed(RestoreError::Read {
                path: path.clone(),
                source: e,
            })
        }
    };
    let file = open_regular(&path).map_err(|e| match e {
        Opened::Io(e) => read_error(e),
        Opened::NotRegular(what) => Attempt::Failed(RestoreError::NotRegular {
            path: path.clone(),
            what,
        }),
    })?;
    let meta = file.metadata().map_err(read_error)?;
    let len = meta.len();
    if source.compression == Compression::None {
        if len > limit {
            let problem = FileProblem::WrongSize {
                file: source.file_name.clone(),
                size: len,
                expected: limit,
            };
            return Err(failed_check(dir, source, problem).into());
        }
        if len == 0 {
            return Ok(Loaded::Empty);
        }
        // SAFETY: archive files are not truncated in place: walrcv and
        // pg_receivewal write a segment at its final size and rename it;
        // `cleanup` unlinks (the mapping stays valid). A file truncated by
        // hand while mapped would raise SIGBUS, as for any mmap reader.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(read_error)?;
        let _ = map.advise(memmap2::Advice::Sequential);
        return Ok(Loaded::Mapped {
            map,
            id: FileId::of(&meta),
        });
    }
    let max = max_compressed_len(limit);
    let too_large = |size| {
        Attempt::Failed(RestoreError::CompressedTooLarge {
            path: path.clone(),
            method: source.compression.method_name(),
            size,
            limit,
            max,
        })
    };
    if len > max {
        return Err(too_large(len));
    }
    let mut data = Vec::with_capacity(len as usize);
    // `take`: a file that grew since its size was read is cut, not followed.
    (&file)
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(read_error)?;
    if data.len() as u64 > max {
        return Err(too_large(data.len() as u64));
    }
    // A `.partial` counts up to what decodes (see `decompress_partial`).
    let decode = if source.file_name.ends_with(".partial") {
        decompress_partial
    } else {
        decompress
    };
    let decoded = decode(source.compression, &data, limit).map_err(|source| {
        Attempt::Failed(RestoreError::Decompress {
            path: path.clone(),
            source,
        })
    })?;
    Ok(Loaded::Decoded {
        bytes: decoded.bytes,
        finished: decoded.finished,
    })
}

/// The largest compressed file read for a content of at most `limit` bytes:
/// incompressible data grows by a few bytes per block in each format walrcv
/// reads (gzip: 5 per 64 KiB stored block, lz4: 4 per block, zstd: 3 per
/// 128 KiB block) plus headers, far below 1/64 of the content plus 64 KiB.
/// A larger file cannot decode to at most `limit` bytes: it is refused
/// unread (a decompression bomb's output is cut at `limit` as it decodes).
pub fn max_compressed_len(limit: u64) -> u64 {
    limit + limit / 64 + (64 << 10)
}

/// Why [`open_regular`] did not give a file.
enum Opened {
    Io(std::io::Error),
    NotRegular(&'static str),
}

/// Opens an archive file for reading only if it is a regular file: never
/// through a symbolic link (`O_NOFOLLOW`), and without waiting
/// (`O_NONBLOCK`: opening a FIFO would otherwise wait for a writer; on a
/// regular file the flag changes nothing).
fn open_regular(path: &Path) -> Result<File, Opened> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Opened::NotRegular("a symbolic link"),
            _ => Opened::Io(e),
        })?;
    let kind = file.metadata().map_err(Opened::Io)?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    Err(Opened::NotRegular(if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a device"
    }))
}

fn parent_dir(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes`, then zeros up to `total_len`, to `target` through a
/// temporary file in the same directory.
fn write_atomically(target: &Path, bytes: &[u8], total_len: u64) -> Result<(), RestoreError> {
    let dir = parent_dir(target);
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    let tmp = dir.join(format!(".{file_name}.walrcv-{}.tmp", std::process::id()));
    let write_error = |source: std::io::Error| RestoreError::Write {
        path: tmp.clone(),
        source,
    };
    let mut file = match OpenOptions::new().write(true).create_new(true).open(&tmp) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RestoreError::TargetDirMissing {
                path: target.to_owned(),
                dir,
            })
        }
        Err(e) => return Err(write_error(e)),
    };
    let written = file
        .write_all(bytes)
        // Zeros after the valid WAL: extending the file reads back as zeros
        // without writing them.
        .and_then(|()| file.set_len(total_len.max(bytes.len() as u64)))
        .map_err(write_error)
        .and_then(|()| {
            std::fs::rename(&tmp, target).map_err(|source| RestoreError::Rename {
                from: tmp.clone(),
                to: target.to_owned(),
                source,
            })
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests;
