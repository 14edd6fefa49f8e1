//! A caught-up client of `walrcv serve` across segment completions: the
//! archive's newest `.partial` grows in place and is renamed to its
//! segment's name when full, as `walrcv stream` writes it (real WAL of a
//! PostgreSQL 15 primary, 1 MB segments, replayed here). The client must
//! receive byte-identical WAL, walrcv must check only the bytes it had not
//! verified yet at each completion (its debug log says so), and a byte
//! damaged in that range must never be sent.
//!
//! walrcv is stopped (SIGSTOP) while a segment is finished and renamed, so
//! that it sees the completion whole, never the last bytes under the
//! `.partial` name first: the path under test is the one it then takes.

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use walrcv::archive::check::{check_segment, Completeness};
use walrcv::archive::names::SegmentName;
use walrcv::pgwire::{BackendMessage, Connection};
use walrcv::replication::ReplicationMessage;

use crate::serve::{commit_rows, params, runtime, segment_files, start_archiver, APP, LIMIT};
use crate::support::{format_lsn, free_port, BackgroundProcess, PgServer, Walrcv};

const SEG: usize = 1 << 20;
const COMPLETED: &str = "completed: checked its last";

/// Consecutive complete segments of timeline 1, dense with records (no
/// `XLOG_SWITCH` zeros: each has WAL past its first 650 003 bytes), from a
/// primary archived by `walrcv stream`: `(name, bytes)`.
fn dense_segments(work: &Path, n: usize) -> Vec<(String, Vec<u8>)> {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let src = work.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rcv = start_archiver(&pg, &src);
    commit_rows(&pg, 100 * (n as u32 + 3));
    pg.wait_for_flush(APP, pg.current_lsn(), LIMIT);
    rcv.interrupt();
    let dense: Vec<(String, Vec<u8>)> = segment_files(&src)
        .into_iter()
        .filter(|f| f.len() == 24 && f.starts_with("00000001"))
        .map(|f| (f.clone(), std::fs::read(src.join(&f)).unwrap()))
        .filter(|(f, bytes)| valid_end(f, bytes, 650_003) < segment_start(f) + SEG as u64)
        .collect();
    let run = dense
        .windows(n)
        .rposition(|w| {
            w.windows(2)
                .all(|p| segment_start(&p[1].0) == segment_start(&p[0].0) + SEG as u64)
        })
        .expect("consecutive dense segments");
    dense[run..run + n].to_vec()
}

fn segment_start(s: &str) -> u64 {
    let (_, segno) = SegmentName::parse(s).unwrap().segno(SEG as u64).unwrap();
    segno * SEG as u64
}

/// The LSN up to which a `.partial` of `s` holding its first `n` bytes is
/// valid WAL (what walrcv may send of it).
fn valid_end(s: &str, bytes: &[u8], n: usize) -> u64 {
    let mut file = vec![0; SEG];
    file[..n].copy_from_slice(&bytes[..n]);
    let name = SegmentName::parse(s).unwrap();
    match check_segment(&file, &name, Completeness::Partial) {
        Ok(end) => end.end.0,
        Err(_) => segment_start(s),
    }
}

/// The archive's writer: a `.partial` written in place, then renamed.
struct Writer {
    dir: PathBuf,
}

impl Writer {
    fn partial(&self, s: &str) -> PathBuf {
        self.dir.join(format!("{s}.partial"))
    }

    /// A new zero-filled `.partial` of `s` with its first `n` bytes.
    fn begin(&self, s: &str, bytes: &[u8], n: usize) {
        let mut file = vec![0; SEG];
        file[..n].copy_from_slice(&bytes[..n]);
        std::fs::write(self.partial(s), file).unwrap();
    }

    /// `bytes[from..to]` written in place into the `.partial` of `s`.
    fn write(&self, s: &str, bytes: &[u8], from: usize, to: usize) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.partial(s))
            .unwrap();
        file.write_all_at(&bytes[from..to], from as u64).unwrap();
        file.sync_data().unwrap();
    }

    fn complete(&self, s: &str) {
        std::fs::rename(self.partial(s), self.dir.join(s)).unwrap();
    }
}

