//! The power-loss file system of the tests (tests/support/lazyfs.rs) on its
//! own: what survives a power loss and what does not, fsync EIO, and that no
//! mount outlives a test, also a panicking one.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::support::lazyfs::{mounted_lazyfs, LazyFs, PowerLossReport};

/// A mounted LazyFs over a fresh temporary directory (fields drop in order:
/// the mount first).
struct Mounted {
    fs: LazyFs,
    _dir: tempfile::TempDir,
}

impl Mounted {
    fn new() -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let fs = LazyFs::mount(dir.path()).expect("mount lazyfs (needs root and /dev/fuse)");
        Mounted { fs, _dir: dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.fs.path().join(name)
    }

    fn sync_dir(&self) {
        File::open(self.fs.path()).unwrap().sync_all().unwrap();
    }

    /// Creates `name` with `data`, fsyncs it and the directory: all durable.
    fn durable_file(&self, name: &str, data: &[u8]) {
        let mut f = File::create(self.path(name)).unwrap();
        f.write_all(data).unwrap();
        f.sync_data().unwrap();
        self.sync_dir();
    }

    fn read(&self, name: &str) -> Option<Vec<u8>> {
        match fs::read(self.path(name)) {
            Ok(d) => Some(d),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => panic!("read {name}: {e}"),
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn lazyfs_unsynced_write_is_lost_synced_write_is_kept() {
    let m = Mounted::new();
    m.durable_file("kept", b"durable");
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.path("kept"))
        .unwrap();
    f.write_all(b" and more").unwrap();
    // Reads see the write before any sync (the page cache).
    assert_eq!(m.read("kept").unwrap(), b"durable and more");
    drop(f);
    let report = m.fs.power_loss();
    assert_eq!(m.read("kept").unwrap(), b"durable");
    assert_eq!(report.files_reverted, 1, "{report:?}");

    let mut f = OpenOptions::new()
        .append(true)
        .open(m.path("kept"))
        .unwrap();
    f.write_all(b" and synced").unwrap();
    f.sync_data().unwrap();
    drop(f);
    m.fs.power_loss();
    assert_eq!(m.read("kept").unwrap(), b"durable and synced");
}

#[test]
fn lazyfs_created_file_never_synced_disappears_and_dir_fsync_keeps_its_name() {
    let m = Mounted::new();
    fs::write(m.path("never-synced"), b"x").unwrap();
    // Data synced, name not (no fsync of the directory): conservative, gone.
    let mut f = File::create(m.path("data-synced")).unwrap();
    f.write_all(b"data").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let report = m.fs.power_loss();
    assert_eq!(m.read("never-synced"), None);
    assert_eq!(m.read("data-synced"), None);
    assert_eq!(report.nodes_removed, 2, "{report:?}");

    // Name synced, data not: the file comes back empty.
    fs::write(m.path("name-synced"), b"data").unwrap();
    m.sync_dir();
    m.fs.power_loss();
    assert_eq!(m.read("name-synced").unwrap(), b"");
}

#[test]
fn lazyfs_rename_without_directory_fsync_is_reverted() {
    let m = Mounted::new();
    m.durable_file("seg", b"old contents");
    let mut f = File::create(m.path("seg.tmp")).unwrap();
    f.write_all(b"new contents").unwrap();
    f.sync_data().unwrap();
    drop(f);
    fs::rename(m.path("seg.tmp"), m.path("seg")).unwrap();
    assert_eq!(m.read("seg").unwrap(), b"new contents");
    m.fs.power_loss();
    assert_eq!(m.read("seg").unwrap(), b"old contents");
    assert_eq!(m.read("seg.tmp"), None, "seg.tmp's name was never durable");

    // A rename to a new name comes undone the same way.
    fs::rename(m.path("seg"), m.path("seg.done")).unwrap();
    m.fs.power_loss();
    assert_eq!(m.read("seg").unwrap(), b"old contents");
    assert_eq!(m.read("seg.done"), None);
}

#[test]
fn lazyfs_rename_then_directory_fsync_is_kept() {
    let m = Mounted::new();
    m.durable_file("seg", b"old contents");
    let mut f = File::create(m.path("seg.tmp")).unwrap();
    f.write_all(b"new contents").unwrap();
    f.sync_data().unwrap();
    drop(f);
    fs::rename(m.path("seg.tmp"), m.path("seg")).unwrap();
    m.sync_dir();
    m.fs.power_loss();
    assert_eq!(m.read("seg").unwrap(), b"new contents");
    assert_eq!(m.read("seg.tmp"), None);
}

#[test]
fn lazyfs_unlink_without_directory_fsync_comes_back() {
    let m = Mounted::new();
    m.durable_file("a", b"aaa");
    m.durable_file("b", b"bbb");
    fs::remove_file(m.path("a")).unwrap();
    fs::remove_file(m.path("b")).unwrap();
    m.sync_dir(); // b's removal durable... and a's: both entries gone from the durable directory
    fs::write(m.path("c"), b"c").unwrap();
    m.fs.power_loss();
    assert_eq!(m.read("a"), None);
    assert_eq!(m.read("b"), None);

    m.durable_file("d", b"ddd");
    fs::remove_file(m.path("d")).unwrap();
    m.fs.power_loss();
    assert_eq!(
        m.read("d").unwrap(),
        b"ddd",
        "unlink not made durable: d is back"
    );
}

#[test]
fn lazyfs_truncate_is_durable_only_with_fsync() {
    let m = Mounted::new();
    let data = pattern(10_000, 1);
    m.durable_file("t", &data);
    let f = OpenOptions::new().write(true).open(m.path("t")).unwrap();
    f.set_len(100).unwrap();
    drop(f);
    m.fs.power_loss();
    assert_eq!(m.read("t").unwrap(), data, "un-synced truncate reverted");

    // Shrink, grow again, fsync: the bytes past the shrink read as zeros.
    let f = OpenOptions::new().write(true).open(m.path("t")).unwrap();
    f.set_len(100).unwrap();
    f.set_len(6000).unwrap();
    f.write_all_at(b"tail", 5996).unwrap();
    f.sync_data().unwrap();
    drop(f);
    m.fs.power_loss();
    let mut expected = data[..100].to_vec();
    expected.resize(5996, 0);
    expected.extend_from_slice(b"tail");
    assert_eq!(m.read("t").unwrap(), expected);
}

#[test]
fn lazyfs_pwrite_at_offsets() {
    let m = Mounted::new();
    let data = pattern(3 * 4096 + 100, 2);
    m.durable_file("p", &data);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("p"))
        .unwrap();
    // In the middle, across a page boundary, and past the end (a hole).
    f.write_all_at(b"MIDDLE", 4093).unwrap();
    f.write_all_at(b"FAR", 20_000).unwrap();
    let mut now = data.clone();
    now[4093..4099].copy_from_slice(b"MIDDLE");
    now.resize(20_000, 0);
    now.extend_from_slice(b"FAR");
    assert_eq!(m.read("p").unwrap(), now);
    drop(f);
    m.fs.power_loss();
    assert_eq!(m.read("p").unwrap(), data);

    let f = OpenOptions::new().write(true).open(m.path("p")).unwrap();
    f.write_all_at(b"MIDDLE", 4093).unwrap();
    f.write_all_at(b"FAR", 20_000).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(b"LOST", 0).unwrap();
    drop(f);
    m.fs.power_loss();
    assert_eq!(m.read("p").unwrap(), now);
}

#[test]
fn lazyfs_directories_follow_the_same_rules() {
    let m = Mounted::new();
    fs::create_dir(m.path("sub")).unwrap();
    fs::write(m.path("sub/f"), b"f").unwrap();
    File::open(m.path("sub")).unwrap().sync_all().unwrap();
    // sub's own entry in the root is not durable yet.
    m.fs.power_loss();
    assert!(!m.path("sub").exists());

    fs::create_dir(m.path("sub")).unwrap();
    m.sync_dir();
    let mut f = File::create(m.path("sub/f")).unwrap();
    f.write_all(b"f").unwrap();
    f.sync_data().unwrap();
    File::open(m.path("sub")).unwrap().sync_all().unwrap();
    m.fs.power_loss();
    assert_eq!(m.read("sub/f").unwrap(), b"f");
}

/// Linux's fsync error semantics: EIO once, the dirty data dropped (still
/// readable, never durable), the next fsync succeeds; a page written again
/// is made durable whole.
#[test]
fn lazyfs_injected_fsync_eio_is_reported_once_and_drops_the_dirty_data() {
    let m = Mounted::new();
    m.durable_file("000000010000000000000001.partial", &[0u8; 8192]);
    let f = OpenOptions::new()
        .write(true)
        .open(m.path("000000010000000000000001.partial"))
        .unwrap();
    f.write_all_at(b"first", 0).unwrap();
    f.write_all_at(b"second", 4096).unwrap();
    m.fs.fail_next_fsync("00000001.partial");
    let err = f.sync_data().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(!m.fs.fsync_fault_pending());
    f.sync_data()
        .expect("the second fsync succeeds (nothing dirty)");
    let now = m.read("000000010000000000000001.partial").unwrap();
    assert_eq!(&now[..5], b"first", "still in the page cache");
    // Page 1 written again: the next fsync writes it whole ("second" too).
    f.write_all_at(b"SECOND", 4096 + 100).unwrap();
    f.sync_data().unwrap();
    drop(f);
    m.fs.power_loss();
    let after = m.read("000000010000000000000001.partial").unwrap();
    assert_eq!(
        &after[..5],
        &[0u8; 5],
        "page 0's write was dropped by the EIO"
    );
    assert_eq!(&after[4096..4102], b"second");
    assert_eq!(&after[4196..4202], b"SECOND");
    assert_eq!(m.fs.stats().injected_fsync_errors, 1);
}

#[test]
fn lazyfs_imports_the_directory_and_unmount_writes_the_tree_back() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("before"), b"was here").unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::write(dir.path().join("sub/inner"), b"inner").unwrap();
    let fs_ = LazyFs::mount(dir.path()).unwrap();
    assert_eq!(fs::read(fs_.path().join("before")).unwrap(), b"was here");
    fs::write(fs_.path().join("lost"), b"lost").unwrap();
    fs::write(fs_.path().join("before"), b"overwritten").unwrap();
    assert_eq!(
        fs_.power_loss(),
        PowerLossReport {
            files_reverted: 1,
            dirs_reverted: 1,
            nodes_removed: 1,
            removed_names: vec!["lost".to_string()],
        }
    );
    fs::write(fs_.path().join("kept"), b"kept").unwrap();
    fs_.unmount().unwrap();
    assert!(!is_mounted(dir.path()));
    assert_eq!(fs::read(dir.path().join("before")).unwrap(), b"was here");
    assert_eq!(fs::read(dir.path().join("sub/inner")).unwrap(), b"inner");
    assert_eq!(fs::read(dir.path().join("kept")).unwrap(), b"kept");
    assert!(!dir.path().join("lost").exists());
}

