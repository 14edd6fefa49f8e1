//! Prefetch for `walrcv restore --from` (WAL-G's `restore_command` prefetch
//! is the model): once a complete segment is served from the bucket, a
//! detached `walrcv restore --prefetch-worker` process GETs the next
//! segments of the timeline (same compression) in parallel into
//! `.walrcv-prefetch/` beside `%p` (in `pg_wal`), so recovery does not pay
//! one round trip per segment. A prefetched file is no more trusted than
//! one fetched on demand: it is staged and verified the same way before it
//! is served, then removed; files of segments older than the one asked for
//! are removed too.
//!
//! Where and how long: `pg_wal/.walrcv-prefetch/` (beside `%p`: on the
//! cluster's own file system, one per data directory, gone with it). No
//! PostgreSQL code reads it: the server only ever considers WAL, history
//! and `.backup` names in `pg_wal`, and `pg_basebackup` does not copy the
//! contents of `pg_wal`. It lives as long as recovery reads segments from
//! the bucket: the first request that is not a segment served (a history
//! file, asked for at the start of recovery and when it ends with a new
//! timeline, or a segment nothing answers: the end of the archive) stops
//! the running workers (each leaves `worker.PID` in the directory) and
//! removes it ([`clear`]). A recovery that pauses at its target
//! (`recovery_target_action = 'pause'`) keeps it until it goes on.

use std::path::{Path, PathBuf};

use crate::archive::names::Compression;
use crate::lsn::{parse_wal_file_name, wal_file_name};
use crate::objstore::Store;

/// The cache directory beside `%p`.
pub fn cache_dir(target: &Path) -> PathBuf {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    parent.join(".walrcv-prefetch")
}

/// The names of the `count` segments after `segment` (pure).
pub fn next_segments(segment: &str, segment_size: u64, count: u32) -> Vec<String> {
    let Some((tli, segno)) = parse_wal_file_name(segment, segment_size) else {
        return Vec::new();
    };
    (1..=u64::from(count))
        .map(|k| wal_file_name(tli, segno + k, segment_size))
        .collect()
}

/// A prefetched copy of `segment` (any compression), if there is one.
pub fn take(cache: &Path, segment: &str) -> Option<(String, Vec<u8>)> {
    for c in [
        Compression::None,
        Compression::Gzip,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let name = format!("{segment}{}", c.suffix());
        let path = cache.join(&name);
        if let Ok(bytes) = std::fs::read(&path) {
            let _ = std::fs::remove_file(&path);
            return Some((name, bytes));
        }
    }
    None
}

/// Removes cached segments older than `segment` (recovery moved past them).
pub fn prune(cache: &Path, segment: &str) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `.NAME.PID.tmp` and `.NAME.claim` are in flight for NAME.
        let base = name.trim_start_matches('.');
        if base.get(..24).is_some_and(|head| head < segment) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The worker's marker: `worker.PID`.
const WORKER_MARK: &str = "worker.";

/// Stops the running workers and removes the cache directory (the end, or
/// the start, of a recovery). A worker still writing a file into it (between
/// the listing and the removal) is met by a second pass.
pub fn clear(cache: &Path) {
    for _ in 0..3 {
        stop_workers(cache);
        match std::fs::remove_dir_all(cache) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => tracing::debug!("removing \"{}\": {e}", cache.display()),
        }
    }
    tracing::warn!(
        "could not remove the prefetch directory \"{}\"",
        cache.display()
    );
}

