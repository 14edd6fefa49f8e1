//! One replication session: connect, identify, pick the start point, then
//! stream timeline after timeline until stopped, the stop point is reached or
//! the connection fails.
//!
//! The receive loop is the commit path: it waits for the network, then takes
//! every message already received (a batch), verifies and writes the WAL in
//! them through the [`WalSink`] on this task, fsyncs once, and sends a status
//! update the moment the flush position advances. When and what to report is
//! decided by the sans-IO [`Feedback`] policy.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::watch;

use super::classify::StartFacts;
use super::feedback::{Feedback, FeedbackConfig, Status, TimerAction};
use super::lineage::{self, ArchiveEnd, Decision, ServerLineage};
use super::sink::{SinkConfig, WalSink};
use super::{refine_at_start, Outcome, ReceiverError, StreamOptions};
use crate::archive::{ArchiveDir, ArchiveError, PrepareError, Resume, Scan, StartPoint};
use crate::lsn::{pg_now, Lsn, TimeLineId};
use crate::metrics::AckClock;
use crate::pgwire::{BackendMessage, Connection, PgError, PgErrorKind, QueryResult, TargetError};
use crate::replication::{self, ReplicationError, ReplicationMessage, StartReply, StatusUpdate};
use crate::service;
use crate::shutdown::{stop_requested, unless_stopped};
use crate::wal::history::{parse_history, HistoryEntry};
use crate::wal::{Verifier, VerifierConfig};
use crate::{MAX_SERVER_MAJOR, MIN_SERVER_MAJOR};

/// What the server told us about itself.
struct Server {
    version_num: u32,
    system_id: u64,
    timeline: TimeLineId,
    xlogpos: Lsn,
    segment_size: u64,
    block_size: u32,
}

