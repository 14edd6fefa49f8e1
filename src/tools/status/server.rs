//! What `walrcv status` asks the server.
//!
//! - On a replication connection (the one `walrcv stream` uses, so the same
//!   `-d` works): IDENTIFY_SYSTEM (timeline and current WAL position), `SHOW
//!   wal_segment_size`, and READ_REPLICATION_SLOT on 15+ (the slot's
//!   `restart_lsn`).
//! - On a normal connection to `--query-database`, when `--slot` is given and the
//!   server lets the role in: `pg_replication_slots`' `wal_status`,
//!   `safe_wal_size`, `active` and, on 17+, `invalidation_reason`. A role limited
//!   to replication (pg_hba `replication` lines only) is refused there: that
//!   is a note in the output, not a failure, except before 15 where it is the
//!   only way to see the slot.

use std::time::Duration;

use serde::Serialize;

use crate::conninfo::ConnParams;
use crate::lsn::{Lsn, TimeLineId};
use crate::pgwire::{Connection, PgError};
use crate::replication::{self, ReplicationError};

use super::check::SlotFacts;

/// The server's side of the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerFacts {
    pub target: String,
    pub version: Option<String>,
    pub system_identifier: String,
    pub timeline: TimeLineId,
    /// IDENTIFY_SYSTEM's `xlogpos`: the primary's flush position (a standby's
    /// replay position).
    pub position: String,
    #[serde(skip)]
    pub position_lsn: Lsn,
    pub wal_segment_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("the connection is database-specific (dbname={0}): use a physical replication connection string")]
    DatabaseSpecific(String),
}

/// Queries the server over a replication connection, then the slot's details
/// over a normal one.
pub async fn query(
    params: &ConnParams,
    slot: Option<&str>,
    query_database: &str,
    timeout: Duration,
) -> Result<(ServerFacts, Option<SlotFacts>), ServerError> {
    if let Some(s) = slot {
        replication::validate_slot_name(s)?;
    }
    let mut conn = Connection::connect(params, true, timeout).await?;
    let sys = replication::identify_system(&mut conn).await?;
    if let Some(db) = sys.dbname {
        return Err(ServerError::DatabaseSpecific(db));
    }
    let wal_segment_size = replication::wal_segment_size(&mut conn).await?;
    let version_num = conn.server_version_num().and_then(Result::ok).unwrap_or(0);
    let facts = ServerFacts {
        target: conn.target().to_string(),
        version: conn.parameter("server_version").map(str::to_string),
        system_identifier: sys.system_id.to_string(),
        timeline: sys.timeline,
        position: sys.xlogpos.to_string(),
        position_lsn: sys.xlogpos,
        wal_segment_size,
    };
    let mut slot_facts = None;
    if let Some(name) = slot {
        let mut s = SlotFacts {
            name: name.to_string(),
            ..SlotFacts::default()
        };
        if version_num >= 150000 {
            let info = replication::read_replication_slot(&mut conn, name).await?;
            s.exists = Some(info.slot_type.is_some());
            s.restart_lsn = info.restart_lsn.map(|l| l.to_string());
        }
        slot_facts = Some(s);
    }
    conn.close().await;
    if let Some(s) = &mut slot_facts {
        if let Err(e) = slot_details(params, query_database, timeout, s).await {
            tracing::debug!("slot details unavailable: {e}");
            s.details_unavailable = Some(e.to_string());
        }
    }
    Ok((facts, slot_facts))
}

/// `pg_replication_slots` for `s.name` over a normal connection to `database`.
async fn slot_details(
    params: &ConnParams,
    database: &str,
    timeout: Duration,
    s: &mut SlotFacts,
) -> Result<(), PgError> {
    let mut normal = params.clone();
    normal.dbname = database.to_string();
    let mut conn = Connection::connect(&normal, false, timeout).await?;
    let version_num = conn.server_version_num().and_then(Result::ok).unwrap_or(0);
    let sql = slot_query(&s.name, version_num);
    let r = conn.simple_query(&sql).await;
    conn.close().await;
    let r = r?;
    if r.rows.is_empty() {
        s.exists = Some(false);
        return Ok(());
    }
    s.exists = Some(true);
    if s.restart_lsn.is_none() {
        s.restart_lsn = r.text(0, 0);
    }
    s.wal_status = r.text(0, 1);
    s.safe_wal_size = r.text(0, 2).and_then(|v| v.parse().ok());
    s.active = r.text(0, 3).map(|v| v == "t");
    s.invalidation_reason = r.text(0, 4);
    Ok(())
}

/// The query for one slot's state. `name` has passed
/// [`replication::validate_slot_name`] (lower-case letters, digits and `_`),
/// so it is safe inside quotes. `invalidation_reason` exists from 17 on.
pub fn slot_query(name: &str, server_version_num: u32) -> String {
    let reason = if server_version_num >= 170000 {
        "invalidation_reason"
    } else {
        "NULL"
    };
    format!(
        "SELECT restart_lsn, wal_status, safe_wal_size, active, {reason} \
         FROM pg_catalog.pg_replication_slots WHERE slot_name = '{name}'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_query_by_version() {
        let q16 = slot_query("walrcv", 160004);
        assert!(q16.contains(", NULL FROM"), "{q16}");
        assert!(q16.ends_with("slot_name = 'walrcv'"));
        let q17 = slot_query("walrcv", 170000);
        assert!(q17.contains("invalidation_reason FROM"), "{q17}");
    }
}