fn is_mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap();
    mounted_lazyfs().contains(&dir)
}

/// A test that panics with the mount in place, and even with a file still
/// open in it, leaves no mount behind (Drop detaches it lazily, at once).
#[test]
fn lazyfs_a_panicking_test_leaves_no_mount() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().canonicalize().unwrap();
    let inner = path.clone();
    let started = std::time::Instant::now();
    let result = std::thread::spawn(move || {
        let fs_ = LazyFs::mount(&inner).unwrap();
        let mut open = File::create(fs_.path().join("held-open")).unwrap();
        open.write_all(b"x").unwrap();
        assert!(is_mounted(&inner));
        // `fs_` is dropped before `open` on unwinding: the mount is busy then.
        let _keep = (fs_, open);
        panic!("a test failing with the mount in place");
    })
    .join();
    assert!(result.is_err());
    assert!(
        !is_mounted(&path),
        "mount left behind: {:?}",
        mounted_lazyfs()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // The directory under it is untouched and usable.
    assert_eq!(fs::read_dir(&path).unwrap().count(), 0);
}

/// `pause_at_next_sync` holds the first sync that changes what is durable
/// (after carrying it out) until released; a sync with nothing new does not
/// stop.
#[test]
fn lazyfs_pause_holds_the_first_sync_that_changes_the_disk() {
    let m = Mounted::new();
    m.durable_file("x.partial", b"durable");
    m.fs.pause_at_next_sync(".partial");
    let path = m.path("x.partial");
    let syncer = std::thread::spawn(move || {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.sync_data().unwrap(); // nothing new: not held
        f.write_all_at(b"DURABLE", 0).unwrap();
        f.sync_data().unwrap(); // held until released
        std::time::Instant::now()
    });
    let held = m.fs.wait_paused(std::time::Duration::from_secs(10));
    assert_eq!(held.as_deref(), Some("x.partial"));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!syncer.is_finished(), "the sync returned while held");
    let released = std::time::Instant::now();
    m.fs.release_pause();
    assert!(syncer.join().unwrap() >= released);
    m.fs.power_loss();
    assert_eq!(
        m.read("x.partial").unwrap(),
        b"DURABLE",
        "the held sync was carried out"
    );
}