async fn connect(opts: &mut StreamOptions) -> Result<Connection, ReceiverError> {
    let reply_timeout = opts.receive_timeout;
    match Connection::connect(&opts.conn, true, reply_timeout).await {
        Err(PgError::At(TargetError {
            target,
            kind: PgErrorKind::NoPassword,
        })) if opts.password_prompt && stdin_is_terminal() => {
            let pw = rpassword::prompt_password("Password: ")
                .map_err(|e| ReceiverError::Config(format!("could not read the password: {e}")))?;
            opts.conn.password = Some(pw);
            tracing::debug!("retrying {target} with the password given");
            Ok(Connection::connect(&opts.conn, true, reply_timeout).await?)
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

/// Where a session starts, and whether the WAL before it is the archive's own
/// durable files (only then may the start be reported as flushed at once).
struct Start {
    point: StartPoint,
    from_archive: bool,
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
            match (info.slot_type.as_deref(), info.restart_lsn, info.restart_tli) {
                (None, _, _) => {
                    return Err(ReceiverError::Config(format!(
                        "replication slot \"{slot}\" does not exist (create it with --create-slot --slot={slot})"
                    )))
                }
                (Some("physical"), Some(lsn), Some(tli)) => {
                    tracing::info!("starting at the restart_lsn {lsn} of slot \"{slot}\" (timeline {tli})");
                    return Ok(Start {
                        point: StartPoint {
                            lsn: lsn.segment_start(seg),
                            timeline: tli,
                        },
                        from_archive: false,
                    });
                }
                (Some("physical"), _, _) => {}
                (Some(other), _, _) => {
                    return Err(ReceiverError::Config(format!(
                        "replication slot \"{slot}\" is a {other} slot, not a physical one"
                    )))
                }
            }
        }
    }
    tracing::warn!(
        "the archive directory holds no WAL: starting at the server's current position {} (timeline {}); older WAL is not in the archive",
        server.xlogpos,
        server.timeline
    );
    Ok(Start {
        point: StartPoint {
            lsn: server.xlogpos.segment_start(seg),
            timeline: server.timeline,
        },
        from_archive: false,
    })
}

/// Before resuming the archive: does the server's history continue it (see
/// [`lineage`])? Continue at the archive's start point; or set the divergent
/// tail aside and start on the timeline that begins at the switch point; or
/// refuse a server whose history does not contain the archive's timeline.
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
    let timeline = point.timeline;
    let end = if timeline == server.timeline {
        // Where the archive ends does not matter on the server's own
        // timeline (only the histories are compared): a reconnect does not
        // read the `.partial` it resumes.
        point.lsn
    } else {
        archive_wal_end(archive, &scan, seg).await?
    };
    let history = server_history(conn, server.timeline).await?;
    let archive_end = ArchiveEnd { timeline, end };
    let known = archive_history(archive, timeline).await?;
    let decision = lineage::decide(
        archive_end,
        known.as_deref(),
        ServerLineage {
            timeline: server.timeline,
            history: &history,
        },
    );
    if matches!(
        decision,
        Decision::Continue { .. } | Decision::Diverged { .. }
    ) {
        let lineage = ServerLineage {
            timeline: server.timeline,
            history: &history,
        };
        set_aside_older_tails(opts, archive, &scan, timeline, lineage, seg).await?;
    }
    match decision {
        Decision::Continue { .. } => {
            log_resume(&scan, point, seg);
            Ok(Start {
                point,
                from_archive: true,
            })
        }
        Decision::Diverged {
            timeline,
            switchpoint,
            end,
            next,
        } => {
            let tail = DivergentTail {
                timeline,
                switchpoint,
                end,
                next,
            };
            let resume = StartPoint {
                lsn: switchpoint.segment_start(seg),
                timeline: next,
            };
            set_aside(opts, archive, scan, tail, Some(resume), seg).await?;
            Ok(Start {
                point: resume,
                // Files were just moved: nothing is reported flushed before
                // WAL is written on the new timeline (as after an in-session
                // timeline switch).
                from_archive: false,
            })
        }
        Decision::Forked {
            archive_timeline,
            archive_entry,
            server_entry,
        } => Err(ReceiverError::NeedsOperator {
            message: format!(
                "{} (timeline {}) has another history of timeline {archive_timeline} than the \
                 archive: the archive's history says {}, the server's says {}; nothing was written",
                conn.target(),
                server.timeline,
                describe_entry(archive_entry),
                describe_entry(server_entry)
            ),
            hint: "two standbys were promoted apart and chose the same timeline number: this server is on the \
                   other fork. Point walrcv at the primary whose history continues the archive, or archive this \
                   server into a new directory."
                .into(),
        }),
        Decision::NotDescendant {
            archive_timeline,
            server_timeline,
        } => Err(ReceiverError::NeedsOperator {
            message: format!(
                "{} is on timeline {server_timeline}, whose history does not contain the archive's \
                 timeline {archive_timeline} (the archive's WAL ends at {} on it): this server did not descend from \
                 the one the archive came from; nothing was written",
                conn.target(),
                archive_end.end
            ),
            hint: "is this host another cluster (a clone with the same system identifier), or a fork the archive \
                   does not know? Point walrcv at the primary whose history continues the archive, or archive this \
                   server into a new directory."
                .into(),
        }),
    }
}

