//! Replication commands (IDENTIFY_SYSTEM, SHOW, TIMELINE_HISTORY,
//! READ_REPLICATION_SLOT, CREATE/DROP_REPLICATION_SLOT, START_REPLICATION) over
//! a [`Connection`], and the CopyBoth payloads in [`messages`].
//!
//! Command texts are built by pure functions so they are unit-tested; replies
//! are parsed leniently where PostgreSQL versions differ (the timeline column is
//! int4 up to 15 and int8 from 16, LSNs may or may not be zero-padded).

pub mod messages;

use crate::lsn::{is_valid_segment_size, Lsn, TimeLineId};
use crate::pgwire::connection::CopyStart;
use crate::pgwire::{Connection, PgError, QueryResult};

pub use messages::{ReplicationMessage, StatusUpdate, StreamError};

/// Errors of a replication command.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("unexpected reply to {command}: {what}")]
    BadReply { command: &'static str, what: String },
    #[error("invalid replication slot name {0:?}: use only lower-case letters, digits and underscores (at most 63 characters)")]
    BadSlotName(String),
}

fn bad(command: &'static str, what: impl Into<String>) -> ReplicationError {
    ReplicationError::BadReply {
        command,
        what: what.into(),
    }
}

/// IDENTIFY_SYSTEM's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_id: u64,
    pub timeline: TimeLineId,
    /// The server's current flush position.
    pub xlogpos: Lsn,
    /// Non-NULL only on a database-specific (logical) connection.
    pub dbname: Option<String>,
}

/// READ_REPLICATION_SLOT's reply (all `None` for a slot that does not exist).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotInfo {
    pub slot_type: Option<String>,
    pub restart_lsn: Option<Lsn>,
    pub restart_tli: Option<TimeLineId>,
}

/// Slot names as PostgreSQL accepts them (`ReplicationSlotValidateName`).
pub fn validate_slot_name(name: &str) -> Result<(), ReplicationError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ReplicationError::BadSlotName(name.to_string()))
    }
}

/// `START_REPLICATION [SLOT "s" ]X/X TIMELINE n`, as pg_receivewal sends it.
pub fn start_replication_command(slot: Option<&str>, start: Lsn, timeline: TimeLineId) -> String {
    match slot {
        Some(s) => format!("START_REPLICATION SLOT \"{s}\" {start} TIMELINE {timeline}"),
        None => format!("START_REPLICATION {start} TIMELINE {timeline}"),
    }
}

/// The physical slot creation command: new syntax on 15+, old syntax before.
/// walrcv reserves WAL at creation so the slot protects WAL from that moment.
pub fn create_slot_command(slot: &str, server_version_num: u32) -> String {
    if server_version_num >= 150000 {
        format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL (RESERVE_WAL)")
    } else {
        format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL RESERVE_WAL")
    }
}

/// Parses `SHOW wal_segment_size` output (`16MB`, `1GB`, ...), requiring a
/// power of two between 1 MB and 1 GB.
pub fn parse_segment_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = text[..digits].parse().ok()?;
    let mult = match text[digits..].trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    let size = n.checked_mul(mult)?;
    is_valid_segment_size(size).then_some(size)
}

fn parse_lsn(command: &'static str, text: Option<String>) -> Result<Lsn, ReplicationError> {
    let text = text.ok_or_else(|| bad(command, "missing LSN"))?;
    text.parse()
        .map_err(|_| bad(command, format!("invalid LSN {text:?}")))
}

fn parse_tli(command: &'static str, text: Option<String>) -> Result<TimeLineId, ReplicationError> {
    let text = text.ok_or_else(|| bad(command, "missing timeline"))?;
    text.parse::<TimeLineId>()
        .ok()
        .filter(|&t| t > 0)
        .ok_or_else(|| bad(command, format!("invalid timeline {text:?}")))
}

fn one_row(
    command: &'static str,
    r: &QueryResult,
    min_cols: usize,
) -> Result<(), ReplicationError> {
    if r.rows.len() != 1 || r.rows[0].len() < min_cols {
        return Err(bad(
            command,
            format!(
                "got {} rows and {} columns, expected 1 row and at least {min_cols} columns",
                r.rows.len(),
                r.rows.first().map_or(0, Vec::len)
            ),
        ));
    }
    Ok(())
}

