//! The simulated power loss of [`crate::archive::simfs`] seen through
//! this module's calls. (Here rather than in `simfs.rs`, so that the
//! simulation does not depend on the module it stands behind.)

use std::path::Path;

use crate::archive::durable::{self, Site};
use crate::archive::simfs::*;

fn read(dir: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(name)).ok()
}

#[test]
fn a_crash_keeps_only_what_was_fsynced() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = SimFs::install(tmp.path()).unwrap();
    let d = sim.root().to_path_buf();
    let a = d.join("a.tmp");
    let f = durable::create(&a, Site::Wal).unwrap();
    durable::write_at(&f, &a, 0, b"durable", Site::Wal).unwrap();
    durable::fdatasync(&f, &a, Site::Wal).unwrap();
    durable::write_at(&f, &a, 7, b" lost", Site::Wal).unwrap();
    // The file's data is durable, its name is not yet.
    drop(f);
    sim.crash().unwrap();
    assert_eq!(read(&d, "a.tmp"), None, "an entry never fsynced is gone");

    let f = durable::create(&a, Site::Wal).unwrap();
    durable::write_at(&f, &a, 0, b"durable", Site::Wal).unwrap();
    durable::fdatasync(&f, &a, Site::Wal).unwrap();
    durable::fsync_dir(&d, Site::Wal).unwrap();
    durable::write_at(&f, &a, 7, b" lost", Site::Wal).unwrap();
    // A rename without a directory fsync is undone.
    durable::rename(&a, &d.join("b"), Site::Complete).unwrap();
    drop(f);
    sim.crash().unwrap();
    assert_eq!(read(&d, "a.tmp").as_deref(), Some(&b"durable"[..]));
    assert_eq!(read(&d, "b"), None);
}

#[test]
fn after_a_failed_fsync_a_new_descriptor_syncs_without_the_lost_data() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = SimFs::install(tmp.path()).unwrap();
    let d = sim.root().to_path_buf();
    let a = d.join("a");
    let f = durable::create(&a, Site::Wal).unwrap();
    durable::write_at(&f, &a, 0, b"old.", Site::Wal).unwrap();
    durable::fsync(&f, &a, Site::Wal).unwrap();
    durable::fsync_dir(&d, Site::Wal).unwrap();
    durable::write_at(&f, &a, 4, b"lost", Site::Wal).unwrap();
    sim.fail_file_syncs(1);
    assert!(durable::fdatasync(&f, &a, Site::Wal).is_err());
    drop(f);
    // Linux: the page cache still shows the data, and a new descriptor's
    // fsync succeeds.
    assert_eq!(read(&d, "a").as_deref(), Some(&b"old.lost"[..]));
    durable::fsync_path(&a, Site::Startup).unwrap();
    sim.crash().unwrap();
    assert_eq!(read(&d, "a").as_deref(), Some(&b"old."[..]));
    // Written again after the failure (a page made dirty again, even
    // with the same bytes): durable at the next fsync.
    let f = durable::open_for_write(&a, Site::Startup).unwrap();
    durable::write_at(&f, &a, 0, b"old.lost", Site::Wal).unwrap();
    sim.fail_file_syncs(1);
    assert!(durable::fdatasync(&f, &a, Site::Wal).is_err());
    durable::write_at(&f, &a, 8, b"+new", Site::Wal).unwrap();
    durable::fdatasync(&f, &a, Site::Wal).unwrap();
    drop(f);
    sim.crash().unwrap();
    assert_eq!(read(&d, "a").as_deref(), Some(&b"old.lost+new"[..]));
}

#[test]
fn a_failed_directory_fsync_loses_the_entries_changed_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("x.partial"), b"x").unwrap();
    let sim = SimFs::install(tmp.path()).unwrap();
    let d = sim.root().to_path_buf();
    durable::rename(&d.join("x.partial"), &d.join("x"), Site::Complete).unwrap();
    sim.fail_dir_syncs(1);
    assert!(durable::fsync_dir(&d, Site::Complete).is_err());
    durable::fsync_dir(&d, Site::Startup).unwrap();
    sim.crash().unwrap();
    assert_eq!(read(&d, "x.partial").as_deref(), Some(&b"x"[..]));
    assert_eq!(read(&d, "x"), None);
}

#[test]
fn frozen_means_nothing_happens_and_other_directories_are_real() {
    let tmp = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a"), b"a").unwrap();
    let sim = SimFs::install(tmp.path()).unwrap();
    let d = sim.root().to_path_buf();
    sim.freeze();
    assert!(durable::remove_file(&d.join("a"), Site::Cleanup).unwrap());
    sim.thaw();
    assert!(d.join("a").exists());
    // Not covered: a real fsync of a file that does not exist fails.
    assert!(durable::fsync_path(&other.path().join("none"), Site::Startup).is_err());
    sim.fail_file_syncs(1);
    std::fs::write(other.path().join("b"), b"b").unwrap();
    durable::fsync_path(&other.path().join("b"), Site::Startup).unwrap();
}
