//! The CopyData payloads of the replication stream, both directions.
//!
//! Server to walrcv: arbitrary bytes into [`ReplicationMessage::parse`] (XLogData
//! `'w'`, keepalive `'k'`): it never panics; what it accepts re-encodes to the same
//! bytes (the keepalive's reply flag normalised to 0/1), the WAL data is exactly the
//! bytes after the 25-byte header, and its end does not overflow the LSN space.
//!
//! walrcv to server: a [`StatusUpdate`] built from the same bytes encodes to the
//! 34-byte `'r'` layout, which decodes back to the same fields.
//!
//! Also the text replies decoded around the stream: `SHOW wal_segment_size`
//! ([`parse_segment_size`]) and LSNs (`X/X`), which round-trip through `Display`.
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use walrcv::lsn::{is_valid_segment_size, Lsn};
use walrcv::replication::messages::{KEEPALIVE_LEN, XLOG_DATA_HEADER};
use walrcv::replication::{parse_segment_size, ReplicationMessage, StatusUpdate};

/// The server's encoding of a message (`XLogSendPhysical`, `WalSndKeepalive`).
fn encode_server(msg: &ReplicationMessage) -> Vec<u8> {
    let mut out = BytesMut::new();
    match msg {
        ReplicationMessage::XLogData {
            data_start,
            wal_end,
            send_time,
            data,
        } => {
            out.put_u8(b'w');
            out.put_u64(data_start.0);
            out.put_u64(wal_end.0);
            out.put_i64(*send_time);
            out.put_slice(data);
        }
        ReplicationMessage::Keepalive {
            wal_end,
            send_time,
            reply_requested,
        } => {
            out.put_u8(b'k');
            out.put_u64(wal_end.0);
            out.put_i64(*send_time);
            out.put_u8(u8::from(*reply_requested));
        }
    }
    out.to_vec()
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn check_server_message(data: &[u8]) {
    let Ok(msg) = ReplicationMessage::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let mut expected = data.to_vec();
    match &msg {
        ReplicationMessage::XLogData {
            data_start,
            data: wal,
            ..
        } => {
            assert_eq!(&wal[..], &data[XLOG_DATA_HEADER..]);
            assert!(data_start.checked_add(wal.len() as u64).is_some());
        }
        ReplicationMessage::Keepalive { .. } => {
            assert_eq!(data.len(), KEEPALIVE_LEN);
            expected[KEEPALIVE_LEN - 1] = u8::from(expected[KEEPALIVE_LEN - 1] != 0);
        }
    }
    assert_eq!(encode_server(&msg), expected);
}

fn check_status_update(data: &[u8]) {
    if data.len() < 33 {
        return;
    }
    let status = StatusUpdate {
        write: Lsn(be_u64(&data[0..8])),
        flush: Lsn(be_u64(&data[8..16])),
        apply: Lsn(be_u64(&data[16..24])),
        now: be_u64(&data[24..32]) as i64,
        reply_requested: data[32] & 1 != 0,
    };
    let mut out = BytesMut::new();
    status.encode(&mut out);
    assert_eq!(out.len(), 34);
    assert_eq!(out[0], b'r');
    let decoded = StatusUpdate {
        write: Lsn(be_u64(&out[1..9])),
        flush: Lsn(be_u64(&out[9..17])),
        apply: Lsn(be_u64(&out[17..25])),
        now: be_u64(&out[25..33]) as i64,
        reply_requested: match out[33] {
            0 => false,
            1 => true,
            other => panic!("reply flag {other}"),
        },
    };
    assert_eq!(decoded, status);
}

fn check_texts(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(size) = parse_segment_size(text) {
        assert!(is_valid_segment_size(size), "{text:?} gave {size}");
    }
    if let Ok(lsn) = text.parse::<Lsn>() {
        assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn), "{text:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    check_server_message(data);
    check_status_update(data);
    check_texts(data);
});