/// SIGTERM to each worker named by a `worker.PID` marker that still runs as
/// a prefetch worker (a PID reused by another process is left alone).
fn stop_workers(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(WORKER_MARK)
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if pid > 0 && contains(&cmdline, b"--prefetch-worker") {
            // SAFETY: kill has no memory effects; the PID was checked above.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Starts the detached worker for the segments after `segment`.
pub fn spawn_worker(
    url: &str,
    segment: &str,
    suffix: &str,
    target: &Path,
    segment_size: u64,
    count: u32,
) {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // Created here, never by the worker: a worker that starts after the
    // directory was cleared finds none and does nothing.
    if let Err(e) = std::fs::create_dir_all(cache_dir(target)) {
        tracing::warn!("could not create the prefetch directory: {e}");
        return;
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["restore", segment])
        .arg(target)
        .args(["--from", url, "--prefetch-worker", suffix])
        .args(["--prefetch", &count.to_string()])
        .args(["--segment-size", &segment_size.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Its own session: recovery's signals to the restore_command's process
    // group do not reach it, and it is not waited for.
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    if let Err(e) = cmd.spawn() {
        tracing::warn!("could not start the prefetch: {e}");
    }
}

/// The worker: GETs the next segments in parallel into the cache.
pub async fn run_worker(
    store: Store,
    segment: &str,
    suffix: &str,
    target: &Path,
    segment_size: u64,
    count: u32,
) {
    let cache = cache_dir(target);
    let mark = cache.join(format!("{WORKER_MARK}{}", std::process::id()));
    if std::fs::write(&mark, b"").is_err() {
        return;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for next in next_segments(segment, segment_size, count) {
        let name = format!("{next}{suffix}");
        // A worker per served segment: the claim (created exclusively) keeps
        // two of them from fetching the same segment.
        let claim = cache.join(format!(".{name}.claim"));
        let claimed = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
            .is_ok();
        if !claimed || cache.join(&name).exists() {
            if claimed {
                let _ = std::fs::remove_file(&claim);
            }
            continue;
        }
        let (store, cache) = (store.clone(), cache.clone());
        tasks.spawn(async move {
            if let Ok(Some(bytes)) = store.get(&name).await {
                let tmp = cache.join(format!(".{name}.{}.tmp", std::process::id()));
                if std::fs::write(&tmp, &bytes).is_ok() {
                    let _ = std::fs::rename(&tmp, cache.join(&name));
                } else {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
            let _ = std::fs::remove_file(&claim);
        });
    }
    while tasks.join_next().await.is_some() {}
    let _ = std::fs::remove_file(&mark);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_names_cross_the_xlogid() {
        let size = 16 << 20;
        assert_eq!(
            next_segments("0000000200000001000000FE", size, 3),
            [
                "0000000200000001000000FF",
                "000000020000000200000000",
                "000000020000000200000001"
            ]
        );
        assert!(next_segments("00000002.history", size, 3).is_empty());
    }

    #[test]
    fn cache_take_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("000000010000000000000003.zst"), b"x").unwrap();
        std::fs::write(dir.path().join("000000010000000000000001"), b"y").unwrap();
        assert_eq!(
            take(dir.path(), "000000010000000000000003"),
            Some(("000000010000000000000003.zst".to_string(), b"x".to_vec()))
        );
        assert_eq!(take(dir.path(), "000000010000000000000003"), None);
        std::fs::write(dir.path().join(".000000010000000000000001.claim"), b"").unwrap();
        std::fs::write(dir.path().join(".000000010000000000000004.9.tmp"), b"").unwrap();
        prune(dir.path(), "000000010000000000000002");
        assert!(!dir.path().join("000000010000000000000001").exists());
        assert!(!dir.path().join(".000000010000000000000001.claim").exists());
        // In flight for a later segment: kept.
        assert!(dir.path().join(".000000010000000000000004.9.tmp").exists());
    }

    #[test]
    fn clear_removes_the_directory_and_spares_other_processes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join(".walrcv-prefetch");
        std::fs::create_dir(&cache).unwrap();
        std::fs::write(cache.join("000000010000000000000003"), b"x").unwrap();
        // This test process is no prefetch worker: not signalled.
        std::fs::write(cache.join(format!("worker.{}", std::process::id())), b"").unwrap();
        clear(&cache);
        assert!(!cache.exists());
        clear(&cache);
    }
}
