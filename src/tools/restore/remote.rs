//! `walrcv restore %f %p --from s3://BUCKET/PREFIX [-D ARCHIVE]`: the
//! object store as a tier after the local archive.
//!
//! A segment is answered by the same rules as from the local archive
//! ([`plan_known`], rules 1 to 3, over what both tiers know about the name;
//! rule 4 by the local code over a staged mini-archive):
//! - a complete copy in the local archive is served from there (no request);
//! - else a complete copy in the bucket, found by GETs of exact names (the
//!   name asked for, then its compressed names), is served, even when the
//!   local archive holds a `.partial` of it (the other receiver of a pair
//!   uploaded the complete segment);
//! - else the `.partial` copies of both tiers (one LIST of `partial/SEG/`)
//!   compete: the longest valid WAL wins, unless a later segment of the same
//!   timeline exists (locally, or in the bucket: one LIST of the prefix and
//!   one of `partial/`, each starting after the segment's name), which is a
//!   hole and is refused;
//! - the winning `.partial` of a switch segment that ends before its
//!   timeline's switch point gives way to the parent timeline's copy up to
//!   the switch point (the history file and the parent's copies are fetched
//!   by exact names, one LIST of the parent's `partial/` directory).
//!
//! Whatever is fetched is written into a staging directory beside `%p` and
//! served by [`super::serve::restore`], so every file is verified exactly as
//! a local one before it is served. The bucket is never listed as a whole.

use std::path::{Path, PathBuf};

use crate::archive::check::check_history;
use crate::archive::names::{Compression, SegmentName};
use crate::lsn::{history_file_name, Lsn, TimeLineId};
use crate::objstore::{partial, Store, StoreError};
use crate::wal::history::HistoryEntry;

use super::plan::{
    known, plan_known, switch_segment_copy, switch_segment_sources, Known, Plan, Request, Source,
};
use super::prefetch;
use super::serve::{list, restore, RestoreError, Served};

/// Failures of the bucket tier.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Local(#[from] RestoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot stage \"{path}\": {source}")]
    Stage {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no copy of {requested} passes its checks: {problems}")]
    NoValidCopy { requested: String, problems: String },
}

const SUFFIXES: [Compression; 4] = [
    Compression::None,
    Compression::Gzip,
    Compression::Lz4,
    Compression::Zstd,
];

/// Answers `requested` from `local` (when given) and `store`; after a
/// complete segment from the store, the next `prefetch_count` segments are
/// fetched in the background ([`prefetch`]). A request that is not a
/// segment, or a segment nothing answers, is the start or the end of
/// recovery: the prefetch directory is removed then.
pub async fn restore_from(
    store: &Store,
    local: Option<&Path>,
    requested: &str,
    target: &Path,
    prefetch_count: u32,
) -> Result<Served, RemoteError> {
    let request = Request::parse(requested).ok_or_else(|| RestoreError::InvalidRequest {
        requested: requested.to_owned(),
    })?;
    let cache = prefetch::cache_dir(target);
    let stage = Stage::new(target)?;
    let result = match &request {
        Request::Segment(name) => {
            serve_segment(store, &stage, local, name, requested, target, &cache).await
        }
        _ => serve_other(store, &stage, local, &request, requested, target)
            .await
            .map(|s| (s, None)),
    };
    stage.remove();
    let (served, suffix) = match result {
        Ok(answer) => answer,
        Err(e) => {
            prefetch::clear(&cache);
            return Err(e);
        }
    };
    match (&served, suffix) {
        (Served::File { .. }, Some(suffix)) if prefetch_count > 0 => {
            let size = std::fs::metadata(target).map(|m| m.len()).unwrap_or(0);
            if size > 0 {
                let url = store.url().to_string();
                prefetch::spawn_worker(&url, requested, &suffix, target, size, prefetch_count);
            }
        }
        (Served::File { .. }, _) if matches!(request, Request::Segment(_)) => {}
        _ => prefetch::clear(&cache),
    }
    Ok(served)
}

/// History and backup history files: the local archive, then the bucket.
async fn serve_other(
    store: &Store,
    stage: &Stage,
    local: Option<&Path>,
    request: &Request,
    requested: &str,
    target: &Path,
) -> Result<Served, RemoteError> {
    if let Some(dir) = local {
        match restore(dir, requested, target)? {
            Served::NotFound => {}
            served => return Ok(served),
        }
    }
    let names = match request {
        Request::Backup(_) => vec![requested.to_owned()],
        _ => exact_names(requested),
    };
    match get_first(store, &names).await? {
        Some((object, bytes)) => {
            let dir = stage.sub("other")?;
            stage.put(&dir, &object, &bytes)?;
            Ok(restore(&dir, requested, target)?)
        }
        None => Ok(Served::NotFound),
    }
}

