//! A FUSE file system that loses what was not synced: power loss under the
//! real, unmodified walrcv binary (LazyFS's idea, for one archive directory).
//!
//! [`LazyFs::mount`] imports what a directory holds (as durable), then mounts
//! itself over that directory. Every operation then goes through this file
//! system, which keeps two states:
//!
//! - the *current* state, what every process sees (reads see all writes, as the
//!   page cache makes them);
//! - the *durable* state, what a disk would hold after a power cut:
//!   - a file's contents and size as of its last `fsync`/`fdatasync` (both
//!     the same here: `fdatasync` persists the size too);
//!   - a directory's entries (create, rename, unlink, mkdir, rmdir) as of its
//!     last `fsync`. Conservative on purpose: an `fsync` of a file does *not*
//!     make its own name durable (ext4 happens to commit it with its journal,
//!     POSIX does not promise it), and a rename not followed by an `fsync` of
//!     its directory is lost.
//!
//! [`LazyFs::power_loss`] makes every file and directory revert to its durable
//! state; files that no durable directory entry reaches disappear. Kill the
//! processes using the archive first (SIGKILL), then call it, then start them
//! again: that is a power cut as far as the archive is concerned.
//!
//! [`LazyFs::fail_next_fsync`] injects an `EIO` with Linux's semantics: the
//! error is reported once, the dirty data is dropped (it stays readable, as in
//! the page cache, but is not made durable), and a later `fsync` succeeds
//! without writing it, unless the same page is written again.
//!
//! [`LazyFs::pause_at_next_sync`] holds the next sync that changes what is
//! durable in a matching file (after carrying it out) until released: the
//! test can SIGKILL the process right after that sync, deterministically.
//!
//! What it does not model: partial (torn) persistence of un-synced writes
//! (everything not synced is lost, never a random part of it); metadata other
//! than size (mode, owner, times are kept as they are); cross-directory rename
//! durability (each directory's entries are durable on their own, so a file
//! moved between two directories can come back in both); hard links,
//! symlinks, special files, xattrs (refused); the disk filling up.
//!
//! Data lives in a private store (two files per inode: current and durable)
//! in a temporary directory; the directory tree exists only in memory and
//! through the mount. [`LazyFs::unmount`] writes the current tree back into
//! the directory under the mount. Kernel caches: entries and attributes are
//! never cached (TTL 0) and the page cache is invalidated at every open and
//! at a power loss, so nothing read before a power loss is seen after it.
//!
//! Leaks: dropping a [`LazyFs`] (also during a panic) detaches the mount
//! (`umount -l`); a watchdog process does the same if the test process dies
//! without running `Drop`. Needs root (mount(2), `/dev/fuse`).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, Notifier, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};

/// The name of the mount in /proc/mounts.
pub const FS_NAME: &str = "walrcv-lazyfs";
/// The granularity of dirty tracking: a page written again after a failed
/// fsync is made durable whole by the next fsync, as Linux does.
const PAGE: u64 = 4096;
const ROOT: u64 = 1;
/// How long `Drop` waits for the FUSE thread after the lazy unmount.
const JOIN_LIMIT: Duration = Duration::from_secs(2);

/// What [`LazyFs::power_loss`] threw away.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PowerLossReport {
    /// Files whose contents or size differed from their durable state.
    pub files_reverted: usize,
    /// Directories whose entries differed from their durable entries.
    pub dirs_reverted: usize,
    /// Files and directories that no durable entry reaches any more.
    pub nodes_removed: usize,
    /// Their names (in the current tree before the power loss).
    pub removed_names: Vec<String>,
}

/// Counters of what the file system saw (for the tests' reports).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub writes: u64,
    pub bytes_written: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub injected_fsync_errors: u64,
}

/// A sync held by the FUSE thread (see [`LazyFs::pause_at_next_sync`]).
#[derive(Default)]
struct Pause {
    /// Pause at the next sync that changes the durable state of a file whose
    /// name contains this.
    armed: Option<String>,
    /// The name of the file whose sync is held now.
    held: Option<String>,
    released: bool,
}

