//! One replication session: connect, identify, pick the start point, then
//! stream timeline after timeline until stopped, the stop point is reached or
//! the connection fails.
//!
//! Split in five:
//! - this module: the session's IO outside the stream (connecting, asking the
//!   server, reading and moving the archive's files) and the timeline loop;
//! - [`steps`]: the session's decisions as pure functions (start point, the
//!   lineage decision in its steps, the end of a timeline, the close);
//! - [`machine`]: the receive loop of one stream as a sans-IO state machine
//!   (events in, actions out), the commit path's logic;
//! - [`driver`]: the thin IO loop around the machine, and the CopyDone
//!   sequence at the end of a stream;
//! - [`incomplete`]: the rule that ends a stream whose record can never be
//!   completed with what the server has (a length corrupted in transit).
//!
//! When and what to report is decided by the sans-IO [`Feedback`] policy,
//! which the machine consults.

pub mod driver;
pub mod incomplete;
pub mod machine;
pub mod steps;

use std::future::Future;
use std::sync::OnceLock;

use tokio::sync::watch;

use super::classify::StartFacts;
use super::feedback::{Feedback, FeedbackConfig};
use super::lineage::{ArchiveEnd, ServerLineage};
use super::sink::{SinkConfig, WalSink};
use super::{refine_at_start, Outcome, ReceiverError, StreamOptions};
use crate::archive::{ArchiveDir, ArchiveError, PrepareError, Resume, Scan, StartPoint};
use crate::lsn::{Lsn, TimeLineId};
use crate::metrics::AckClock;
use crate::pgwire::{Connection, PgError, PgErrorKind, TargetError};
use crate::replication::{self, ReplicationError, StartReply};
use crate::service;
use crate::shutdown::unless_stopped;
use crate::wal::history::{parse_history, HistoryEntry};
use crate::wal::{Verifier, VerifierConfig};
use crate::{MAX_SERVER_MAJOR, MIN_SERVER_MAJOR};
use driver::{CopyEnd, Published, Stream};
use machine::{MachineConfig, StreamMachine};
use steps::{DivergentTail, LineageStep, Start};

/// A password typed at the prompt: kept for the later connections of the
/// same `walrcv stream` (the supervisor owns it), never written into the
/// options. Set at most once; never shown.
#[derive(Default)]
pub struct PromptedPassword(OnceLock<String>);

impl std::fmt::Debug for PromptedPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let given = if self.0.get().is_some() {
            "given"
        } else {
            "none"
        };
        f.debug_tuple("PromptedPassword").field(&given).finish()
    }
}

/// What the server told us about itself.
struct Server {
    version_num: u32,
    system_id: u64,
    timeline: TimeLineId,
    xlogpos: Lsn,
    segment_size: u64,
    block_size: u32,
}

/// Connects with the options' parameters, plus the password typed at an
/// earlier prompt; prompts (once per run) when the server asks for a
/// password and none was given. The parameters with the password are this
/// connection's own copy.
async fn connect(
    opts: &StreamOptions,
    prompted: &PromptedPassword,
) -> Result<Connection, ReceiverError> {
    let reply_timeout = opts.receive_timeout;
    let mut params = opts.conn.clone();
    if params.password.is_none() {
        params.password = prompted.0.get().cloned();
    }
    match Connection::connect(&params, true, reply_timeout).await {
        Err(PgError::At(TargetError {
            target,
            kind: PgErrorKind::NoPassword,
        })) if opts.password_prompt && stdin_is_terminal() => {
            let pw = rpassword::prompt_password("Password: ")
                .map_err(|e| ReceiverError::Config(format!("could not read the password: {e}")))?;
            params.password = Some(prompted.0.get_or_init(|| pw).clone());
            tracing::debug!("retrying {target} with the password given");
            Ok(Connection::connect(&params, true, reply_timeout).await?)
        }
        other => Ok(other?),
    }
}

fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

