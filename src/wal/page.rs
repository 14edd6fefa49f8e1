//! WAL page headers (sans-IO): the 24-byte short header on every page and the
//! 40-byte long header on the first page of each segment. Integers are in the
//! primary's byte order; only little-endian primaries are supported.

use crate::lsn::{Lsn, TimeLineId};

pub const SHORT_HEADER_SIZE: usize = 24;
pub const LONG_HEADER_SIZE: usize = 40;

/// `xlp_info` flag bits (PostgreSQL 13 to 18).
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
pub const XLP_LONG_HEADER: u16 = 0x0002;
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `XLOG_PAGE_MAGIC` of each supported major version.
pub const PAGE_MAGICS: [(u32, u16); 6] = [
    (13, 0xD106),
    (14, 0xD10D),
    (15, 0xD110),
    (16, 0xD113),
    (17, 0xD116),
    (18, 0xD118),
];

/// The server major version whose WAL carries `magic`.
pub fn major_for_magic(magic: u16) -> Option<u32> {
    PAGE_MAGICS
        .iter()
        .find(|(_, m)| *m == magic)
        .map(|(v, _)| *v)
}

/// The page magic of server major version `major`.
pub fn magic_for_major(major: u32) -> Option<u16> {
    PAGE_MAGICS
        .iter()
        .find(|(v, _)| *v == major)
        .map(|(_, m)| *m)
}

/// Fields of a long header beyond the short one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeaderFields {
    pub system_id: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

/// A decoded page header (no validation beyond having enough bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: TimeLineId,
    pub page_address: Lsn,
    pub rem_len: u32,
    pub long: Option<LongHeaderFields>,
}

impl PageHeader {
    /// Size of this header in the page.
    pub fn size(&self) -> usize {
        if self.long.is_some() {
            LONG_HEADER_SIZE
        } else {
            SHORT_HEADER_SIZE
        }
    }

    /// Decodes a header from the start of `bytes`. Returns `None` when fewer bytes
    /// than the header needs are given (24, or 40 when `XLP_LONG_HEADER` is set).
    pub fn parse(bytes: &[u8]) -> Option<PageHeader> {
        let u16_at = |o: usize| {
            bytes
                .get(o..o + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        let u32_at = |o: usize| {
            bytes
                .get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let u64_at = |o: usize| {
            bytes.get(o..o + 8).map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_le_bytes(a)
            })
        };
        let info = u16_at(2)?;
        let long = if info & XLP_LONG_HEADER != 0 {
            Some(LongHeaderFields {
                system_id: u64_at(24)?,
                segment_size: u32_at(32)?,
                block_size: u32_at(36)?,
            })
        } else {
            None
        };
        Some(PageHeader {
            magic: u16_at(0)?,
            info,
            timeline: u32_at(4)?,
            page_address: Lsn(u64_at(8)?),
            rem_len: u32_at(16)?,
            long,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_reference_long_header() {
        // From wal-format.md §7.2 (PG 15, segment 0/2000000).
        let bytes: [u8; 40] = [
            0x10, 0xD1, 0x06, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x41, 0x40, 0xED, 0x07,
            0x30, 0xE6, 0x00, 0x6B, 0x00, 0x00, 0x00, 0x01, 0x00, 0x20, 0x00, 0x00,
        ];
        let h = PageHeader::parse(&bytes).unwrap();
        assert_eq!(h.magic, 0xD110);
        assert_eq!(major_for_magic(h.magic), Some(15));
        assert_eq!(h.info, 0x0006);
        assert_eq!(h.timeline, 1);
        assert_eq!(h.page_address, Lsn(0x200_0000));
        assert_eq!(h.size(), 40);
        let l = h.long.unwrap();
        assert_eq!(l.system_id, 7710415656024096833);
        assert_eq!(l.segment_size, 16 << 20);
        assert_eq!(l.block_size, 8192);
        assert_eq!(PageHeader::parse(&bytes[..39]), None);
    }
}