type SharedPause = Arc<(Mutex<Pause>, Condvar)>;

fn lock_pause(p: &SharedPause) -> MutexGuard<'_, Pause> {
    p.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// One mounted power-loss file system (see the module docs).
pub struct LazyFs {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    pause: SharedPause,
    session: Option<BackgroundSession>,
    notifier: Notifier,
    watchdog: Option<Child>,
    store: tempfile::TempDir,
}

impl LazyFs {
    /// Imports what `dir` holds (regular files and directories, all durable),
    /// then mounts the file system over `dir`.
    pub fn mount(dir: &Path) -> io::Result<LazyFs> {
        let dir = dir.canonicalize()?;
        let store = tempfile::Builder::new()
            .prefix("walrcv-lazyfs-store.")
            .tempdir()?;
        let mut state = State::new(store.path().to_path_buf(), fs::metadata(&dir)?)?;
        state.import(ROOT, &dir)?;
        let state = Arc::new(Mutex::new(state));
        let pause = SharedPause::default();
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(FS_NAME.to_string()),
            MountOption::DefaultPermissions,
        ];
        // The server user reads the archive too (restore_command).
        config.acl = SessionACL::All;
        config.n_threads = Some(1);
        let session = fuser::spawn_mount(
            Adapter {
                state: Arc::clone(&state),
                pause: Arc::clone(&pause),
            },
            &dir,
            &config,
        )?;
        let notifier = session.notifier();
        let mut fs = LazyFs {
            watchdog: None,
            dir,
            state,
            pause,
            session: Some(session),
            notifier,
            store,
        };
        fs.start_watchdog();
        // The mount is in place once the root answers.
        fs::read_dir(&fs.dir)?;
        Ok(fs)
    }

    /// The mounted directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Every file and directory reverts to its durable state. The processes
    /// that used the file system should be dead (SIGKILL) first.
    pub fn power_loss(&self) -> PowerLossReport {
        let (report, known) = {
            let mut state = self.lock();
            let known: Vec<u64> = state.nodes.keys().copied().collect();
            (state.power_loss(), known)
        };
        // Outside the lock: the kernel may need the FUSE thread meanwhile.
        for ino in known {
            let _ = self.notifier.inval_inode(INodeNo(ino), 0, 0);
        }
        report
    }

    /// The next `fsync`/`fdatasync` of a file whose name contains `needle`
    /// fails with EIO (once), with Linux's semantics (module docs).
    pub fn fail_next_fsync(&self, needle: &str) {
        self.lock().fsync_faults.push(needle.to_string());
    }

    /// Whether a fault armed by [`LazyFs::fail_next_fsync`] is still pending.
    pub fn fsync_fault_pending(&self) -> bool {
        !self.lock().fsync_faults.is_empty()
    }

    /// The next `fsync`/`fdatasync` that changes what is durable in a file
    /// whose name contains `needle` is carried out, then held: the process
    /// that called it waits (in D state, SIGKILL included) until
    /// [`LazyFs::release_pause`]. To cut the power right after that sync:
    /// [`LazyFs::wait_paused`], send SIGKILL, release, reap, [`LazyFs::power_loss`].
    pub fn pause_at_next_sync(&self, needle: &str) {
        *lock_pause(&self.pause) = Pause {
            armed: Some(needle.to_string()),
            ..Pause::default()
        };
    }

    /// Waits until a sync is held; the file's name, or None after `timeout`.
    pub fn wait_paused(&self, timeout: Duration) -> Option<String> {
        let guard = lock_pause(&self.pause);
        let (guard, _) = self
            .pause
            .1
            .wait_timeout_while(guard, timeout, |p| p.held.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.held.clone()
    }

    /// Lets a held sync return (and disarms a pause not reached).
    pub fn release_pause(&self) {
        let mut p = lock_pause(&self.pause);
        p.armed = None;
        p.released = true;
        self.pause.1.notify_all();
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Unmounts (the processes using it must be gone), then writes the
    /// current tree into the directory that was under the mount, replacing
    /// what was there.
    pub fn unmount(mut self) -> io::Result<()> {
        self.release_pause();
        let session = self.session.take().expect("mounted");
        session.umount_and_join()?;
        self.stop_watchdog();
        clear_dir(&self.dir)?;
        self.lock().export(ROOT, &self.dir)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A detached process that lazily unmounts (and removes the store) when
    /// this test process dies without running `Drop`.
    fn start_watchdog(&mut self) {
        let script = r#"
            while kill -0 "$1" 2>/dev/null; do sleep 1; done
            umount -l "$2" 2>/dev/null
            rm -rf "$3"
        "#;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script, "walrcv-lazyfs-watchdog"])
            .arg(std::process::id().to_string())
            .arg(&self.dir)
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        self.watchdog = cmd.spawn().ok();
    }

    fn stop_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Drop for LazyFs {
    /// Lazy unmount (never blocks on a busy mount), then waits a little for
    /// the FUSE thread; a thread still serving a process that keeps a file
    /// open in the detached mount is left to end with that process.
    fn drop(&mut self) {
        self.release_pause();
        if let Some(session) = self.session.take() {
            lazy_unmount(&self.dir);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(session.join());
            });
            if rx.recv_timeout(JOIN_LIMIT).is_err() {
                eprintln!(
                    "lazyfs: the FUSE thread of {} did not end within {JOIN_LIMIT:?} (a process still uses it)",
                    self.dir.display()
                );
            }
        }
        self.stop_watchdog();
    }
}

/// `umount -l`: detaches at once even when busy.
pub fn lazy_unmount(dir: &Path) {
    if let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) {
        // SAFETY: a valid NUL-terminated path; umount2 does not keep it.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The mount points of this file system now in /proc/self/mountinfo.
pub fn mounted_lazyfs() -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter(|l| l.contains(&format!(" - fuse {FS_NAME} ")))
        .filter_map(|l| {
            l.split(' ')
                .nth(4)
                .map(|p| PathBuf::from(unescape_mountinfo(p)))
        })
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn clear_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if fs::symlink_metadata(&path)?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

// --- The state: current and durable, files and directories ------------------

#[derive(Debug)]
struct Meta {
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
}

impl Meta {
    fn now(perm: u16, uid: u32, gid: u32) -> Meta {
        let now = SystemTime::now();
        Meta {
            perm,
            uid,
            gid,
            mtime: now,
            ctime: now,
        }
    }
}

#[derive(Debug)]
struct FileNode {
    /// What processes see.
    cur: File,
    cur_path: PathBuf,
    /// What the disk holds.
    dur: File,
    len: u64,
    /// Pages written since the last sync (or since a failed sync dropped them).
    dirty: BTreeSet<u64>,
    /// The smallest size since the last sync: bytes past it are not the
    /// durable ones any more, even if the file grew again.
    min_len: u64,
}

#[derive(Debug)]
struct DirNode {
    entries: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
    parent: u64,
}

#[derive(Debug)]
enum Kind {
    File(FileNode),
    Dir(DirNode),
}

#[derive(Debug)]
struct Node {
    kind: Kind,
    meta: Meta,
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    store: PathBuf,
    fsync_faults: Vec<String>,
    stats: Stats,
}

type Res<T> = Result<T, Errno>;

fn errno(e: io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_i32).unwrap_or(Errno::EIO)
}

fn io_error(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.code())
}