async fn identify(conn: &mut Connection) -> Result<Server, ReceiverError> {
    let unsupported = |found: String| ReceiverError::UnsupportedServer { found };
    let version_num = match conn.server_version_num() {
        None => return Err(unsupported("unknown (no server_version reported)".into())),
        Some(Err(e)) => return Err(unsupported(format!("{:?} ({})", e.shown, e.why))),
        Some(Ok(v)) => v,
    };
    let major = version_num / 10000;
    if !(MIN_SERVER_MAJOR..=MAX_SERVER_MAJOR).contains(&major) {
        let shown =
            crate::pgwire::backend::truncated(conn.parameter("server_version").unwrap_or("?"), 40);
        return Err(unsupported(shown));
    }
    let sys = replication::identify_system(conn).await?;
    if let Some(db) = sys.dbname {
        return Err(ReceiverError::DatabaseSpecific(db));
    }
    let segment_size = replication::wal_segment_size(conn).await?;
    let block_size = replication::wal_block_size(conn).await?;
    // pg_receivewal's RetrieveDataDirCreatePerm: archive files are
    // group-readable when the server's data directory is.
    let dir_mode = replication::data_directory_mode(conn).await?;
    let file_mode = crate::archive::durable::file_mode_for_data_directory_mode(dir_mode);
    crate::archive::durable::set_file_create_mode(file_mode);
    Ok(Server {
        version_num,
        system_id: sys.system_id,
        timeline: sys.timeline,
        xlogpos: sys.xlogpos,
        segment_size,
        block_size,
    })
}

/// `--create-slot-if-missing`: a server without the slot (a new primary
/// after a failover: physical slots do not follow) gets it, reserving WAL
/// from its current position, and the operator is told.
async fn create_slot_if_missing(
    opts: &StreamOptions,
    conn: &mut Connection,
    server: &Server,
) -> Result<(), ReceiverError> {
    let Some(slot) = &opts.slot else {
        return Ok(());
    };
    // 15+ can ask without an error in the server's log at each reconnect;
    // older servers are asked to create it, an existing slot being success.
    if server.version_num >= 150000 {
        let info = replication::read_replication_slot(conn, slot).await?;
        if info.slot_type.is_some() {
            return Ok(());
        }
    }
    let created = replication::create_physical_slot(conn, slot, server.version_num, true).await?;
    if created {
        tracing::warn!(
            "replication slot \"{slot}\" did not exist on {}: created it (--create-slot-if-missing); it holds WAL \
             from now on, WAL the server removed before is not kept by it",
            conn.target()
        );
    }
    Ok(())
}

/// Picks the start point: the archive first (pg_receivewal's rules), then the
/// slot's restart_lsn (15+), then the server's current position.
async fn start_point(
    opts: &StreamOptions,
    conn: &mut Connection,
    archive: &ArchiveDir,
    server: &Server,
) -> Result<Start, ReceiverError> {
    let seg = server.segment_size;
    let (system_id, sync) = (server.system_id, opts.sync);
    // What is already there is reported as flushed from the start: it is made
    // durable first (once per process; see `ArchiveDir::prepare_start`).
    let prepared = off_runtime(archive, move |a| a.prepare_start(system_id, seg, sync)).await?;
    let scan = prepared.map_err(|e| match e {
        PrepareError::Check(source) => ReceiverError::Archive(source),
        PrepareError::Sync(source) => ReceiverError::ArchiveIo {
            doing: "make the archive's existing files durable",
            source,
        },
        PrepareError::Untrusted { path, why } => ReceiverError::untrusted_after_fsync(path, &why),
    })?;
    if let Some(point) = scan.streaming_start(seg) {
        return follow_lineage(opts, conn, archive, server, scan, point).await;
    }
    if let Some(slot) = &opts.slot {
        if server.version_num >= 150000 {
            let info = replication::read_replication_slot(conn, slot).await?;
            if let Some(start) = steps::slot_start(slot, &info, seg)? {
                return Ok(start);
            }
        }
    }
    Ok(steps::server_position_start(
        server.xlogpos,
        server.timeline,
        seg,
    ))
}

