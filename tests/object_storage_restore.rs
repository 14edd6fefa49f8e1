//! `walrcv restore --from` applies the local archive's rules to the bucket
//! (issue 18), on WAL written by a real PostgreSQL 15 and a real object
//! store (SeaweedFS): a complete segment in the bucket wins over a local
//! `.partial` (the other receiver of a pair uploaded it); a `.partial`
//! followed by a later segment of its timeline (in the bucket or locally)
//! is a hole and is refused; the switch segment of a timeline whose
//! `.partial` ends before the switch point is served from the parent
//! timeline's copy up to it, in a recovery from the bucket alone.

use std::path::Path;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use walrcv::archive::names::ArchiveName;
use walrcv::objstore::partial;

use crate::failover::switch_segment_cut_archive;
use crate::object_storage::client;
use crate::support::seaweed::Seaweed;
use crate::support::{walrcv_bin, walrcv_spawn, PgServer, Recovery, RunOutput, Walrcv};

const APP: &str = "walrcv_a";

/// PUTs `files` (name, bytes) under `prefix` as the uploader names them: a
/// `.partial` under `partial/SEG/`, anything else under its own name.
fn put(weed: &Seaweed, prefix: &str, files: &[(&str, &[u8])]) {
    let store = client(weed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for (name, bytes) in files {
            let object = match ArchiveName::classify(name) {
                ArchiveName::Segment {
                    name: seg,
                    partial: true,
                    ..
                } => partial::object_name(seg.as_str(), name, APP, bytes),
                _ => name.to_string(),
            };
            let path = ObjectPath::from(format!("{prefix}/{object}"));
            store.put(&path, bytes.to_vec().into()).await.expect("PUT");
        }
    });
}

/// Every segment and history file of `dir`, uploaded under `prefix`.
fn put_archive(weed: &Seaweed, prefix: &str, dir: &Path) {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if matches!(
            ArchiveName::classify(&name),
            ArchiveName::Segment { .. } | ArchiveName::History { .. }
        ) {
            files.push((name, std::fs::read(entry.path()).unwrap()));
        }
    }
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    put(weed, prefix, &refs);
}

/// `walrcv restore SEG OUT --from URL [-D DIR] --prefetch 0`.
fn restore(
    weed: &Seaweed,
    segment: &str,
    out: &Path,
    url: &str,
    local: Option<&Path>,
) -> RunOutput {
    let mut walrcv =
        Walrcv::new(["restore", segment])
            .arg(out)
            .args(["--from", url, "--prefetch", "0"]);
    if let Some(dir) = local {
        walrcv = walrcv.arg("-D").arg(dir);
    }
    weed.apply(walrcv.command_mut());
    walrcv.run()
}

fn stream(pg: &PgServer, dir: &Path) -> crate::support::BackgroundProcess {
    let conn = format!("{} application_name={APP}", pg.conninfo());
    walrcv_spawn(&["stream", "-D", dir.to_str().unwrap(), "-d", &conn, "-v"])
}

/// Writes `mb` MB of WAL and waits until the receiver has flushed it.
fn load(pg: &PgServer, mb: u32) {
    pg.psql(&format!(
        "INSERT INTO t SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, {}) g",
        mb * 700
    ));
    let lsn = pg.current_lsn();
    pg.wait_for_flush(APP, lsn, Duration::from_secs(60));
}