/// Divergent tails on the archive's older timelines (not `newest`, whose
/// end the lineage decision measures): WAL of a timeline that the server's
/// history left, past the switch point. An earlier session can leave one
/// behind while the archive's newest WAL is already on the server's
/// timeline (pg_receivewal, or a version of walrcv that followed a timeline
/// switch without measuring the old timeline's file), and `walrcv restore`
/// would serve it. Only files from the switch point's segment on are read.
async fn set_aside_older_tails(
    opts: &StreamOptions,
    archive: &ArchiveDir,
    scan: &Scan,
    newest: TimeLineId,
    server: ServerLineage<'_>,
    seg: u64,
) -> Result<(), ReceiverError> {
    let mut older: Vec<TimeLineId> = scan
        .segments
        .iter()
        .map(|f| f.timeline)
        .filter(|&t| t != newest)
        .collect();
    older.sort_unstable();
    older.dedup();
    for timeline in older {
        let Some(switchpoint) = lineage::left_at(timeline, server) else {
            continue;
        };
        let first = switchpoint.segment_number(seg);
        if !scan
            .segments
            .iter()
            .any(|f| f.timeline == timeline && f.segno >= first)
        {
            continue;
        }
        let Some(end) = archive_wal_end_on(archive, scan, timeline, seg).await? else {
            continue;
        };
        if let Decision::Diverged {
            timeline,
            switchpoint,
            end,
            next,
        } = lineage::decide(end, None, server)
        {
            let tail = DivergentTail {
                timeline,
                switchpoint,
                end,
                next,
            };
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

fn describe_entry(entry: Option<HistoryEntry>) -> String {
    match entry {
        Some(e) => format!("timeline {} was left at {}", e.parent, e.switchpoint),
        None => "nothing more".into(),
    }
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

/// WAL on `timeline` from `switchpoint` to `end` that the timeline `next`
/// (which begins at the switch point) does not contain.
#[derive(Debug, Clone, Copy)]
struct DivergentTail {
    timeline: TimeLineId,
    switchpoint: Lsn,
    end: Lsn,
    next: TimeLineId,
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

/// Runs one session. `streamed` is set once WAL has been received, so the
/// supervisor can reset its backoff. A stop requested at any point ends it
/// with [`Outcome::Stopped`].
pub async fn run_session(
    opts: &mut StreamOptions,
    archive: &ArchiveDir,
    shutdown: &mut watch::Receiver<bool>,
    streamed: &mut bool,
) -> Result<Outcome, ReceiverError> {
    match session(opts, archive, shutdown, streamed).await {
        Ok(outcome) => Ok(outcome),
        Err(Early::Stopped) => {
            tracing::info!("stop requested while waiting for the server: exiting");
            Ok(Outcome::Stopped)
        }
        Err(Early::Failed(e)) => Err(e),
    }
}

async fn session(
    opts: &mut StreamOptions,
    archive: &ArchiveDir,
    shutdown: &mut watch::Receiver<bool>,
    streamed: &mut bool,
) -> Result<Outcome, Early> {
    let mut conn = stoppable(shutdown, connect(opts)).await?;
    let server = stoppable(shutdown, identify(&mut conn)).await?;
    if opts.create_slot_if_missing {
        stoppable(shutdown, create_slot_if_missing(opts, &mut conn, &server)).await?;
    }
    let Start {
        point: mut start,
        mut from_archive,
    } = stoppable(shutdown, start_point(opts, &mut conn, archive, &server)).await?;
    if start.timeline > server.timeline {
        return Err(ReceiverError::NeedsOperator {
            message: format!(
                "starting timeline {} is not present in the server (its timeline is {})",
                start.timeline, server.timeline
            ),
            hint: "the archive holds WAL of a newer timeline than this server's: is this the right server?".into(),
        }
        .into());
    }
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
            let (name, content) = stoppable(
                shutdown,
                replication::timeline_history(&mut conn, start.timeline),
            )
            .await?;
            let (tli, sync, file) = (start.timeline, opts.sync, name.clone());
            let compression = opts.compression;
            off_runtime(archive, move |a| {
                a.write_history(tli, &file, &content, sync, compression)
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
        }
        if opts.endpos.is_some_and(|e| e < start.lsn) {
            conn.close().await;
            return Ok(Outcome::EndposReached);
        }
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
            replication::start_replication(
                &mut conn,
                opts.slot.as_deref(),
                start.lsn,
                start.timeline,
            ),
        )
        .await
        .map_err(|e| match e {
            Early::Failed(e) => Early::Failed(refine_at_start(e, &facts)),
            stopped => stopped,
        })?;
        let end = match reply {
            StartReply::TimelineEnded {
                next_tli,
                next_start,
            } => CopyEnd::TimelineEnded {
                next_tli,
                next_start,
                received: start.lsn,
            },
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
                let stream = Stream {
                    conn: &mut conn,
                    opts,
                    sink,
                    feedback: &mut feedback,
                    streamed,
                    acks: AckClock::default(),
                };
                crate::metrics::global().stream_started(start.timeline);
                stream
                    .run(shutdown)
                    .await
                    .map_err(|e| refine_at_start(e, &facts))?
            }
        };
        match end {
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
            } => {
                if next_tli <= start.timeline || next_start > received.max(start.lsn) {
                    return Err(ReceiverError::Unexpected(format!(
                        "server reported new timeline {next_tli} starting at {next_start}, after timeline {} ended at {received}",
                        start.timeline
                    ))
                    .into());
                }
                // Past the switch point, the archive may hold WAL of the
                // old timeline that the new one does not contain: sent on
                // this stream (a cascading standby promoted after it passed
                // on the beginning of a record its upstream never finished),
                // or left in the file by an earlier session (the old primary
                // sent more than this server, a standby that was behind,
                // ever had). That tail is set aside, never written over.
                let seg = server.segment_size;
                let scan = off_runtime(archive, move |a| a.scan(seg))
                    .await?
                    .map_err(ReceiverError::Archive)?;
                let in_archive = archive_wal_end_on(archive, &scan, start.timeline, seg)
                    .await?
                    .map_or(Lsn::INVALID, |e| e.end);
                let end = received.max(in_archive);
                if end > next_start {
                    let tail = DivergentTail {
                        timeline: start.timeline,
                        switchpoint: next_start,
                        end,
                        next: next_tli,
                    };
                    let resume = StartPoint {
                        lsn: next_start.segment_start(seg),
                        timeline: next_tli,
                    };
                    set_aside(opts, archive, scan, tail, Some(resume), seg).await?;
                }
                // WAL of the old timeline past the switch point is not the
                // new timeline's: never reported again on it.
                feedback.timeline_switched(next_start);
                tracing::info!(
                    "switched to timeline {next_tli} at {next_start} (timeline {} ended)",
                    start.timeline
                );
                start = StartPoint {
                    lsn: next_start.segment_start(server.segment_size),
                    timeline: next_tli,
                };
                // The new timeline's first segment is a new file.
                from_archive = false;
            }
        }
    }
}

/// How the CopyBoth phase of one START_REPLICATION ended (successfully).
enum CopyEnd {
    Stopped,
    Endpos,
    TimelineEnded {
        next_tli: TimeLineId,
        next_start: Lsn,
        received: Lsn,
    },
}

/// Why the receive loop stopped.
enum LoopEnd {
    Signal,
    Endpos,
    /// The server sent CopyDone: the timeline ended.
    ServerCopyDone,
    /// The server sent CommandComplete without CopyDone (it is shutting down).
    ServerClosed,
}

/// A batch is cut after this many bytes of WAL even when more is already
/// readable, so that a continuous stream (catch-up) is still fsynced,
/// acknowledged and checked for timers and signals regularly.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// In a long batch, the clock is read once every this many messages.
const CLOCK_EVERY: u32 = 16;

/// What one batch of messages asked for.
#[derive(Default)]
struct Batch {
    wal_bytes: usize,
    reply_requested: bool,
}

/// The CopyBoth phase of one START_REPLICATION.
struct Stream<'a> {
    conn: &'a mut Connection,
    opts: &'a StreamOptions,
    sink: WalSink,
    feedback: &'a mut Feedback,
    streamed: &'a mut bool,
    /// Measures `walrcv_flush_ack_latency_seconds`.
    acks: AckClock,
}

impl Stream<'_> {
    async fn run(mut self, shutdown: &mut watch::Receiver<bool>) -> Result<CopyEnd, ReceiverError> {
        let result = self.receive_loop(shutdown).await;
        crate::metrics::global().stream_ended();
        let received = self.sink.position();
        let Stream {
            conn,
            sink,
            feedback,
            ..
        } = self;
        let end = close_stream(conn, sink, feedback, result).await?;
        match end {
            LoopEnd::Signal | LoopEnd::Endpos => {
                conn.send_copy_done().await?;
                drain_after_copy_done(conn).await;
                Ok(if matches!(end, LoopEnd::Signal) {
                    CopyEnd::Stopped
                } else {
                    CopyEnd::Endpos
                })
            }
            LoopEnd::ServerCopyDone => {
                conn.send_copy_done().await?;
                let Some(result) =
                    unless_stopped(shutdown, service::pinging(read_until_ready(conn))).await
                else {
                    return Ok(CopyEnd::Stopped);
                };
                let (next_tli, next_start) = replication::parse_next_timeline(&result?)?;
                Ok(CopyEnd::TimelineEnded {
                    next_tli,
                    next_start,
                    received,
                })
            }
            LoopEnd::ServerClosed => Err(ReceiverError::StreamEnded),
        }
    }

    /// Waits for the network, a timer or a signal; takes each batch of
    /// messages that arrived together; makes it durable; reports.
    async fn receive_loop(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<LoopEnd, ReceiverError> {
        let first = self.feedback.stream_started(now(), self.sink.positions());
        send_status(self.conn, first).await?;
        // Both long-lived, so that waiting for the next message costs no
        // timer registration nor signal subscription per commit. The policy's
        // deadlines only move later, so the armed timer fires early at worst
        // (then on_timer does nothing) and is re-armed.
        let mut stop = std::pin::pin!(stop_requested(shutdown));
        let mut timer = std::pin::pin!(tokio::time::sleep_until(self.deadline()));
        loop {
            let msg = tokio::select! {
                biased;
                () = &mut stop => return Ok(LoopEnd::Signal),
                msg = self.conn.read_message() => msg?,
                () = &mut timer => {
                    self.on_timer().await?;
                    timer.as_mut().reset(self.deadline());
                    continue;
                }
            };
            if let Some(end) = self.batch(msg).await? {
                return Ok(end);
            }
            // Timers are checked after every batch: a continuous stream never
            // starves them.
            self.on_timer().await?;
            if self.deadline() < timer.deadline() {
                timer.as_mut().reset(self.deadline());
            }
        }
    }

    /// The policy's next deadline, or the watchdog's when sooner (an idle
    /// stream still pings it).
    fn deadline(&self) -> tokio::time::Instant {
        let policy = self.feedback.next_deadline();
        let next = service::watchdog_deadline().map_or(policy, |w| w.min(policy));
        tokio::time::Instant::from_std(next)
    }

    /// Handles `first` and every message readable without waiting (up to
    /// [`MAX_BATCH_BYTES`] of WAL, or until a timer is due), then fsyncs once
    /// and reports: flush first, then answer.
    async fn batch(&mut self, first: BackendMessage) -> Result<Option<LoopEnd>, ReceiverError> {
        let arrived = now();
        let mut batch = Batch::default();
        let mut next = Some(first);
        let mut end = None;
        let mut handled = 0u32;
        while let Some(msg) = next.take() {
            end = self.handle(msg, &mut batch, arrived).await?;
            handled += 1;
            if end.is_some() || batch.wal_bytes >= MAX_BATCH_BYTES {
                break;
            }
            // A stream of small messages that never drains must not hold back
            // the timers: the clock is read every few messages.
            if handled % CLOCK_EVERY == 0 && self.timer_due_after_receiving() {
                break;
            }
            next = self.conn.try_read_message()?;
        }
        let syncing = now();
        self.feedback.message_received(syncing);
        self.sink.sync().map_err(ReceiverError::Writer)?;
        // A long fdatasync is walrcv's own time, not the server's silence.
        self.feedback.worked(syncing, now());
        let positions = self.sink.positions();
        if let Some(status) = self
            .feedback
            .after_sync(now(), positions, batch.reply_requested)
        {
            self.send(status).await?;
        }
        Ok(end)
    }

    /// Records that messages were received, and whether a timer is due.
    fn timer_due_after_receiving(&mut self) -> bool {
        let at = now();
        self.feedback.message_received(at);
        at >= self.feedback.next_deadline()
    }

    /// One message of the stream.
    async fn handle(
        &mut self,
        msg: BackendMessage,
        batch: &mut Batch,
        arrived: std::time::Instant,
    ) -> Result<Option<LoopEnd>, ReceiverError> {
        let payload = match msg {
            BackendMessage::CopyData(payload) => payload,
            BackendMessage::CopyDone => return Ok(Some(LoopEnd::ServerCopyDone)),
            BackendMessage::CommandComplete { .. } => return Ok(Some(LoopEnd::ServerClosed)),
            BackendMessage::Error(message) => {
                return Err(PgError::server(self.conn.target().to_string(), message).into())
            }
            other => return Err(ReceiverError::Unexpected(other.summary())),
        };
        match ReplicationMessage::parse(payload)? {
            ReplicationMessage::XLogData {
                data_start,
                wal_end,
                data,
                ..
            } => {
                self.sink.server_has(wal_end);
                let data_end = Lsn(data_start.0.saturating_add(data.len() as u64));
                self.acks.wal_arrived(arrived, data_end);
                // Before the verifier moves: a scrape never sees verified
                // past received.
                crate::metrics::global().wal_received(data_end, data.len() as u64);
                self.wal(data_start, &data).await?;
                batch.wal_bytes += data.len();
                // Stop once the WAL received reaches endpos. (pg_receivewal
                // waits for a message ending strictly past it, which on an
                // idle server may never come.)
                if self.opts.endpos.is_some_and(|e| e <= self.sink.position()) {
                    return Ok(Some(LoopEnd::Endpos));
                }
            }
            ReplicationMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.sink.server_has(wal_end);
                batch.reply_requested |= reply_requested;
            }
        }
        Ok(None)
    }

    /// Verifies and writes one XLogData message. A segment it fills is
    /// fdatasynced and reported (flush then stops one byte short of its end,
    /// see [`WalSink::positions`]), then renamed and reported again; a
    /// segment written direct is reported only once renamed.
    async fn wal(&mut self, start: Lsn, data: &[u8]) -> Result<(), ReceiverError> {
        if start != self.sink.position() {
            return Err(ReceiverError::Unexpected(format!(
                "got WAL data at {start}, expected {}",
                self.sink.position()
            )));
        }
        let mut at = start;
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.sink.write(at, rest).map_err(ReceiverError::Writer)?;
            *self.streamed = true;
            at = Lsn(at.0 + n as u64);
            rest = &rest[n..];
            if self.sink.has_filled_segment() {
                // Its WAL is fdatasynced: report before the rename (a
                // segment written direct becomes durable with the rename).
                self.report_progress().await?;
                self.sink.complete_filled().map_err(ReceiverError::Writer)?;
                self.report_progress().await?;
            }
        }
        Ok(())
    }

    /// A status update if the flush position advanced.
    async fn report_progress(&mut self) -> Result<(), ReceiverError> {
        let positions = self.sink.positions();
        match self.feedback.after_sync(now(), positions, false) {
            Some(status) => self.send(status).await,
            None => Ok(()),
        }
    }

    /// Sends a status update, and measures the acknowledge latency of the
    /// WAL its flush position covers.
    async fn send(&mut self, status: Status) -> Result<(), ReceiverError> {
        send_status(self.conn, status).await?;
        if let Some(latency) = self.acks.status_sent(now(), status.flush) {
            crate::metrics::global().flush_acknowledged(latency);
        }
        Ok(())
    }

    async fn on_timer(&mut self) -> Result<(), ReceiverError> {
        // Here, not in a task of its own: a stuck loop stops pinging.
        service::watchdog_tick(now());
        // Part of a message counts: the connection is not dead while bytes flow.
        if self.conn.take_bytes_arrived() {
            self.feedback.message_received(now());
        }
        match self.feedback.on_timer(now(), self.sink.positions()) {
            TimerAction::Nothing => Ok(()),
            TimerAction::Send(status) => self.send(status).await,
            TimerAction::TimedOut => {
                Err(ReceiverError::Timeout(self.opts.receive_timeout.as_secs()))
            }
        }
    }
}

