//! A simulated power loss for the archive directory, for the property tests
//! (test builds only): what LazyFS does for a real file system, at the seam
//! that [`super::durable`] already is.
//!
//! Design: the archive stays a real directory (a tempdir) and every part of
//! walrcv keeps reading and writing it as it does in production (the scan,
//! the resume verifier, compressed reading, setting divergent files aside:
//! no read path needs to know about the simulation). What the simulation
//! adds is a *shadow of the durable state*: for each file (by inode) the
//! bytes its last successful fsync/fdatasync made durable, and for the
//! directory the entries (name → inode) its last successful directory fsync
//! made durable. [`super::durable`] updates the shadow instead of calling the
//! real fsyncs for a directory under simulation, and [`SimFs::crash`] rolls
//! the real directory back to the shadow: un-fsynced writes, truncations,
//! creations, renames and removals are undone, as after a power loss on a
//! file system that keeps nothing it was not told to (the strictest POSIX
//! reading, which is LazyFS's).
//!
//! Why not a file system in memory behind every call: the archive is read in
//! many places with `std::fs` (scan, resume, inspect, divergent, restore);
//! routing all of them through `durable` would widen the seam for no gain,
//! since reads see the page cache (the real files) in both cases.
//!
//! fsync errors ([`SimFs::fail_file_syncs`], [`SimFs::fail_dir_syncs`]; only
//! the arming thread's syncs fail, so a schedule replays deterministically
//! whatever the segment preparation thread does meanwhile) behave as Linux since "fsyncgate": the failing call returns EIO, the data
//! it should have written is *not* durable and the kernel forgets it was
//! dirty, so a later fsync of the same file, on any descriptor, succeeds
//! without writing it. The shadow records the file's content at the failure;
//! a later successful fsync makes durable only the bytes written since (that
//! differ from that content), the others keep their durable value (the old
//! bytes, or zeros past the old durable length). Directory entries follow
//! the same rule.
//!
//! [`SimFs::freeze`] stands for SIGKILL: while frozen, the writes, renames,
//! removals and syncs of `durable` do nothing (a dying process's destructors
//! change nothing), and the page cache (the real files) is kept.
//!
//! The registry is process-wide, keyed by directory, so that the segment
//! preparation thread is covered, while tests on other directories are not.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A directory under simulation; dropping it ends the simulation.
pub struct SimFs {
    root: PathBuf,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Durable directory entries: name → inode.
    dir: BTreeMap<String, u64>,
    /// Durable content of each inode known.
    data: HashMap<u64, Vec<u8>>,
    /// A read descriptor on every inode known: keeps its number from being
    /// reused while the shadow may name it, and reads the page cache.
    handles: HashMap<u64, File>,
    /// Bytes of an inode that a failed fsync left clean in the cache but not
    /// durable (`true`), until their page is written again.
    lost: HashMap<u64, Vec<bool>>,
    /// Directory entries that a failed fsync left undone: name → the inode
    /// it named then (`None`: removed), until changed again.
    lost_dir: BTreeMap<String, Option<u64>>,
    fail_file_syncs: u32,
    fail_dir_syncs: u32,
    /// The thread that armed the faults: only its syncs fail, so that which
    /// call fails does not depend on when the segment preparation thread
    /// runs (a schedule replays the same way every time).
    fault_thread: Option<std::thread::ThreadId>,
    frozen: bool,
    /// Counts, for the tests' statistics.
    file_syncs: u64,
    failed_syncs: u64,
}

type Registry = Mutex<Vec<(PathBuf, Arc<Mutex<State>>)>>;

static REGISTRY: Registry = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The simulation covering `path` (a file in, or the directory itself), if any.
pub(crate) fn covering(path: &Path) -> Option<Covered> {
    let registry = lock(&REGISTRY);
    registry
        .iter()
        .find(|(root, _)| path == root || path.parent() == Some(root.as_path()))
        .map(|(_, state)| Covered(state.clone()))
}

fn eio() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EIO)
}

fn inode_of(file: &File) -> std::io::Result<u64> {
    Ok(file.metadata()?.ino())
}

/// A read descriptor on the inode behind `file` (which may be write-only).
fn reopen(file: &File) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

fn read_whole(file: &File) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len() as usize;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

