//! One replication session: connect, identify, pick the start point, then
//! stream timeline after timeline until stopped, the stop point is reached or
//! the connection fails.
//!
//! Feedback policy: a status update goes out at stream start, every
//! `--status-interval`, at once when the server asks, and whenever the flushed
//! position advances (after each group fsync), so walrcv is always ready to be
//! a synchronous standby. `write` is what was received, `flush` what is durable
//! and verified, `apply` always 0.

use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::watch;
use tokio::time::Instant;

use super::writer::{Progress, WriterConfig, WriterHandle};
use super::{Outcome, ReceiverError, StreamOptions};
use crate::archive::{ArchiveDir, StartPoint};
use crate::lsn::{pg_now, Lsn, TimeLineId};
use crate::pgwire::{BackendMessage, Connection, PgError, QueryResult};
use crate::replication::{self, ReplicationMessage, StartReply, StatusUpdate};
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
    match Connection::connect(&opts.conn, true).await {
        Err(PgError::NoPassword { target }) if opts.password_prompt && stdin_is_terminal() => {
            let pw = rpassword::prompt_password("Password: ")
                .map_err(|e| ReceiverError::Config(format!("could not read the password: {e}")))?;
            opts.conn.password = Some(pw);
            tracing::debug!("retrying {target} with the password given");
            Ok(Connection::connect(&opts.conn, true).await?)
        }
        other => Ok(other?),
    }
}

fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

async fn identify(conn: &mut Connection) -> Result<Server, ReceiverError> {
    let version_num =
        conn.server_version_num()
            .ok_or_else(|| ReceiverError::UnsupportedServer {
                found: "unknown (no server_version reported)".into(),
            })?;
    let major = version_num / 10000;
    if !(MIN_SERVER_MAJOR..=MAX_SERVER_MAJOR).contains(&major) {
        return Err(ReceiverError::UnsupportedServer {
            found: conn.parameter("server_version").unwrap_or("?").to_string(),
        });
    }
    let sys = replication::identify_system(conn).await?;
    if let Some(db) = sys.dbname {
        return Err(ReceiverError::DatabaseSpecific(db));
    }
    let segment_size = replication::wal_segment_size(conn).await?;
    let block_size = replication::wal_block_size(conn).await?;
    Ok(Server {
        version_num,
        system_id: sys.system_id,
        timeline: sys.timeline,
        xlogpos: sys.xlogpos,
        segment_size,
        block_size,
    })
}

