//! The files walrcv creates get pg_receivewal's modes (its
//! `RetrieveDataDirCreatePerm`): 0600, or 0640 when the server's data
//! directory grants group access (`initdb --allow-group-access`, i.e. a 0750
//! data directory, which the server reports as `data_directory_mode`),
//! whatever the umask walrcv runs under: each case runs walrcv under the umask
//! that would give another mode if walrcv left the mode to it (0000 for 0600,
//! 0077 for 0640), set in the child only (`Walrcv::umask`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::{PgServer, Walrcv};

/// Streams from a new slot up to the server's current position (at least one
/// complete segment and a `.partial`) with walrcv under `umask`; returns the
/// archive directory.
fn stream_some_wal(pg: &PgServer, umask: u32) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("walrcv-modes-")
        .tempdir()
        .unwrap();
    let conn = pg.conninfo();
    let d = dir.path().to_str().unwrap();
    let run = |args: &[&str]| {
        let out = Walrcv::new(args).umask(umask).run();
        assert!(
            out.success(),
            "walrcv {args:?} (umask {umask:04o}): {}",
            out.text()
        );
    };
    run(&["stream", "-d", &conn, "--create-slot", "-S", "modes"]);
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g");
    pg.psql("SELECT pg_switch_wal()");
    pg.psql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g");
    let end = pg.psql("SELECT pg_current_wal_flush_lsn()");
    run(&[
        "stream", "-D", d, "-d", &conn, "-S", "modes", "-E", &end, "-n",
    ]);
    dir
}

/// (name, mode) of every file in `dir`, asserting there is a complete segment
/// and a `.partial` among them.
fn modes(dir: &Path) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
            (e.file_name().to_string_lossy().into_owned(), mode)
        })
        .collect();
    out.sort();
    assert!(
        out.iter().any(|(n, _)| n.len() == 24),
        "a complete segment: {out:?}"
    );
    assert!(
        out.iter().any(|(n, _)| n.ends_with(".partial")),
        "a partial segment: {out:?}"
    );
    out
}

#[test]
fn owner_only_files_from_a_default_server() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    assert_eq!(pg.psql("SHOW data_directory_mode"), "0700");
    let dir = stream_some_wal(&pg, 0o000);
    for (name, mode) in modes(dir.path()) {
        assert_eq!(mode, 0o600, "{name}: {mode:o}");
    }
}

#[test]
fn group_readable_files_from_a_group_access_server() {
    let mut pg = PgServer::builder().wal_segsize_mb(1).start();
    // What initdb --allow-group-access does to the directory; the server
    // derives data_directory_mode from it at start.
    pg.stop();
    std::fs::set_permissions(pg.data_dir(), std::fs::Permissions::from_mode(0o750)).unwrap();
    pg.start_again();
    assert_eq!(pg.psql("SHOW data_directory_mode"), "0750");
    let dir = stream_some_wal(&pg, 0o077);
    let files = modes(dir.path());
    for (name, mode) in &files {
        assert_eq!(*mode, 0o640, "{name}: {mode:o}");
    }
}
