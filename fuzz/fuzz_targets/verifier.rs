//! Arbitrary bytes into the streaming WAL verifier: it must never panic, and feeding
//! the same bytes whole or in chunks must give the same result.
//!
//! Input layout: 8 bytes of configuration, then WAL bytes.
//! `[seg shift, page shift, major, start mode, chunk, segno, tli, flags]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walrcv::lsn::Lsn;
use walrcv::wal::{Verifier, VerifierConfig};

fn run(
    cfg: &VerifierConfig,
    mode: u8,
    start: Lsn,
    data: &[u8],
    chunk: usize,
) -> (u64, Lsn, Lsn, Option<walrcv::wal::VerifyError>, bool) {
    let mut v = match mode % 3 {
        0 => Verifier::at_segment_start(cfg.clone(), start),
        1 => Verifier::at_page(cfg.clone(), start),
        _ => Verifier::at_record_boundary(cfg.clone(), start, None),
    };
    let mut err = None;
    for c in data.chunks(chunk.max(1)) {
        if let Err(e) = v.feed(c) {
            err = Some(e);
            break;
        }
    }
    let _ = (
        v.in_record(),
        v.last_record_start(),
        v.current_record_start(),
        v.page_timeline(),
    );
    let pos = if err.is_some() { Lsn(0) } else { v.position() };
    (v.records(), v.verified_end(), pos, err, v.in_switch_tail())
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 8 {
        return;
    }
    let (head, data) = input.split_at(8);
    let seg_shift = 20 + u32::from(head[0] % 11);
    let blk_shift = 10 + u32::from(head[1] % 7);
    let major = match head[2] % 8 {
        0 => None,
        m => Some(12 + u32::from(m)), // 13..=19 (19 is unsupported: an error, not a panic)
    };
    let segment_size = 1u64 << seg_shift;
    let cfg = VerifierConfig {
        segment_size,
        block_size: 1u32 << blk_shift,
        system_id: if head[7] & 1 != 0 {
            Some(7_710_415_656_024_096_833)
        } else {
            None
        },
        timeline: u32::from(head[6] % 4) + 1,
        server_major: major,
    };
    let segno = u64::from(head[5]);
    let mut start = Lsn(segno * segment_size);
    if head[3] % 3 != 0 {
        // A page or record boundary inside the segment.
        start = Lsn(start.0
            + (u64::from(head[7] >> 1) << blk_shift) % segment_size
            + u64::from(head[3] / 3) * 8);
    }
    let chunk = usize::from(head[4]) + 1;
    let whole = run(&cfg, head[3], start, data, usize::MAX);
    let chunked = run(&cfg, head[3], start, data, chunk);
    assert_eq!(whole, chunked);
    let one = walrcv::wal::verifier::find_end_of_wal(cfg, start, data);
    let _ = one.zero_after;
});
