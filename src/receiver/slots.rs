//! `--create-slot` and `--drop-slot`: one connection, one command, exit.

use super::{ReceiverError, StreamOptions};
use crate::pgwire::Connection;
use crate::replication;

async fn connect(opts: &StreamOptions) -> Result<Connection, ReceiverError> {
    let mut conn = Connection::connect(&opts.conn, true, opts.receive_timeout).await?;
    // As pg_receivewal: the connection must be a physical replication one.
    let sys = replication::identify_system(&mut conn).await?;
    if let Some(db) = sys.dbname {
        return Err(ReceiverError::DatabaseSpecific(db));
    }
    Ok(conn)
}

/// Creates the physical slot named by `--slot`, reserving WAL.
pub async fn create(opts: &StreamOptions, if_not_exists: bool) -> Result<(), ReceiverError> {
    let slot = opts
        .slot
        .as_deref()
        .ok_or_else(|| ReceiverError::Config("--create-slot needs --slot".into()))?;
    let mut conn = connect(opts).await?;
    let version = match conn.server_version_num() {
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            return Err(ReceiverError::UnsupportedServer {
                found: format!("{:?} ({})", e.shown, e.why),
            })
        }
        None => 0,
    };
    tracing::info!("creating replication slot \"{slot}\"");
    let created =
        replication::create_physical_slot(&mut conn, slot, version, if_not_exists).await?;
    if !created {
        tracing::info!("replication slot \"{slot}\" exists already");
    }
    conn.close().await;
    Ok(())
}

/// Drops the slot named by `--slot`.
pub async fn drop(opts: &StreamOptions) -> Result<(), ReceiverError> {
    let slot = opts
        .slot
        .as_deref()
        .ok_or_else(|| ReceiverError::Config("--drop-slot needs --slot".into()))?;
    let mut conn = connect(opts).await?;
    tracing::info!("dropping replication slot \"{slot}\"");
    replication::drop_slot(&mut conn, slot).await?;
    conn.close().await;
    Ok(())
}
