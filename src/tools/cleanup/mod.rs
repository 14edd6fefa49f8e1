//! `walrcv cleanup -D ARCHIVE`: removes old WAL from an archive.
//!
//! Three rules, combined with "and" (a file goes only when every rule given
//! says so): `--before SEGMENT` (pg_archivecleanup's rule), `--older-than
//! DURATION` (modification time) and `--keep-size SIZE` (keep the newest WAL
//! up to that many bytes). [`plan::plan`] decides, purely, over the names,
//! sizes and times the inventory saw; this module is the IO around it:
//! list the directory, remove the planned files oldest first, then fsync the
//! directory once (through [`crate::archive::durable`]).
//!
//! Safe beside a running `walrcv stream` on the same directory: it takes no
//! lock, never touches `.tmp` files or the newest timeline's newest file (the
//! one being written; see [`plan`] for what else is protected), and a file
//! that vanished meanwhile is not an error.
//!
//! Files set aside after a failover (`*.divergent.tmp`) are not WAL of the
//! archive's history: they are never removed, never counted (by
//! `--keep-size` or as a timeline's newest file), and never accepted as a
//! `--before` cut-off. A DBA removes them by hand once inspected.
//!
//! `-D s3://BUCKET/PREFIX` applies the same plan to a bucket ([`bucket`]).
//!
//! Exit statuses ([`exit`]): 0 done (also when nothing was to be removed), 1 a
//! file could not be removed or the directory fsync failed, 2 bad arguments or
//! an unreadable directory.

pub mod args;
pub mod bucket;
pub mod plan;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::archive::durable::{self, Site};
use crate::archive::names::{ArchiveName, SegmentName};
use crate::archive::ArchiveError;

use plan::{Entry, Rules};

/// Exit statuses of `walrcv cleanup`.
pub mod exit {
    /// Done: everything planned was removed (or listed, with `--dry-run`).
    pub const OK: i32 = 0;
    /// A file could not be removed, or the directory could not be fsynced.
    pub const REMOVE_FAILED: i32 = 1;
    /// Bad arguments, or the archive directory could not be read.
    pub const USAGE: i32 = 2;
}

/// `walrcv cleanup` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct CleanupArgs {
    /// Archive directory to clean, or `s3://BUCKET/PREFIX` (see
    /// [`bucket`]).
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: PathBuf,
    /// Remove segments whose position sorts before this one's, on every
    /// timeline (pg_archivecleanup's rule). A segment, `.partial`, compressed
    /// or `.backup` file name.
    #[arg(long, value_name = "SEGMENT")]
    pub before: Option<String>,
    /// Remove segments last modified longer ago than this (30d, 12h, 90m).
    #[arg(long = "older-than", value_name = "DURATION")]
    pub older_than: Option<String>,
    /// Keep the newest segments up to this total size (10GB, 512MiB).
    #[arg(long = "keep-size", value_name = "SIZE")]
    pub keep_size: Option<String>,
    /// List what would be removed (one path per line); remove nothing.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
}

/// Why `walrcv cleanup` could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("give at least one of --before, --older-than, --keep-size")]
    NoRule,
    #[error("--before {0:?} is not a WAL segment, .partial or .backup file name")]
    BadCutoff(String),
    #[error(transparent)]
    Arg(#[from] args::ArgError),
    #[error("cannot read archive directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Bucket(#[from] crate::tools::bucket::BucketError),
}

/// The segment name a `--before` value stands for: the segment itself, the
/// segment of a `.partial` or compressed name, or of a `.backup` file (as
/// pg_archivecleanup's `SetWALFileNameForCleanup` reduces it).
pub fn cutoff_segment(value: &str) -> Option<SegmentName> {
    let file_name = Path::new(value).file_name()?.to_str()?;
    match ArchiveName::classify(file_name) {
        ArchiveName::Segment { name, .. } => Some(name),
        ArchiveName::Backup { segment, .. } => Some(segment),
        _ => None,
    }
}

/// The rules the arguments give, relative to `now`.
pub fn rules(args: &CleanupArgs, now: SystemTime) -> Result<Rules, CleanupError> {
    if args.before.is_none() && args.older_than.is_none() && args.keep_size.is_none() {
        return Err(CleanupError::NoRule);
    }
    let before = match &args.before {
        Some(v) => Some(cutoff_segment(v).ok_or_else(|| CleanupError::BadCutoff(v.clone()))?),
        None => None,
    };
    let modified_before = match &args.older_than {
        // An age further back than the clock reaches: nothing is that old.
        Some(v) => Some(
            now.checked_sub(args::parse_duration(v)?)
                .filter(|t| *t >= SystemTime::UNIX_EPOCH)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        ),
        None => None,
    };
    let keep_size = args
        .keep_size
        .as_deref()
        .map(args::parse_size)
        .transpose()?;
    Ok(Rules {
        before,
        modified_before,
        keep_size,
    })
}