/// Before resuming the archive: does the server's history continue it (see
/// [`super::lineage`])? Continue at the archive's start point; or set the
/// divergent tail aside and start on the timeline that begins at the switch
/// point; or refuse a server whose history does not contain the archive's
/// timeline. Each decision is a step of [`steps`].
async fn follow_lineage(
    opts: &StreamOptions,
    conn: &mut Connection,
    archive: &ArchiveDir,
    server: &Server,
    scan: Scan,
    point: StartPoint,
) -> Result<Start, ReceiverError> {
    let seg = server.segment_size;
    // `point` comes from the newest file, so its timeline is the archive's.
    let end = if steps::must_measure_end(point, server.timeline) {
        archive_wal_end(archive, &scan, seg).await?
    } else {
        point.lsn
    };
    let history = server_history(conn, server.timeline).await?;
    let known = archive_history(archive, point.timeline).await?;
    let lineage = ServerLineage {
        timeline: server.timeline,
        history: &history,
    };
    let decision = steps::lineage_decision(point, end, known.as_deref(), lineage);
    if steps::checks_older_tails(&decision) {
        set_aside_older_tails(opts, archive, &scan, point.timeline, lineage, seg).await?;
    }
    match steps::lineage_step(decision, point, end, conn.target(), server.timeline, seg) {
        LineageStep::Resume(start) => {
            log_resume(&scan, point, seg);
            Ok(start)
        }
        LineageStep::SetAsideThenStart { tail, start } => {
            set_aside(opts, archive, scan, tail, Some(start.point), seg).await?;
            Ok(start)
        }
        LineageStep::Refuse(e) => Err(e),
    }
}

/// Divergent tails on the archive's older timelines (see
/// [`steps::older_timelines_to_measure`]): each is measured, and set aside
/// when it runs past the switch point.
async fn set_aside_older_tails(
    opts: &StreamOptions,
    archive: &ArchiveDir,
    scan: &Scan,
    newest: TimeLineId,
    server: ServerLineage<'_>,
    seg: u64,
) -> Result<(), ReceiverError> {
    for timeline in steps::older_timelines_to_measure(scan, newest, server, seg) {
        let Some(end) = archive_wal_end_on(archive, scan, timeline, seg).await? else {
            continue;
        };
        if let Some(tail) = steps::older_tail(end, server) {
            set_aside(opts, archive, scan.clone(), tail, None, seg).await?;
        }
    }
    Ok(())
}

/// Where the data of the archive's newest file of `timeline` ends.
async fn archive_wal_end_on(
    archive: &ArchiveDir,
    scan: &Scan,
    timeline: TimeLineId,
    seg: u64,
) -> Result<Option<ArchiveEnd>, ReceiverError> {
    let scan = scan.clone();
    off_runtime(archive, move |a| a.wal_end_on(&scan, timeline, seg))
        .await?
        .map_err(|source| ReceiverError::ArchiveIo {
            doing: "read where the archive's WAL ends",
            source,
        })
}

/// Where the data of the archive's newest file ends (reads a `.partial`).
async fn archive_wal_end(
    archive: &ArchiveDir,
    scan: &Scan,
    seg: u64,
) -> Result<Lsn, ReceiverError> {
    let scan = scan.clone();
    let end = off_runtime(archive, move |a| a.wal_end(&scan, seg))
        .await?
        .map_err(|source| ReceiverError::ArchiveIo {
            doing: "read where the archive's WAL ends",
            source,
        })?;
    end.map(|e| e.end)
        .ok_or_else(|| ReceiverError::Unexpected("the archive's newest segment vanished".into()))
}

