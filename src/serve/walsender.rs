//! The walsender's answers, sans-IO: each replication command against a
//! [`Catalog`] (what the archive holds, read once per command by the IO
//! shell) gives the bytes to send, or a [`StreamPlan`] for
//! `START_REPLICATION`. Errors are worded as PostgreSQL words them, with
//! its SQLSTATEs, because clients log them and operators search for them.

use bytes::BytesMut;

use crate::lsn::{history_file_name, Lsn, TimeLineId};
use crate::wal::history::{timeline_range, HistoryEntry};

use super::command::{parse_command, Command, CommandError};
use super::reply::{self, Severity, INT4_OID, INT8_OID, TEXT_OID};

/// What the archive holds, as the walsender reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// From the WAL's long page headers.
    pub system_id: u64,
    /// PostgreSQL major version of the WAL (its page magic).
    pub major: u32,
    pub segment_size: u64,
    pub block_size: u32,
    /// The newest timeline held.
    pub timeline: TimeLineId,
    /// The end of the verified WAL on it (the served end).
    pub end: Lsn,
    /// The history of [`Catalog::timeline`], oldest ancestor first.
    pub history: Vec<HistoryEntry>,
}

/// What `START_REPLICATION` asks walrcv to stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPlan {
    pub slot: Option<String>,
    pub timeline: TimeLineId,
    pub start: Lsn,
    /// For a historic timeline: where it ends, and the timeline after it.
    pub switch: Option<(Lsn, TimeLineId)>,
}

/// The result of one query.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes (ReadyForQuery included) and wait for the next query.
    Reply(BytesMut),
    /// Send CopyBothResponse and stream (errors past it are the streamer's).
    Stream(StreamPlan),
}

/// SQLSTATEs used.
pub mod sqlstate {
    pub const SYNTAX_ERROR: &str = "42601";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const UNDEFINED_FILE: &str = "58P01";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
}

/// The `server_version` reported: the archive's major (clients compare it
/// with their own, e.g. pg_receivewal's version check).
pub fn server_version(major: u32) -> String {
    format!("{major}.0")
}

/// ParameterStatus values sent after authentication (what libpq and the
/// walreceiver read: `server_version`, `integer_datetimes`, encodings, ...).
pub fn parameter_statuses(out: &mut BytesMut, catalog_major: u32, user: &str, app: &str) {
    let version = server_version(catalog_major);
    let mut params = vec![
        ("application_name", app),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("IntervalStyle", "postgres"),
        ("is_superuser", "off"),
        ("server_encoding", "UTF8"),
        ("server_version", &version),
        ("session_authorization", user),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ];
    if catalog_major >= 14 {
        params.push(("in_hot_standby", "off"));
    }
    for (name, value) in params {
        reply::parameter_status(out, name, value);
    }
}

/// Answers one simple query.
pub fn answer(
    query: &str,
    catalog: &Catalog,
    history_file: impl Fn(TimeLineId) -> Option<Vec<u8>>,
) -> Outcome {
    let mut out = BytesMut::new();
    match parse_command(query) {
        Ok(Command::Empty) => reply::empty_query(&mut out),
        Ok(Command::IdentifySystem) => identify_system(&mut out, catalog),
        Ok(Command::Show(name)) => show(&mut out, catalog, &name),
        Ok(Command::TimelineHistory(tli)) => match history_file(tli) {
            Some(content) => timeline_history(&mut out, tli, &content),
            None => reply::error(
                &mut out,
                Severity::Error,
                sqlstate::UNDEFINED_FILE,
                &format!(
                    "could not open file \"pg_wal/{}\": No such file or directory",
                    history_file_name(tli)
                ),
                None,
            ),
        },
        Ok(Command::ReadReplicationSlot(_)) => {
            // walrcv keeps no slots: "no such slot" is a row of NULLs.
            reply::row_description(
                &mut out,
                &[("slot_type", TEXT_OID), ("restart_lsn", TEXT_OID), ("restart_tli", INT8_OID)],
            );
            reply::data_row(&mut out, &[None, None, None]);
            reply::command_complete(&mut out, "READ_REPLICATION_SLOT");
        }
        Ok(Command::StartPhysical {
            slot,
            start,
            timeline,
        }) => match plan_start(catalog, slot, start, timeline) {
            Ok(Some(plan)) => return Outcome::Stream(plan),
            Ok(None) => {
                // A historic timeline asked for at (or after) its end: no
                // CopyBoth, the switch straight away (walsender.c).
                let (switch, next) = historic_end(catalog, timeline.unwrap_or(catalog.timeline))
                    .unwrap_or((catalog.end, catalog.timeline));
                end_of_streaming(&mut out, catalog.major, Some((switch, next)));
                return Outcome::Reply(out);
            }
            Err(e) => reply::error(&mut out, Severity::Error, e.0, &e.1, None),
        },
        Ok(Command::Unsupported(what)) => reply::error(
            &mut out,
            Severity::Error,
            sqlstate::FEATURE_NOT_SUPPORTED,
            &format!("{what} is not supported by walrcv: it serves archived WAL to physical standbys only"),
            None,
        ),
        Err(e @ CommandError::Syntax(_)) => {
            reply::error(&mut out, Severity::Error, sqlstate::SYNTAX_ERROR, &e.to_string(), None)
        }
        Err(e @ CommandError::NotReplication(_)) => reply::error(
            &mut out,
            Severity::Error,
            sqlstate::FEATURE_NOT_SUPPORTED,
            &e.to_string(),
            None,
        ),
    }
    reply::ready_for_query(&mut out);
    Outcome::Reply(out)
}

