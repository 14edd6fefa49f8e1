//! Backend (walrcv → client) messages, encoded sans-IO into a `BytesMut`:
//! what a walsender sends (authentication requests, ParameterStatus, result
//! sets, errors in PostgreSQL's words, CopyBoth and the replication payloads).

use bytes::{BufMut, BytesMut};

use crate::lsn::Lsn;

/// Type OIDs used in result sets.
pub const TEXT_OID: u32 = 25;
pub const INT4_OID: u32 = 23;
pub const INT8_OID: u32 = 20;
pub const BYTEA_OID: u32 = 17;

/// Appends a message: tag, length, then what `body` writes.
fn message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    body(out);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    // A NUL inside would cut the field: never sent (names come from the archive or walrcv).
    out.put_slice(s.replace('\0', "").as_bytes());
    out.put_u8(0);
}

/// AuthenticationOk.
pub fn auth_ok(out: &mut BytesMut) {
    message(out, b'R', |b| b.put_u32(0));
}

/// AuthenticationSASL offering `mechanisms`.
pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    message(out, b'R', |b| {
        b.put_u32(10);
        for m in mechanisms {
            put_cstr(b, m);
        }
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue (11) or AuthenticationSASLFinal (12).
pub fn auth_sasl_data(out: &mut BytesMut, code: u32, data: &[u8]) {
    message(out, b'R', |b| {
        b.put_u32(code);
        b.put_slice(data);
    });
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    message(out, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// BackendKeyData: walrcv does not implement cancel, any key does.
pub fn backend_key_data(out: &mut BytesMut, pid: u32, key: u32) {
    message(out, b'K', |b| {
        b.put_u32(pid);
        b.put_u32(key);
    });
}

/// ReadyForQuery, idle.
pub fn ready_for_query(out: &mut BytesMut) {
    message(out, b'Z', |b| b.put_u8(b'I'));
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    message(out, b'C', |b| put_cstr(b, tag));
}

pub fn empty_query(out: &mut BytesMut) {
    message(out, b'I', |_| {});
}

/// RowDescription of text-format columns `(name, type oid)`.
pub fn row_description(out: &mut BytesMut, columns: &[(&str, u32)]) {
    message(out, b'T', |b| {
        b.put_u16(columns.len() as u16);
        for (name, oid) in columns {
            put_cstr(b, name);
            b.put_u32(0);
            b.put_u16(0);
            b.put_u32(*oid);
            b.put_i16(if *oid == INT8_OID {
                8
            } else if *oid == INT4_OID {
                4
            } else {
                -1
            });
            b.put_i32(-1);
            b.put_u16(0);
        }
    });
}

/// DataRow; `None` is NULL.
pub fn data_row(out: &mut BytesMut, values: &[Option<&[u8]>]) {
    message(out, b'D', |b| {
        b.put_u16(values.len() as u16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_u32(v.len() as u32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// Severity of an error: ERROR keeps the session, FATAL ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// ErrorResponse with severity, SQLSTATE and message (and a hint when given).
pub fn error(out: &mut BytesMut, severity: Severity, code: &str, text: &str, hint: Option<&str>) {
    let sev = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    message(out, b'E', |b| {
        for (field, value) in [(b'S', sev), (b'V', sev), (b'C', code), (b'M', text)] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        if let Some(hint) = hint {
            b.put_u8(b'H');
            put_cstr(b, hint);
        }
        b.put_u8(0);
    });
}

/// CopyBothResponse, text format, no columns.
pub fn copy_both(out: &mut BytesMut) {
    message(out, b'W', |b| {
        b.put_u8(0);
        b.put_u16(0);
    });
}

pub fn copy_done(out: &mut BytesMut) {
    message(out, b'c', |_| {});
}

/// CopyData holding XLogData `'w'` for `data` starting at `start`.
pub fn xlog_data(out: &mut BytesMut, start: Lsn, wal_end: Lsn, now: i64, data: &[u8]) {
    message(out, b'd', |b| {
        b.put_u8(b'w');
        b.put_u64(start.0);
        b.put_u64(wal_end.0);
        b.put_i64(now);
        b.put_slice(data);
    });
}

/// CopyData holding a primary keepalive `'k'`.
pub fn keepalive(out: &mut BytesMut, wal_end: Lsn, now: i64, reply_requested: bool) {
    message(out, b'd', |b| {
        b.put_u8(b'k');
        b.put_u64(wal_end.0);
        b.put_i64(now);
        b.put_u8(u8::from(reply_requested));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgwire::backend::{parse, BackendMessage};
    use crate::replication::ReplicationMessage;

    /// What walrcv encodes, walrcv's own client parser reads back.
    #[test]
    fn round_trip_through_the_client_parser() {
        let mut out = BytesMut::new();
        row_description(&mut out, &[("systemid", TEXT_OID), ("timeline", INT4_OID)]);
        data_row(&mut out, &[Some(b"42"), None]);
        command_complete(&mut out, "IDENTIFY_SYSTEM");
        error(&mut out, Severity::Error, "58P01", "gone", Some("look"));
        xlog_data(&mut out, Lsn(0x100), Lsn(0x200), 5, b"abc");
        keepalive(&mut out, Lsn(0x200), 6, true);
        ready_for_query(&mut out);
        let mut msgs = Vec::new();
        while let Some(m) = parse(&mut out).unwrap() {
            msgs.push(m);
        }
        assert_eq!(msgs.len(), 7);
        assert!(
            matches!(&msgs[3], BackendMessage::Error(e) if e.code == "58P01" && e.message == "gone")
        );
        let BackendMessage::CopyData(d) = &msgs[4] else {
            panic!("{:?}", msgs[4])
        };
        assert_eq!(
            ReplicationMessage::parse(d.clone()).unwrap(),
            ReplicationMessage::XLogData {
                data_start: Lsn(0x100),
                wal_end: Lsn(0x200),
                send_time: 5,
                data: bytes::Bytes::from_static(b"abc"),
            }
        );
        let BackendMessage::CopyData(k) = &msgs[5] else {
            panic!()
        };
        assert!(matches!(
            ReplicationMessage::parse(k.clone()).unwrap(),
            ReplicationMessage::Keepalive {
                reply_requested: true,
                ..
            }
        ));
    }
}