/// The entries of `dir`: name → inode (regular files only).
fn listing(dir: &Path) -> std::io::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if let (true, Ok(name)) = (meta.is_file(), entry.file_name().into_string()) {
            out.insert(name, meta.ino());
        }
    }
    Ok(out)
}

/// The page size of the page cache: a write makes its whole pages dirty.
const PAGE: usize = 4096;

/// The bytes of `current` that a failed fsync leaves not durable: those
/// already lost, and those that differ from the durable content (the dirty
/// ones, as far as the content tells).
fn lost_bytes(durable: &[u8], current: &[u8], before: Option<Vec<bool>>) -> Vec<bool> {
    let before = before.unwrap_or_default();
    (0..current.len())
        .map(|i| before.get(i).copied().unwrap_or(false) || durable.get(i) != Some(&current[i]))
        .collect()
}

/// A successful sync: every byte is durable, except those a failed fsync
/// lost whose page nothing wrote since: they keep their durable value, and
/// past the old durable length the file ends before them (its size was part
/// of what was lost), or reads as zeros when later bytes are durable.
fn sync_bytes(durable: &[u8], lost: Option<&Vec<bool>>, current: &[u8]) -> Vec<u8> {
    let Some(lost) = lost else {
        return current.to_vec();
    };
    let is_lost = |i: usize| lost.get(i).copied().unwrap_or(false);
    let last_kept = (0..current.len()).rev().find(|&i| !is_lost(i));
    let len = last_kept
        .map_or(0, |i| i + 1)
        .max(durable.len().min(current.len()));
    (0..len)
        .map(|i| {
            if is_lost(i) {
                durable.get(i).copied().unwrap_or(0)
            } else {
                current[i]
            }
        })
        .collect()
}

/// The simulation state for one call of [`super::durable`].
pub(crate) struct Covered(Arc<Mutex<State>>);

impl Covered {
    /// SIGKILL in progress: the call does nothing.
    pub(crate) fn frozen(&self) -> bool {
        lock(&self.0).frozen
    }

    /// `len` bytes were written at `offset` of `file` (or, after a
    /// truncation, the file ends at `offset`): their pages are dirty again.
    pub(crate) fn written(&self, file: &File, offset: u64, len: u64) -> std::io::Result<()> {
        let ino = inode_of(file)?;
        let mut state = lock(&self.0);
        if let Some(lost) = state.lost.get_mut(&ino) {
            let from = (offset as usize / PAGE * PAGE).min(lost.len());
            let to = ((offset + len) as usize).div_ceil(PAGE) * PAGE;
            let to = to.min(lost.len());
            lost[from..to].fill(false);
            if len == 0 {
                lost.truncate(offset as usize);
            }
            if !lost.contains(&true) {
                state.lost.remove(&ino);
            }
        }
        Ok(())
    }

    /// fsync or fdatasync of `file`.
    pub(crate) fn sync_file(&self, file: &File) -> std::io::Result<()> {
        let ino = inode_of(file)?;
        let mut state = lock(&self.0);
        if state.frozen {
            return Ok(());
        }
        if let std::collections::hash_map::Entry::Vacant(e) = state.handles.entry(ino) {
            e.insert(reopen(file)?);
        }
        let current = read_whole(&state.handles[&ino])?;
        state.file_syncs += 1;
        if state.fail_file_syncs > 0 && state.fault_thread == Some(std::thread::current().id()) {
            state.fail_file_syncs -= 1;
            state.failed_syncs += 1;
            // The kernel marks the pages clean: whatever they hold now will
            // not be written by a later fsync unless written again.
            let before = state.lost.remove(&ino);
            let durable = state.data.get(&ino).map(Vec::as_slice).unwrap_or_default();
            let lost = lost_bytes(durable, &current, before);
            state.lost.insert(ino, lost);
            return Err(eio());
        }
        let durable = state.data.remove(&ino).unwrap_or_default();
        let new = sync_bytes(&durable, state.lost.get(&ino), &current);
        state.data.insert(ino, new);
        Ok(())
    }