fn identify_system(out: &mut BytesMut, c: &Catalog) {
    reply::row_description(
        out,
        &[
            ("systemid", TEXT_OID),
            ("timeline", INT4_OID),
            ("xlogpos", TEXT_OID),
            ("dbname", TEXT_OID),
        ],
    );
    let sysid = c.system_id.to_string();
    let tli = c.timeline.to_string();
    let pos = c.end.to_string();
    reply::data_row(
        out,
        &[
            Some(sysid.as_bytes()),
            Some(tli.as_bytes()),
            Some(pos.as_bytes()),
            None,
        ],
    );
    reply::command_complete(out, "IDENTIFY_SYSTEM");
}

/// `SHOW name`: the settings clients ask a walsender for.
pub fn show_value(c: &Catalog, name: &str) -> Option<String> {
    Some(match name {
        "wal_segment_size" => size_text(c.segment_size),
        "wal_block_size" => c.block_size.to_string(),
        "server_version" => server_version(c.major),
        "server_version_num" => (c.major * 10_000).to_string(),
        "integer_datetimes" => "on".into(),
        "data_directory_mode" => "0700".into(),
        "server_encoding" | "client_encoding" => "UTF8".into(),
        "timezone" => "UTC".into(),
        _ => return None,
    })
}

fn show(out: &mut BytesMut, c: &Catalog, name: &str) {
    match show_value(c, name) {
        Some(value) => {
            reply::row_description(out, &[(name, TEXT_OID)]);
            reply::data_row(out, &[Some(value.as_bytes())]);
            reply::command_complete(out, "SHOW");
        }
        None => reply::error(
            out,
            Severity::Error,
            sqlstate::UNDEFINED_OBJECT,
            &format!("unrecognized configuration parameter \"{name}\""),
            None,
        ),
    }
}

/// A size as PostgreSQL's SHOW prints a `GUC_UNIT_BYTE` setting: `16MB`, `1GB`.
fn size_text(bytes: u64) -> String {
    const GB: u64 = 1 << 30;
    const MB: u64 = 1 << 20;
    if bytes % GB == 0 {
        format!("{}GB", bytes / GB)
    } else if bytes % MB == 0 {
        format!("{}MB", bytes / MB)
    } else {
        format!("{bytes}B")
    }
}

fn timeline_history(out: &mut BytesMut, tli: TimeLineId, content: &[u8]) {
    let name = history_file_name(tli);
    reply::row_description(
        out,
        &[("filename", TEXT_OID), ("content", super::reply::BYTEA_OID)],
    );
    reply::data_row(out, &[Some(name.as_bytes()), Some(content)]);
    reply::command_complete(out, "TIMELINE_HISTORY");
}

/// Where historic timeline `tli` ends and which timeline follows it.
fn historic_end(c: &Catalog, tli: TimeLineId) -> Option<(Lsn, TimeLineId)> {
    switch_out_of(&c.history, c.timeline, tli)
}

/// Where timeline `tli` ends in the history `entries` of timeline `tip`,
/// and the timeline after it (`tliSwitchPoint` in timeline.c): `None` when
/// `tli` is `tip` or not in the history.
pub fn switch_out_of(
    entries: &[HistoryEntry],
    tip: TimeLineId,
    tli: TimeLineId,
) -> Option<(Lsn, TimeLineId)> {
    let pos = entries.iter().position(|e| e.parent == tli)?;
    let next = entries.get(pos + 1).map_or(tip, |e| e.parent);
    Some((entries[pos].switchpoint, next))
}

/// `START_REPLICATION`'s checks before CopyBoth (`StartReplication` in
/// walsender.c). `Ok(None)`: a historic timeline at or past its end.
fn plan_start(
    c: &Catalog,
    slot: Option<String>,
    start: Lsn,
    timeline: Option<TimeLineId>,
) -> Result<Option<StreamPlan>, (&'static str, String)> {
    let tli = timeline.unwrap_or(c.timeline);
    if tli > c.timeline || timeline_range(&c.history, c.timeline, tli).is_none() {
        return Err((
            sqlstate::INTERNAL_ERROR,
            format!("requested timeline {tli} is not in this server's history"),
        ));
    }
    let switch = if tli < c.timeline {
        historic_end(c, tli)
    } else {
        None
    };
    if let Some((switchpoint, _)) = switch {
        if switchpoint < start {
            return Err((
                sqlstate::INTERNAL_ERROR,
                format!(
                    "requested starting point {start} on timeline {tli} is not in this server's history; this server's history forked from timeline {tli} at {switchpoint}"
                ),
            ));
        }
        if start >= switchpoint {
            return Ok(None);
        }
    }
    Ok(Some(StreamPlan {
        slot,
        timeline: tli,
        start,
        switch,
    }))
}

/// What ends a START_REPLICATION after copy mode: the next timeline (when
/// historic), CommandComplete twice, ReadyForQuery.
pub fn end_of_streaming(out: &mut BytesMut, major: u32, switch: Option<(Lsn, TimeLineId)>) {
    if let Some((switchpoint, next)) = switch {
        reply::row_description(
            out,
            &[("next_tli", INT8_OID), ("next_tli_startpos", TEXT_OID)],
        );
        let next = next.to_string();
        let pos = switchpoint.to_string();
        reply::data_row(out, &[Some(next.as_bytes()), Some(pos.as_bytes())]);
    }
    reply::command_complete(out, "START_STREAMING");
    reply::command_complete(
        out,
        if major <= 13 {
            "SELECT"
        } else {
            "START_REPLICATION"
        },
    );
    reply::ready_for_query(out);
}

#[cfg(test)]
mod tests;