/// `walrcv serve` of `dir` with its debug log, trusting 127.0.0.1.
fn start_serve(dir: &Path, conf: &Path) -> (BackgroundProcess, u16) {
    let hba = conf.join("serve_hba.conf");
    std::fs::write(&hba, "host replication all 127.0.0.1/32 trust\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut serve = Walrcv::new(["serve", "-D", dir.to_str().unwrap()])
        .args(["--listen", &listen, "--serve-hba", hba.to_str().unwrap()])
        .args(["--serve-sender-timeout", "600"])
        .env("WALRCV_LOG", "info,walrcv=debug")
        .spawn();
    serve.wait_for_stderr("serving the archive", Duration::from_secs(30));
    (serve, port)
}

/// SIGSTOP, and waits until every thread of walrcv is stopped (the signal
/// is delivered asynchronously).
fn stop(serve: &mut BackgroundProcess) {
    serve.signal(libc::SIGSTOP);
    let task = PathBuf::from(format!("/proc/{}/task", serve.pid()));
    let stopped = || {
        std::fs::read_dir(&task).unwrap().all(|t| {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
            // The state follows the command name in parentheses.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stopped() {
        assert!(Instant::now() < deadline, "walrcv did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the client received: contiguous WAL from `start`.
struct Client {
    conn: Connection,
    start: u64,
    wal: Vec<u8>,
    /// Why the session ended (walrcv closed it or sent an error).
    ended: Option<String>,
}

impl Client {
    async fn start(port: u16, start: u64) -> Client {
        let mut conn = Connection::connect(&params(port), true, Duration::from_secs(10))
            .await
            .unwrap();
        conn.start_copy(&format!(
            "START_REPLICATION {} TIMELINE 1",
            format_lsn(start)
        ))
        .await
        .unwrap();
        Client {
            conn,
            start,
            wal: Vec::new(),
            ended: None,
        }
    }

    fn end(&self) -> u64 {
        self.start + self.wal.len() as u64
    }

    /// Reads until `end` is received (or `limit` passed, or the session
    /// ended).
    async fn until(&mut self, end: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.end() < end && self.ended.is_none() && Instant::now() < deadline {
            self.read(Duration::from_millis(200)).await;
        }
    }

    /// Reads what comes for `time`.
    async fn for_a_while(&mut self, time: Duration) {
        let deadline = Instant::now() + time;
        while self.ended.is_none() && Instant::now() < deadline {
            self.read(Duration::from_millis(200)).await;
        }
    }

    async fn read(&mut self, wait: Duration) {
        let Ok(msg) = tokio::time::timeout(wait, self.conn.read_message()).await else {
            return;
        };
        let payload = match msg {
            Ok(BackendMessage::CopyData(payload)) => payload,
            Ok(BackendMessage::Error(e)) => {
                self.ended = Some(format!("{e:?}"));
                return;
            }
            Err(e) => {
                self.ended = Some(e.to_string());
                return;
            }
            Ok(_) => return,
        };
        let Ok(ReplicationMessage::XLogData {
            data_start, data, ..
        }) = ReplicationMessage::parse(payload)
        else {
            return;
        };
        assert_eq!(
            data_start.0,
            self.end(),
            "a piece not following the last one"
        );
        self.wal.extend_from_slice(&data);
    }
}

/// Grows segment `s` in steps while the client follows, then finishes and
/// renames it with walrcv stopped, and begins `next` in the same stop.
async fn grow_and_complete(
    w: &Writer,
    serve: &mut BackgroundProcess,
    client: &mut Client,
    (s, bytes): &(String, Vec<u8>),
    next: Option<&(String, Vec<u8>)>,
    damage: Option<usize>,
) {
    let mut written = 100_000;
    for to in [300_000, 650_003] {
        w.write(s, bytes, written, to);
        written = to;
        let end = valid_end(s, bytes, to);
        client.until(end, Duration::from_secs(30)).await;
        assert_eq!(
            client.end(),
            end,
            "{s}: the valid WAL of {to} bytes (session ended: {:?})",
            client.ended
        );
    }
    // What is left is sent only once the segment is complete.
    assert!(client.end() < segment_start(s) + SEG as u64);
    stop(serve);
    let mut rest = bytes.clone();
    if let Some(at) = damage {
        rest[at] ^= 0x01;
    }
    w.write(s, &rest, written, SEG);
    w.complete(s);
    if let Some((next, bytes)) = next {
        w.begin(next, bytes, 100_000);
    }
    serve.signal(libc::SIGCONT);
}

/// A client following four segments as they are written and completed
/// receives exactly the archive's WAL, and walrcv checks each completed
/// segment on from where it was (its log says so at each completion)
/// rather than reading and checking it whole again.
#[test]
fn serve_a_client_follows_segment_completions_checking_only_the_new_bytes() {
    let work = tempfile::tempdir().unwrap();
    let segments = dense_segments(work.path(), 4);
    let dir = work.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    let w = Writer { dir: dir.clone() };
    let (first, bytes) = &segments[0];
    w.begin(first, bytes, 100_000);
    let (mut serve, port) = start_serve(&dir, work.path());
    let start = segment_start(first);
    runtime().block_on(async {
        let mut client = Client::start(port, start).await;
        for (i, s) in segments.iter().enumerate() {
            grow_and_complete(&w, &mut serve, &mut client, s, segments.get(i + 1), None).await;
        }
        let end = start + (segments.len() * SEG) as u64;
        client.until(end, Duration::from_secs(30)).await;
        assert_eq!(
            client.end(),
            end,
            "the whole of the completed segments (session ended: {:?})",
            client.ended
        );
        let expected: Vec<u8> = segments.iter().flat_map(|(_, b)| b.clone()).collect();
        assert!(client.wal == expected, "the WAL received differs");
    });
    let log = serve.stderr();
    let completions = log.matches(COMPLETED).count();
    assert_eq!(
        completions,
        segments.len(),
        "a completion read whole again:\n{log}"
    );
    assert!(serve.is_running());
    serve.interrupt();
}

/// A byte damaged, after the client's last check, in the part of a segment
/// written as it completes is never sent: walrcv reads the segment whole
/// again, finds the damage and ends the session; everything sent before is
/// the archive's WAL.
#[test]
fn serve_a_byte_damaged_as_a_segment_completes_is_never_sent() {
    let work = tempfile::tempdir().unwrap();
    let segment = dense_segments(work.path(), 1).remove(0);
    let dir = work.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    let w = Writer { dir: dir.clone() };
    let (s, bytes) = &segment;
    w.begin(s, bytes, 100_000);
    // A byte past what the client has when the segment completes, inside
    // a record that ends in the segment (the full check refuses it).
    let name = SegmentName::parse(s).unwrap();
    let at = (700_000..SEG)
        .step_by(4099)
        .find(|&at| {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            check_segment(&damaged, &name, Completeness::Complete).is_err()
        })
        .expect("an offset the full check refuses");
    let (mut serve, port) = start_serve(&dir, work.path());
    let start = segment_start(s);
    runtime().block_on(async {
        let mut client = Client::start(port, start).await;
        grow_and_complete(&w, &mut serve, &mut client, &segment, None, Some(at)).await;
        client.for_a_while(Duration::from_secs(4)).await;
        assert!(
            client.end() <= start + at as u64,
            "the damaged byte at {} was sent (received up to {})",
            format_lsn(start + at as u64),
            format_lsn(client.end())
        );
        assert!(
            client.wal == bytes[..client.wal.len()],
            "received WAL differs"
        );
        assert!(client.ended.is_some(), "the session goes on");
    });
    let log = serve.stderr();
    assert!(
        !log.contains(COMPLETED),
        "the damaged segment was taken as complete:\n{log}"
    );
    assert!(
        log.contains("fails its checks"),
        "no refusal logged:\n{log}"
    );
    serve.interrupt();
}
