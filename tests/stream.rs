//! `walrcv stream` against real PostgreSQL servers: byte-identical archives,
//! crash and restart, timeline switches, slots, authentication, bad input, and
//! the pg_receivewal drop-in.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{
    archive_dir, file_name_set, wait_until, walrcv_bin, walrcv_spawn, Auth, BackgroundProcess,
    PgServer, RunOutput, Walrcv,
};

const MB: u64 = 1 << 20;

fn walrcv(args: &[&str]) -> Walrcv {
    Walrcv::new(args).env_remove("PGPASSWORD")
}

fn run(args: &[&str]) -> RunOutput {
    let out = walrcv(args).run();
    eprintln!(
        "walrcv {:?} -> {:?}\n--- stderr ---\n{}",
        args,
        out.code(),
        out.stderr
    );
    out
}

fn stderr(o: &RunOutput) -> String {
    o.stderr.clone()
}

fn spawn(args: &[&str]) -> BackgroundProcess {
    walrcv_spawn(args)
}

fn lsn(pg: &PgServer) -> String {
    pg.psql("SELECT pg_current_wal_flush_lsn()")
}

fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s.trim().split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

fn is_segment(name: &str) -> bool {
    name.len() == 24
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// Every name is one Barman accepts: segment, segment.partial, TTTTTTTT.history.
pub(crate) fn assert_only_barman_names(dir: &Path) {
    for n in file_name_set(dir) {
        let ok = is_segment(&n)
            || n.strip_suffix(".partial").is_some_and(is_segment)
            || n.strip_suffix(".history").is_some_and(|h| h.len() == 8);
        assert!(ok, "unexpected file {n:?} in the archive");
    }
}

/// Every complete segment equals the primary's file of the same name (when the
/// primary still has it); returns how many were compared.
pub(crate) fn assert_complete_segments_identical(archive: &Path, pg_wal: &Path) -> usize {
    let mut compared = 0;
    for n in file_name_set(archive).into_iter().filter(|n| is_segment(n)) {
        let theirs = pg_wal.join(&n);
        if !theirs.exists() {
            continue;
        }
        let a = std::fs::read(archive.join(&n)).unwrap();
        let b = std::fs::read(&theirs).unwrap();
        assert_eq!(a.len(), b.len(), "{n}: sizes differ");
        assert!(a == b, "{n}: archive copy differs from the primary's");
        compared += 1;
    }
    compared
}

fn segno_of(name: &str, seg: u64) -> u64 {
    let per = 0x1_0000_0000 / seg;
    u64::from_str_radix(&name[8..16], 16).unwrap() * per
        + u64::from_str_radix(&name[16..24], 16).unwrap()
}

/// Generates some WAL: a little pgbench, then a segment switch.
fn make_wal(pg: &PgServer, seconds: u32) {
    pg.pgbench(&["-n", "-c", "2", "-T", &seconds.to_string()]);
    pg.psql("SELECT pg_switch_wal()");
}

/// The archive's `.partial` is a whole segment whose bytes equal the
/// primary's up to the flush walrcv reported last (the restart_lsn of `slot`,
/// which follows it). Returns the partial's start LSN and that flush.
fn assert_partial_matches_below_flush(pg: &PgServer, dir: &Path, slot: &str) -> (u64, u64) {
    let flushed = parse_lsn(&pg.psql(&format!(
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    )));
    let all = file_name_set(dir);
    let partial = all
        .iter()
        .find(|n| n.ends_with(".partial"))
        .unwrap_or_else(|| panic!("no partial in {all:?}, flushed {flushed:X}"))
        .clone();
    let seg = &partial[..24];
    let start = segno_of(seg, MB) * MB;
    let upto = flushed.saturating_sub(start).min(MB) as usize;
    let ours = std::fs::read(dir.join(&partial)).unwrap();
    let theirs = std::fs::read(pg.wal_dir().join(seg)).unwrap();
    assert_eq!(
        ours.len() as u64,
        MB,
        "{partial} is padded to the segment size"
    );
    assert!(
        ours[..upto] == theirs[..upto],
        "{partial} differs below the reported flush {flushed:X}"
    );
    (start, flushed)
}

fn stream_until_current(pg: &PgServer, dir: &Path, extra: &[&str]) -> RunOutput {
    let end = lsn(pg);
    let conn = pg.conninfo();
    let mut args = vec![
        "stream",
        "-D",
        dir.to_str().unwrap(),
        "-d",
        &conn,
        "-E",
        &end,
        "-n",
        "-v",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn streams_to_endpos_byte_identical_with_slot() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.pgbench_init(2);
    let dir = archive_dir();
    let conn = pg.conninfo();
    let d = dir.path().to_str().unwrap();
    assert!(run(&["stream", "-d", &conn, "--create-slot", "-S", "arch"])
        .status
        .success());
    // The slot reserves WAL at creation, so streaming starts at its restart_lsn.
    let restart = pg.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'arch'");
    assert!(!restart.is_empty(), "slot reserves WAL");
    make_wal(&pg, 3);
    // A record spanning several segments, then a commit: the flush position
    // is then the end of a whole record.
    pg.psql("SELECT pg_logical_emit_message(false, 'big', repeat('x', 3000000))");
    pg.psql("CREATE TABLE after_big(x int)");
    let out = stream_until_current(&pg, dir.path(), &["-S", "arch"]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("restart_lsn"),
        "started from the slot"
    );
    let first = file_name_set(dir.path()).into_iter().next().unwrap();
    assert_eq!(
        segno_of(&first, MB),
        parse_lsn(&restart) / MB,
        "first segment is the slot's"
    );
    let n = assert_complete_segments_identical(dir.path(), &pg.wal_dir());
    assert!(n >= 3, "compared {n} complete segments");
    assert_only_barman_names(dir.path());
    // The .partial matches the primary's bytes up to the flush position walrcv
    // reported last (the slot's restart_lsn follows it).
    let (start, flushed) = assert_partial_matches_below_flush(&pg, dir.path(), "arch");
    assert!(flushed > start, "flush {flushed:X} inside the partial");
    assert!(run(&["stream", "-d", &conn, "--drop-slot", "-S", "arch"])
        .status
        .success());
    assert_eq!(pg.psql("SELECT count(*) FROM pg_replication_slots"), "0");
    let _ = d;
}

/// Catch-up writes the segments the server already has whole direct (under
/// `.tmp`, renamed when complete). Stopping at an --endpos inside such a
/// segment turns it into an ordinary padded `.partial` holding the WAL up to
/// the flush reported, with no `.tmp` left behind.
#[test]
fn endpos_inside_a_segment_written_direct_leaves_a_padded_partial() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.pgbench_init(1);
    let dir = archive_dir();
    let conn = pg.conninfo();
    let d = dir.path().to_str().unwrap().to_string();
    assert!(run(&["stream", "-d", &conn, "--create-slot", "-S", "mid"])
        .status
        .success());
    let restart =
        parse_lsn(&pg.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'mid'"));
    make_wal(&pg, 3);
    // The middle of the second segment after the slot's: the server has that
    // segment whole, and more.
    let endpos = (restart / MB + 1) * MB + MB / 2;
    assert!(
        parse_lsn(&lsn(&pg)) > endpos + MB,
        "enough WAL behind the slot"
    );
    let endpos_text = format!("{:X}/{:X}", endpos >> 32, endpos & 0xFFFF_FFFF);
    let out = run(&[
        "stream",
        "-D",
        &d,
        "-d",
        &conn,
        "-S",
        "mid",
        "-E",
        &endpos_text,
        "-n",
        "-vv",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("writing a segment direct"),
        "the catch-up path was taken: {}",
        stderr(&out)
    );
    assert_only_barman_names(dir.path());
    assert!(assert_complete_segments_identical(dir.path(), &pg.wal_dir()) >= 1);
    let (start, flushed) = assert_partial_matches_below_flush(&pg, dir.path(), "mid");
    assert_eq!(start, endpos / MB * MB, "the partial holds endpos");
    assert!(
        flushed > start + MB / 4,
        "flush {flushed:X} covers the WAL of the partial"
    );
}

#[test]
fn kill_9_then_restart_leaves_a_complete_identical_archive() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.pgbench_init(2);
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap().to_string();
    let conn = pg.conninfo();
    assert!(run(&["stream", "-d", &conn, "--create-slot", "-S", "k9"])
        .status
        .success());
    let mut child = spawn(&["stream", "-D", &d, "-d", &conn, "-S", "k9"]);
    make_wal(&pg, 2);
    wait_until(
        Duration::from_secs(30),
        "walrcv wrote a complete segment",
        || file_name_set(dir.path()).iter().any(|n| is_segment(n)),
    );
    pg.pgbench(&["-n", "-c", "2", "-T", "2"]);
    // Mid-stream: the segment being received is a `.partial`, and the next
    // one is prepared ahead under a `.tmp` name: kill while both are there
    // (the `.tmp` possibly half padded), the crash it must survive.
    wait_until(
        Duration::from_secs(60),
        "walrcv writing a .partial with the next segment prepared",
        || {
            let names = file_name_set(dir.path());
            names.iter().any(|n| n.ends_with(".partial"))
                && names.iter().any(|n| n.ends_with(".partial.tmp"))
        },
    );
    child.kill9(); // mid-stream
    make_wal(&pg, 2);
    let partials: Vec<String> = file_name_set(dir.path())
        .into_iter()
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert_eq!(
        partials.len(),
        1,
        "the kill left one .partial: {partials:?}"
    );
    let out = stream_until_current(&pg, dir.path(), &["-S", "k9"]);
    assert!(out.status.success(), "{}", out.text());
    // The .partial left by the kill is streamed again from its start (and
    // not read just to log where its WAL ends).
    assert!(
        stderr(&out).contains(&format!(
            "{}\": streaming its segment again from",
            partials[0]
        )),
        "{}",
        stderr(&out)
    );
    assert!(assert_complete_segments_identical(dir.path(), &pg.wal_dir()) >= 3);
    // The stale `.tmp` is gone, and no file under a WAL name is short.
    assert_only_barman_names(dir.path());
    for n in file_name_set(dir.path()) {
        let len = std::fs::metadata(dir.path().join(&n)).unwrap().len();
        assert_eq!(len, MB, "{n} is not a whole segment");
    }
    // No gap: consecutive segment numbers from the first to the last.
    let segs: Vec<u64> = file_name_set(dir.path())
        .iter()
        .filter(|n| n.len() >= 24 && is_segment(&n[..24]))
        .map(|n| segno_of(&n[..24], MB))
        .collect();
    let (lo, hi) = (segs[0], *segs.last().unwrap());
    let set: BTreeSet<u64> = segs.iter().copied().collect();
    assert_eq!(set.len() as u64, hi - lo + 1, "gap in {segs:?}");
}

/// A primary with a standby, and walrcv (started by `spawn` on the standby's
/// conninfo and the archive directory) streaming from the standby while WAL
/// is written; the standby is promoted and writes more. Returns once walrcv
/// archived a complete segment of timeline 2.
pub(crate) struct Promoted {
    /// The old primary, still running (dropping it stops it).
    pub _primary: PgServer,
    pub standby: PgServer,
    pub dir: tempfile::TempDir,
    pub walrcv: BackgroundProcess,
}

pub(crate) fn stream_through_a_promotion(
    spawn: impl FnOnce(&str, &Path) -> BackgroundProcess,
) -> Promoted {
    let primary = PgServer::builder().wal_segsize_mb(1).start();
    primary.psql("CREATE TABLE t(x int)");
    let standby = primary.create_standby();
    let dir = archive_dir();
    let walrcv = spawn(&standby.conninfo(), dir.path());
    primary.psql("INSERT INTO t SELECT generate_series(1, 20000)");
    primary.psql("SELECT pg_switch_wal()");
    primary.psql("INSERT INTO t SELECT generate_series(1, 20000)");
    wait_until(
        Duration::from_secs(30),
        "walrcv archived timeline 1",
        || {
            file_name_set(dir.path())
                .iter()
                .any(|n| n.starts_with("00000001") && is_segment(n))
        },
    );
    standby.promote();
    standby.psql("INSERT INTO t SELECT generate_series(1, 50000)");
    standby.psql("SELECT pg_switch_wal()");
    wait_until(
        Duration::from_secs(60),
        "walrcv followed onto timeline 2",
        || {
            file_name_set(dir.path())
                .iter()
                .any(|n| n.starts_with("00000002") && is_segment(n))
        },
    );
    Promoted {
        _primary: primary,
        standby,
        dir,
        walrcv,
    }
}

#[test]
fn follows_a_timeline_switch_from_a_promoted_standby() {
    let Promoted {
        standby,
        dir,
        walrcv: mut child,
        ..
    } = stream_through_a_promotion(|conn, dir| {
        spawn(&["stream", "-D", dir.to_str().unwrap(), "-d", conn, "-v"])
    });
    let status = child.terminate();
    assert!(status.success(), "SIGTERM exits 0: {}", child.stderr());
    let all = file_name_set(dir.path());
    assert!(all.contains("00000002.history"), "{all:?}");
    let history = std::fs::read_to_string(dir.path().join("00000002.history")).unwrap();
    assert!(history.starts_with("1\t"), "{history}");
    let old_partial: Vec<_> = all
        .iter()
        .filter(|n| n.starts_with("00000001") && n.ends_with(".partial"))
        .collect();
    assert_eq!(
        old_partial.len(),
        1,
        "old timeline's last segment stays .partial: {all:?}"
    );
    assert!(assert_complete_segments_identical(dir.path(), &standby.wal_dir()) >= 1);
    assert_only_barman_names(dir.path());
}

#[test]
fn shows_in_pg_stat_replication_and_can_be_synchronous() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap().to_string();
    let conn = pg.conninfo();
    let mut child = spawn(&["stream", "-D", &d, "-d", &conn]);
    pg.wait_streaming("walrcv", Some(&mut child), Duration::from_secs(20));
    pg.make_synchronous("walrcv", Some(&mut child), Duration::from_secs(20));
    // Commits wait for walrcv's flush: they must complete promptly.
    let t = std::time::Instant::now();
    for i in 0..20 {
        pg.psql(&format!("CREATE TABLE sync_{i}(x int)"));
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "20 synchronous commits took {:?}",
        t.elapsed()
    );
    let (flush, sent) = {
        let r = pg.psql(
            "SELECT flush_lsn, sent_lsn FROM pg_stat_replication WHERE application_name = 'walrcv'",
        );
        let (a, b) = r.split_once('|').unwrap();
        (a.to_string(), b.to_string())
    };
    assert_eq!(parse_lsn(&flush), parse_lsn(&sent));
    pg.psql("ALTER SYSTEM RESET synchronous_standby_names");
    pg.psql("SELECT pg_reload_conf()");
    assert!(
        child.interrupt().success(),
        "SIGINT exits 0: {}",
        child.stderr()
    );
    assert!(
        file_name_set(dir.path())
            .iter()
            .any(|n| n.ends_with(".partial")),
        "the open segment stays .partial"
    );
}

#[test]
fn authentication_methods() {
    for auth in [Auth::Password, Auth::Md5, Auth::Scram] {
        let pg = PgServer::builder().wal_segsize_mb(1).auth(auth).start();
        pg.create_role("rep", Some("rep-secret"), true);
        pg.create_role("norep", Some("norep-secret"), false);
        let base = format!("host=127.0.0.1 port={}", pg.port());
        let dir = archive_dir();
        let d = dir.path().to_str().unwrap().to_string();
        let end = lsn(&pg);
        let good = format!("{base} user=rep password=rep-secret");
        let o = run(&["stream", "-D", &d, "-d", &good, "-E", &end, "-n", "-w"]);
        assert!(o.status.success(), "{auth:?}: {}", stderr(&o));
        // The password from the environment and from a password file.
        let o = walrcv(&[
            "stream",
            "-D",
            &d,
            "-d",
            &format!("{base} user=rep"),
            "-E",
            &end,
            "-n",
            "-w",
        ])
        .env("PGPASSWORD", "rep-secret")
        .run();
        assert!(o.status.success(), "{auth:?} PGPASSWORD: {}", stderr(&o));
        let passfile = dir
            .path()
            .parent()
            .unwrap()
            .join(format!("pgpass-{}", pg.port()));
        std::fs::write(
            &passfile,
            format!("127.0.0.1:{}:*:rep:rep-secret\n", pg.port()),
        )
        .unwrap();
        std::fs::set_permissions(
            &passfile,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let o = walrcv(&[
            "stream",
            "-D",
            &d,
            "-d",
            &format!("{base} user=rep"),
            "-E",
            &end,
            "-n",
            "-w",
        ])
        .env("PGPASSFILE", &passfile)
        .run();
        let _ = std::fs::remove_file(&passfile);
        assert!(o.status.success(), "{auth:?} passfile: {}", stderr(&o));

        let before = file_name_set(dir.path());
        let o = run(&[
            "stream",
            "-D",
            &d,
            "-d",
            &format!("{base} user=rep password=wrong"),
            "-n",
            "-w",
        ]);
        assert_eq!(o.status.code(), Some(2), "{auth:?}: wrong password");
        assert!(
            stderr(&o).contains("password authentication failed"),
            "{}",
            stderr(&o)
        );
        assert!(stderr(&o).contains("hint"), "{}", stderr(&o));
        let o = run(&[
            "stream",
            "-D",
            &d,
            "-d",
            &format!("{base} user=rep"),
            "-n",
            "-w",
        ]);
        assert_eq!(o.status.code(), Some(2), "{auth:?}: no password");
        let o = run(&[
            "stream",
            "-D",
            &d,
            "-d",
            &format!("{base} user=norep password=norep-secret"),
            "-n",
            "-w",
        ]);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{auth:?}: role without REPLICATION"
        );
        assert!(stderr(&o).contains("REPLICATION"), "{}", stderr(&o));
        assert_eq!(
            file_name_set(dir.path()),
            before,
            "nothing written on failure"
        );
    }
}

#[test]
fn missing_replication_line_in_pg_hba() {
    let pg = PgServer::builder()
        .wal_segsize_mb(1)
        .no_replication_hba()
        .start();
    let dir = archive_dir();
    let o = run(&[
        "stream",
        "-D",
        dir.path().to_str().unwrap(),
        "-d",
        &pg.conninfo(),
        "-n",
        "-w",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("pg_hba.conf"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("host replication"),
        "hint: {}",
        stderr(&o)
    );
    assert!(file_name_set(dir.path()).is_empty());
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap().to_string();
    let conn = pg.conninfo();
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec!["-d".into(), "host='unterminated".into()],
            2,
            "unterminated",
        ),
        (
            vec!["-d".into(), format!("{conn} bogus_key=1")],
            2,
            "bogus_key",
        ),
        // The harness's server has no TLS: refused as libpq does (exit 1, a
        // connection failure, as pg_receivewal's).
        (
            vec!["-d".into(), format!("{conn} sslmode=require")],
            1,
            "the server does not support SSL, but SSL was required",
        ),
        (
            vec![
                "-d".into(),
                format!("{conn} sslmode=require sslrootcert=system"),
            ],
            2,
            "weak sslmode",
        ),
        (vec!["--frobnicate".into()], 2, "frobnicate"),
        (
            vec![
                "-d".into(),
                "host=127.0.0.1 port=1 connect_timeout=2".into(),
            ],
            1,
            "could not connect",
        ),
    ];
    for (extra, code, text) in cases {
        let mut args: Vec<String> = vec![
            "stream".into(),
            "-D".into(),
            d.clone(),
            "-n".into(),
            "-w".into(),
        ];
        args.extend(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&refs);
        assert_eq!(o.status.code(), Some(code), "{refs:?}");
        assert!(stderr(&o).contains(text), "{refs:?}: {}", stderr(&o));
    }
    assert!(file_name_set(dir.path()).is_empty());
    let o = run(&["stream", "-D", "/nonexistent/dir", "-d", &conn, "-n"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/dir"));

    // A file of the wrong size.
    std::fs::write(
        dir.path().join("000000010000000000000001.partial"),
        b"short",
    )
    .unwrap();
    let o = run(&["stream", "-D", &d, "-d", &conn, "-n", "-w"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("has 5 bytes"), "{}", stderr(&o));
    assert_eq!(file_name_set(dir.path()).len(), 1);
}

#[test]
fn refuses_another_clusters_directory_and_a_directory_in_use() {
    let a = PgServer::builder().wal_segsize_mb(1).start();
    let b = PgServer::builder().wal_segsize_mb(1).start();
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap().to_string();
    a.psql("SELECT pg_switch_wal()");
    let o = stream_until_current(&a, dir.path(), &[]);
    assert!(o.status.success());
    let before = file_name_set(dir.path());
    let sizes = |p: &Path| -> Vec<u64> {
        file_name_set(p)
            .iter()
            .map(|n| std::fs::metadata(p.join(n)).unwrap().len())
            .collect()
    };
    let before_sizes = sizes(dir.path());
    let o = run(&["stream", "-D", &d, "-d", &b.conninfo(), "-n", "-w"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("another cluster"), "{}", stderr(&o));
    assert_eq!(file_name_set(dir.path()), before);
    assert_eq!(sizes(dir.path()), before_sizes);

    let mut first = spawn(&["stream", "-D", &d, "-d", &a.conninfo()]);
    wait_until(Duration::from_secs(20), "first walrcv streaming", || {
        a.psql("SELECT count(*) FROM pg_stat_replication") == "1"
    });
    let o = run(&["stream", "-D", &d, "-d", &a.conninfo(), "-n", "-w"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already in use"), "{}", stderr(&o));
    first.kill9();
}

/// Barman's exact invocation, through a `pg_receivewal` symlink.
#[test]
fn drop_in_for_pg_receivewal_under_barman() {
    let bin_dir = tempfile::tempdir().unwrap();
    let link: PathBuf = bin_dir.path().join("pg_receivewal");
    std::os::unix::fs::symlink(walrcv_bin(), &link).unwrap();
    let v = Walrcv::via(&link, ["--version"]).run();
    assert!(v.success(), "{}", v.text());
    let version = &v.stdout;
    assert!(version.starts_with("pg_receivewal (walrcv "), "{version}");
    assert!(
        version
            .trim_end()
            .ends_with(walrcv::NEWEST_SUPPORTED_SERVER),
        "{version}"
    );

    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.pgbench_init(1);
    pg.psql("SELECT pg_create_physical_replication_slot('barman', true)");
    let dir = archive_dir();
    let conninfo = format!(
        "application_name=barman_receive_wal dbname=replication host=127.0.0.1 options=-cdatestyle=iso port={} replication=true user=postgres",
        pg.port()
    );
    let mut child = Walrcv::via(
        &link,
        [
            &format!("--dbname={conninfo}"),
            "--verbose",
            "--no-loop",
            "--no-password",
            &format!("--directory={}", dir.path().display()),
            "--slot=barman",
            "--synchronous",
        ],
    )
    .spawn();
    wait_until(
        Duration::from_secs(20),
        "barman_receive_wal streaming",
        || {
            pg.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'barman_receive_wal'") == "1"
        },
    );
    make_wal(&pg, 1);
    wait_until(Duration::from_secs(20), "segments archived", || {
        file_name_set(dir.path())
            .iter()
            .filter(|n| is_segment(n))
            .count()
            >= 1
    });
    wait_until(
        Duration::from_secs(20),
        "slot is active with a restart_lsn",
        || {
            pg.psql("SELECT active AND restart_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = 'barman'") == "t"
        },
    );
    assert!(child.terminate().success(), "{}", child.stderr());
    assert!(
        child.stderr().contains("finished segment"),
        "--verbose logs segments: {}",
        child.stderr()
    );
    assert_only_barman_names(dir.path());
    assert!(assert_complete_segments_identical(dir.path(), &pg.wal_dir()) >= 1);
}

/// The same byte-identity check on other major versions. A zero-byte
/// `.partial` (what `barman receive-wal --reset` leaves) makes walrcv start at
/// that segment, which works on every version (READ_REPLICATION_SLOT is 15+).
#[test]
fn other_major_versions() {
    for major in crate::support::test_majors()
        .into_iter()
        .filter(|&m| m != 15)
    {
        let pg = PgServer::builder().major(major).wal_segsize_mb(1).start();
        let dir = archive_dir();
        let first = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        std::fs::write(dir.path().join(format!("{first}.partial")), b"").unwrap();
        pg.psql("CREATE TABLE t AS SELECT generate_series(1, 100000) AS x");
        pg.psql("SELECT pg_switch_wal()");
        pg.psql("INSERT INTO t SELECT generate_series(1, 1000)");
        let o = stream_until_current(&pg, dir.path(), &[]);
        assert!(o.status.success(), "PG {major}");
        assert_only_barman_names(dir.path());
        let all = file_name_set(dir.path());
        assert!(
            all.contains(&first),
            "PG {major}: started at {first}: {all:?}"
        );
        assert!(
            all.iter().any(|n| n.ends_with(".partial")),
            "PG {major}: {all:?}"
        );
        assert!(
            assert_complete_segments_identical(dir.path(), &pg.wal_dir()) >= 2,
            "PG {major}"
        );
    }
}

#[test]
fn reconnects_after_the_primary_restarts() {
    let mut pg = PgServer::builder().wal_segsize_mb(1).start();
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap().to_string();
    let conn = pg.conninfo();
    let first = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let mut child = spawn(&["stream", "-D", &d, "-d", &conn, "-v"]);
    // Streaming and the first segment's WAL received: a restart before any
    // WAL arrives leaves nothing to resume from (the next start is at the
    // server's position then, past the first segment).
    wait_until(Duration::from_secs(20), "walrcv streaming", || {
        pg.psql("SELECT count(*) FROM pg_stat_replication") == "1"
            && file_name_set(dir.path()).contains(&format!("{first}.partial"))
    });
    pg.restart(); // fast shutdown: the walsender ends the stream
    pg.psql("CREATE TABLE after_restart AS SELECT generate_series(1, 50000) AS x");
    pg.psql("SELECT pg_switch_wal()");
    pg.psql("CREATE TABLE after_switch(x int)"); // so the last segment has WAL
    let last = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    wait_until(
        Duration::from_secs(60),
        "walrcv reconnected and archived the new WAL",
        || {
            let n = file_name_set(dir.path());
            n.iter()
                .any(|f| f.starts_with(&last[..24]) && f.ends_with(".partial"))
        },
    );
    assert!(child.interrupt().success(), "{}", child.stderr());
    assert!(
        child.stderr().contains("waiting"),
        "logged the retry: {}",
        child.stderr()
    );
    assert!(
        file_name_set(dir.path()).contains(&first),
        "the first segment is complete"
    );
    assert!(assert_complete_segments_identical(dir.path(), &pg.wal_dir()) >= 2);
    assert_only_barman_names(dir.path());
}

#[test]
fn wal_the_server_no_longer_has_is_reported_once_with_a_hint() {
    let pg = PgServer::builder()
        .wal_segsize_mb(1)
        .conf("wal_keep_size = 0")
        .start();
    let old = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    for _ in 0..40 {
        pg.psql("CREATE TABLE IF NOT EXISTS churn(x int); INSERT INTO churn VALUES (1); SELECT pg_switch_wal()");
    }
    pg.psql("CHECKPOINT");
    pg.psql("CHECKPOINT");
    assert!(
        !pg.wal_dir().join(&old).exists(),
        "{old} was removed by the server"
    );
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap().to_string();
    // Barman's `receive-wal --reset` leaves such a zero-byte partial.
    std::fs::write(dir.path().join(format!("{old}.partial")), b"").unwrap();
    // Without --no-loop too: retrying cannot help, so walrcv stops.
    let o = run(&["stream", "-D", &d, "-d", &pg.conninfo(), "-w"]);
    assert_eq!(o.status.code(), Some(3));
    let err = stderr(&o);
    assert!(
        err.contains("has already been removed") && err.contains(&old),
        "{err}"
    );
    assert!(err.contains("HINT"), "{err}");

    // An archive ahead of the server (restored or rewound server, wrong server).
    let dir = archive_dir();
    std::fs::write(dir.path().join("000000010000000000000F00.partial"), b"").unwrap();
    let o = run(&[
        "stream",
        "-D",
        dir.path().to_str().unwrap(),
        "-d",
        &pg.conninfo(),
        "-w",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("ahead of the WAL flush position"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn retries_the_first_connection_until_the_server_is_up() {
    let mut pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.stop();
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut child = spawn(&["stream", "-D", &d, "-d", &pg.conninfo(), "-v"]);
    child.wait_for_stderr("waiting", Duration::from_secs(20));
    assert!(
        child.is_running(),
        "walrcv keeps trying (pg_receivewal exits here)"
    );
    pg.start_again();
    wait_until(
        Duration::from_secs(60),
        "walrcv connected once the server was up",
        || pg.psql("SELECT count(*) FROM pg_stat_replication") == "1",
    );
    assert!(child.interrupt().success(), "{}", child.stderr());
}

/// A Unix-socket connection, `--if-not-exists`, `--no-sync`, and `-Z none`.
#[test]
fn socket_connections_slot_reuse_and_no_sync() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let sock = pg.socket_conninfo();
    assert!(run(&["stream", "-d", &sock, "--create-slot", "-S", "s1"])
        .status
        .success());
    let again = run(&["stream", "-d", &sock, "--create-slot", "-S", "s1"]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "creating an existing slot fails"
    );
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let reuse = run(&[
        "stream",
        "-d",
        &sock,
        "--create-slot",
        "--if-not-exists",
        "-S",
        "s1",
    ]);
    assert!(
        reuse.status.success(),
        "--if-not-exists accepts an existing slot"
    );
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 50000) AS x");
    pg.psql("SELECT pg_switch_wal()");
    pg.psql("CREATE TABLE u(x int)");
    let dir = archive_dir();
    let end = lsn(&pg);
    let d = dir.path().to_str().unwrap();
    let o = run(&[
        "stream",
        "-D",
        d,
        "-d",
        &sock,
        "-S",
        "s1",
        "-E",
        &end,
        "-n",
        "--no-sync",
        "-Z",
        "none",
    ]);
    assert!(o.status.success());
    assert!(assert_complete_segments_identical(dir.path(), &pg.wal_dir()) >= 1);
    assert_only_barman_names(dir.path());
}
