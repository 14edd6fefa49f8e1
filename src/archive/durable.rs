//! The one place that touches the archive's files for writing: creating,
//! writing (`pwrite`), fsync and fdatasync of files and directories, renames,
//! and small files written durably through `.tmp`. Nothing else in walrcv
//! calls these system calls on the archive, so every one of them can fail on
//! demand: each function takes the [`Site`] it serves, and with the
//! `failpoints` cargo feature each (site, operation) pair is a named failpoint
//! (see `src/archive/failpoints.rs`).
//!
//! Policy (PostgreSQL's since "fsyncgate"): an fsync error is reported as
//! [`ArchiveError::Fsync`] and never retried here. After a failed fsync the
//! kernel may have dropped the dirty pages and cleared the error, so a second
//! fsync on the same descriptor could succeed without the data being on disk.
//! The caller ends the session and re-streams from the last durable point.
//!
//! Every error names the path concerned.
//!
//! Files are created as pg_receivewal creates them: mode 0600, or 0640 when
//! the server's data directory grants group access (see [`set_file_create_mode`]),
//! always under a temporary name opened with `O_CREAT | O_EXCL | O_NOFOLLOW`,
//! so that a symlink or file planted in the archive directory cannot redirect
//! a write; existing files are reopened with `O_NOFOLLOW`.

use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::ArchiveError;

/// Suffix of every temporary file this module family creates. Barman ignores
/// names ending in `.tmp`, so a temporary left by a crash is never moved to its
/// errors directory (and [`super::ArchiveDir::open`] removes ours).
pub const TMP_SUFFIX: &str = ".tmp";

pub use super::site::{Op, Site};

/// The injected error for (`site`, `op`) on `path`, if a failpoint says so.
/// Without the `failpoints` feature this is always `Ok` and compiles away.
#[inline(always)]
fn injected(site: Site, op: Op, path: &Path) -> std::io::Result<()> {
    #[cfg(feature = "failpoints")]
    if let Some(err) = super::failpoints::injected_error(site, op, path) {
        return Err(err);
    }
    let _ = (site, op, path);
    Ok(())
}

/// Test builds: the simulated power loss covering `path`, if a property test
/// installed one there (see `super::simfs`). Release builds have no such
/// branch at all.
#[cfg(test)]
fn simulated(path: &Path) -> Option<super::simfs::Covered> {
    super::simfs::covering(path)
}

/// Test builds: whether a simulated SIGKILL is in progress for `path` (the
/// operation then does nothing).
#[inline(always)]
fn killed(path: &Path) -> bool {
    #[cfg(test)]
    if let Some(sim) = simulated(path) {
        return sim.frozen();
    }
    let _ = path;
    false
}

/// Test builds: tells the simulation covering `path` that `len` bytes at
/// `offset` were written (0: the file was truncated there).
#[inline(always)]
fn dirtied(file: &File, path: &Path, offset: u64, len: u64) -> std::io::Result<()> {
    #[cfg(test)]
    if let Some(sim) = simulated(path) {
        return sim.written(file, offset, len);
    }
    let _ = (file, path, offset, len);
    Ok(())
}

/// PostgreSQL's `PG_FILE_MODE_OWNER`.
pub const FILE_MODE_OWNER: u32 = 0o600;
/// PostgreSQL's `PG_FILE_MODE_GROUP`.
pub const FILE_MODE_GROUP: u32 = 0o640;

/// The mode of the files [`create`] makes. A process-wide setting, as
/// PostgreSQL's `pg_file_create_mode`: every archive file of a run follows the
/// one server it streams from, and threading it through every writer would
/// change many signatures for one number.
static FILE_CREATE_MODE: AtomicU32 = AtomicU32::new(FILE_MODE_OWNER);

/// PostgreSQL's `SetDataDirectoryCreatePerm` (common/file_perm.c): group-readable
/// files when the data directory's mode has all of `PG_DIR_MODE_GROUP` (0750)
/// (`initdb --allow-group-access`), else owner-only.
pub fn file_mode_for_data_directory_mode(data_directory_mode: u32) -> u32 {
    const PG_DIR_MODE_GROUP: u32 = 0o750;
    if data_directory_mode & PG_DIR_MODE_GROUP == PG_DIR_MODE_GROUP {
        FILE_MODE_GROUP
    } else {
        FILE_MODE_OWNER
    }
}