/// Picks the start point: the archive first (pg_receivewal's rules), then the
/// slot's restart_lsn (15+), then the server's current position.
async fn start_point(
    opts: &StreamOptions,
    conn: &mut Connection,
    archive: &ArchiveDir,
    server: &Server,
) -> Result<StartPoint, ReceiverError> {
    let seg = server.segment_size;
    let scan = archive.scan(seg).map_err(ReceiverError::Archive)?;
    archive
        .check_identity(&scan, server.system_id, seg)
        .map_err(ReceiverError::Archive)?;
    if opts.sync {
        // What is already there is reported as flushed from the start: make sure
        // it is durable first (an earlier run may have used --no-sync, or crashed).
        archive
            .sync_existing(&scan)
            .map_err(ReceiverError::Archive)?;
    }
    if let Some(start) = scan.streaming_start(seg) {
        report_partial(&scan, start, server);
        return Ok(start);
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
                    return Ok(StartPoint {
                        lsn: lsn.segment_start(seg),
                        timeline: tli,
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
    Ok(StartPoint {
        lsn: server.xlogpos.segment_start(seg),
        timeline: server.timeline,
    })
}

/// Logs where the valid WAL in the `.partial` being resumed really ends: its
/// size says nothing (it is pre-padded), its records do.
fn report_partial(scan: &crate::archive::Scan, start: StartPoint, server: &Server) {
    let Some(file) = scan.segments.iter().rev().find(|f| {
        f.partial
            && f.timeline == start.timeline
            && f.segno == start.lsn.segment_number(server.segment_size)
    }) else {
        return;
    };
    if file.size == 0 {
        tracing::info!(
            "resuming at {} (timeline {}): empty \"{}\"",
            start.lsn,
            start.timeline,
            file.path.display()
        );
        return;
    }
    let config = VerifierConfig {
        segment_size: server.segment_size,
        block_size: server.block_size,
        system_id: Some(server.system_id),
        timeline: start.timeline,
        server_major: None,
    };
    match std::fs::read(&file.path) {
        Ok(bytes) => {
            let mut v = Verifier::at_segment_start(config, start.lsn);
            let _ = v.feed(&bytes);
            tracing::info!(
                "\"{}\" holds valid WAL up to {}; streaming again from {} (timeline {})",
                file.path.display(),
                v.verified_end(),
                start.lsn,
                start.timeline
            );
        }
        Err(e) => tracing::warn!("could not read \"{}\": {e}", file.path.display()),
    }
}

/// Runs one session. `streamed` is set once WAL has been received, so the
/// supervisor can reset its backoff.
pub async fn run_session(
    opts: &mut StreamOptions,
    archive: &ArchiveDir,
    shutdown: &mut watch::Receiver<bool>,
    streamed: &mut bool,
) -> Result<Outcome, ReceiverError> {
    let mut conn = connect(opts).await?;
    let server = identify(&mut conn).await?;
    let mut start = start_point(opts, &mut conn, archive, &server).await?;
    if start.timeline > server.timeline {
        return Err(ReceiverError::NeedsOperator {
            message: format!(
                "starting timeline {} is not present in the server (its timeline is {})",
                start.timeline, server.timeline
            ),
            hint: "the archive holds WAL of a newer timeline than this server's: is this the right server?".into(),
        });
    }
    loop {
        if start.timeline != 1 && !archive.has_history(start.timeline) {
            let (name, content) = replication::timeline_history(&mut conn, start.timeline).await?;
            archive
                .write_history(start.timeline, &name, &content, opts.sync)
                .map_err(ReceiverError::Archive)?;
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
        let reply = replication::start_replication(
            &mut conn,
            opts.slot.as_deref(),
            start.lsn,
            start.timeline,
        )
        .await?;
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
                let writer = WriterHandle::spawn(WriterConfig {
                    directory: archive.path().to_path_buf(),
                    timeline: start.timeline,
                    segment_size: server.segment_size,
                    sync: opts.sync,
                    start: start.lsn,
                    verifier: VerifierConfig {
                        segment_size: server.segment_size,
                        block_size: server.block_size,
                        system_id: Some(server.system_id),
                        timeline: start.timeline,
                        server_major: Some(server.version_num / 10000),
                    },
                })
                .map_err(ReceiverError::Writer)?;
                stream(&mut conn, opts, writer, start.lsn, shutdown, streamed).await?
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
                    )));
                }
                tracing::info!(
                    "switched to timeline {next_tli} at {next_start} (timeline {} ended)",
                    start.timeline
                );
                start = StartPoint {
                    lsn: next_start.segment_start(server.segment_size),
                    timeline: next_tli,
                };
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
    /// The writer stopped on an error.
    WriterFailed,
}

struct Feedback {
    received: Lsn,
    last_sent: Option<StatusUpdate>,
}

impl Feedback {
    async fn send(
        &mut self,
        conn: &mut Connection,
        progress: Progress,
        reply_requested: bool,
    ) -> Result<(), ReceiverError> {
        let update = StatusUpdate {
            write: self.received,
            flush: progress.flushed,
            apply: Lsn::INVALID,
            now: pg_now(),
            reply_requested,
        };
        let mut buf = BytesMut::with_capacity(34);
        update.encode(&mut buf);
        conn.send_copy_data(&buf).await?;
        tracing::trace!("sent status write={} flush={}", update.write, update.flush);
        self.last_sent = Some(update);
        Ok(())
    }
}

async fn stream(
    conn: &mut Connection,
    opts: &StreamOptions,
    mut writer: WriterHandle,
    start: Lsn,
    shutdown: &mut watch::Receiver<bool>,
    streamed: &mut bool,
) -> Result<CopyEnd, ReceiverError> {
    let mut feedback = Feedback {
        received: start,
        last_sent: None,
    };
    let mut progress_rx = writer.progress.clone();
    feedback.send(conn, *progress_rx.borrow(), false).await?;

    let far = Duration::from_secs(86400 * 365);
    let interval = opts.status_interval;
    let mut next_status = Instant::now() + interval.unwrap_or(far);
    let mut last_receive = Instant::now();
    let mut pinged = false;
    let result: Result<LoopEnd, ReceiverError> = loop {
        let ping_at = last_receive + opts.receive_timeout / 2;
        let dead_at = last_receive + opts.receive_timeout;
        let timer = if pinged { dead_at } else { ping_at }.min(next_status);
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    break Ok(LoopEnd::Signal);
                }
            }
            changed = progress_rx.changed() => {
                let p = *progress_rx.borrow_and_update();
                if changed.is_err() || p.failed {
                    break Ok(LoopEnd::WriterFailed);
                }
                let advanced = feedback.last_sent.is_none_or(|s| p.flushed > s.flush);
                if advanced {
                    if let Err(e) = feedback.send(conn, p, false).await {
                        break Err(e);
                    }
                    if let Some(i) = interval {
                        next_status = Instant::now() + i;
                    }
                }
            }
            msg = conn.read_message() => {
                last_receive = Instant::now();
                pinged = false;
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => break Err(e.into()),
                };
                match msg {
                    BackendMessage::CopyData(payload) => match ReplicationMessage::parse(payload) {
                        Ok(ReplicationMessage::XLogData { data_start, data, .. }) => {
                            if data_start != feedback.received {
                                break Err(ReceiverError::Unexpected(format!(
                                    "got WAL data at {data_start}, expected {}",
                                    feedback.received
                                )));
                            }
                            if data.is_empty() {
                                continue;
                            }
                            let end = Lsn(data_start.0 + data.len() as u64);
                            if !writer.send(data_start, data).await {
                                break Ok(LoopEnd::WriterFailed);
                            }
                            // The batch ends when no whole message is buffered:
                            // the writer then fsyncs once for all of it.
                            if !conn.has_buffered_message() && !writer.batch_end().await {
                                break Ok(LoopEnd::WriterFailed);
                            }
                            *streamed = true;
                            feedback.received = end;
                            // Stop once the WAL received reaches endpos. (pg_receivewal
                            // waits for a message ending strictly past it, which on an
                            // idle server may never come.)
                            if opts.endpos.is_some_and(|e| e <= end) {
                                break Ok(LoopEnd::Endpos);
                            }
                        }
                        Ok(ReplicationMessage::Keepalive { reply_requested, .. }) => {
                            if reply_requested {
                                let p = *progress_rx.borrow();
                                if let Err(e) = feedback.send(conn, p, false).await {
                                    break Err(e);
                                }
                            }
                        }
                        Err(e) => break Err(e.into()),
                    },
                    BackendMessage::CopyDone => break Ok(LoopEnd::ServerCopyDone),
                    BackendMessage::CommandComplete { .. } => break Ok(LoopEnd::ServerClosed),
                    BackendMessage::Error(message) => {
                        break Err(PgError::Server { target: conn.target().to_string(), message: Box::new(message) }.into())
                    }
                    other => break Err(ReceiverError::Unexpected(format!("{other:?}"))),
                }
            }
            _ = tokio::time::sleep_until(timer) => {
                let now = Instant::now();
                if now >= dead_at {
                    break Err(ReceiverError::Timeout(opts.receive_timeout.as_secs()));
                }
                let p = *progress_rx.borrow();
                if !pinged && now >= ping_at {
                    // walreceiver-style ping: ask the server to answer at once.
                    pinged = true;
                    if let Err(e) = feedback.send(conn, p, true).await {
                        break Err(e);
                    }
                } else if now >= next_status {
                    if let Err(e) = feedback.send(conn, p, false).await {
                        break Err(e);
                    }
                }
                if now >= next_status {
                    next_status = now + interval.unwrap_or(far);
                }
            }
        }
    };

    // Whatever ended the loop, stop the writer first: the final fsync happens
    // and the open segment stays `.partial`.
    let (progress, writer_result) = writer.finish().await;
    let end = match result {
        Err(e) => {
            if let Err(w) = writer_result {
                tracing::error!("{w}");
            }
            return Err(e);
        }
        Ok(end) => end,
    };
    if let Err(w) = writer_result {
        // Tell the server how far the WAL is good, then leave.
        let _ = feedback.send(conn, progress, false).await;
        let _ = conn.send_copy_done().await;
        return Err(ReceiverError::Writer(w));
    }
    match end {
        LoopEnd::WriterFailed => Err(ReceiverError::Unexpected("the WAL writer stopped".into())),
        LoopEnd::Signal | LoopEnd::Endpos => {
            feedback.send(conn, progress, false).await?;
            conn.send_copy_done().await?;
            drain_after_copy_done(conn).await;
            Ok(if matches!(end, LoopEnd::Signal) {
                CopyEnd::Stopped
            } else {
                CopyEnd::Endpos
            })
        }
        LoopEnd::ServerCopyDone => {
            feedback.send(conn, progress, false).await?;
            conn.send_copy_done().await?;
            let result = read_until_ready(conn).await?;
            let (next_tli, next_start) = replication::parse_next_timeline(&result)?;
            Ok(CopyEnd::TimelineEnded {
                next_tli,
                next_start,
                received: feedback.received,
            })
        }
        LoopEnd::ServerClosed => Err(ReceiverError::StreamEnded),
    }
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

/// Reads the result set that follows the end of a timeline, up to ReadyForQuery.
async fn read_until_ready(conn: &mut Connection) -> Result<QueryResult, ReceiverError> {
    let mut result = QueryResult::default();
    loop {
        match conn.read_message().await? {
            BackendMessage::RowDescription { columns } => result.columns = columns,
            BackendMessage::DataRow { values } => result.rows.push(values),
            BackendMessage::CommandComplete { .. }
            | BackendMessage::CopyData(_)
            | BackendMessage::CopyDone => {}
            BackendMessage::Error(message) => {
                return Err(PgError::Server {
                    target: conn.target().to_string(),
                    message: Box::new(message),
                }
                .into())
            }
            BackendMessage::ReadyForQuery => return Ok(result),
            other => return Err(ReceiverError::Unexpected(format!("{other:?}"))),
        }
    }
}