pub async fn identify_system(conn: &mut Connection) -> Result<SystemInfo, ReplicationError> {
    const C: &str = "IDENTIFY_SYSTEM";
    let r = conn.simple_query(C).await?;
    one_row(C, &r, 4)?;
    let sysid = r.text(0, 0).ok_or_else(|| bad(C, "NULL systemid"))?;
    Ok(SystemInfo {
        system_id: sysid
            .parse()
            .map_err(|_| bad(C, format!("invalid systemid {sysid:?}")))?,
        timeline: parse_tli(C, r.text(0, 1))?,
        xlogpos: parse_lsn(C, r.text(0, 2))?,
        dbname: r.text(0, 3),
    })
}

/// `SHOW name` (replication connections accept it from PG 10 on).
pub async fn show(conn: &mut Connection, name: &'static str) -> Result<String, ReplicationError> {
    let r = conn.simple_query(&format!("SHOW {name}")).await?;
    one_row("SHOW", &r, 1)?;
    r.text(0, 0)
        .ok_or_else(|| bad("SHOW", format!("NULL value for {name}")))
}

pub async fn wal_segment_size(conn: &mut Connection) -> Result<u64, ReplicationError> {
    let v = show(conn, "wal_segment_size").await?;
    parse_segment_size(&v).ok_or_else(|| {
        bad(
            "SHOW wal_segment_size",
            format!("{v:?} is not a power of two between 1 MB and 1 GB"),
        )
    })
}

pub async fn wal_block_size(conn: &mut Connection) -> Result<u32, ReplicationError> {
    let v = show(conn, "wal_block_size").await?;
    v.trim()
        .parse::<u32>()
        .ok()
        .filter(|b| crate::lsn::is_valid_block_size(u64::from(*b)))
        .ok_or_else(|| bad("SHOW wal_block_size", format!("invalid block size {v:?}")))
}

/// `SHOW data_directory_mode`: the server's data directory permissions, an
/// octal number such as `0700` or `0750` (what pg_receivewal's
/// `RetrieveDataDirCreatePerm` reads to choose its file mode).
pub async fn data_directory_mode(conn: &mut Connection) -> Result<u32, ReplicationError> {
    let v = show(conn, "data_directory_mode").await?;
    parse_octal_mode(&v)
        .ok_or_else(|| bad("SHOW data_directory_mode", format!("invalid mode {v:?}")))
}

/// An octal permission value (`0750`), at most 0o7777.
fn parse_octal_mode(v: &str) -> Option<u32> {
    u32::from_str_radix(v.trim(), 8)
        .ok()
        .filter(|&m| m <= 0o7777)
}

/// TIMELINE_HISTORY: the file name the server gives and the file's raw bytes.
pub async fn timeline_history(
    conn: &mut Connection,
    timeline: TimeLineId,
) -> Result<(String, Vec<u8>), ReplicationError> {
    const C: &str = "TIMELINE_HISTORY";
    let r = conn
        .simple_query(&format!("TIMELINE_HISTORY {timeline}"))
        .await?;
    one_row(C, &r, 2)?;
    let name = r.text(0, 0).ok_or_else(|| bad(C, "NULL file name"))?;
    let content = r.rows[0][1]
        .as_ref()
        .ok_or_else(|| bad(C, "NULL content"))?
        .to_vec();
    Ok((name, content))
}

/// READ_REPLICATION_SLOT (servers 15+).
pub async fn read_replication_slot(
    conn: &mut Connection,
    slot: &str,
) -> Result<SlotInfo, ReplicationError> {
    const C: &str = "READ_REPLICATION_SLOT";
    validate_slot_name(slot)?;
    let r = conn
        .simple_query(&format!("READ_REPLICATION_SLOT {slot}"))
        .await?;
    one_row(C, &r, 3)?;
    Ok(SlotInfo {
        slot_type: r.text(0, 0),
        restart_lsn: match r.text(0, 1) {
            Some(t) => Some(parse_lsn(C, Some(t))?),
            None => None,
        },
        restart_tli: match r.text(0, 2) {
            Some(t) => Some(parse_tli(C, Some(t))?),
            None => None,
        },
    })
}

