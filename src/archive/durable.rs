//! The one place that knows how to make things durable: fsync of files and
//! directories, durable rename, and durable small-file writes through `.tmp`.

use std::fs::File;
use std::path::Path;

use super::ArchiveError;

/// fsync a file by path (opened read-only).
pub fn fsync_path(path: &Path) -> Result<(), ArchiveError> {
    let _ = path;
    todo!("helper D")
}

/// fsync the directory `dir` so that renames and creations in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), ArchiveError> {
    let _ = dir;
    todo!("helper D")
}

/// rename `from` to `to` (same directory), then fsync the directory.
/// The caller has already fsynced the file's data.
pub fn durable_rename(from: &Path, to: &Path) -> Result<(), ArchiveError> {
    let _ = (from, to);
    todo!("helper D")
}

/// Writes `content` to `dir/name` via `dir/name.tmp`: write, fsync, rename, fsync dir.
/// With `sync == false` no fsync is done.
pub fn write_file_durably(dir: &Path, name: &str, content: &[u8], sync: bool) -> Result<(), ArchiveError> {
    let _ = (dir, name, content, sync);
    todo!("helper D")
}

/// fdatasync an open file.
pub fn fdatasync(file: &File, path: &Path) -> Result<(), ArchiveError> {
    let _ = (file, path);
    todo!("helper D")
}