/// A segment, by the rules in the module documentation. The second value is
/// the compression suffix of a complete copy served from the bucket (what
/// the prefetch asks for).
async fn serve_segment(
    store: &Store,
    stage: &Stage,
    local: Option<&Path>,
    name: &SegmentName,
    requested: &str,
    target: &Path,
    cache: &Path,
) -> Result<(Served, Option<String>), RemoteError> {
    let local_names = match local {
        Some(dir) => list(dir)?,
        None => Vec::new(),
    };
    let local_known = known(name, local_names.iter().map(String::as_str));
    if let (Some(dir), false) = (local, local_known.complete.is_empty()) {
        return Ok((restore(dir, requested, target)?, None));
    }
    prefetch::prune(cache, requested);
    let fetched = match prefetch::take(cache, requested) {
        Some(found) => {
            tracing::info!(file = %requested, "{requested}: taken from the prefetch directory");
            Some(found)
        }
        None => get_first(store, &exact_names(requested)).await?,
    };
    if let Some((object, bytes)) = fetched {
        let dir = stage.sub("complete")?;
        stage.put(&dir, &object, &bytes)?;
        let served = restore(&dir, requested, target)?;
        return Ok((served, Some(object[requested.len()..].to_string())));
    }
    let tiers = Parts {
        store,
        stage,
        local,
        local_names: &local_names,
    };
    let served = tiers
        .serve_partials(name, local_known, requested, target)
        .await?;
    Ok((served, None))
}

impl Parts<'_> {
    /// No complete copy anywhere: the `.partial` copies of both tiers, by
    /// rules 3 (hole) and 4 (switch segment).
    async fn serve_partials(
        &self,
        name: &SegmentName,
        local_known: Known,
        requested: &str,
        target: &Path,
    ) -> Result<Served, RemoteError> {
        let (store, stage) = (self.store, self.stage);
        let copies = bucket_copies(store, requested).await?;
        let mut merged = Known {
            complete: Vec::new(),
            partial: local_known.partial.clone(),
            later: local_known.later.clone(),
        };
        merged
            .partial
            .extend(copies.iter().map(|(object, _)| Source {
                file_name: object.clone(),
                compression: Compression::None,
            }));
        check_plan(plan_known(merged.clone()), requested)?;
        if merged.partial.is_empty() {
            return Ok(Served::NotFound);
        }
        let local_partial = self.local.filter(|_| !local_known.partial.is_empty());
        let Some(best) = best_partial(store, stage, local_partial, &copies, requested).await?
        else {
            return Ok(Served::NotFound);
        };
        let size = std::fs::metadata(&best.out).map(|m| m.len()).unwrap_or(0);
        if merged.later.is_none() {
            merged.later = probe_later(store, name).await?;
            check_plan(plan_known(merged), requested)?;
        }
        if let Some(served) = self
            .switch_segment(name, &best, size, requested, target)
            .await?
        {
            return Ok(served);
        }
        std::fs::rename(&best.out, target).map_err(|source| RemoteError::Stage {
            path: target.to_owned(),
            source,
        })?;
        Ok(best.served)
    }
}

/// Rules 1 to 3 said "hole": refused.
fn check_plan(plan: Plan, requested: &str) -> Result<(), RemoteError> {
    match plan {
        Plan::Hole { partial, later } => Err(RestoreError::Hole {
            requested: requested.to_owned(),
            partial,
            later,
        }
        .into()),
        _ => Ok(()),
    }
}

/// The receivers' `.partial` copies of `segment` in the bucket (object name,
/// parsed name): one LIST of `partial/SEG/`.
async fn bucket_copies(
    store: &Store,
    segment: &str,
) -> Result<Vec<(String, partial::Copy)>, RemoteError> {
    let dir = partial::dir(segment);
    Ok(store
        .list(&dir)
        .await?
        .into_iter()
        .filter_map(|listed| {
            let file = listed.name.strip_prefix(dir.as_str())?;
            let copy = partial::parse(file)?;
            Some((listed.name, copy))
        })
        .collect())
}

/// A checked `.partial` copy, written (padded) to `out`; its file is
/// `file` in `dir`.
struct Candidate {
    served: Served,
    out: PathBuf,
    dir: PathBuf,
    file: String,
}