/// Lists the WAL segment files of `dir` (as [`ArchiveName::classify`] sees
/// them) with their sizes and modification times. A file that vanishes while
/// being looked at is left out: the stream renames `.partial`s as it goes.
pub fn inventory(dir: &Path) -> Result<Vec<Entry>, CleanupError> {
    let read_dir_error = |source| CleanupError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for item in std::fs::read_dir(dir).map_err(read_dir_error)? {
        let item = item.map_err(read_dir_error)?;
        let Some(name) = item.file_name().to_str().map(str::to_owned) else {
            continue; // not UTF-8: not a WAL name
        };
        if !ArchiveName::classify(&name).is_segment() {
            continue;
        }
        let meta = match item.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_dir_error(e)),
        };
        entries.push(Entry {
            name,
            size: meta.len(),
            modified: meta.modified().map_err(read_dir_error)?,
        });
    }
    Ok(entries)
}

/// What a run removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub files: Vec<PathBuf>,
    pub bytes: u64,
}

/// Removes `planned` from `dir`, oldest first, then fsyncs the directory
/// once. Stops at the first failure (what was removed before it stays
/// removed, and is still a prefix); the directory is fsynced all the same.
pub fn remove(dir: &Path, planned: &[&Entry]) -> (Removed, Result<(), ArchiveError>) {
    let mut removed = Removed::default();
    let mut result = Ok(());
    for entry in planned {
        let path = dir.join(&entry.name);
        match durable::remove_file(&path, Site::Cleanup) {
            Ok(true) => {
                removed.bytes += entry.size;
                removed.files.push(path);
            }
            Ok(false) => {} // gone meanwhile
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if !removed.files.is_empty() {
        let synced = durable::fsync_dir(dir, Site::Cleanup);
        result = result.and(synced);
    }
    (removed, result)
}

/// Runs `walrcv cleanup` as the CLI does: the paths removed (or, with
/// `--dry-run`, that would be) on stdout, one per line; a summary on stderr.
/// Returns the exit status.
pub fn run(args: &CleanupArgs) -> i32 {
    #[cfg(feature = "failpoints")]
    if let Err(e) = crate::archive::failpoints::setup_from_env() {
        eprintln!("walrcv cleanup: {e}");
        return exit::USAGE;
    }
    if let Some(url) = args.directory.to_str().filter(|d| d.starts_with("s3://")) {
        return run_bucket(args, url);
    }
    let plan_and_entries = rules(args, SystemTime::now())
        .and_then(|r| inventory(&args.directory).map(|entries| (r, entries)));
    let (rules, entries) = match plan_and_entries {
        Ok(v) => v,
        Err(e) => {
            eprintln!("walrcv cleanup: {e}");
            return exit::USAGE;
        }
    };
    let planned = plan::plan(&entries, &rules);
    let mut out = std::io::stdout().lock();
    if args.dry_run {
        for entry in &planned {
            let _ = writeln!(out, "{}", args.directory.join(&entry.name).display());
        }
        let bytes: u64 = planned.iter().map(|e| e.size).sum();
        eprintln!(
            "walrcv cleanup: would remove {} files, {bytes} bytes (dry run)",
            planned.len()
        );
        return exit::OK;
    }
    let (removed, result) = remove(&args.directory, &planned);
    for path in &removed.files {
        let _ = writeln!(out, "{}", path.display());
    }
    let _ = out.flush();
    tracing::info!(
        files = removed.files.len(),
        bytes = removed.bytes,
        "cleanup done"
    );
    eprintln!(
        "walrcv cleanup: removed {} files, {} bytes freed",
        removed.files.len(),
        removed.bytes
    );
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("walrcv cleanup: {e}");
            exit::REMOVE_FAILED
        }
    }
}

