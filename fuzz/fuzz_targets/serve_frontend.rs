//! What an unauthenticated (then authenticated) client sends to `walrcv
//! serve`: arbitrary bytes into the start-up packet parser, then the tagged
//! message parser, every query into the replication command parser and the
//! walsender's answer, every CopyData into the standby message parser, and
//! the hba, ident and passfile parsers with the text (and an ident map
//! matched against pieces of it).
//!
//! Properties: no panic; no parser takes more bytes than it was given or
//! allows a message above its limit; every answer to a query is a sequence
//! of whole backend messages ending with ReadyForQuery (or a stream plan).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use walrcv::lsn::Lsn;
use walrcv::serve::command::parse_command;
use walrcv::serve::streamer::parse_standby;
use walrcv::serve::walsender::{answer, Catalog, Outcome};
use walrcv::serve::wire::{parse_message, parse_startup, Frontend, MAX_SESSION_MESSAGE_LEN};

fn catalog() -> Catalog {
    Catalog {
        system_id: 1,
        major: 15,
        segment_size: 16 << 20,
        block_size: 8192,
        timeline: 2,
        end: Lsn(0x500_0000),
        history: vec![walrcv::wal::history::HistoryEntry {
            parent: 1,
            switchpoint: Lsn(0x300_0000),
        }],
    }
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let before = buf.len();
    match parse_startup(&mut buf) {
        Ok(Some(_)) => assert!(buf.len() < before),
        Ok(None) => assert_eq!(buf.len(), before),
        Err(e) => {
            let _ = e.to_string();
            buf = BytesMut::from(data);
        }
    }
    let c = catalog();
    for _ in 0..64 {
        let len = buf.len();
        match parse_message(&mut buf, MAX_SESSION_MESSAGE_LEN) {
            Ok(Some(Frontend::Query(q))) => {
                assert!(buf.len() < len);
                let _ = parse_command(&q);
                if let Outcome::Reply(mut out) = answer(&q, &c, |_| Some(b"1\t0/3000000\tx\n".to_vec())) {
                    let mut last = None;
                    while let Some(m) = walrcv::pgwire::backend::parse(&mut out).expect("whole messages") {
                        last = Some(m);
                    }
                    assert!(out.is_empty());
                    assert!(matches!(last, Some(walrcv::pgwire::BackendMessage::ReadyForQuery)));
                }
            }
            Ok(Some(Frontend::CopyData(d))) => {
                let _ = parse_standby(d);
            }
            Ok(Some(_)) => assert!(buf.len() < len),
            Ok(None) | Err(_) => break,
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = walrcv::serve::hba::parse(text);
        if let Ok(maps) = walrcv::serve::ident::parse(text) {
            let mut words = text.split_whitespace();
            let (map, cn, user) = (words.next(), words.next(), words.next());
            let _ = maps.allows(map.unwrap_or(""), cn.unwrap_or(""), user.unwrap_or(""));
        }
        let _ = walrcv::serve::server::parse_passfile(text);
        let _ = parse_command(text);
    }
});