impl State {
    fn new(store: PathBuf, root: fs::Metadata) -> io::Result<State> {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                kind: Kind::Dir(DirNode {
                    entries: BTreeMap::new(),
                    durable: BTreeMap::new(),
                    parent: ROOT,
                }),
                meta: Meta::now((root.mode() & 0o7777) as u16, root.uid(), root.gid()),
            },
        );
        Ok(State {
            nodes,
            next_ino: ROOT + 1,
            store,
            fsync_faults: Vec::new(),
            stats: Stats::default(),
        })
    }

    fn node(&self, ino: u64) -> Res<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Res<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> Res<&DirNode> {
        match &self.node(ino)?.kind {
            Kind::Dir(d) => Ok(d),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Res<&mut DirNode> {
        match &mut self.node_mut(ino)?.kind {
            Kind::Dir(d) => Ok(d),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Res<&mut FileNode> {
        match &mut self.node_mut(ino)?.kind {
            Kind::File(f) => Ok(f),
            Kind::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn attr(&self, ino: u64) -> Res<FileAttr> {
        let node = self.node(ino)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::File(f) => (FileType::RegularFile, f.len, 1),
            Kind::Dir(_) => (FileType::Directory, 4096, 2),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.meta.mtime,
            mtime: node.meta.mtime,
            ctime: node.meta.ctime,
            crtime: node.meta.ctime,
            kind,
            perm: node.meta.perm,
            nlink,
            uid: node.meta.uid,
            gid: node.meta.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Res<u64> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn new_file(&mut self, meta: Meta) -> io::Result<u64> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(p)
        };
        let cur_path = self.store.join(format!("{ino}.cur"));
        let cur = open(&cur_path)?;
        let dur = open(&self.store.join(format!("{ino}.dur")))?;
        self.nodes.insert(
            ino,
            Node {
                kind: Kind::File(FileNode {
                    cur,
                    cur_path,
                    dur,
                    len: 0,
                    dirty: BTreeSet::new(),
                    min_len: 0,
                }),
                meta,
            },
        );
        Ok(ino)
    }

    fn new_dir(&mut self, parent: u64, meta: Meta) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                kind: Kind::Dir(DirNode {
                    entries: BTreeMap::new(),
                    durable: BTreeMap::new(),
                    parent,
                }),
                meta,
            },
        );
        ino
    }

    /// Adds `name` in `parent`, failing if it exists.
    fn link_new(&mut self, parent: u64, name: &OsStr, ino: u64) -> Res<()> {
        let dir = self.dir_mut(parent)?;
        if dir.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        dir.entries.insert(name.to_os_string(), ino);
        Ok(())
    }

    fn create(&mut self, parent: u64, name: &OsStr, meta: Meta) -> Res<u64> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.new_file(meta).map_err(errno)?;
        self.link_new(parent, name, ino)?;
        Ok(ino)
    }

    fn mkdir(&mut self, parent: u64, name: &OsStr, meta: Meta) -> Res<u64> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.new_dir(parent, meta);
        self.link_new(parent, name, ino)?;
        Ok(ino)
    }

    /// unlink and rmdir: the node stays (open descriptors, and its durable
    /// entry may bring it back at a power loss).
    fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        match (&self.node(ino)?.kind, want_dir) {
            (Kind::Dir(d), true) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            (Kind::Dir(_), false) => return Err(Errno::EISDIR),
            (Kind::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.dir_mut(parent)?.entries.remove(name);
        Ok(())
    }

    fn rename(
        &mut self,
        from: u64,
        name: &OsStr,
        to: u64,
        new_name: &OsStr,
        noreplace: bool,
    ) -> Res<()> {
        let ino = self.lookup(from, name)?;
        let moving_dir = matches!(self.node(ino)?.kind, Kind::Dir(_));
        if let Ok(old) = self.lookup(to, new_name) {
            if old == ino {
                return Ok(());
            }
            if noreplace {
                return Err(Errno::EEXIST);
            }
            match (&self.node(old)?.kind, moving_dir) {
                (Kind::Dir(d), true) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                (Kind::Dir(_), false) => return Err(Errno::EISDIR),
                (Kind::File(_), true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
        }
        self.dir_mut(to)?;
        self.dir_mut(from)?.entries.remove(name);
        self.dir_mut(to)?
            .entries
            .insert(new_name.to_os_string(), ino);
        if moving_dir {
            self.dir_mut(ino)?.parent = to;
        }
        Ok(())
    }

    fn read(&mut self, ino: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        let f = self.file_mut(ino)?;
        let end = f.len.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; (end - offset) as usize];
        f.cur.read_exact_at(&mut buf, offset).map_err(errno)?;
        Ok(buf)
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Res<u32> {
        let f = self.file_mut(ino)?;
        f.cur.write_all_at(data, offset).map_err(errno)?;
        if !data.is_empty() {
            let end = offset + data.len() as u64;
            f.len = f.len.max(end);
            f.dirty.extend(offset / PAGE..=(end - 1) / PAGE);
        }
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        self.node_mut(ino)?.meta.mtime = SystemTime::now();
        Ok(data.len() as u32)
    }

    fn truncate(&mut self, ino: u64, size: u64) -> Res<()> {
        let f = self.file_mut(ino)?;
        f.cur.set_len(size).map_err(errno)?;
        f.min_len = f.min_len.min(size);
        f.len = size;
        Ok(())
    }

    /// Some name of `ino` in the current tree (for fault matching).
    fn some_name(&self, ino: u64) -> Option<OsString> {
        self.nodes.values().find_map(|n| match &n.kind {
            Kind::Dir(d) => d
                .entries
                .iter()
                .find(|(_, &i)| i == ino)
                .map(|(name, _)| name.clone()),
            Kind::File(_) => None,
        })
    }

    /// The file's name, and whether the sync changed what is durable.
    fn fsync_file(&mut self, ino: u64) -> Res<(OsString, bool)> {
        let name = self.some_name(ino).unwrap_or_default();
        let fault = self.fsync_faults.iter().position(|needle| {
            name.as_bytes()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        });
        if let Some(i) = fault {
            self.fsync_faults.remove(i);
            self.stats.injected_fsync_errors += 1;
            // Linux: the dirty pages are marked clean; the error is reported once.
            let f = self.file_mut(ino)?;
            f.dirty.clear();
            f.min_len = f.len;
            return Err(Errno::EIO);
        }
        self.stats.file_syncs += 1;
        let changed = self.file_mut(ino)?.sync().map_err(errno)?;
        Ok((name, changed))
    }

    fn fsync_dir(&mut self, ino: u64) -> Res<()> {
        self.stats.dir_syncs += 1;
        let d = self.dir_mut(ino)?;
        d.durable = d.entries.clone();
        Ok(())
    }

    fn power_loss(&mut self) -> PowerLossReport {
        let mut report = PowerLossReport::default();
        let mut reachable = HashSet::from([ROOT]);
        let mut queue = vec![ROOT];
        let mut parents = Vec::new();
        while let Some(ino) = queue.pop() {
            if let Some(Node {
                kind: Kind::Dir(d), ..
            }) = self.nodes.get(&ino)
            {
                for &child in d.durable.values() {
                    if self.nodes.contains_key(&child) && reachable.insert(child) {
                        queue.push(child);
                        parents.push((child, ino));
                    }
                }
            }
        }
        let gone: Vec<u64> = self
            .nodes
            .keys()
            .copied()
            .filter(|i| !reachable.contains(i))
            .collect();
        for &ino in &gone {
            if let Some(name) = self.some_name(ino) {
                report
                    .removed_names
                    .push(name.to_string_lossy().into_owned());
            }
        }
        for ino in gone {
            if let Some(Node {
                kind: Kind::File(f),
                ..
            }) = self.nodes.remove(&ino)
            {
                let _ = fs::remove_file(&f.cur_path);
                let _ = fs::remove_file(f.cur_path.with_extension("dur"));
            }
            report.nodes_removed += 1;
        }
        for node in self.nodes.values_mut() {
            match &mut node.kind {
                Kind::Dir(d) => {
                    if d.entries != d.durable {
                        report.dirs_reverted += 1;
                        d.entries = d.durable.clone();
                    }
                }
                Kind::File(f) => match f.revert() {
                    Ok(true) => report.files_reverted += 1,
                    Ok(false) => {}
                    Err(e) => panic!("lazyfs: reverting {}: {e}", f.cur_path.display()),
                },
            }
        }
        for (child, parent) in parents {
            if let Ok(d) = self.dir_mut(child) {
                d.parent = parent;
            }
        }
        report
    }

    /// Copies the tree under `path` into this state (all durable).
    fn import(&mut self, dir_ino: u64, path: &Path) -> io::Result<()> {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let node_meta = Meta::now((meta.mode() & 0o7777) as u16, meta.uid(), meta.gid());
            let ino = if meta.is_dir() {
                let ino = self.new_dir(dir_ino, node_meta);
                self.import(ino, &entry.path())?;
                ino
            } else if meta.is_file() {
                let ino = self.new_file(node_meta)?;
                let data = fs::read(entry.path())?;
                let f = self.file_mut(ino).map_err(io_error)?;
                f.cur.write_all_at(&data, 0)?;
                f.len = data.len() as u64;
                f.min_len = f.len;
                f.dur.write_all_at(&data, 0)?;
                ino
            } else {
                return Err(io::Error::other(format!(
                    "lazyfs: cannot import {} (neither file nor directory)",
                    entry.path().display()
                )));
            };
            let d = self.dir_mut(dir_ino).map_err(io_error)?;
            d.entries.insert(entry.file_name(), ino);
            d.durable.insert(entry.file_name(), ino);
        }
        Ok(())
    }

    /// Writes the current tree under `dir_ino` into `path`.
    fn export(&mut self, dir_ino: u64, path: &Path) -> io::Result<()> {
        let entries = self.dir(dir_ino).map_err(io_error)?.entries.clone();
        for (name, ino) in entries {
            let target = path.join(&name);
            let perm = self.node(ino).map_err(io_error)?.meta.perm;
            match &self.node(ino).map_err(io_error)?.kind {
                Kind::Dir(_) => {
                    fs::create_dir(&target)?;
                    self.export(ino, &target)?;
                }
                Kind::File(f) => {
                    fs::copy(&f.cur_path, &target)?;
                    let file = File::options().write(true).open(&target)?;
                    file.set_len(f.len)?;
                    file.sync_all()?;
                }
            }
            fs::set_permissions(&target, fs::Permissions::from_mode(u32::from(perm)))?;
        }
        File::open(path)?.sync_all()
    }
}

impl FileNode {
    /// fsync/fdatasync: the durable copy becomes the current one. Whether
    /// that changed it.
    fn sync(&mut self) -> io::Result<bool> {
        let durable_len = self.dur.metadata()?.len();
        let changed =
            !self.dirty.is_empty() || self.min_len < durable_len || self.len != durable_len;
        // Bytes past the smallest size since the last sync are gone from the
        // disk too (they read as zeros unless written again: dirty pages).
        self.dur.set_len(durable_len.min(self.min_len))?;
        self.dur.set_len(self.len)?;
        let mut buf = vec![0; PAGE as usize];
        for &page in &self.dirty {
            let start = page * PAGE;
            if start >= self.len {
                break;
            }
            let n = (self.len - start).min(PAGE) as usize;
            self.cur.read_exact_at(&mut buf[..n], start)?;
            self.dur.write_all_at(&buf[..n], start)?;
        }
        self.dirty.clear();
        self.min_len = self.len;
        Ok(changed)
    }

    /// Power loss: the current copy becomes the durable one. Whether anything
    /// changed. (Compares whole files: after a failed fsync the current copy
    /// may differ where nothing is dirty any more.)
    fn revert(&mut self) -> io::Result<bool> {
        let durable = read_all(&self.dur)?;
        let changed = read_all(&self.cur)? != durable;
        if changed {
            self.cur.set_len(0)?;
            self.cur.write_all_at(&durable, 0)?;
        }
        self.len = durable.len() as u64;
        self.dirty.clear();
        self.min_len = self.len;
        Ok(changed)
    }
}

fn read_all(file: &File) -> io::Result<Vec<u8>> {
    let mut data = vec![0; file.metadata()?.len() as usize];
    file.read_exact_at(&mut data, 0)?;
    Ok(data)
}

// --- The FUSE adapter ---------------------------------------------------------

struct Adapter {
    state: Arc<Mutex<State>>,
    pause: SharedPause,
}

/// Entries and attributes are never cached by the kernel.
const TTL: Duration = Duration::ZERO;

impl Adapter {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds this (done) sync until released, if a pause is armed for it.
    fn hold_if_armed(&self, name: &OsStr) {
        let mut p = lock_pause(&self.pause);
        let matches = p.armed.as_deref().is_some_and(|needle| {
            name.as_bytes()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        });
        if !matches {
            return;
        }
        p.armed = None;
        p.released = false;
        p.held = Some(name.to_string_lossy().into_owned());
        self.pause.1.notify_all();
        let mut p = self
            .pause
            .1
            .wait_while(p, |p| !p.released)
            .unwrap_or_else(|e| e.into_inner());
        p.held = None;
    }
}

fn perm_of(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

impl Filesystem for Adapter {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.lock();
        match state.lookup(parent.0, name).and_then(|i| state.attr(i)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.lock();
        let result = (|| {
            if let Some(size) = size {
                state.truncate(ino.0, size)?;
            }
            let node = state.node_mut(ino.0)?;
            if let Some(mode) = mode {
                node.meta.perm = (mode & 0o7777) as u16;
            }
            if let Some(uid) = uid {
                node.meta.uid = uid;
            }
            if let Some(gid) = gid {
                node.meta.gid = gid;
            }
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => node.meta.mtime = t,
                Some(TimeOrNow::Now) => node.meta.mtime = SystemTime::now(),
                None => {}
            }
            node.meta.ctime = SystemTime::now();
            state.attr(ino.0)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.lock();
        let meta = Meta::now(perm_of(mode, umask), req.uid(), req.gid());
        match state
            .mkdir(parent.0, name, meta)
            .and_then(|i| state.attr(i))
        {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.lock().remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.lock().remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let bits = flags.bits() as i32;
        if bits & !(libc::RENAME_NOREPLACE as i32) != 0 {
            // RENAME_EXCHANGE, RENAME_WHITEOUT: not modelled.
            return reply.error(Errno::EINVAL);
        }
        let noreplace = bits & libc::RENAME_NOREPLACE as i32 != 0;
        match self
            .lock()
            .rename(parent.0, name, newparent.0, newname, noreplace)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.lock();
        let result = (|| {
            state.file_mut(ino.0)?;
            if flags.0 & libc::O_TRUNC != 0 {
                state.truncate(ino.0, 0)?;
            }
            Ok(())
        })();
        match result {
            // No FOPEN_KEEP_CACHE: the kernel drops its cached pages at each open.
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.lock().read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.lock().write(ino.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a sync.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.lock().fsync_file(ino.0);
        match result {
            Ok((name, changed)) => {
                if changed {
                    self.hold_if_armed(&name);
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.lock().dir(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.lock();
        let dir = match state.dir(ino.0) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let mut all = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (dir.parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, &child) in &dir.entries {
            let kind = match state.nodes.get(&child).map(|n| &n.kind) {
                Some(Kind::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((child, kind, name.clone()));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.lock().fsync_dir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Plenty of room: the disk filling up is not modelled here.
        reply.statfs(
            1 << 24,
            1 << 23,
            1 << 23,
            1 << 20,
            1 << 19,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if mode & libc::S_IFMT != 0 && mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let mut state = self.lock();
        let meta = Meta::now(perm_of(mode, umask), req.uid(), req.gid());
        match state
            .create(parent.0, name, meta)
            .and_then(|i| state.attr(i))
        {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut state = self.lock();
        let result = (|| {
            let end = offset + length;
            if end > state.file_mut(ino.0)?.len {
                state.truncate(ino.0, end)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
