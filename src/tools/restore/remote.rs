//! `walrcv restore %f %p --from s3://BUCKET/PREFIX [-D ARCHIVE]`: the
//! object store as a tier after the local archive.
//!
//! Each request is answered by GETs of exact names (the name asked for,
//! then its compressed names), never a LIST, except for a segment missing
//! in complete form (the end of the archive): then one LIST of
//! `partial/SEG/` finds the receivers' `.partial` copies, each is checked
//! by the local restore code and the one with the longest valid WAL is
//! served. Whatever is fetched is written into a staging directory beside
//! `%p` and served by [`super::serve::restore`], so every file is verified
//! exactly as a local one before it is served.

use std::path::{Path, PathBuf};

use crate::archive::names::Compression;
use crate::objstore::{partial, Store, StoreError};

use super::plan::Request;
use super::prefetch;
use super::serve::{restore, RestoreError, Served};

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
    #[error("no copy of {requested} in the object store passes its checks: {problems}")]
    NoValidCopy { requested: String, problems: String },
}

const SUFFIXES: [Compression; 4] = [
    Compression::None,
    Compression::Gzip,
    Compression::Lz4,
    Compression::Zstd,
];

/// Answers `requested` from `local` first (when given), then from `store`;
/// after a complete segment from the store, the next `prefetch` segments
/// are fetched in the background ([`prefetch`]).
pub async fn restore_from(
    store: &Store,
    local: Option<&Path>,
    requested: &str,
    target: &Path,
    prefetch: u32,
) -> Result<Served, RemoteError> {
    if let Some(dir) = local {
        match restore(dir, requested, target)? {
            Served::NotFound => {}
            served => return Ok(served),
        }
    }
    let request = Request::parse(requested).ok_or_else(|| RestoreError::InvalidRequest {
        requested: requested.to_owned(),
    })?;
    let stage = Stage::new(target)?;
    let result = serve_from_store(store, &stage, &request, requested, target).await;
    stage.remove();
    let (served, suffix) = result?;
    if let (Some(suffix), true) = (suffix, prefetch > 0) {
        let size = std::fs::metadata(target).map(|m| m.len()).unwrap_or(0);
        if size > 0 {
            let url = store.url().to_string();
            prefetch::spawn_worker(&url, requested, &suffix, target, size, prefetch);
        }
    }
    Ok(served)
}

async fn serve_from_store(
    store: &Store,
    stage: &Stage,
    request: &Request,
    requested: &str,
    target: &Path,
) -> Result<(Served, Option<String>), RemoteError> {
    if let Request::Segment(_) = request {
        let cache = prefetch::cache_dir(target);
        prefetch::prune(&cache, requested);
        if let Some((name, bytes)) = prefetch::take(&cache, requested) {
            stage.put(&stage.root, &name, &bytes)?;
            let served = restore(&stage.root, requested, target)?;
            return Ok((served, Some(name[requested.len()..].to_string())));
        }
    }
    let names: Vec<String> = match request {
        Request::Backup(_) => vec![requested.to_owned()],
        _ => SUFFIXES
            .iter()
            .map(|c| format!("{requested}{}", c.suffix()))
            .collect(),
    };
    for name in names {
        if let Some(bytes) = store.get(&name).await? {
            stage.put(&stage.root, &name, &bytes)?;
            let served = restore(&stage.root, requested, target)?;
            let suffix =
                matches!(request, Request::Segment(_)).then(|| name[requested.len()..].to_string());
            return Ok((served, suffix));
        }
    }
    match request {
        Request::Segment(_) => Ok((serve_partial(store, stage, requested, target).await?, None)),
        _ => Ok((Served::NotFound, None)),
    }
}

/// The longest valid WAL among the receivers' `.partial` copies.
async fn serve_partial(
    store: &Store,
    stage: &Stage,
    requested: &str,
    target: &Path,
) -> Result<Served, RemoteError> {
    let dir = partial::dir(requested);
    let copies = store.list(&dir).await?;
    let mut best: Option<(Served, PathBuf)> = None;
    let mut problems = Vec::new();
    for (i, listed) in copies.iter().enumerate() {
        let file = listed
            .name
            .strip_prefix(dir.as_str())
            .unwrap_or(&listed.name);
        let Some(copy) = partial::parse(file) else {
            continue;
        };
        let Some(bytes) = store.get(&listed.name).await? else {
            continue;
        };
        let sub = stage.root.join(i.to_string());
        stage.mkdir(&sub)?;
        stage.put(&sub, &copy.local, &bytes)?;
        let out = stage.root.join(format!("{i}.out"));
        match restore(&sub, requested, &out) {
            Ok(served @ Served::File { .. }) => {
                let end = valid_end(&served);
                if best.as_ref().is_none_or(|(b, _)| end > valid_end(b)) {
                    best = Some((served, out));
                }
            }
            Ok(Served::NotFound) => {}
            Err(e) => {
                tracing::warn!(
                    "{requested}: the copy of receiver {} is refused: {e}",
                    copy.receiver
                );
                problems.push(format!("{}: {e}", listed.name));
            }
        }
    }
    match best {
        Some((served, out)) => {
            std::fs::rename(&out, target).map_err(|source| RemoteError::Stage {
                path: target.to_owned(),
                source,
            })?;
            Ok(served)
        }
        None if problems.is_empty() => Ok(Served::NotFound),
        None => Err(RemoteError::NoValidCopy {
            requested: requested.to_owned(),
            problems: problems.join("; "),
        }),
    }
}

fn valid_end(served: &Served) -> u64 {
    match served {
        Served::File { valid_end, .. } => valid_end.map(|l| l.0).unwrap_or(u64::MAX),
        Served::NotFound => 0,
    }
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
        stage.mkdir(&stage.root)?;
        Ok(stage)
    }

    fn mkdir(&self, path: &Path) -> Result<(), RemoteError> {
        std::fs::create_dir(path).map_err(|source| RemoteError::Stage {
            path: path.to_owned(),
            source,
        })
    }

    fn put(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| RemoteError::Stage { path, source })
    }

    fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