/// `walrcv cleanup -D s3://BUCKET/PREFIX`: one LIST, the same plan, then
/// the objects deleted oldest first (stopping at the first failure); the
/// URL of each on stdout.
fn run_bucket(args: &CleanupArgs, url: &str) -> i32 {
    let listed = rules(args, SystemTime::now()).and_then(|r| {
        let b = crate::tools::bucket::Bucket::open(url)?;
        let listing = b.list()?;
        Ok((r, b, listing))
    });
    let (rules, b, listing) = match listed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("walrcv cleanup: {e}");
            return exit::USAGE;
        }
    };
    let entries = bucket::entries(&listing);
    let planned = plan::plan(&entries.entries, &rules);
    let objects = bucket::objects_to_delete(&planned, &entries, &listing);
    let url_of = |name: &str| b.object_url(name);
    let mut out = std::io::stdout().lock();
    if args.dry_run {
        for (name, _) in &objects {
            let _ = writeln!(out, "{}", url_of(name));
        }
        let bytes: u64 = objects.iter().map(|(_, size)| size).sum();
        eprintln!(
            "walrcv cleanup: would remove {} files, {bytes} bytes (dry run)",
            objects.len()
        );
        return exit::OK;
    }
    let (mut files, mut bytes) = (0usize, 0u64);
    let mut result = Ok(());
    for (name, size) in &objects {
        if let Err(e) = b.delete(name) {
            result = Err(e);
            break;
        }
        let _ = writeln!(out, "{}", url_of(name));
        files += 1;
        bytes += size;
    }
    let _ = out.flush();
    tracing::info!(files, bytes, "cleanup done");
    eprintln!("walrcv cleanup: removed {files} files, {bytes} bytes freed");
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("walrcv cleanup: {e}");
            exit::REMOVE_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(before: Option<&str>, older: Option<&str>, keep: Option<&str>) -> CleanupArgs {
        CleanupArgs {
            directory: PathBuf::from("/archive"),
            before: before.map(str::to_owned),
            older_than: older.map(str::to_owned),
            keep_size: keep.map(str::to_owned),
            dry_run: false,
        }
    }

    #[test]
    fn cutoff_names_reduce_to_the_segment() {
        let seg = |v| cutoff_segment(v).map(|s| s.as_str().to_owned());
        let want = Some("00000002000000000000000C".to_owned());
        for v in [
            "00000002000000000000000C",
            "00000002000000000000000C.partial",
            "00000002000000000000000C.gz",
            "00000002000000000000000C.zst.partial",
            "00000002000000000000000C.00000028.backup",
            "/some/dir/00000002000000000000000C.lz4",
        ] {
            assert_eq!(seg(v), want, "{v}");
        }
        for v in [
            "00000002.history",
            "0000000200000000000000c",
            "x",
            "",
            "/",
            "00000002000000000000000C.divergent.tmp",
            "00000002000000000000000C.gz.partial.divergent.tmp",
        ] {
            assert_eq!(seg(v), None, "{v}");
        }
    }

    #[test]
    fn rules_from_arguments() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100_000);
        assert!(matches!(
            rules(&args(None, None, None), now),
            Err(CleanupError::NoRule)
        ));
        assert!(matches!(
            rules(&args(Some("nope"), None, None), now),
            Err(CleanupError::BadCutoff(_))
        ));
        assert!(matches!(
            rules(&args(None, Some("3 days"), None), now),
            Err(CleanupError::Arg(_))
        ));
        let r = rules(
            &args(Some("000000010000000000000009"), Some("1d"), Some("1MiB")),
            now,
        )
        .unwrap();
        assert_eq!(r.before.unwrap().as_str(), "000000010000000000000009");
        assert_eq!(
            r.modified_before,
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100_000 - 86_400))
        );
        assert_eq!(r.keep_size, Some(1 << 20));
        let far = rules(&args(None, Some("100000w"), None), now).unwrap();
        assert_eq!(far.modified_before, Some(SystemTime::UNIX_EPOCH));
    }

    #[test]
    fn divergent_files_are_never_listed_counted_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        for (n, len) in [
            ("000000010000000000000001", 100),
            ("000000010000000000000002", 100),
            ("000000010000000000000003.divergent.tmp", 1000),
            ("000000010000000000000004.zst.partial.divergent.tmp", 1000),
            ("000000020000000000000003", 100),
            ("000000020000000000000004.partial", 100),
        ] {
            std::fs::write(dir.path().join(n), vec![1u8; len]).unwrap();
        }
        let entries = inventory(dir.path()).unwrap();
        let mut names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000020000000000000003",
                "000000020000000000000004.partial"
            ]
        );
        // A cut-off past them, and a size budget they would exhaust: only WAL
        // goes (were the set-aside files WAL, timeline 1's newest would be
        // the set-aside .partial, and they would be removed up to it).
        let rules = Rules {
            before: SegmentName::parse("000000020000000000000009"),
            modified_before: None,
            keep_size: Some(250),
        };
        let planned: Vec<_> = plan::plan(&entries, &rules)
            .iter()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(
            planned,
            ["000000010000000000000001", "000000010000000000000002"]
        );
    }

    #[test]
    fn removes_the_plan_and_tolerates_vanished_files() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["000000010000000000000001", "000000010000000000000002"] {
            std::fs::write(dir.path().join(n), b"wal").unwrap();
        }
        let entries = inventory(dir.path()).unwrap();
        let mut planned: Vec<&Entry> = entries.iter().collect();
        planned.sort_by(|a, b| a.name.cmp(&b.name));
        let ghost = Entry {
            name: "000000010000000000000000".into(),
            size: 7,
            modified: SystemTime::now(),
        };
        planned.insert(0, &ghost);
        let (removed, result) = remove(dir.path(), &planned);
        result.unwrap();
        assert_eq!(removed.files.len(), 2);
        assert_eq!(removed.bytes, 6);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