/// The archive's own history file of `timeline`, when it holds a readable
/// one (none for timeline 1).
async fn archive_history(
    archive: &ArchiveDir,
    timeline: TimeLineId,
) -> Result<Option<Vec<HistoryEntry>>, ReceiverError> {
    if timeline == 1 {
        return Ok(None);
    }
    let Some(content) = off_runtime(archive, move |a| a.read_history(timeline)).await? else {
        return Ok(None);
    };
    match parse_history(&content) {
        Ok(entries) => Ok(Some(entries)),
        Err(e) => {
            tracing::warn!(
                "the archive's history file of timeline {timeline} cannot be read ({e}): the server's history is \
                 compared with the archive's end only"
            );
            Ok(None)
        }
    }
}

/// The server's current timeline's history (empty on timeline 1).
async fn server_history(
    conn: &mut Connection,
    timeline: TimeLineId,
) -> Result<Vec<HistoryEntry>, ReceiverError> {
    if timeline == 1 {
        return Ok(Vec::new());
    }
    let (name, content) = replication::timeline_history(conn, timeline).await?;
    parse_history(&content).map_err(|e| {
        ReceiverError::Unexpected(format!(
            "the server's timeline history file \"{name}\" cannot be read: {e}"
        ))
    })
}

/// Renames the files holding a divergent tail aside (never deleted), and
/// says exactly which WAL diverges.
async fn set_aside(
    opts: &StreamOptions,
    archive: &ArchiveDir,
    scan: Scan,
    tail: DivergentTail,
    resume: Option<StartPoint>,
    seg: u64,
) -> Result<(), ReceiverError> {
    let DivergentTail {
        timeline,
        switchpoint,
        end,
        next,
    } = tail;
    let sync = opts.sync;
    let moved = off_runtime(archive, move |a| {
        a.set_aside_divergent(&scan, timeline, switchpoint, seg, sync)
    })
    .await?
    .map_err(|source| ReceiverError::ArchiveIo {
        doing: "set the divergent WAL aside",
        source,
    })?;
    let names: Vec<String> = moved
        .iter()
        .map(|m| format!("\"{}\"", m.to.display()))
        .collect();
    crate::metrics::global().divergent_set_aside(end.0.saturating_sub(switchpoint.0));
    let then = match resume {
        Some(at) => format!("Continuing on timeline {} from {}", at.timeline, at.lsn),
        None => "The archive's newest WAL is not concerned".to_string(),
    };
    tracing::warn!(
        "the archive's timeline {timeline} diverges from the server's history at {switchpoint}: the archive holds \
         WAL from {switchpoint} to {end} ({} bytes) that timeline {next} does not contain (sent by the old primary, \
         never received by the one promoted). Kept aside, never restored nor removed: {}. {then}",
        end.0.saturating_sub(switchpoint.0),
        names.join(", "),
    );
    Ok(())
}

/// Logs where streaming resumes. The `.partial` being resumed is not read: it
/// is streamed again from its start (its size says nothing, it is pre-padded).
fn log_resume(scan: &crate::archive::Scan, start: StartPoint, segment_size: u64) {
    let resumed = scan.segments.iter().rev().find(|f| {
        f.partial
            && f.timeline == start.timeline
            && f.segno == start.lsn.segment_number(segment_size)
    });
    match resumed {
        Some(file) => tracing::info!(
            "resuming \"{}\": streaming its segment again from {} (timeline {})",
            file.path.display(),
            start.lsn,
            start.timeline
        ),
        None => tracing::info!(
            "resuming after the archive's newest complete segment, at {} (timeline {})",
            start.lsn,
            start.timeline
        ),
    }
}

/// Runs blocking archive work (file reads, fsyncs) on the blocking pool, so
/// that the runtime's thread keeps serving the connection and signals.
async fn off_runtime<T: Send + 'static>(
    archive: &ArchiveDir,
    work: impl FnOnce(&ArchiveDir) -> T + Send + 'static,
) -> Result<T, ReceiverError> {
    let archive = archive.clone();
    tokio::task::spawn_blocking(move || work(&archive))
        .await
        .map_err(|e| ReceiverError::Unexpected(format!("archive task failed: {e}")))
}

