//! Invoked as `pg_receivewal` (a symlink), walrcv's errors, warnings and hints
//! begin as pg_receivewal's do (`pg_receivewal: error: `, `pg_receivewal:
//! hint: `), compared with Debian's real pg_receivewal for the same cases; as
//! `walrcv`, they are unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{debian_bin, free_port, run_with_timeout, walrcv_bin, PgServer};

/// A `pg_receivewal` symlink to the walrcv binary, in a temporary directory.
fn symlink_as_pg_receivewal() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("pg_receivewal");
    std::os::unix::fs::symlink(walrcv_bin(), &link).unwrap();
    (dir, link)
}

/// Runs `program args` with a clean environment; (exit status, stderr lines).
fn stderr_of(program: &Path, args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PGPASSFILE", "/nonexistent/walrcv-test-pgpass")
        .env("PGCONNECT_TIMEOUT", "10");
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    (out.code(), out.stderr.lines().map(str::to_owned).collect())
}

/// The stderr lines that carry a level (PostgreSQL's frontend format).
fn leveled(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("pg_receivewal: "))
        .collect()
}

#[test]
fn pg_receivewal_prefix_on_errors_and_hints() {
    let (_keep, ours) = symlink_as_pg_receivewal();
    let debian = debian_bin("pg_receivewal");
    let archive = tempfile::tempdir().unwrap();
    let archive = archive.path().to_str().unwrap().to_owned();
    let closed_port = free_port().to_string();

    // A bad option: an error line, then exactly pg_receivewal's hint.
    let (code, lines) = stderr_of(&ours, &["--bogus", "-D", &archive]);
    assert_ne!(code, Some(0));
    assert_eq!(
        leveled(&lines),
        [
            "pg_receivewal: error: unexpected argument '--bogus' found",
            "pg_receivewal: hint: Try \"pg_receivewal --help\" for more information."
        ],
        "{lines:?}"
    );
    let (_, theirs) = stderr_of(&debian, &["--bogus", "-D", &archive]);
    assert_eq!(
        leveled(&theirs).last(),
        leveled(&lines).last(),
        "{theirs:?}"
    );

    // No directory given: error and hint, as pg_receivewal.
    let (_, lines) = stderr_of(&ours, &["-h", "127.0.0.1", "-p", &closed_port]);
    let (_, theirs) = stderr_of(&debian, &["-h", "127.0.0.1", "-p", &closed_port]);
    let (l, t) = (leveled(&lines), leveled(&theirs));
    assert_eq!(l.len(), 2, "{lines:?}");
    assert!(
        l[0].starts_with("pg_receivewal: error: no target directory specified"),
        "{l:?}"
    );
    assert!(
        t[0].starts_with("pg_receivewal: error: no target directory specified"),
        "{t:?}"
    );
    assert_eq!(l[1], t[1]);

    // An unreachable server (with -n, so neither retries): one error line.
    for program in [&ours, &debian] {
        let (code, lines) = stderr_of(
            program,
            &["-D", &archive, "-h", "127.0.0.1", "-p", &closed_port, "-n"],
        );
        assert_eq!(code, Some(1), "{lines:?}");
        let l = leveled(&lines);
        assert_eq!(l.len(), 1, "{}: {lines:?}", program.display());
        assert!(
            l[0].starts_with("pg_receivewal: error: ")
                && l[0].contains("\"127.0.0.1\", port")
                && l[0].contains("Connection refused"),
            "{}: {lines:?}",
            program.display()
        );
    }

    // A directory that does not exist, against a real server.
    let pg = PgServer::builder().start();
    let conninfo = pg.conninfo();
    for program in [&ours, &debian] {
        let (code, lines) = stderr_of(
            program,
            &["-D", "/nonexistent/walrcv", "-d", &conninfo, "-n"],
        );
        assert_ne!(code, Some(0));
        let l = leveled(&lines);
        assert!(
            !l.is_empty()
                && l.iter().all(|x| x.starts_with("pg_receivewal: error: "))
                && l[0].contains("\"/nonexistent/walrcv\""),
            "{}: {lines:?}",
            program.display()
        );
    }

    // As walrcv, unchanged.
    let (_, lines) = stderr_of(
        &walrcv_bin(),
        &["stream", "-D", "/nonexistent/walrcv", "-d", &conninfo],
    );
    assert!(
        lines[0].starts_with("walrcv: error: directory"),
        "{lines:?}"
    );
}

/// Log lines (warnings, info with -v) under the pg_receivewal name are in
/// PostgreSQL's frontend format: no timestamp, the name first.
#[test]
fn pg_receivewal_log_lines_in_frontend_format() {
    let (_keep, ours) = symlink_as_pg_receivewal();
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let archive = tempfile::tempdir().unwrap();
    let conninfo = pg.conninfo();
    let end = crate::support::format_lsn(pg.current_lsn());
    let (code, lines) = stderr_of(
        &ours,
        &[
            "-D",
            archive.path().to_str().unwrap(),
            "-d",
            &conninfo,
            "-v",
            "-n",
            "-E",
            &end,
        ],
    );
    assert_eq!(code, Some(0), "{lines:?}");
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(line.starts_with("pg_receivewal: "), "{lines:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("pg_receivewal: starting log streaming at")),
        "{lines:?}"
    );
}
