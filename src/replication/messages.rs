//! CopyData payloads of the physical replication stream (sans-IO):
//! XLogData `'w'` and keepalive `'k'` from the server, standby status update
//! `'r'` to it. Integers are big-endian; timestamps are µs since 2000-01-01.

use bytes::{BufMut, Bytes, BytesMut};

use crate::lsn::Lsn;

/// Header size of an XLogData message, tag included.
pub const XLOG_DATA_HEADER: usize = 25;
/// Size of a primary keepalive, tag included.
pub const KEEPALIVE_LEN: usize = 18;

/// A message received inside CopyBoth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    XLogData {
        /// LSN of the first byte of `data`.
        data_start: Lsn,
        /// The server's send-request pointer when sending (not this message's end).
        wal_end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    Keepalive {
        /// How far the walsender has sent.
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}

/// A malformed replication payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("empty CopyData message in the replication stream")]
    Empty,
    #[error("unrecognized streaming header: '{0}'")]
    UnknownTag(char),
    #[error("streaming header '{tag}' too short: {len} bytes")]
    Short { tag: char, len: usize },
    #[error("XLogData at {start} with {len} bytes overflows the LSN space")]
    Overflow { start: Lsn, len: usize },
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl ReplicationMessage {
    /// Decodes a CopyData payload. The WAL bytes stay a slice of `payload`.
    pub fn parse(mut payload: Bytes) -> Result<ReplicationMessage, StreamError> {
        let tag = *payload.first().ok_or(StreamError::Empty)?;
        match tag {
            b'w' => {
                if payload.len() < XLOG_DATA_HEADER {
                    return Err(StreamError::Short {
                        tag: 'w',
                        len: payload.len(),
                    });
                }
                let data_start = Lsn(be_u64(&payload[1..9]));
                let wal_end = Lsn(be_u64(&payload[9..17]));
                let send_time = be_u64(&payload[17..25]) as i64;
                let data = payload.split_off(XLOG_DATA_HEADER);
                if data_start.checked_add(data.len() as u64).is_none() {
                    return Err(StreamError::Overflow {
                        start: data_start,
                        len: data.len(),
                    });
                }
                Ok(ReplicationMessage::XLogData {
                    data_start,
                    wal_end,
                    send_time,
                    data,
                })
            }
            b'k' => {
                // Exactly 18 bytes, as the walreceiver insists.
                if payload.len() != KEEPALIVE_LEN {
                    return Err(StreamError::Short {
                        tag: 'k',
                        len: payload.len(),
                    });
                }
                Ok(ReplicationMessage::Keepalive {
                    wal_end: Lsn(be_u64(&payload[1..9])),
                    send_time: be_u64(&payload[9..17]) as i64,
                    reply_requested: payload[17] != 0,
                })
            }
            other => Err(StreamError::UnknownTag(other as char)),
        }
    }
}

/// A standby status update `'r'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusUpdate {
    /// Everything received and written (not necessarily fsynced).
    pub write: Lsn,
    /// Durable and verified; `Lsn::INVALID` means "not reported".
    pub flush: Lsn,
    /// Always 0 for walrcv: it replays nothing.
    pub apply: Lsn,
    pub now: i64,
    pub reply_requested: bool,
}

impl StatusUpdate {
    /// Encodes the 34-byte payload (to be wrapped in CopyData).
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(34);
        out.put_u8(b'r');
        out.put_u64(self.write.0);
        out.put_u64(self.flush.0);
        out.put_u64(self.apply.0);
        out.put_i64(self.now);
        out.put_u8(u8::from(self.reply_requested));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xlogdata_and_keepalive() {
        let mut p = vec![b'w'];
        p.extend_from_slice(&0x300_0000u64.to_be_bytes());
        p.extend_from_slice(&0x300_1000u64.to_be_bytes());
        p.extend_from_slice(&7i64.to_be_bytes());
        p.extend_from_slice(b"WAL!");
        let m = ReplicationMessage::parse(Bytes::from(p)).unwrap();
        assert_eq!(
            m,
            ReplicationMessage::XLogData {
                data_start: Lsn(0x300_0000),
                wal_end: Lsn(0x300_1000),
                send_time: 7,
                data: Bytes::from_static(b"WAL!"),
            }
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&5u64.to_be_bytes());
        k.extend_from_slice(&6i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            ReplicationMessage::parse(Bytes::from(k)).unwrap(),
            ReplicationMessage::Keepalive {
                wal_end: Lsn(5),
                send_time: 6,
                reply_requested: true
            }
        );
    }

    #[test]
    fn malformed_payloads() {
        assert_eq!(
            ReplicationMessage::parse(Bytes::new()),
            Err(StreamError::Empty)
        );
        assert!(ReplicationMessage::parse(Bytes::from_static(b"w1234")).is_err());
        assert!(ReplicationMessage::parse(Bytes::from_static(b"k12345678901234567890")).is_err());
        assert_eq!(
            ReplicationMessage::parse(Bytes::from_static(b"x")),
            Err(StreamError::UnknownTag('x'))
        );
        let mut p = vec![b'w'];
        p.extend_from_slice(&u64::MAX.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
        p.push(1);
        assert!(matches!(
            ReplicationMessage::parse(Bytes::from(p)),
            Err(StreamError::Overflow { .. })
        ));
    }

    #[test]
    fn status_update_layout() {
        let mut b = BytesMut::new();
        StatusUpdate {
            write: Lsn(1),
            flush: Lsn(2),
            apply: Lsn(0),
            now: 3,
            reply_requested: false,
        }
        .encode(&mut b);
        assert_eq!(b.len(), 34);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[1..9], &1u64.to_be_bytes());
        assert_eq!(&b[9..17], &2u64.to_be_bytes());
        assert_eq!(&b[17..25], &0u64.to_be_bytes());
        assert_eq!(&b[25..33], &3i64.to_be_bytes());
        assert_eq!(b[33], 0);
    }
}