/// The verifier of a stream starting at `start`, fed with the archive's WAL
/// before it when the archive has it, so that the record in progress at
/// `start` is checked whole (see [`crate::archive::resume`]).
async fn resume_verifier(
    archive: &ArchiveDir,
    config: VerifierConfig,
    start: Lsn,
) -> Result<Option<Verifier>, ReceiverError> {
    let resume = off_runtime(archive, move |a| a.resume_verifier(config, start))
        .await?
        .map_err(|source| match source {
            // A damaged segment file: the operator moves it away (as when
            // the start-up scan finds one), retrying cannot help.
            ArchiveError::BadCompressedFile { .. } | ArchiveError::WrongSize { .. } => {
                ReceiverError::Archive(source)
            }
            source => ReceiverError::ArchiveIo {
                doing: "read the archive's WAL before the resume point",
                source,
            },
        })?;
    match resume {
        Resume::Primed { verifier, from } => {
            if let Some(record) = verifier.current_record_start() {
                tracing::info!(
                    "the record at {record} continues past the start {start}: checking it whole with the archive's WAL from {from}"
                );
            }
            Ok(Some(*verifier))
        }
        Resume::Corrupt { path, error } => Err(ReceiverError::corrupt_archive(path, &error)),
        Resume::NotInArchive { missing } => {
            tracing::debug!(
                "the archive does not hold the WAL before {start} ({}): a record continuing there cannot be checked",
                missing.as_deref().unwrap_or("nothing before it")
            );
            Ok(None)
        }
    }
}

/// How a session ends before its stream could: a failure, or a stop
/// requested while it waited for the server.
enum Early {
    Stopped,
    Failed(ReceiverError),
}

impl From<ReceiverError> for Early {
    fn from(e: ReceiverError) -> Self {
        Early::Failed(e)
    }
}

impl From<PgError> for Early {
    fn from(e: PgError) -> Self {
        Early::Failed(e.into())
    }
}

impl From<ReplicationError> for Early {
    fn from(e: ReplicationError) -> Self {
        Early::Failed(e.into())
    }
}

/// One step of a session that waits for the server outside the stream: it
/// gives way to a stop request (its connection is dropped).
async fn stoppable<T, E: Into<ReceiverError>>(
    shutdown: &mut watch::Receiver<bool>,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, Early> {
    match unless_stopped(shutdown, service::pinging(step)).await {
        Some(result) => result.map_err(|e| Early::Failed(e.into())),
        None => Err(Early::Stopped),
    }
}

/// How a session ended, and whether it streamed (the supervisor resets its
/// backoff after a session that wrote WAL).
pub struct SessionEnd {
    pub result: Result<Outcome, ReceiverError>,
    pub streamed: bool,
}

/// Runs one session. A stop requested at any point ends it with
/// [`Outcome::Stopped`]. `prompted` keeps a password typed at the prompt for
/// the supervisor's later sessions.
pub async fn run_session(
    opts: &StreamOptions,
    archive: &ArchiveDir,
    shutdown: &mut watch::Receiver<bool>,
    prompted: &PromptedPassword,
) -> SessionEnd {
    let mut session = Session {
        opts,
        archive,
        streamed: false,
    };
    let result = match session.run(shutdown, prompted).await {
        Ok(outcome) => Ok(outcome),
        Err(Early::Stopped) => {
            tracing::info!("stop requested while waiting for the server: exiting");
            Ok(Outcome::Stopped)
        }
        Err(Early::Failed(e)) => Err(e),
    };
    SessionEnd {
        result,
        streamed: session.streamed,
    }
}

/// One session's context, and what it did so far.
struct Session<'a> {
    opts: &'a StreamOptions,
    archive: &'a ArchiveDir,
    streamed: bool,
}