/// Sets the mode of the files created from now on (pg_receivewal's
/// `RetrieveDataDirCreatePerm`, from the server's `data_directory_mode`).
pub fn set_file_create_mode(mode: u32) {
    FILE_CREATE_MODE.store(mode, Ordering::Relaxed);
}

/// The mode [`create`] gives new files.
pub fn file_create_mode() -> u32 {
    FILE_CREATE_MODE.load(Ordering::Relaxed)
}

/// Creates `path` (always a temporary name) for writing, with the mode of
/// [`file_create_mode`]. See [`create_with_mode`] for what may already be there.
pub fn create(path: &Path, site: Site) -> Result<File, ArchiveError> {
    injected(site, Op::Open, path)
        .and_then(|()| create_with_mode(path, file_create_mode()))
        .map_err(|e| ArchiveError::io(path, e))
}

/// Creates `path` with exactly `mode` (whatever the umask), exclusively and
/// without following a symlink. A regular file already there is a temporary
/// left by a crash: it is unlinked first (never truncated, so a hard link
/// planted under that name keeps its contents). Anything else (a symlink, a
/// directory, a fifo) is refused and left as it is.
pub(crate) fn create_with_mode(path: &Path, mode: u32) -> std::io::Result<File> {
    remove_stale_file(path)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // The umask may have taken bits away; pg_receivewal sets its umask to
    // get exactly this mode.
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(file)
}

/// Unlinks a stale regular file at `path`; refuses anything else that is there.
fn remove_stale_file(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.file_type().is_file() => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "refusing to write: the name is taken by something that is not a regular file \
             (a symbolic link?); remove it",
        )),
    }
}

/// Opens an existing file for writing (no truncation), never through a
/// symbolic link.
pub fn open_for_write(path: &Path, site: Site) -> Result<File, ArchiveError> {
    injected(site, Op::Open, path)
        .and_then(|()| {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
        })
        .map_err(|e| ArchiveError::io(path, e))
}

/// `pwrite` all of `data` at `offset`.
pub fn write_at(
    file: &File,
    path: &Path,
    offset: u64,
    data: &[u8],
    site: Site,
) -> Result<(), ArchiveError> {
    if killed(path) {
        return Ok(());
    }
    injected(site, Op::Pwrite, path)
        .and_then(|()| file.write_all_at(data, offset))
        .and_then(|()| dirtied(file, path, offset, data.len() as u64))
        .map_err(|source| ArchiveError::Write {
            path: path.to_path_buf(),
            offset,
            source,
        })
}

/// fdatasync an open file.
pub fn fdatasync(file: &File, path: &Path, site: Site) -> Result<(), ArchiveError> {
    injected(site, Op::Fdatasync, path)
        .and_then(|()| sync_file(file, path, File::sync_data))
        .map_err(|source| ArchiveError::Fsync {
            path: path.to_path_buf(),
            source,
        })
}

/// fsync an open file (data and metadata).
pub fn fsync(file: &File, path: &Path, site: Site) -> Result<(), ArchiveError> {
    injected(site, Op::Fsync, path)
        .and_then(|()| sync_file(file, path, File::sync_all))
        .map_err(|source| ArchiveError::Fsync {
            path: path.to_path_buf(),
            source,
        })
}

