//! `walrcv verify`, `walrcv cleanup` and `walrcv status` on an
//! `s3://BUCKET/PREFIX` archive uploaded by `walrcv stream --upload`, against
//! a real object store (SeaweedFS) and PostgreSQL 15; each compared with the
//! same tool run on the local archive the bucket was uploaded from.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

use crate::object_storage::start_uploading_receiver;
use crate::support::seaweed::{Seaweed, ACCESS_KEY, SECRET_KEY};
use crate::support::{wait_until, PgServer, RunOutput, Walrcv};

const APP: &str = "walrcv_a";

fn client(weed: &Seaweed) -> object_store::aws::AmazonS3 {
    AmazonS3Builder::new()
        .with_bucket_name(weed.bucket())
        .with_endpoint(format!("http://127.0.0.1:{}", weed.s3_port()))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .build()
        .expect("object store client")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every object under `prefix`, as names relative to it (SeaweedFS's
/// directory markers, which have no extension-like WAL name, included).
fn objects(weed: &Seaweed, prefix: &str) -> BTreeSet<String> {
    use futures_util::TryStreamExt;
    let store = client(weed);
    let listed: Vec<_> = runtime()
        .block_on(
            store
                .list(Some(&ObjectPath::from(prefix)))
                .try_collect::<Vec<_>>(),
        )
        .expect("LIST");
    listed
        .into_iter()
        .map(|o| o.location.to_string()[prefix.len() + 1..].to_string())
        .collect()
}

fn get(weed: &Seaweed, key: &str) -> Vec<u8> {
    let store = client(weed);
    runtime()
        .block_on(async { store.get(&ObjectPath::from(key)).await?.bytes().await })
        .expect("GET")
        .to_vec()
}

fn put(weed: &Seaweed, key: &str, bytes: Vec<u8>) {
    let store = client(weed);
    runtime()
        .block_on(store.put(&ObjectPath::from(key), bytes.into()))
        .expect("PUT");
}

/// `walrcv ARGS` with the store's environment.
fn run(weed: &Seaweed, args: &[&str]) -> RunOutput {
    let mut w = Walrcv::new(args).timeout(Duration::from_secs(120));
    weed.apply(w.command_mut());
    w.run()
}

/// The segment files (complete and `.partial`) of a local archive.
fn local_segments(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() >= 24 && n.bytes().take(24).all(|c| c.is_ascii_hexdigit()))
        .filter(|n| !n.ends_with(".tmp"))
        .collect()
}

fn complete_names(segments: &BTreeSet<String>) -> Vec<String> {
    segments
        .iter()
        .filter(|n| !n.ends_with(".partial"))
        .cloned()
        .collect()
}

fn json(out: &RunOutput) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.text()))
}

/// Streams with `--upload` (and `-Z`) until several segments are complete
/// and uploaded, stops the receiver cleanly (its last `.partial` uploaded).
fn uploaded_archive(
    weed: &Seaweed,
    prefix: &str,
    compress: Option<&str>,
) -> (PgServer, tempfile::TempDir) {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let archive = tempfile::tempdir().unwrap();
    let mut rcv = start_uploading_receiver(&pg, weed, archive.path(), prefix, compress);
    pg.psql("CREATE TABLE t (i int, filler text)");
    for i in 0..5 {
        pg.psql(&format!(
            "INSERT INTO t SELECT {i}, md5(g::text) FROM generate_series(1, 3000) g"
        ));
        pg.switch_wal();
    }
    pg.psql("INSERT INTO t VALUES (99, 'in the .partial')");
    wait_until(Duration::from_secs(60), "every segment uploaded", || {
        assert!(rcv.is_running(), "{}", rcv.stderr());
        let bucket = objects(weed, prefix);
        let complete: Vec<_> = local_segments(archive.path())
            .into_iter()
            .filter(|n| !n.ends_with(".partial"))
            .collect();
        complete.len() >= 5 && complete.iter().all(|n| bucket.contains(n))
    });
    let status = rcv.interrupt();
    assert!(status.success(), "{status:?}\n{}", rcv.stderr());
    (pg, archive)
}

/// Copies every object of `from` to `to`, flipping one bit in the middle of
/// `flip` and leaving `skip` out (names relative to the prefix).
fn copy_prefix(weed: &Seaweed, from: &str, to: &str, flip: &str, skip: &str) {
    for name in objects(weed, from) {
        if !name.contains('.') && name.starts_with("partial/") || name == skip {
            continue; // a directory marker
        }
        let mut bytes = get(weed, &format!("{from}/{name}"));
        if name == flip {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x10;
        }
        put(weed, &format!("{to}/{name}"), bytes);
    }
}