impl Session<'_> {
    async fn run(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        prompted: &PromptedPassword,
    ) -> Result<Outcome, Early> {
        let (opts, archive) = (self.opts, self.archive);
        let mut conn = stoppable(shutdown, connect(opts, prompted)).await?;
        let server = stoppable(shutdown, identify(&mut conn)).await?;
        if opts.create_slot_if_missing {
            stoppable(shutdown, create_slot_if_missing(opts, &mut conn, &server)).await?;
        }
        let Start {
            point: mut start,
            mut from_archive,
        } = stoppable(shutdown, start_point(opts, &mut conn, archive, &server)).await?;
        steps::check_start_timeline(start, server.timeline)?;
        // One policy for the whole connection: positions never go backwards on a
        // timeline, even when a new timeline restarts below what the old one
        // reached; at a switch they are capped at the switch point.
        let mut feedback = Feedback::new(
            FeedbackConfig {
                status_interval: opts.status_interval,
                receive_timeout: opts.receive_timeout,
            },
            std::time::Instant::now(),
        );
        loop {
            if start.timeline != 1 && !archive.has_history(start.timeline) {
                store_history(opts, archive, &mut conn, start.timeline, shutdown).await?;
            }
            if steps::endpos_before(opts.endpos, start.lsn) {
                conn.close().await;
                return Ok(Outcome::EndposReached);
            }
            let end = self
                .stream(
                    &mut conn,
                    &server,
                    start,
                    from_archive,
                    &mut feedback,
                    shutdown,
                )
                .await?;
            let (next_tli, next_start, received) = match end {
                CopyEnd::Stopped => {
                    conn.close().await;
                    return Ok(Outcome::Stopped);
                }
                CopyEnd::Endpos => {
                    conn.close().await;
                    return Ok(Outcome::EndposReached);
                }
                CopyEnd::TimelineEnded {
                    next_tli,
                    next_start,
                    received,
                } => (next_tli, next_start, received),
            };
            steps::check_next_timeline(start, next_tli, next_start, received)?;
            let seg = server.segment_size;
            set_aside_at_switch(
                opts,
                archive,
                start.timeline,
                received,
                next_tli,
                next_start,
                seg,
            )
            .await?;
            tracing::info!(
                "switched to timeline {next_tli} at {next_start} (timeline {} ended)",
                start.timeline
            );
            Start {
                point: start,
                from_archive,
            } = steps::switch_timeline(&mut feedback, next_tli, next_start, seg);
        }
    }

    /// One START_REPLICATION: its stream runs until it ends.
    async fn stream(
        &mut self,
        conn: &mut Connection,
        server: &Server,
        start: StartPoint,
        from_archive: bool,
        feedback: &mut Feedback,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<CopyEnd, Early> {
        let (opts, archive) = (self.opts, self.archive);
        tracing::info!(
            "starting log streaming at {} (timeline {})",
            start.lsn,
            start.timeline
        );
        // What walrcv asks for: the server's refusals are told apart by them
        // (and by SQLSTATE), never by the translated message text.
        let facts = StartFacts {
            start: start.lsn,
            timeline: start.timeline,
            server_timeline: server.timeline,
            server_flush: server.xlogpos,
            segment_size: server.segment_size,
        };
        // Read before START_REPLICATION, so that the stream is read the
        // moment it starts.
        let verifier = VerifierConfig {
            segment_size: server.segment_size,
            block_size: server.block_size,
            system_id: Some(server.system_id),
            timeline: start.timeline,
            server_major: Some(server.version_num / 10000),
        };
        let primed = resume_verifier(archive, verifier.clone(), start.lsn).await?;
        let reply = stoppable(
            shutdown,
            replication::start_replication(conn, opts.slot.as_deref(), start.lsn, start.timeline),
        )
        .await
        .map_err(|e| match e {
            Early::Failed(e) => Early::Failed(refine_at_start(e, &facts)),
            stopped => stopped,
        })?;
        match reply {
            StartReply::TimelineEnded {
                next_tli,
                next_start,
            } => Ok(CopyEnd::TimelineEnded {
                next_tli,
                next_start,
                received: start.lsn,
            }),
            StartReply::Streaming => {
                service::streaming(&format!(
                    "streaming from {} on timeline {}",
                    start.lsn, start.timeline
                ));
                let sink = WalSink::new(SinkConfig {
                    directory: archive.path().to_path_buf(),
                    timeline: start.timeline,
                    segment_size: server.segment_size,
                    sync: opts.sync,
                    start: start.lsn,
                    // Backed by the archive only when it holds the WAL just
                    // before the start (complete segments, read and checked
                    // by the resume check), not merely a file at the start
                    // (a zero-byte `.partial` from `barman receive-wal
                    // --reset` holds nothing).
                    start_is_durable: from_archive && primed.is_some(),
                    verifier,
                    primed,
                    compression: opts.compression,
                });
                let machine = StreamMachine::new(
                    MachineConfig {
                        endpos: opts.endpos,
                        start: start.lsn,
                        receive_timeout: opts.receive_timeout,
                        target: conn.target().to_string(),
                        block_size: u64::from(server.block_size),
                    },
                    feedback,
                );
                let stream = Stream {
                    conn,
                    sink,
                    machine,
                    acks: AckClock::default(),
                    live: opts.live.clone().map(|end| Published {
                        end,
                        timeline: start.timeline,
                    }),
                };
                crate::metrics::global().stream_started(start.timeline);
                let ended = stream.run(shutdown).await;
                self.streamed |= ended.streamed;
                Ok(ended.result.map_err(|e| refine_at_start(e, &facts))?)
            }
        }
    }
}

