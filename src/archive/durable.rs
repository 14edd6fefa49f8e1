//! The one place that knows how to make things durable: fsync of files and
//! directories, durable rename, and durable small-file writes through `.tmp`.
//!
//! Policy (PostgreSQL's since "fsyncgate"): an fsync error is reported as
//! [`ArchiveError::Fsync`] and never retried here. After a failed fsync the
//! kernel may have dropped the dirty pages and cleared the error, so a second
//! fsync on the same descriptor could succeed without the data being on disk.
//! The caller ends the session and re-streams from the last durable point.
//!
//! Every error names the path concerned.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::ArchiveError;

/// Suffix of every temporary file this module family creates. Barman ignores
/// names ending in `.tmp`, so a temporary left by a crash is never moved to its
/// errors directory (and [`super::ArchiveDir::open`] removes ours).
pub const TMP_SUFFIX: &str = ".tmp";

/// fsync a file by path (opened read-only).
pub fn fsync_path(path: &Path) -> Result<(), ArchiveError> {
    let file = File::open(path).map_err(|e| ArchiveError::io(path, e))?;
    file.sync_all().map_err(|source| ArchiveError::Fsync {
        path: path.to_path_buf(),
        source,
    })
}

/// fsync the directory `dir` so that renames and creations in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), ArchiveError> {
    // std opens with O_RDONLY (plus O_CLOEXEC), which Linux accepts for a
    // directory, and fsync on such a descriptor flushes the directory entries.
    let file = File::open(dir).map_err(|e| ArchiveError::io(dir, e))?;
    match file.sync_all() {
        Ok(()) => Ok(()),
        // Like PostgreSQL's fsync_fname_ext: some file systems cannot fsync a
        // directory at all (EINVAL/EBADF). That is "unsupported", not "lost data".
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EBADF)) => {
            tracing::debug!(
                dir = %dir.display(), error = %e,
                "directory fsync not supported; ignored"
            );
            Ok(())
        }
        Err(source) => Err(ArchiveError::Fsync {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// The directory holding `path`, for the fsync that follows a rename.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// rename `from` to `to` (same directory), then fsync the directory.
/// The caller has already fsynced the file's data.
pub fn durable_rename(from: &Path, to: &Path) -> Result<(), ArchiveError> {
    rename(from, to)?;
    fsync_dir(&parent_dir(to))
}

/// A plain rename (no fsync) whose error names both paths.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), ArchiveError> {
    std::fs::rename(from, to).map_err(|source| ArchiveError::Rename {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })
}

/// Whether `name` is a single, plain file name: writing `dir/name` can only
/// create a file directly inside `dir`.
pub(crate) fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// Writes `content` to `dir/name` via `dir/name.tmp`: write, fsync, rename, fsync dir.
/// With `sync == false` no fsync is done.
///
/// `name` must be a plain file name (no `/`, not `.` or `..`); the temporary is
/// removed if anything fails before the rename.
pub fn write_file_durably(
    dir: &Path,
    name: &str,
    content: &[u8],
    sync: bool,
) -> Result<(), ArchiveError> {
    if !is_plain_file_name(name) {
        return Err(ArchiveError::io(
            dir.join(name),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "refusing to write a file whose name is not a plain file name",
            ),
        ));
    }
    let target = dir.join(name);
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let result = write_tmp(&tmp, content, sync).and_then(|()| rename(&tmp, &target));
    if let Err(e) = result {
        remove_quietly(&tmp);
        return Err(e);
    }
    if sync {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Creates (or truncates) `tmp` with mode 0600, writes `content`, fsyncs if `sync`.
fn write_tmp(tmp: &Path, content: &[u8], sync: bool) -> Result<(), ArchiveError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| ArchiveError::io(tmp, e))?;
    file.write_all(content)
        .map_err(|source| ArchiveError::Write {
            path: tmp.to_path_buf(),
            offset: 0,
            source,
        })?;
    if sync {
        file.sync_all().map_err(|source| ArchiveError::Fsync {
            path: tmp.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Removes a temporary file after a failure, logging (not returning) a second
/// error so that the first one reaches the caller.
pub(crate) fn remove_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove temporary file")
        }
    }
}

/// fdatasync an open file.
pub fn fdatasync(file: &File, path: &Path) -> Result<(), ArchiveError> {
    file.sync_data().map_err(|source| ArchiveError::Fsync {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_durably_writes_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        for sync in [true, false] {
            write_file_durably(
                dir.path(),
                "00000002.history",
                b"1\t0/3000000\tno recovery target\n",
                sync,
            )
            .unwrap();
            let got = std::fs::read(dir.path().join("00000002.history")).unwrap();
            assert_eq!(got, b"1\t0/3000000\tno recovery target\n");
            assert!(!dir.path().join("00000002.history.tmp").exists());
        }
        // Overwrites an existing file atomically.
        write_file_durably(dir.path(), "00000002.history", b"x", true).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("00000002.history")).unwrap(),
            b"x"
        );
    }

    #[test]
    fn write_file_durably_refuses_paths() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", ".", "..", "../x", "a/b", "/etc/x"] {
            let err = write_file_durably(dir.path(), bad, b"x", false).unwrap_err();
            assert!(matches!(err, ArchiveError::Io { .. }), "{bad}: {err}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn errors_carry_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = fsync_path(&missing).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let err = fsync_dir(&missing).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let err = durable_rename(&missing, &dir.path().join("other")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("missing") && text.contains("other"), "{text}");
    }

    #[test]
    fn durable_rename_and_fsyncs_work() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.tmp");
        std::fs::write(&a, b"data").unwrap();
        fsync_path(&a).unwrap();
        let file = File::open(&a).unwrap();
        fdatasync(&file, &a).unwrap();
        let b = dir.path().join("b");
        durable_rename(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read(&b).unwrap(), b"data");
        fsync_dir(dir.path()).unwrap();
    }
}