/// A second receiver's copy of the newest segment, shorter (zeros from half
/// of the uploaded copy's WAL on) and listed first: verify takes the
/// longer one, with the same records as with it alone.
fn longest_copy_stands_for_the_segment(weed: &Seaweed, alone: &serde_json::Value) {
    let copy = objects(weed, "db")
        .into_iter()
        .find(|n| n.contains(".partial."))
        .expect("the uploaded .partial copy");
    let (dir, file) = copy.rsplit_once('/').unwrap();
    let mut bytes = get(weed, &format!("db/{copy}"));
    let written = bytes
        .iter()
        .rposition(|&b| b != 0)
        .expect("WAL in the copy");
    bytes[written / 2..].fill(0);
    let local = file.split(".partial.").next().unwrap();
    let shorter = format!("{dir}/{local}.partial.walrcv_0.{:x}-1", bytes.len());
    copy_prefix(weed, "db", "two", "", "");
    put(weed, &format!("two/{shorter}"), bytes.clone());
    let out = run(weed, &["verify", &weed.url("two"), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.text());
    let two = json(&out);
    assert_eq!(two["records"], alone["records"], "{}", out.text());
    let names: Vec<_> = two["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&copy), "{names:?}");
    assert!(!names.contains(&shorter), "{names:?}");
    // A shorter copy is normal (that receiver was behind, and stopped inside
    // a record): no problem.
    let problems = two["problems"].as_array().unwrap();
    assert!(problems.is_empty(), "{}", out.text());

    // The shorter copy damaged (its first page header's magic, a check no
    // padding escapes): the longer copy still stands for the segment (exit
    // 0), and the damaged one is reported as a warning.
    bytes[0] ^= 0xff;
    let damaged = format!("{dir}/{local}.partial.walrcv_0.{:x}-2", bytes.len());
    copy_prefix(weed, "db", "three", "", "");
    put(weed, &format!("three/{damaged}"), bytes);
    let out = run(weed, &["verify", &weed.url("three"), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.text());
    let three = json(&out);
    assert_eq!(three["records"], alone["records"], "{}", out.text());
    let warned = three["problems"].as_array().unwrap().iter().any(|p| {
        p["file"] == damaged.as_str()
            && p["severity"] == "warning"
            && p["message"]
                .as_str()
                .unwrap()
                .contains("restore does not use")
    });
    assert!(warned, "{}", out.text());
}

fn tools_on_the_bucket(compress: Option<&str>) {
    let weed = Seaweed::start("walrcv");
    let (pg, archive) = uploaded_archive(&weed, "db", compress);
    let dir = archive.path().to_str().unwrap().to_owned();
    let url = weed.url("db");

    // verify: the bucket passes, with the same WAL as the local archive
    // (the uploaded .partial copy is the local .partial at the clean stop).
    let local = run(&weed, &["verify", &dir, "--json"]);
    assert_eq!(local.status.code(), Some(0), "{}", local.text());
    let remote = run(&weed, &["verify", &url, "--json"]);
    assert_eq!(remote.status.code(), Some(0), "{}", remote.text());
    let (l, r) = (json(&local), json(&remote));
    assert!(l["records"].as_u64().unwrap() > 0);
    for field in ["records", "newest_timeline", "system_id", "segment_size"] {
        assert_eq!(l[field], r[field], "{field}: {}", remote.text());
    }
    assert_eq!(
        l["files"].as_array().unwrap().len(),
        r["files"].as_array().unwrap().len(),
        "{}",
        remote.text()
    );
    let human = run(&weed, &["verify", &url]);
    assert_eq!(human.status.code(), Some(0), "{}", human.text());

    if compress.is_none() {
        longest_copy_stands_for_the_segment(&weed, &r);
    }

    // A flipped bit in one uploaded segment: exit status 1, as locally.
    let segments = local_segments(archive.path());
    let victim = segments
        .iter()
        .filter(|n| !n.ends_with(".partial"))
        .nth(2)
        .unwrap()
        .clone();
    copy_prefix(&weed, "db", "flipped", &victim, "");
    let bad = run(&weed, &["verify", &weed.url("flipped"), "--json"]);
    assert_eq!(bad.status.code(), Some(1), "{}", bad.text());
    assert!(bad.stdout.contains(&victim), "{}", bad.text());
    let copy = tempfile::tempdir().unwrap();
    for n in &segments {
        std::fs::copy(archive.path().join(n), copy.path().join(n)).unwrap();
    }
    let mut bytes = std::fs::read(copy.path().join(&victim)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(copy.path().join(&victim), bytes).unwrap();
    let bad_local = run(&weed, &["verify", copy.path().to_str().unwrap()]);
    assert_eq!(bad_local.status.code(), Some(1), "{}", bad_local.text());

    // status: OK from the bucket, as from the directory, with the same
    // newest segment and end of WAL; a segment missing is CRITICAL as a gap.
    let lax = [
        "--warning-lag-seconds",
        "3600",
        "--critical-lag-seconds",
        "3600",
    ];
    let conn = pg.conninfo();
    let status = |target: &str, json: bool| {
        let mut args = vec!["status", "-D", target, "-d", &conn];
        args.extend(lax);
        if json {
            args.push("--json");
        }
        run(&weed, &args)
    };
    let local_status = status(&dir, true);
    assert_eq!(
        local_status.status.code(),
        Some(0),
        "{}",
        local_status.text()
    );
    let remote_status = status(&url, true);
    assert_eq!(
        remote_status.status.code(),
        Some(0),
        "{}",
        remote_status.text()
    );
    let (ls, rs) = (json(&local_status), json(&remote_status));
    for field in [
        "timelines",
        "archived_end",
        "histories",
        "gaps",
        "wal_segment_size",
    ] {
        assert_eq!(
            ls["archive"][field],
            rs["archive"][field],
            "{field}: {}",
            remote_status.text()
        );
    }
    let copies = rs["archive"]["partial_copies"].as_array().unwrap();
    assert_eq!(copies.len(), 1, "{}", remote_status.text());
    assert_eq!(copies[0]["receiver"], APP);
    let human = status(&url, false);
    assert_eq!(human.status.code(), Some(0), "{}", human.text());
    assert!(
        human.stdout.contains(".partial copy of"),
        "{}",
        human.text()
    );
    let hole = complete_names(&segments)[2].clone();
    copy_prefix(&weed, "db", "holed", "", &hole);
    let holed = status(&weed.url("holed"), false);
    assert_eq!(holed.status.code(), Some(2), "{}", holed.text());
    assert!(holed.stdout.contains("gap"), "{}", holed.text());
    let holed_local = tempfile::tempdir().unwrap();
    for n in segments.iter().filter(|n| **n != hole) {
        std::fs::copy(archive.path().join(n), holed_local.path().join(n)).unwrap();
    }
    let holed_dir = status(holed_local.path().to_str().unwrap(), false);
    assert_eq!(holed_dir.status.code(), Some(2), "{}", holed_dir.text());
    let unreachable = run(
        &weed,
        &["status", "-D", "s3://no-such-bucket/x", "-d", &conn],
    );
    assert_eq!(unreachable.status.code(), Some(3), "{}", unreachable.text());

    // cleanup: the same files as the local cleanup (dry run, then for
    // real), plus a receiver's copy superseded by its complete segment.
    let complete: Vec<_> = segments
        .iter()
        .filter(|n| !n.ends_with(".partial"))
        .collect();
    let first = complete[0].get(..24).unwrap().to_owned();
    let stale = format!("partial/{first}/{first}.partial.walrcv_x.10-00000000");
    put(&weed, &format!("db/{stale}"), vec![0u8; 16]);
    let cut = complete[3].clone();
    let local_dry = run(&weed, &["cleanup", "-D", &dir, "--before", &cut, "-n"]);
    assert_eq!(local_dry.status.code(), Some(0), "{}", local_dry.text());
    let remote_dry = run(&weed, &["cleanup", "-D", &url, "--before", &cut, "-n"]);
    assert_eq!(remote_dry.status.code(), Some(0), "{}", remote_dry.text());
    let base = |out: &RunOutput, root: &str| -> BTreeSet<String> {
        out.stdout
            .lines()
            .map(|l| {
                l.strip_prefix(root)
                    .unwrap_or(l)
                    .trim_start_matches('/')
                    .to_owned()
            })
            .collect()
    };
    let want = base(&local_dry, &dir);
    assert_eq!(want.len(), 3, "{}", local_dry.text());
    let mut with_stale = want.clone();
    with_stale.insert(stale.clone());
    assert_eq!(base(&remote_dry, &url), with_stale, "{}", remote_dry.text());
    assert!(objects(&weed, "db").contains(&stale), "dry run deleted");
    let removed = run(&weed, &["cleanup", "-D", &url, "--before", &cut]);
    assert_eq!(removed.status.code(), Some(0), "{}", removed.text());
    assert_eq!(base(&removed, &url), with_stale, "{}", removed.text());
    let left = objects(&weed, "db");
    for gone in &with_stale {
        assert!(!left.contains(gone), "{gone} still there: {left:?}");
    }
    for kept in complete.iter().skip(3) {
        assert!(left.contains(*kept), "{kept} removed: {left:?}");
    }
    // A bucket that cannot be listed: exit 2, as an unreadable directory.
    let nowhere = "s3://no-such-bucket/x";
    let v = run(&weed, &["verify", nowhere]);
    assert_eq!(v.status.code(), Some(2), "{}", v.text());
    assert!(v.stderr.contains("no-such-bucket"), "{}", v.text());
    let c = run(&weed, &["cleanup", "-D", nowhere, "--before", &cut]);
    assert_eq!(c.status.code(), Some(2), "{}", c.text());

    // What is left still verifies.
    let after = run(&weed, &["verify", &url]);
    assert_eq!(after.status.code(), Some(0), "{}", after.text());
}

/// The store failing (503, through a relay) under verify, cleanup and
/// status: none of them reports success, cleanup deletes nothing it did not
/// report and removes the rest once the store answers again, and status
/// says UNKNOWN rather than OK.
#[test]
fn tools_on_the_bucket_when_the_store_fails() {
    let weed = Seaweed::start("walrcv");
    let (pg, archive) = uploaded_archive(&weed, "db", None);
    let relay = crate::support::http_faults::HttpFaults::start(weed.s3_port());
    let env = Seaweed::env_for_port(relay.port());
    let url = weed.url("db");
    let through_relay = |args: &[&str]| {
        let mut w = Walrcv::new(args).timeout(Duration::from_secs(300));
        crate::support::seaweed::apply_env(w.command_mut(), &env);
        w.run()
    };
    let before = objects(&weed, "db");

    // verify: the objects cannot be read (GETs fail, the LIST too): 2.
    relay.fail_method("GET");
    let v = through_relay(&["verify", &url]);
    assert_eq!(v.status.code(), Some(2), "{}", v.text());
    // status: UNKNOWN, never OK.
    let conn = pg.conninfo();
    let st = through_relay(&["status", "-D", &url, "-d", &conn]);
    assert_eq!(st.status.code(), Some(3), "{}", st.text());
    relay.heal();
    let v = through_relay(&["verify", &url]);
    assert_eq!(v.status.code(), Some(0), "{}", v.text());

    // cleanup: the DELETEs fail: not success, and nothing is gone.
    let complete = complete_names(&local_segments(archive.path()));
    let cut = complete[3].clone();
    relay.fail_method("DELETE");
    let failed = through_relay(&["cleanup", "-D", &url, "--before", &cut]);
    assert_ne!(failed.status.code(), Some(0), "{}", failed.text());
    assert!(failed.stderr.contains(&complete[0]), "{}", failed.text());
    assert_eq!(objects(&weed, "db"), before, "an object went");
    // Healed: the same run removes what the dry run lists.
    relay.heal();
    let dry = through_relay(&["cleanup", "-D", &url, "--before", &cut, "-n"]);
    assert_eq!(dry.status.code(), Some(0), "{}", dry.text());
    let removed = through_relay(&["cleanup", "-D", &url, "--before", &cut]);
    assert_eq!(removed.status.code(), Some(0), "{}", removed.text());
    assert_eq!(removed.stdout, dry.stdout, "{}", removed.text());
    let left = objects(&weed, "db");
    for name in &complete[..3] {
        assert!(!left.contains(name), "{name} still there");
    }
    assert!(left.contains(&cut), "{cut} removed");
    assert!(relay.failed() > 0, "the relay failed no request");
}

#[test]
fn tools_on_the_bucket_uncompressed() {
    tools_on_the_bucket(None);
}

#[test]
fn tools_on_the_bucket_gzip() {
    tools_on_the_bucket(Some("gzip"));
}

#[test]
fn tools_on_the_bucket_lz4() {
    tools_on_the_bucket(Some("lz4"));
}

#[test]
fn tools_on_the_bucket_zstd() {
    tools_on_the_bucket(Some("zstd"));
}
