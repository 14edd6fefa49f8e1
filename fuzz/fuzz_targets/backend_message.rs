//! Arbitrary bytes from a hostile server: the backend message parser never
//! panics, never consumes a partial message, and the replication payload
//! decoder never panics on any CopyData it yields.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use walrcv::pgwire::backend::{parse, BackendMessage};
use walrcv::replication::ReplicationMessage;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match parse(&mut buf) {
            Ok(Some(msg)) => {
                assert!(buf.len() < before, "a parsed message consumes bytes");
                if let BackendMessage::CopyData(payload) = msg {
                    let _ = ReplicationMessage::parse(payload);
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete message consumes nothing");
                break;
            }
            Err(_) => break,
        }
    }
});