/// Whatever ended the receive loop, closes the sink first (the final fsync
/// happens unless an fsync failed, and the open segment stays `.partial`),
/// then tells the server how far the WAL is good (not at the end of a
/// timeline: see below).
async fn close_stream(
    conn: &mut Connection,
    sink: WalSink,
    feedback: &mut Feedback,
    result: Result<LoopEnd, ReceiverError>,
) -> Result<LoopEnd, ReceiverError> {
    match (result, sink.close()) {
        // The server ended its timeline: where it ends (the switch point)
        // comes only after CopyDone, and what this stream holds past it is
        // not the new timeline's, which the server now writes. No status
        // until the switch point is known (pg_receivewal sends none here
        // either); the next stream starts with one capped at it.
        (Ok(LoopEnd::ServerCopyDone), Ok(_)) => Ok(LoopEnd::ServerCopyDone),
        (Ok(end), Ok(positions)) => {
            send_status(conn, feedback.final_status(now(), positions)).await?;
            Ok(end)
        }
        (Ok(_), Err(w)) => Err(ReceiverError::Writer(w)),
        (Err(e), Ok(positions)) => {
            // Best effort, bounded: the connection may be what failed.
            let status = feedback.final_status(now(), positions);
            let goodbye = async {
                send_status(conn, status).await?;
                conn.send_copy_done().await.map_err(ReceiverError::from)
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
            Err(e)
        }
        (Err(e), Err(w)) => {
            // A failed fsync must reach the supervisor, which records it
            // (`archive::taint`): it is the error the session ends with.
            let closing = ReceiverError::Writer(w);
            let fsync_failed = matches!(
                closing.archive_error(),
                Some(ArchiveError::Fsync { .. } | ArchiveError::RenameNotDurable { .. })
            );
            if fsync_failed {
                tracing::error!("{e}");
                Err(closing)
            } else {
                tracing::error!("{closing}");
                Err(e)
            }
        }
    }
}

fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Sends one standby status update (apply is always 0: walrcv replays nothing).
async fn send_status(conn: &mut Connection, status: Status) -> Result<(), ReceiverError> {
    let update = StatusUpdate {
        write: status.write,
        flush: status.flush,
        apply: Lsn::INVALID,
        now: pg_now(),
        reply_requested: status.reply_requested,
    };
    let mut buf = BytesMut::with_capacity(34);
    update.encode(&mut buf);
    // Before sending: the server can never show a position that a scrape
    // made after it does not (a thread preempted right after the send would
    // otherwise lag behind the server).
    crate::metrics::global().status_sent(update.write, update.flush);
    conn.send_copy_data(&buf).await?;
    tracing::trace!("sent status write={} flush={}", update.write, update.flush);
    Ok(())
}

/// After our CopyDone: the server may still send queued WAL (ignored), then its
/// CopyDone, CommandCompletes and ReadyForQuery. Bounded in time.
async fn drain_after_copy_done(conn: &mut Connection) {
    let drain = async {
        loop {
            match conn.read_message().await {
                Ok(BackendMessage::ReadyForQuery) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
}

/// Reads the result set that follows the end of a timeline, up to
/// ReadyForQuery; each message waits at most the receive timeout.
async fn read_until_ready(conn: &mut Connection) -> Result<QueryResult, ReceiverError> {
    let mut result = QueryResult::default();
    loop {
        match conn
            .read_reply("the result set after the end of the timeline")
            .await?
        {
            BackendMessage::RowDescription { columns } => result.columns = columns,
            BackendMessage::DataRow { values } => result.rows.push(values),
            BackendMessage::CommandComplete { .. }
            | BackendMessage::CopyData(_)
            | BackendMessage::CopyDone => {}
            BackendMessage::Error(message) => {
                return Err(PgError::server(conn.target().to_string(), message).into())
            }
            BackendMessage::ReadyForQuery => return Ok(result),
            other => return Err(ReceiverError::Unexpected(other.summary())),
        }
    }
}