impl Candidate {
    fn valid_end(&self) -> Lsn {
        match &self.served {
            Served::File { valid_end, .. } => valid_end.unwrap_or(Lsn(u64::MAX)),
            Served::NotFound => Lsn(0),
        }
    }
}

/// Checks every `.partial` copy (the local archive's, each receiver's in the
/// bucket) and keeps the one with the longest valid WAL; a refused copy is
/// a warning unless no copy passes.
async fn best_partial(
    store: &Store,
    stage: &Stage,
    local: Option<&Path>,
    copies: &[(String, partial::Copy)],
    requested: &str,
) -> Result<Option<Candidate>, RemoteError> {
    let mut best: Option<Candidate> = None;
    let mut problems = Vec::new();
    let mut consider =
        |checked: Result<Served, RestoreError>, out, dir, what: &str, file| match checked {
            Ok(served @ Served::File { .. }) => {
                let candidate = Candidate {
                    served,
                    out,
                    dir,
                    file,
                };
                if best
                    .as_ref()
                    .is_none_or(|b| candidate.valid_end() > b.valid_end())
                {
                    best = Some(candidate);
                }
            }
            Ok(Served::NotFound) => {}
            Err(e) => {
                tracing::warn!("{requested}: the copy {what} is refused: {e}");
                problems.push(format!("{what}: {e}"));
            }
        };
    if let Some(dir) = local {
        let out = stage.root.join("local.out");
        let checked = restore(dir, requested, &out);
        let file = match &checked {
            Ok(Served::File { from, .. }) => from.clone(),
            _ => String::new(),
        };
        consider(checked, out, dir.to_owned(), "in the local archive", file);
    }
    for (i, (object, copy)) in copies.iter().enumerate() {
        let Some(bytes) = store.get(object).await? else {
            continue;
        };
        let sub = stage.sub(&i.to_string())?;
        stage.put(&sub, &copy.local, &bytes)?;
        let out = stage.root.join(format!("{i}.out"));
        let checked = restore(&sub, requested, &out);
        let what = format!("of receiver {} (\"{object}\")", copy.receiver);
        consider(checked, out, sub, &what, copy.local.clone());
    }
    if best.is_none() && !problems.is_empty() {
        return Err(RemoteError::NoValidCopy {
            requested: requested.to_owned(),
            problems: problems.join("; "),
        });
    }
    Ok(best)
}

/// A later segment of `name`'s timeline in the bucket, complete or as a
/// `.partial` copy, however far after it (the local rule looks at every
/// later segment too): two LISTs that start right after `name` (S3's
/// `start-after`), one over the prefix, one over `partial/`. Names sort by
/// timeline, then position, so the first object past `name`'s own copies is
/// a later segment of its timeline if there is any.
async fn probe_later(store: &Store, name: &SegmentName) -> Result<Option<String>, RemoteError> {
    // 'z' sorts after the compression suffixes of `name`'s own copies and
    // before the next position; no character S3 keys would escape.
    let later_of_timeline = |object: &str, segment: &str| {
        SegmentName::parse(segment.get(..24)?)
            .filter(|s| s.timeline() == name.timeline() && s.as_str() > name.as_str())
            .map(|_| object.to_string())
    };
    let complete = store
        .first_after("", &format!("{}z", name.as_str()))
        .await?;
    if let Some(found) = complete.and_then(|o| later_of_timeline(&o.name, &o.name)) {
        return Ok(Some(found));
    }
    let copies = store
        .first_after("partial", &format!("{}z", partial::dir(name.as_str())))
        .await?;
    Ok(copies.and_then(|o| {
        let segment = o.name.strip_prefix("partial/")?;
        later_of_timeline(&o.name, segment)
    }))
}

/// What the switch-segment rule needs from both tiers.
struct Parts<'a> {
    store: &'a Store,
    stage: &'a Stage,
    local: Option<&'a Path>,
    local_names: &'a [String],
}