#[test]
fn restore_from_bucket_applies_the_local_rules() {
    let weed = Seaweed::start("walrcv");
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.psql("CREATE TABLE t (i int, filler text)");
    let archive = tempfile::tempdir().unwrap();
    // A .partial of segment X as a receiver stopped there leaves it.
    let mut rcv = stream(&pg, archive.path());
    load(&pg, 1);
    let x = pg.walfile_name(pg.current_lsn());
    assert!(rcv.terminate().success(), "{}", rcv.stderr());
    let short = std::fs::read(archive.path().join(format!("{x}.partial")))
        .unwrap_or_else(|e| panic!("{x}.partial: {e}"));
    // The receiver again: X and X+1 complete.
    let mut rcv = stream(&pg, archive.path());
    load(&pg, 3);
    pg.force_switch_wal();
    load(&pg, 0);
    assert!(rcv.terminate().success(), "{}", rcv.stderr());
    let complete = std::fs::read(archive.path().join(&x)).unwrap();
    let next = {
        let mut names: Vec<String> = std::fs::read_dir(archive.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 24 && n[..8] == x[..8] && *n > x)
            .collect();
        names.sort();
        names.first().cloned().expect("a complete segment after X")
    };
    let next_bytes = std::fs::read(archive.path().join(&next)).unwrap();
    assert_ne!(short, complete, "the .partial is shorter than the segment");

    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join(format!("{x}.partial")), &short).unwrap();
    let local_later = tempfile::tempdir().unwrap();
    std::fs::write(local_later.path().join(&next), &next_bytes).unwrap();
    put(&weed, "full", &[(&x, &complete), (&next, &next_bytes)]);
    let partial_name = format!("{x}.partial");
    put(
        &weed,
        "hole",
        &[(&partial_name, &short), (&next, &next_bytes)],
    );
    put(&weed, "end", &[(&partial_name, &short)]);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join(&x);

    // -D alone serves the local .partial (padded): the control.
    let only_local = Walrcv::new(["restore", &x])
        .arg(&out)
        .arg("-D")
        .arg(local.path())
        .run();
    only_local.assert_success();
    assert_ne!(std::fs::read(&out).unwrap(), complete);
    // With the bucket holding the complete segment: that one, verified.
    restore(&weed, &x, &out, &weed.url("full"), Some(local.path())).assert_success();
    assert_eq!(std::fs::read(&out).unwrap(), complete, "the complete copy");
    std::fs::remove_file(&out).unwrap();

    // A .partial in the bucket with the next segment there: a hole.
    let hole = restore(&weed, &x, &out, &weed.url("hole"), None);
    assert_eq!(hole.code(), Some(200), "{}", hole.text());
    assert!(hole.stderr.contains("has a hole"), "{}", hole.text());
    assert!(!out.exists());
    // The same .partial alone: the end of the archive, served padded.
    restore(&weed, &x, &out, &weed.url("end"), None).assert_success();
    let served = std::fs::read(&out).unwrap();
    assert_eq!(served.len(), complete.len());
    assert_ne!(served, complete);
    std::fs::remove_file(&out).unwrap();
    // ... unless the local archive holds a later segment of the timeline.
    let hole = restore(&weed, &x, &out, &weed.url("end"), Some(local_later.path()));
    assert_eq!(hole.code(), Some(200), "{}", hole.text());
    assert!(hole.stderr.contains("has a hole"), "{}", hole.text());
    // Nothing about X anywhere: not found.
    let none = restore(&weed, &x, &out, &weed.url("nothing"), None);
    assert_eq!(none.code(), Some(1), "{}", none.text());
}

/// The switch-segment case of tests/failover.rs, uploaded, the local
/// archive gone: the recovery from the bucket alone serves timeline 1's
/// copy of the switch segment up to the switch point (its `.partial`, found
/// by the LIST of its `partial/` directory), and every commit acknowledged
/// on P is back.
#[test]
fn restore_from_bucket_serves_the_switch_segment_from_the_parent() {
    let weed = Seaweed::start("walrcv");
    let case = switch_segment_cut_archive(&[]);
    put_archive(&weed, "sw", case.dir.path());
    let parent = case.parent();
    let env: String = weed
        .env()
        .iter()
        .map(|(k, v)| format!("{k}={v} "))
        .collect();
    let settings = vec![
        format!(
            "restore_command = 'env {env}{} restore %f %p --from {}'",
            walrcv_bin().display(),
            weed.url("sw")
        ),
        "recovery_target_timeline = 'latest'".to_string(),
    ];
    let restored = match case.backup.start_recovery(&settings) {
        Recovery::Started(server) => server,
        Recovery::Failed { log } => panic!("recovery failed:\n{log}"),
    };
    restored.wait_for_promotion(Duration::from_secs(180));
    let log = restored.full_log();
    assert_eq!(
        restored.psql("SELECT count(*) FROM t WHERE what = 'on P'"),
        "60",
        "every commit acknowledged on P, up to the switch point:\n{log}"
    );
    assert!(log.contains(&format!("serving \"{parent}")), "{log}");
}