/// The real `sync`, or the simulated one where a property test installed it.
#[inline(always)]
fn sync_file(
    file: &File,
    path: &Path,
    sync: fn(&File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    #[cfg(test)]
    if let Some(sim) = simulated(path) {
        return sim.sync_file(file);
    }
    let _ = path;
    sync(file)
}

/// fsync a file by path (opened read-only).
pub fn fsync_path(path: &Path, site: Site) -> Result<(), ArchiveError> {
    let file = File::open(path).map_err(|e| ArchiveError::io(path, e))?;
    fsync(&file, path, site)
}

/// Asks the kernel to start writing back `len` bytes from `offset` (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only a hint, never a
/// durability point: errors are left to the fdatasync that follows.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on a descriptor the caller owns; no
        // memory is passed.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// fsync the directory `dir` so that renames and creations in it are durable.
pub fn fsync_dir(dir: &Path, site: Site) -> Result<(), ArchiveError> {
    // std opens with O_RDONLY (plus O_CLOEXEC), which Linux accepts for a
    // directory, and fsync on such a descriptor flushes the directory entries.
    let file = File::open(dir).map_err(|e| ArchiveError::io(dir, e))?;
    let sync_dir = |file: &File| {
        #[cfg(test)]
        if let Some(sim) = simulated(dir) {
            return sim.sync_dir(dir);
        }
        file.sync_all()
    };
    match injected(site, Op::FsyncDir, dir).and_then(|()| sync_dir(&file)) {
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
pub fn durable_rename(from: &Path, to: &Path, site: Site) -> Result<(), ArchiveError> {
    rename(from, to, site)?;
    fsync_dir(&parent_dir(to), site)
}

/// Removes `path` (no fsync: the caller fsyncs the directory once after a
/// batch of removals). `Ok(false)` when it was already gone: a file removed
/// by someone else meanwhile is what the caller wanted anyway.
pub fn remove_file(path: &Path, site: Site) -> Result<bool, ArchiveError> {
    if killed(path) {
        return Ok(true);
    }
    match injected(site, Op::Unlink, path).and_then(|()| std::fs::remove_file(path)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ArchiveError::io(path, e)),
    }
}

/// A plain rename (no fsync) whose error names both paths.
pub fn rename(from: &Path, to: &Path, site: Site) -> Result<(), ArchiveError> {
    if killed(to) {
        return Ok(());
    }
    injected(site, Op::Rename, to)
        .and_then(|()| std::fs::rename(from, to))
        .map_err(|source| ArchiveError::Rename {
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
    site: Site,
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
    let result = write_tmp(&tmp, content, sync, site).and_then(|()| rename(&tmp, &target, site));
    if let Err(e) = result {
        remove_quietly(&tmp);
        return Err(e);
    }
    if sync {
        fsync_dir(dir, site)?;
    }
    Ok(())
}

/// Creates `tmp` (see [`create`]), writes `content`, fsyncs if `sync`.
fn write_tmp(tmp: &Path, content: &[u8], sync: bool, site: Site) -> Result<(), ArchiveError> {
    let file = create(tmp, site)?;
    write_at(&file, tmp, 0, content, site)?;
    if sync {
        fsync(&file, tmp, site)?;
    }
    Ok(())
}

/// Removes a temporary file after a failure, logging (not returning) a second
/// error so that the first one reaches the caller.
pub(crate) fn remove_quietly(path: &Path) {
    if killed(path) {
        return;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove temporary file")
        }
    }
}

#[cfg(test)]
mod simfs_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_mode_follows_the_data_directory_mode() {
        assert_eq!(file_mode_for_data_directory_mode(0o700), 0o600);
        assert_eq!(file_mode_for_data_directory_mode(0o750), 0o640);
        // Group read without execute is not group access (PostgreSQL's test).
        assert_eq!(file_mode_for_data_directory_mode(0o740), 0o600);
        assert_eq!(file_mode_for_data_directory_mode(0o2750), 0o640);
    }

    #[test]
    fn create_sets_the_exact_mode_whatever_the_umask() {
        // The umask is the process's, shared by the test threads: each umask
        // runs in a child, this test binary again, running this test alone.
        let name = "create_sets_the_exact_mode_whatever_the_umask";
        if let Some(umask) = std::env::var_os(UMASK_CHILD) {
            let umask = u32::from_str_radix(umask.to_str().unwrap(), 8).unwrap();
            assert_eq!(current_umask(), umask, "the child runs under the umask");
            let dir = tempfile::tempdir().unwrap();
            for mode in [FILE_MODE_OWNER, FILE_MODE_GROUP] {
                let path = dir.path().join(format!("f{mode:o}.tmp"));
                create_with_mode(&path, mode).unwrap();
                let got = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
                assert_eq!(got, mode, "umask {umask:04o}: mode {got:o}, not {mode:o}");
            }
            return;
        }
        // 0077 would take the group bit of 0640, 0000 would leave 0666.
        for umask in [0o077u32, 0o000] {
            let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
            cmd.args(["--exact", &format!("archive::durable::tests::{name}")])
                .args(["--test-threads=1", "--nocapture"])
                .env(UMASK_CHILD, format!("{umask:o}"));
            // SAFETY: umask is async-signal-safe; it runs in the child only.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    libc::umask(umask as libc::mode_t);
                    Ok(())
                });
            }
            let out = cmd.output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "umask {umask:04o}:\n{text}");
            assert!(text.contains("1 passed"), "the child ran the test:\n{text}");
        }
    }

    /// Set in the child of [`create_sets_the_exact_mode_whatever_the_umask`]
    /// to the umask it runs under (octal).
    const UMASK_CHILD: &str = "WALRCV_TEST_UMASK_CHILD";

    /// The process's umask, from /proc (reading it with umask(2) would change it).
    fn current_umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }

    #[test]
    fn create_refuses_a_planted_symlink_and_leaves_its_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let tmp = dir.path().join("000000010000000000000001.partial.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let err = create(&tmp, Site::Prepare).unwrap_err();
        assert!(err.to_string().contains("partial.tmp"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&tmp)
            .unwrap()
            .file_type()
            .is_symlink());
        // A dangling symlink (to a file that would be created) is refused too.
        let dangling = dir.path().join("x.tmp");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(create(&dangling, Site::History).is_err());
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn create_replaces_a_stale_tmp_without_touching_its_other_links() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("00000002.history.tmp");
        std::fs::write(&tmp, b"stale contents from a crash").unwrap();
        let file = create(&tmp, Site::History).unwrap();
        write_at(&file, &tmp, 0, b"new", Site::History).unwrap();
        assert_eq!(std::fs::read(&tmp).unwrap(), b"new");
        // A hard link planted under the temporary name keeps its contents.
        let other = dir.path().join("other");
        std::fs::write(&other, b"keep me").unwrap();
        std::fs::remove_file(&tmp).unwrap();
        std::fs::hard_link(&other, &tmp).unwrap();
        let file = create(&tmp, Site::History).unwrap();
        write_at(&file, &tmp, 0, b"new", Site::History).unwrap();
        assert_eq!(std::fs::read(&other).unwrap(), b"keep me");
    }

    #[test]
    fn open_for_write_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let partial = dir.path().join("000000010000000000000001.partial");
        std::os::unix::fs::symlink(&victim, &partial).unwrap();
        assert!(open_for_write(&partial, Site::Startup).is_err());
        std::fs::remove_file(&partial).unwrap();
        std::fs::write(&partial, b"x").unwrap();
        assert!(open_for_write(&partial, Site::Startup).is_ok());
    }

    #[test]
    fn write_file_durably_writes_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        for sync in [true, false] {
            write_file_durably(
                dir.path(),
                "00000002.history",
                b"1\t0/3000000\tno recovery target\n",
                sync,
                Site::History,
            )
            .unwrap();
            let got = std::fs::read(dir.path().join("00000002.history")).unwrap();
            assert_eq!(got, b"1\t0/3000000\tno recovery target\n");
            assert!(!dir.path().join("00000002.history.tmp").exists());
        }
        // Overwrites an existing file atomically.
        write_file_durably(dir.path(), "00000002.history", b"x", true, Site::History).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("00000002.history")).unwrap(),
            b"x"
        );
    }

    #[test]
    fn write_file_durably_refuses_paths() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", ".", "..", "../x", "a/b", "/etc/x"] {
            let err = write_file_durably(dir.path(), bad, b"x", false, Site::History).unwrap_err();
            assert!(matches!(err, ArchiveError::Io { .. }), "{bad}: {err}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn errors_carry_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = fsync_path(&missing, Site::Startup).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let err = fsync_dir(&missing, Site::Startup).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let err = durable_rename(&missing, &dir.path().join("other"), Site::Complete).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("missing") && text.contains("other"), "{text}");
    }

    #[test]
    fn durable_rename_and_fsyncs_work() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.tmp");
        std::fs::write(&a, b"data").unwrap();
        fsync_path(&a, Site::Startup).unwrap();
        let file = File::open(&a).unwrap();
        fdatasync(&file, &a, Site::Wal).unwrap();
        let b = dir.path().join("b");
        durable_rename(&a, &b, Site::Complete).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read(&b).unwrap(), b"data");
        fsync_dir(dir.path(), Site::Startup).unwrap();
    }
}