impl Parts<'_> {
    /// Rule 4 (switch segment): when `best` ends before its timeline's
    /// switch point inside this segment, a mini-archive of `best`, the
    /// history file and the parent timeline's copies of the segment is
    /// staged and served by the local code (which applies the rule and
    /// verifies the parent's bytes). `None`: serve `best` as it is.
    async fn switch_segment(
        &self,
        name: &SegmentName,
        best: &Candidate,
        size: u64,
        requested: &str,
        target: &Path,
    ) -> Result<Option<Served>, RemoteError> {
        if name.timeline() <= 1 || size == 0 {
            return Ok(None);
        }
        let Some((history_bytes, history)) = self.history(name.timeline()).await? else {
            return Ok(None);
        };
        let Some(copy) = switch_segment_copy(name, size, &history, best.valid_end()) else {
            return Ok(None);
        };
        let dir = self.stage.sub("switch")?;
        copy_file(&best.dir.join(&best.file), &dir.join(&best.file))?;
        self.stage
            .put(&dir, &history_file_name(name.timeline()), &history_bytes)?;
        self.stage_parent(&dir, &copy.parent_segment).await?;
        Ok(Some(restore(&dir, requested, target)?))
    }

    /// The parent's copies of the switch segment into `dir`: the local
    /// archive's, then the bucket's complete copy (exact names) or its
    /// receivers' `.partial` copies (one LIST); one file per name.
    async fn stage_parent(&self, dir: &Path, parent: &SegmentName) -> Result<(), RemoteError> {
        if let Some(local) = self.local {
            let names = self.local_names.iter().map(String::as_str);
            for source in switch_segment_sources(parent, names) {
                copy_file(&local.join(&source.file_name), &dir.join(&source.file_name))?;
            }
        }
        if let Some((object, bytes)) = get_first(self.store, &exact_names(parent.as_str())).await? {
            self.stage.put_new(dir, &object, &bytes)?;
            return Ok(());
        }
        for (object, copy) in bucket_copies(self.store, parent.as_str()).await? {
            if let Some(bytes) = self.store.get(&object).await? {
                self.stage.put_new(dir, &copy.local, &bytes)?;
            }
        }
        Ok(())
    }

    /// The checked history file of `timeline` (its plain bytes and entries),
    /// from the local archive or the bucket.
    async fn history(
        &self,
        timeline: TimeLineId,
    ) -> Result<Option<(Vec<u8>, Vec<HistoryEntry>)>, RemoteError> {
        let file = history_file_name(timeline);
        let out = self.stage.root.join("history.out");
        let mut served = match self.local {
            Some(dir) => restore(dir, &file, &out)?,
            None => Served::NotFound,
        };
        if served == Served::NotFound {
            if let Some((object, bytes)) = get_first(self.store, &exact_names(&file)).await? {
                let sub = self.stage.sub("history")?;
                self.stage.put(&sub, &object, &bytes)?;
                served = restore(&sub, &file, &out)?;
            }
        }
        if served == Served::NotFound {
            return Ok(None);
        }
        let bytes = std::fs::read(&out).map_err(|source| RemoteError::Stage {
            path: out.clone(),
            source,
        })?;
        Ok(check_history(&bytes, &file, timeline)
            .ok()
            .map(|entries| (bytes, entries)))
    }
}

/// `name` and its compressed names, uncompressed first.
fn exact_names(name: &str) -> Vec<String> {
    SUFFIXES
        .iter()
        .map(|c| format!("{name}{}", c.suffix()))
        .collect()
}

/// The first of `names` that exists (one GET each until found).
async fn get_first(
    store: &Store,
    names: &[String],
) -> Result<Option<(String, Vec<u8>)>, RemoteError> {
    for name in names {
        if let Some(bytes) = store.get(name).await? {
            return Ok(Some((name.clone(), bytes.to_vec())));
        }
    }
    Ok(None)
}

fn copy_file(from: &Path, to: &Path) -> Result<(), RemoteError> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|source| RemoteError::Stage {
            path: to.to_owned(),
            source,
        })
}

/// A private directory beside `%p` for what was fetched; removed after.
struct Stage {
    root: PathBuf,
}

impl Stage {
    fn new(target: &Path) -> Result<Stage, RemoteError> {
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let root = parent.join(format!(".walrcv-restore.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let stage = Stage { root };
        mkdir(&stage.root)?;
        Ok(stage)
    }

    /// A new subdirectory (a mini-archive of its own).
    fn sub(&self, name: &str) -> Result<PathBuf, RemoteError> {
        let path = self.root.join(name);
        mkdir(&path)?;
        Ok(path)
    }

    fn put(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| RemoteError::Stage { path, source })
    }

    /// Like [`Stage::put`], keeping a file already there under that name.
    fn put_new(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        if dir.join(name).exists() {
            return Ok(());
        }
        self.put(dir, name, bytes)
    }

    fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn mkdir(path: &Path) -> Result<(), RemoteError> {
    std::fs::create_dir(path).map_err(|source| RemoteError::Stage {
        path: path.to_owned(),
        source,
    })
}
