//! The parameters stage (pure): segment size, page size and server version
//! from the first usable long page header, the system identifier by majority
//! (the others are reported when their files are checked).

use crate::lsn::{is_valid_block_size, is_valid_segment_size};
use crate::wal::page::{major_for_magic, PageHeader};

/// What the archive's long headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Params {
    pub segment_size: u64,
    pub block_size: u32,
    pub server_major: Option<u32>,
    pub system_id: Option<u64>,
}

/// From the long headers of the segment files, in name order (`None` for a
/// file without one). `None` when no header is usable.
pub(super) fn parameters(headers: &[Option<PageHeader>]) -> Option<Params> {
    let mut first: Option<(u64, u32, u16)> = None;
    let mut system_ids: Vec<(u64, usize)> = Vec::new();
    for h in headers.iter().flatten() {
        let Some(l) = &h.long else { continue };
        let seg_ok = is_valid_segment_size(u64::from(l.segment_size));
        let blk_ok = is_valid_block_size(u64::from(l.block_size));
        if major_for_magic(h.magic).is_none() || !seg_ok || !blk_ok {
            continue;
        }
        first.get_or_insert((u64::from(l.segment_size), l.block_size, h.magic));
        match system_ids.iter_mut().find(|(id, _)| *id == l.system_id) {
            Some((_, n)) => *n += 1,
            None => system_ids.push((l.system_id, 1)),
        }
    }
    let (segment_size, block_size, magic) = first?;
    Some(Params {
        segment_size,
        block_size,
        server_major: major_for_magic(magic),
        // On a tie, the last seen (as `max_by_key` picks).
        system_id: system_ids.iter().max_by_key(|(_, n)| *n).map(|(id, _)| *id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The long header of testdata/wal/pg15's first segment.
    fn header(system_id: u64) -> Option<PageHeader> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/wal/pg15/000000010000000000000008"
        );
        let data = std::fs::read(path).unwrap();
        let mut data = data[..64].to_vec();
        // xlp_sysid is at offset 24 of a long header.
        data[24..32].copy_from_slice(&system_id.to_le_bytes());
        PageHeader::parse(&data)
    }

    #[test]
    fn first_usable_header_and_majority_system_id() {
        assert_eq!(parameters(&[]), None);
        assert_eq!(parameters(&[None, None]), None);
        let p = parameters(&[None, header(7), header(9), header(9)]).unwrap();
        assert_eq!(p.segment_size, 1 << 20);
        assert_eq!(p.block_size, 8192);
        assert_eq!(p.server_major, Some(15));
        assert_eq!(p.system_id, Some(9));
        // A tie goes to the last seen.
        assert_eq!(
            parameters(&[header(7), header(9)]).unwrap().system_id,
            Some(9)
        );
    }

    #[test]
    fn unusable_headers_are_skipped() {
        let mut bad = header(7).unwrap();
        bad.magic = 0x1234;
        let p = parameters(&[Some(bad), header(9)]).unwrap();
        assert_eq!(p.system_id, Some(9));
    }
}
