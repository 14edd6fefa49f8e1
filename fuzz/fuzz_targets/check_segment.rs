//! Arbitrary bytes into `check_segment` (what `walrcv restore` runs before
//! serving a file): no panic; what it accepts stays inside the file and the
//! segment; and the valid prefix of a `.partial`, checked again, ends at the
//! same place (what is served is exactly what was judged valid).
//!
//! Input: 1 mode byte (bit 0: partial; bits 1-2: timeline 1..4 of the name),
//! then the file's bytes. The name is made from the first page's address so
//! that real WAL seeds reach the record checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walrcv::archive::check::{check_segment, sizes_of, Completeness};
use walrcv::archive::names::SegmentName;
use walrcv::lsn::wal_file_name;
use walrcv::wal::page::PageHeader;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, bytes)) = input.split_first() else {
        return;
    };
    let completeness = if mode & 1 != 0 {
        Completeness::Partial
    } else {
        Completeness::Complete
    };
    let timeline = u32::from((mode >> 1) & 3) + 1;
    let segment_size = sizes_of(bytes).map_or(1 << 20, |(s, _)| s);
    let segno = PageHeader::parse(bytes).map_or(0, |h| h.page_address.0 / segment_size);
    let Some(name) = SegmentName::parse(&wal_file_name(timeline, segno, segment_size)) else {
        return;
    };
    let Ok(end) = check_segment(bytes, &name, completeness) else {
        return;
    };
    assert!(end.valid_bytes <= bytes.len() as u64);
    assert!(end.valid_bytes <= end.segment_size);
    if completeness == Completeness::Partial && end.valid_bytes > 0 {
        let prefix = &bytes[..end.valid_bytes as usize];
        let again = check_segment(prefix, &name, Completeness::Partial)
            .expect("the valid prefix of a .partial is valid");
        assert_eq!(again.end, end.end);
    }
});