    /// fsync of the directory.
    pub(crate) fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        let current = listing(dir)?;
        let mut state = lock(&self.0);
        if state.frozen {
            return Ok(());
        }
        if state.fail_dir_syncs > 0 && state.fault_thread == Some(std::thread::current().id()) {
            state.fail_dir_syncs -= 1;
            state.failed_syncs += 1;
            let names: std::collections::BTreeSet<String> =
                current.keys().chain(state.dir.keys()).cloned().collect();
            for name in names {
                let now = current.get(&name).copied();
                if now != state.dir.get(&name).copied() || state.lost_dir.contains_key(&name) {
                    state.lost_dir.insert(name, now);
                }
            }
            return Err(eio());
        }
        // Every entry as it is now, except those a failed fsync lost and
        // nothing changed since.
        let lost_dir = std::mem::take(&mut state.lost_dir);
        let mut new = current.clone();
        for (name, then) in lost_dir {
            if current.get(&name).copied() == then {
                match state.dir.get(&name) {
                    Some(ino) => new.insert(name.clone(), *ino),
                    None => new.remove(&name),
                };
                state.lost_dir.insert(name, then);
            }
        }
        // Entries whose inode was never seen (made outside `durable`) are
        // known from now on, with nothing durable in them.
        for (name, ino) in &new {
            if !state.handles.contains_key(ino) {
                if let Ok(f) = File::open(dir.join(name)) {
                    state.handles.insert(*ino, f);
                }
            }
        }
        state.dir = new;
        Ok(())
    }
}

impl SimFs {
    /// Puts the existing directory `root` under simulation; what it holds
    /// now counts as durable.
    pub fn install(root: &Path) -> std::io::Result<SimFs> {
        let root = root.canonicalize()?;
        let state = Arc::new(Mutex::new(State::default()));
        {
            let mut s = lock(&state);
            Self::adopt(&root, &mut s)?;
        }
        let mut registry = lock(&REGISTRY);
        registry.retain(|(r, _)| r != &root);
        registry.push((root.clone(), state.clone()));
        Ok(SimFs { root, state })
    }

    /// The directory under simulation (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the directory's current content as durable.
    fn adopt(root: &Path, state: &mut State) -> std::io::Result<()> {
        let entries = listing(root)?;
        state.data.clear();
        state.handles.clear();
        state.lost.clear();
        state.lost_dir.clear();
        for (name, ino) in &entries {
            let file = File::open(root.join(name))?;
            state.data.insert(*ino, read_whole(&file)?);
            state.handles.insert(*ino, file);
        }
        state.dir = entries;
        Ok(())
    }

    /// The next `n` file fsyncs/fdatasyncs fail with EIO.
    /// (Only syncs made by the calling thread fail.)
    pub fn fail_file_syncs(&self, n: u32) {
        let mut s = lock(&self.state);
        s.fail_file_syncs = n;
        s.fault_thread = Some(std::thread::current().id());
    }

    /// The next `n` directory fsyncs fail with EIO.
    pub fn fail_dir_syncs(&self, n: u32) {
        let mut s = lock(&self.state);
        s.fail_dir_syncs = n;
        s.fault_thread = Some(std::thread::current().id());
    }

    /// SIGKILL begins: the archive operations of `durable` do nothing until
    /// [`SimFs::thaw`] (the dying process's destructors write nothing).
    pub fn freeze(&self) {
        lock(&self.state).frozen = true;
    }

    pub fn thaw(&self) {
        lock(&self.state).frozen = false;
    }

    /// (fsyncs simulated, fsyncs failed) so far.
    pub fn sync_counts(&self) -> (u64, u64) {
        let s = lock(&self.state);
        (s.file_syncs, s.failed_syncs)
    }

    /// What the directory would hold after a power loss now: name → bytes.
    pub fn durable_view(&self) -> BTreeMap<String, Vec<u8>> {
        let s = lock(&self.state);
        s.dir
            .iter()
            .map(|(name, ino)| (name.clone(), s.data.get(ino).cloned().unwrap_or_default()))
            .collect()
    }

    /// Power loss: the real directory is rolled back to its durable state
    /// (every descriptor on its files must be closed first: the process is
    /// gone). Pending injected faults are forgotten.
    pub fn crash(&self) -> std::io::Result<()> {
        let view = self.durable_view();
        for name in listing(&self.root)?.keys() {
            std::fs::remove_file(self.root.join(name))?;
        }
        for (name, bytes) in &view {
            std::fs::write(self.root.join(name), bytes)?;
        }
        let mut s = lock(&self.state);
        *s = State::default();
        Self::adopt(&self.root, &mut s)
    }
}

impl Drop for SimFs {
    fn drop(&mut self) {
        lock(&REGISTRY).retain(|(r, _)| r != &self.root);
    }
}