/// Fetches the history file of `timeline` from the server and stores it.
async fn store_history(
    opts: &StreamOptions,
    archive: &ArchiveDir,
    conn: &mut Connection,
    timeline: TimeLineId,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), Early> {
    let (name, content) =
        stoppable(shutdown, replication::timeline_history(conn, timeline)).await?;
    let (sync, file) = (opts.sync, name.clone());
    let compression = opts.compression;
    off_runtime(archive, move |a| {
        a.write_history(timeline, &file, &content, sync, compression)
    })
    .await?
    .map_err(|source| match source {
        ArchiveError::BadHistoryName { .. } => ReceiverError::Archive(source),
        source => ReceiverError::ArchiveIo {
            doing: "store the timeline history file",
            source,
        },
    })?;
    tracing::info!("stored timeline history file \"{name}\"");
    Ok(())
}

/// End of a timeline: the old timeline's WAL past the switch point, in this
/// stream or in the archive, is set aside (see [`steps::tail_at_switch`]).
async fn set_aside_at_switch(
    opts: &StreamOptions,
    archive: &ArchiveDir,
    old: TimeLineId,
    received: Lsn,
    next_tli: TimeLineId,
    next_start: Lsn,
    seg: u64,
) -> Result<(), ReceiverError> {
    let scan = off_runtime(archive, move |a| a.scan(seg))
        .await?
        .map_err(ReceiverError::Archive)?;
    let in_archive = archive_wal_end_on(archive, &scan, old, seg)
        .await?
        .map_or(Lsn::INVALID, |e| e.end);
    if let Some(tail) = steps::tail_at_switch(old, received, in_archive, next_tli, next_start) {
        let resume = tail.resume(seg);
        set_aside(opts, archive, scan, tail, Some(resume), seg).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::PromptedPassword;

    #[test]
    fn a_prompted_password_is_never_shown() {
        let prompted = PromptedPassword::default();
        assert_eq!(format!("{prompted:?}"), "PromptedPassword(\"none\")");
        prompted.0.set("hunter2".into()).unwrap();
        let shown = format!("{prompted:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("given"), "{shown}");
    }
}