/// Creates a physical slot that reserves WAL. With `if_not_exists`, an existing
/// slot (SQLSTATE 42710) counts as success. Returns whether it was created.
pub async fn create_physical_slot(
    conn: &mut Connection,
    slot: &str,
    server_version_num: u32,
    if_not_exists: bool,
) -> Result<bool, ReplicationError> {
    validate_slot_name(slot)?;
    match conn
        .simple_query(&create_slot_command(slot, server_version_num))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if if_not_exists && e.sqlstate() == Some("42710") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub async fn drop_slot(conn: &mut Connection, slot: &str) -> Result<(), ReplicationError> {
    validate_slot_name(slot)?;
    conn.simple_query(&format!("DROP_REPLICATION_SLOT \"{slot}\""))
        .await?;
    Ok(())
}

/// What START_REPLICATION led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartReply {
    /// Streaming in CopyBoth.
    Streaming,
    /// The requested point is the exact end of a historic timeline: the server
    /// skipped copy mode and gave the next timeline at once.
    TimelineEnded {
        next_tli: TimeLineId,
        next_start: Lsn,
    },
}

/// Parses the `next_tli, next_tli_startpos` result set sent at the end of a
/// historic timeline.
pub fn parse_next_timeline(r: &QueryResult) -> Result<(TimeLineId, Lsn), ReplicationError> {
    const C: &str = "end of timeline";
    one_row(C, r, 2)?;
    Ok((parse_tli(C, r.text(0, 0))?, parse_lsn(C, r.text(0, 1))?))
}

pub async fn start_replication(
    conn: &mut Connection,
    slot: Option<&str>,
    start: Lsn,
    timeline: TimeLineId,
) -> Result<StartReply, ReplicationError> {
    if let Some(s) = slot {
        validate_slot_name(s)?;
    }
    match conn
        .start_copy(&start_replication_command(slot, start, timeline))
        .await?
    {
        CopyStart::CopyBoth => Ok(StartReply::Streaming),
        CopyStart::ResultSet(r) => {
            let (next_tli, next_start) = parse_next_timeline(&r)?;
            Ok(StartReply::TimelineEnded {
                next_tli,
                next_start,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_directory_mode_is_octal() {
        assert_eq!(parse_octal_mode("0700"), Some(0o700));
        assert_eq!(parse_octal_mode("0750\n"), Some(0o750));
        assert_eq!(parse_octal_mode("rwx"), None);
        assert_eq!(parse_octal_mode("0789"), None);
        assert_eq!(parse_octal_mode("77777"), None);
    }

    #[test]
    fn commands() {
        assert_eq!(
            start_replication_command(Some("barman"), Lsn(0x300_0000), 1),
            "START_REPLICATION SLOT \"barman\" 0/3000000 TIMELINE 1"
        );
        assert_eq!(
            start_replication_command(None, Lsn(0x1_0000_0000), 2),
            "START_REPLICATION 1/0 TIMELINE 2"
        );
        assert_eq!(
            create_slot_command("s", 150002),
            "CREATE_REPLICATION_SLOT \"s\" PHYSICAL (RESERVE_WAL)"
        );
        assert_eq!(
            create_slot_command("s", 140010),
            "CREATE_REPLICATION_SLOT \"s\" PHYSICAL RESERVE_WAL"
        );
    }

    #[test]
    fn slot_names() {
        assert!(validate_slot_name("barman_1").is_ok());
        for bad in ["", "Barman", "a-b", "a\"b", "a b", &"x".repeat(64)] {
            assert!(validate_slot_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn segment_sizes() {
        assert_eq!(parse_segment_size("16MB"), Some(16 << 20));
        assert_eq!(parse_segment_size("1GB"), Some(1 << 30));
        assert_eq!(parse_segment_size("1MB"), Some(1 << 20));
        assert_eq!(parse_segment_size("3MB"), None);
        assert_eq!(parse_segment_size("2GB"), None);
        assert_eq!(parse_segment_size("512kB"), None);
        assert_eq!(parse_segment_size("MB"), None);
        assert_eq!(parse_segment_size("99999999999999999999GB"), None);
    }

    #[test]
    fn next_timeline_result() {
        let r = QueryResult {
            columns: vec!["next_tli".into(), "next_tli_startpos".into()],
            rows: vec![vec![Some("2".into()), Some("0/6003278".into())]],
        };
        assert_eq!(parse_next_timeline(&r).unwrap(), (2, Lsn(0x600_3278)));
        let empty = QueryResult::default();
        assert!(parse_next_timeline(&empty).is_err());
    }
}
