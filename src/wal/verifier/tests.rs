//! Unit tests: the reference test vectors and synthetic WAL built by [`Builder`].

use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn record_crc(rec: &[u8]) -> (u32, u32) {
    let stored = u32::from_le_bytes(rec[20..24].try_into().unwrap());
    let computed = crc32c::crc32c_append(crc32c::crc32c(&rec[24..]), &rec[..20]);
    (stored, computed)
}

#[test]
fn crc_check_value() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn reference_record_vectors() {
    let mut v4 = hex("9800000000000000f84053010000000000150000fd3e3c96ff7e050000000055000002000000000000006400000000000000");
    v4.extend_from_slice(&hex("6800"));
    v4.extend(std::iter::repeat_n(0x48, 100));
    let vectors: Vec<(Vec<u8>, u32)> = vec![
        (hex("1800000000000000a860530100000000400000009333f973"), 0x73F9_3393),
        (
            hex("3e00000000000000f85f530100000000001500001b82389cff2405000000005500000b0000000000000001000000000000007072652d7377697463680078"),
            0x9C38_821B,
        ),
        (hex("2a00000000000000a852fe0200000000d000000060f019d0ff104072fe0200000000e03f4342bd030300"), 0xD019_F060),
        (v4, 0x963C_3EFD),
    ];
    for (rec, crc) in vectors {
        assert_eq!(
            u32::from_le_bytes(rec[0..4].try_into().unwrap()) as usize,
            rec.len()
        );
        let (stored, computed) = record_crc(&rec);
        assert_eq!(stored, crc);
        assert_eq!(computed, crc);
    }
}

/// Writes synthetic WAL: page headers, records with correct `xl_prev` and CRC.
pub(crate) struct Builder {
    pub seg: u64,
    pub blk: u64,
    pub sysid: u64,
    pub tli: u32,
    pub magic: u16,
    pub start: u64,
    pub out: Vec<u8>,
    pub prev: u64,
    pub starts: Vec<u64>,
}

impl Builder {
    pub fn new(start: u64) -> Self {
        Builder {
            seg: 1 << 20,
            blk: 8192,
            sysid: 7_710_415_656_024_096_833,
            tli: 1,
            magic: 0xD110,
            start,
            out: Vec::new(),
            prev: 0,
            starts: Vec::new(),
        }
    }

    pub fn config(&self) -> VerifierConfig {
        VerifierConfig {
            segment_size: self.seg,
            block_size: self.blk as u32,
            system_id: Some(self.sysid),
            timeline: self.tli,
            server_major: Some(15),
        }
    }

    pub fn pos(&self) -> u64 {
        self.start + self.out.len() as u64
    }

    fn page_header(&mut self, contrec: bool, rem: u32) {
        let p = self.pos();
        let long = p % self.seg == 0;
        let info: u16 = (contrec as u16) | if long { 2 } else { 0 } | 4;
        self.out.extend_from_slice(&self.magic.to_le_bytes());
        self.out.extend_from_slice(&info.to_le_bytes());
        self.out.extend_from_slice(&self.tli.to_le_bytes());
        self.out.extend_from_slice(&p.to_le_bytes());
        self.out.extend_from_slice(&rem.to_le_bytes());
        self.out.extend_from_slice(&[0; 4]);
        if long {
            self.out.extend_from_slice(&self.sysid.to_le_bytes());
            self.out.extend_from_slice(&(self.seg as u32).to_le_bytes());
            self.out.extend_from_slice(&(self.blk as u32).to_le_bytes());
        }
    }

    /// Appends a record; returns its start LSN.
    pub fn record(&mut self, rmid: u8, info: u8, body: &[u8]) -> u64 {
        if self.pos() % self.blk == 0 {
            self.page_header(false, 0);
        }
        let start = self.pos();
        let tot = (24 + body.len()) as u32;
        let mut rec = Vec::with_capacity(tot as usize);
        rec.extend_from_slice(&tot.to_le_bytes());
        rec.extend_from_slice(&0u32.to_le_bytes());
        rec.extend_from_slice(&self.prev.to_le_bytes());
        rec.push(info);
        rec.push(rmid);
        rec.extend_from_slice(&[0, 0]);
        let crc = crc32c::crc32c_append(crc32c::crc32c(body), &rec[..20]);
        rec.extend_from_slice(&crc.to_le_bytes());
        rec.extend_from_slice(body);
        let mut off = 0usize;
        while off < rec.len() {
            if self.pos() % self.blk == 0 {
                self.page_header(true, (rec.len() - off) as u32);
            }
            let page_left = (self.blk - self.pos() % self.blk) as usize;
            let n = page_left.min(rec.len() - off);
            self.out.extend_from_slice(&rec[off..off + n]);
            off += n;
        }
        self.prev = start;
        self.starts.push(start);
        if rmid == 0 && info & 0xF0 == 0x40 {
            let until = self.pos().div_ceil(self.seg) * self.seg;
            self.out.resize((until - self.start) as usize, 0);
        } else {
            let aligned = (self.pos() + 7) & !7;
            self.out.resize((aligned - self.start) as usize, 0);
        }
        start
    }

    /// Pads with zeros to `lsn`.
    pub fn zeros_to(&mut self, lsn: u64) {
        self.out.resize((lsn - self.start) as usize, 0);
    }

    /// Pads with small records so that the next record starts at `lsn` (8-aligned,
    /// ahead of the current position by at least 32 bytes, or equal).
    pub fn fill_to(&mut self, lsn: u64) {
        while self.pos() < lsn {
            // Next record start after header if at a page boundary.
            let mut p = self.pos();
            if p % self.blk == 0 {
                p += if p % self.seg == 0 { 40 } else { 24 };
            }
            let gap = lsn - p;
            // A record of total length `gap` lands exactly, if it fits in this page.
            let body = if (24..2000).contains(&gap) {
                gap - 24
            } else {
                1000u64.min(gap.saturating_sub(56))
            };
            self.record(21, 0, &vec![0x55; body as usize]);
        }
    }
}

fn feed_chunks(v: &mut Verifier, data: &[u8], chunk: usize) -> Result<(), VerifyError> {
    for c in data.chunks(chunk.max(1)) {
        v.feed(c)?;
    }
    Ok(())
}

fn varied_wal() -> Builder {
    let mut b = Builder::new(0x300000);
    for i in 0..50usize {
        b.record(10, 0, &vec![i as u8; 13 + i * 37]);
    }
    b.record(21, 0, &vec![7; 20000]); // multi-page
                                      // A record whose header straddles a page boundary: start at page offset 8184.
    let next_page = (b.pos() / b.blk + 1) * b.blk;
    b.fill_to(next_page - 8);
    assert_eq!(b.pos(), next_page - 8);
    b.record(21, 0, &[0x48; 128]);
    // A record of 16 bytes left on a page (header split 16/8).
    let next_page = (b.pos() / b.blk + 1) * b.blk;
    b.fill_to(next_page - 16);
    b.record(21, 0, &[0x49; 3]);
    // A record ending exactly at a page end.
    let next_page = (b.pos() / b.blk + 1) * b.blk;
    let body = (next_page - b.pos() - 24) as usize;
    b.record(1, 0, &vec![1; body]);
    assert_eq!(b.pos() % b.blk, 0);
    b.record(1, 0, &[2; 10]);
    // A record crossing the segment boundary, then a switch in the next segment.
    let seg_end = (b.pos() / b.seg + 1) * b.seg;
    let body = (seg_end - b.pos()) as usize + 5000;
    b.record(21, 0, &vec![3; body]);
    b.record(0, 0x40, &[]);
    b.record(2, 0, &[4; 100]);
    b.record(130, 0, &[5; 100]); // custom rmgr, fine for 15
    b
}

#[test]
fn synthetic_wal_in_any_chunking() {
    let b = varied_wal();
    let n = b.starts.len() as u64;
    let mut reference = None;
    for chunk in [
        1usize,
        3,
        7,
        24,
        40,
        100,
        8191,
        8192,
        8193,
        65536,
        usize::MAX,
    ] {
        let mut v = Verifier::at_segment_start(b.config(), Lsn(b.start));
        feed_chunks(&mut v, &b.out, chunk).unwrap();
        assert_eq!(v.records(), n, "chunk {chunk}");
        assert_eq!(v.position(), Lsn(b.pos()));
        assert_eq!(v.verified_end(), Lsn(b.pos()));
        assert_eq!(v.last_record_start(), Some(Lsn(*b.starts.last().unwrap())));
        let r = (v.records(), v.verified_end(), v.position());
        if let Some(prev) = reference {
            assert_eq!(prev, r);
        }
        reference = Some(r);
    }
}

#[test]
fn verified_end_advances_per_record_and_after_switch_tail() {
    let mut b = Builder::new(0x100000);
    b.record(21, 0, &[1; 30]); // 54 bytes -> ends 0x100000+40+54, aligned to +96
    let switch = b.record(0, 0x40, &[]);
    let mut v = Verifier::at_segment_start(b.config(), Lsn(b.start));
    v.feed(&b.out[..40 + 54]).unwrap();
    assert_eq!(v.verified_end(), Lsn(0x100000 + 40 + 56));
    assert!(!v.in_record());
    v.feed(&b.out[40 + 54..(switch - b.start) as usize + 10])
        .unwrap();
    assert!(v.in_record());
    v.feed(&b.out[(switch - b.start) as usize + 10..(switch - b.start) as usize + 24])
        .unwrap();
    assert_eq!(v.verified_end(), Lsn(switch + 24));
    assert!(v.in_switch_tail());
    v.feed(&b.out[(switch - b.start) as usize + 24..]).unwrap();
    assert_eq!(v.verified_end(), Lsn(0x200000));
    assert_eq!(v.records(), 2);
}

fn first_error(b: &Builder, data: &[u8]) -> VerifyError {
    let mut v = Verifier::at_segment_start(b.config(), Lsn(b.start));
    let e1 = v.feed(data).unwrap_err();
    let mut v = Verifier::at_segment_start(b.config(), Lsn(b.start));
    let e2 = feed_chunks(&mut v, data, 1).unwrap_err();
    assert_eq!(e1, e2);
    assert_eq!(v.feed(&[0]).unwrap_err(), e1, "stays failed");
    e1
}

#[test]
fn detects_flipped_body_bit() {
    let b = varied_wal();
    let rec = b.starts[10];
    let mut data = b.out.clone();
    data[(rec - b.start) as usize + 30] ^= 0x10;
    let e = first_error(&b, &data);
    assert_eq!((e.check, e.lsn), (Check::Crc, Lsn(rec)));
}

#[test]
fn detects_flipped_header_padding_and_multipage_body() {
    let b = varied_wal();
    let rec = b.starts[50]; // 20000-byte record
    let mut data = b.out.clone();
    data[(rec - b.start) as usize + 18] ^= 1;
    assert_eq!(first_error(&b, &data).check, Check::Crc);
    let mut data = b.out.clone();
    data[(rec - b.start) as usize + 15000] ^= 1;
    let e = first_error(&b, &data);
    assert_eq!((e.check, e.lsn), (Check::Crc, Lsn(rec)));
}

#[test]
fn detects_page_header_faults() {
    let b = varied_wal();
    let page = b.start + 3 * b.blk;
    let off = (page - b.start) as usize;
    let cases: Vec<(usize, u8, Check)> = vec![
        (off, 0x01, Check::PageMagic),
        (off + 2, 0x40, Check::PageFlags),
        (off + 9, 0x01, Check::PageAddress),
        (off + 4, 0x02, Check::PageTimeline),
        (off + 16, 0x01, Check::RemainingLength),
        (off + 2, 0x02, Check::LongHeader),
    ];
    for (at, bit, check) in cases {
        let mut data = b.out.clone();
        data[at] ^= bit;
        let e = first_error(&b, &data);
        assert_eq!((e.check, e.lsn), (check, Lsn(page)), "byte {at}");
    }
    // Segment start: system id, segment size, page size, missing long header.
    for (at, bit, check) in [
        (24usize, 1u8, Check::SystemId),
        (34, 1, Check::SegmentSize),
        (37, 1, Check::BlockSize),
        (2, 2, Check::LongHeader),
    ] {
        let mut data = b.out.clone();
        data[at] ^= bit;
        let e = first_error(&b, &data);
        assert_eq!((e.check, e.lsn), (check, Lsn(b.start)), "byte {at}");
    }
}

#[test]
fn detects_contrecord_flag_faults() {
    let b = varied_wal();
    // The page after the 20000-byte record's start has CONTRECORD: clear it.
    let rec = b.starts[50];
    let page = (rec / b.blk + 1) * b.blk;
    let mut data = b.out.clone();
    data[(page - b.start) as usize + 2] &= !1;
    let e = first_error(&b, &data);
    assert_eq!((e.check, e.lsn), (Check::ContinuationFlag, Lsn(page)));
    // A page where a new record is expected must not have CONTRECORD.
    let new_page = b.starts.iter().copied().find(|s| s % b.blk == 24).unwrap() - 24;
    let mut data = b.out.clone();
    data[(new_page - b.start) as usize + 2] |= 1;
    let e = first_error(&b, &data);
    assert_eq!((e.check, e.lsn), (Check::ContinuationFlag, Lsn(new_page)));
}

#[test]
fn detects_record_header_faults() {
    let b = varied_wal();
    let rec = b.starts[5];
    let off = (rec - b.start) as usize;
    let mut data = b.out.clone();
    data[off + 17] = 50; // rmid
    assert_eq!(first_error(&b, &data).check, Check::ResourceManager);
    let mut data = b.out.clone();
    data[off + 8] ^= 8; // xl_prev
    let e = first_error(&b, &data);
    assert_eq!((e.check, e.lsn), (Check::PrevLink, Lsn(rec)));
    let mut data = b.out.clone();
    data[off..off + 4].copy_from_slice(&0u32.to_le_bytes());
    let e = first_error(&b, &data);
    assert_eq!((e.check, e.lsn), (Check::RecordLength, Lsn(rec)));
    let mut data = b.out.clone();
    data[off + 3] = 0x80; // 2 GiB
    assert_eq!(first_error(&b, &data).check, Check::RecordLength);
}

#[test]
fn custom_rmgr_rejected_before_15() {
    let mut b = Builder::new(0x100000);
    b.magic = 0xD10D; // 14
    b.record(130, 0, &[1; 10]);
    let mut cfg = b.config();
    cfg.server_major = None;
    let mut v = Verifier::at_segment_start(cfg, Lsn(b.start));
    assert_eq!(v.feed(&b.out).unwrap_err().check, Check::ResourceManager);
    assert_eq!(v.server_major(), Some(14));
}

#[test]
fn detects_nonzero_switch_tail() {
    let b = varied_wal();
    let switch = b.starts[b.starts.len() - 3];
    let at = switch + 24 + 3 * 8192 + 17;
    let mut data = b.out.clone();
    data[(at - b.start) as usize] = 1;
    let e = first_error(&b, &data);
    assert_eq!((e.check, e.lsn), (Check::SwitchTail, Lsn(at)));
}

#[test]
fn resync_at_any_page_finds_the_same_records() {
    let b = varied_wal();
    let mut full = Verifier::at_segment_start(b.config(), Lsn(b.start));
    full.feed(&b.out).unwrap();
    let switch = b.starts[b.starts.len() - 3];
    let tail = (switch + 24)..(switch / b.seg + 1) * b.seg;
    for page in (b.start..b.pos()).step_by(b.blk as usize) {
        if tail.contains(&page) {
            continue; // zeroed pages: no header to resync on
        }
        let mut v = Verifier::at_page(b.config(), Lsn(page));
        feed_chunks(&mut v, &b.out[(page - b.start) as usize..], 777).unwrap();
        let expected = b.starts.iter().filter(|&&s| s > page).count() as u64;
        // Records starting in the page header region cannot exist; a record starting
        // before `page` is skipped.
        assert_eq!(v.records(), expected, "page {page:X}");
        assert_eq!(v.verified_end(), full.verified_end());
        if let Some(first) = v.first_record_start() {
            assert_eq!(first, Lsn(*b.starts.iter().find(|&&s| s > page).unwrap()));
        }
    }
}

#[test]
fn overwrite_contrecord_drops_the_partial_record() {
    let mut b = Builder::new(0x100000);
    let last = b.record(21, 0, &[1; 100]);
    // Start a record of 30000 bytes, but only 2 pages of it survive.
    let aborted = b.pos();
    let mut tmp = Builder::new(b.start);
    tmp.out = b.out.clone();
    tmp.prev = b.prev;
    tmp.record(21, 0, &vec![9; 30000]);
    let cut = b.start + 3 * b.blk;
    b.out = tmp.out[..(cut - b.start) as usize].to_vec();
    // Page at `cut` carries OVERWRITE_CONTRECORD and an overwrite record.
    let mut body = vec![0xFF, 16];
    body.extend_from_slice(&aborted.to_le_bytes());
    body.extend_from_slice(&0i64.to_le_bytes());
    let hdr_pos = b.out.len();
    let ow = b.record(0, 0xD0, &body);
    b.out[hdr_pos + 2] = 0x0C; // BKP_REMOVABLE | OVERWRITE
    b.record(21, 0, &[2; 10]);
    assert_eq!(ow, cut + 24);
    for chunk in [1, 50, 100000] {
        let mut v = Verifier::at_segment_start(b.config(), Lsn(b.start));
        feed_chunks(&mut v, &b.out, chunk).unwrap();
        assert_eq!(v.records(), 3);
        assert_eq!(v.overwritten_record(), Some(Lsn(aborted)));
        assert_ne!(v.last_record_start(), Some(Lsn(last)));
    }
    // The overwrite record must name the dropped record.
    let mut bad = b.out.clone();
    let o = (ow - b.start) as usize + 24 + 2;
    bad[o] ^= 8;
    // Fix the CRC so that only the overwritten LSN is wrong.
    let tot = 42;
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&bad[o - 2..o - 2 + tot - 24]),
        &bad[o - 26..o - 26 + 20],
    );
    bad[o - 6..o - 2].copy_from_slice(&crc.to_le_bytes());
    let mut v = Verifier::at_segment_start(b.config(), Lsn(b.start));
    let e = v.feed(&bad).unwrap_err();
    assert_eq!((e.check, e.lsn), (Check::ContinuationFlag, Lsn(ow)));
}

#[test]
fn timeline_rules() {
    let mut b = Builder::new(0x100000);
    b.tli = 2;
    b.record(21, 0, &vec![1; 20000]);
    let mut cfg = b.config();
    cfg.timeline = 1;
    let mut v = Verifier::at_segment_start(cfg, Lsn(b.start));
    let e = v.feed(&b.out).unwrap_err();
    assert_eq!((e.check, e.lsn), (Check::PageTimeline, Lsn(b.start)));
    // Going down is refused.
    let mut data = b.out.clone();
    data[8192 + 4] = 1;
    let mut v = Verifier::at_segment_start(b.config(), Lsn(b.start));
    assert_eq!(v.feed(&data).unwrap_err().check, Check::PageTimeline);
    let mut data2 = b.out.clone();
    data2[4] = 1; // first page TLI 1, then 2: fine
    let mut v = Verifier::at_segment_start(b.config(), Lsn(b.start));
    v.feed(&data2).unwrap();
    let mut data3 = b.out.clone();
    data3[2 * 8192 + 4] = 1; // 2, 2, 1: down
    let mut v = Verifier::at_segment_start(b.config(), Lsn(b.start));
    let e = v.feed(&data3).unwrap_err();
    assert_eq!(
        (e.check, e.lsn),
        (Check::PageTimeline, Lsn(b.start + 2 * 8192))
    );
}

#[test]
fn bad_starts_and_configs_are_errors_not_panics() {
    let b = varied_wal();
    let mut v = Verifier::at_segment_start(b.config(), Lsn(b.start + 8192));
    assert_eq!(v.feed(&b.out).unwrap_err().check, Check::Discontinuity);
    let mut v = Verifier::at_page(b.config(), Lsn(b.start + 8));
    assert_eq!(v.feed(&b.out).unwrap_err().check, Check::Discontinuity);
    let mut cfg = b.config();
    cfg.segment_size = 12345;
    assert_eq!(
        Verifier::at_page(cfg, Lsn(0)).feed(&[0]).unwrap_err().check,
        Check::SegmentSize
    );
    let mut cfg = b.config();
    cfg.block_size = 0;
    assert_eq!(
        Verifier::at_page(cfg, Lsn(0)).feed(&[0]).unwrap_err().check,
        Check::BlockSize
    );
    let mut cfg = b.config();
    cfg.server_major = Some(12);
    assert_eq!(
        Verifier::at_page(cfg, Lsn(0)).feed(&[0]).unwrap_err().check,
        Check::PageMagic
    );
    let mut v = Verifier::at_segment_start(b.config(), Lsn(b.start));
    assert_eq!(
        v.feed_at(Lsn(b.start + 1), &[0]).unwrap_err().check,
        Check::Discontinuity
    );
    assert!(v.error().is_none());
}

#[test]
fn at_record_boundary_resumes_with_strict_prev_check() {
    let b = varied_wal();
    let i = 20;
    let start = b.starts[i];
    let mut v = Verifier::at_record_boundary(b.config(), Lsn(start), Some(Lsn(b.starts[i - 1])));
    v.feed(&b.out[(start - b.start) as usize..]).unwrap();
    assert_eq!(v.records() as usize, b.starts.len() - i);
    let mut v = Verifier::at_record_boundary(b.config(), Lsn(start), Some(Lsn(b.starts[i - 2])));
    assert_eq!(
        v.feed(&b.out[(start - b.start) as usize..])
            .unwrap_err()
            .check,
        Check::PrevLink
    );
}

#[test]
fn find_end_of_wal_in_a_partial() {
    let mut b = Builder::new(0x100000);
    for _ in 0..10 {
        b.record(21, 0, &[1; 300]);
    }
    let end = b.pos();
    b.zeros_to(0x200000);
    let r = find_end_of_wal(b.config(), Lsn(b.start), &b.out);
    assert_eq!(r.records, 10);
    assert_eq!(r.verified_end, Lsn(end));
    assert!(r.zero_after);
    assert_eq!(
        r.error.as_ref().map(|e| (e.check, e.lsn)),
        Some((Check::RecordLength, Lsn(end)))
    );
    let mut data = b.out.clone();
    data[(end - b.start) as usize + 5000] = 1;
    let r = find_end_of_wal(b.config(), Lsn(b.start), &data);
    assert!(!r.zero_after);
    let r = find_end_of_wal(
        b.config(),
        Lsn(b.start),
        &b.out[..(end - b.start) as usize - 100],
    );
    assert!(r.ended_mid_record);
    assert!(r.error.is_none());
}

#[test]
fn error_location() {
    let e = VerifyError {
        lsn: Lsn(0x0C_141F8),
        check: Check::Crc,
        detail: String::new(),
    };
    let l = e.location(2, 1 << 20);
    assert_eq!(l.file_name, "00000002000000000000000C");
    assert_eq!(l.offset, 0x141F8);
    assert!(e.describe(2, 1 << 20).contains("00000002000000000000000C"));
}

/// The page where a walk back from `resume` (a page boundary) stops, as the
/// archive's resume code does it: the first page, going back, on which a record
/// starts.
fn walk_back(b: &Builder, resume: u64) -> u64 {
    let mut page = resume - b.blk;
    loop {
        let off = (page - b.start) as usize;
        let header = &b.out[off..off + 40];
        if page_starts_record(header, Lsn(page), b.blk) || page == b.start {
            return page;
        }
        page -= b.blk;
    }
}

#[test]
fn walking_back_finds_the_page_of_the_record_in_progress() {
    let b = varied_wal();
    for resume in ((b.start + b.blk)..b.pos()).step_by(b.blk as usize) {
        let page = walk_back(&b, resume);
        let last_start = *b.starts.iter().rfind(|&&s| s < resume).unwrap();
        assert_eq!(page, last_start / b.blk * b.blk, "resume at {resume:X}");
        // Started there and fed up to the resume point, the verifier checks
        // every record from the one in progress at `resume` on.
        let mut v = Verifier::at_page(b.config(), Lsn(page));
        v.feed(&b.out[(page - b.start) as usize..(resume - b.start) as usize])
            .unwrap();
        assert_eq!(v.position(), Lsn(resume));
        v.feed(&b.out[(resume - b.start) as usize..]).unwrap();
        let expected = b.starts.iter().filter(|&&s| s >= last_start).count() as u64;
        assert!(v.records() >= expected, "resume at {resume:X}");
        if let Some((skipped_page, len)) = v.skipped_continuation() {
            assert_eq!(skipped_page, Lsn(page));
            assert!(
                page + u64::from(len) < resume,
                "skipped past the resume point"
            );
        }
    }
}

#[test]
fn page_starts_record_reads_the_header_only() {
    let b = varied_wal();
    let off = |lsn: u64| (lsn - b.start) as usize;
    // The segment start (long header, no continuation): a record starts.
    assert!(page_starts_record(&b.out[..40], Lsn(b.start), b.blk));
    // A page inside the 20000-byte record is all continuation.
    let big = b.starts[50];
    let inside = (big / b.blk + 1) * b.blk;
    assert!(!page_starts_record(
        &b.out[off(inside)..off(inside) + 24],
        Lsn(inside),
        b.blk
    ));
    // Never-written (zero) pages: go on walking.
    assert!(!page_starts_record(&[0; 24], Lsn(inside), b.blk));
    // A header that is not one at this address stops the walk (the verifier
    // then says what is wrong).
    assert!(page_starts_record(
        &b.out[off(inside)..off(inside) + 24],
        Lsn(inside + b.blk),
        b.blk
    ));
    assert!(page_starts_record(&[1; 8], Lsn(inside), b.blk));
}

/// The defect this fixes: started at a segment boundary inside a record, the
/// verifier skips the record's tail unchecked; primed with the WAL before the
/// boundary, it checks it, and a corrupted byte before the boundary is found
/// when the tail arrives.
#[test]
fn priming_checks_the_record_that_spans_the_resume_point() {
    let b = varied_wal();
    let spanning = b.starts[b.starts.len() - 4];
    let resume = (spanning / b.seg + 1) * b.seg;
    assert!(spanning < resume && b.starts[b.starts.len() - 3] > resume);
    let off = |lsn: u64| (lsn - b.start) as usize;

    let mut unprimed = Verifier::at_segment_start(b.config(), Lsn(resume));
    unprimed.feed(&b.out[off(resume)..]).unwrap();
    let (page, len) = unprimed.skipped_continuation().unwrap();
    assert_eq!(page, Lsn(resume));
    assert!(len > 5000);

    let from = walk_back(&b, resume);
    assert_eq!(from, spanning / b.blk * b.blk);
    let mut primed = Verifier::at_page(b.config(), Lsn(from));
    primed
        .feed(&b.out[off(from)..off(resume)])
        .expect("the archive's part verifies");
    assert_eq!(primed.current_record_start(), Some(Lsn(spanning)));
    let before = primed.records();
    primed.feed(&b.out[off(resume)..]).unwrap();
    // Every record the unprimed one checked, plus the spanning one.
    assert_eq!(primed.records() - before, unprimed.records() + 1);

    // One byte of the spanning record's body, before the resume point, flipped.
    let mut bad = b.out.clone();
    bad[off(resume) - 100] ^= 0x01;
    let mut primed = Verifier::at_page(b.config(), Lsn(from));
    primed.feed(&bad[off(from)..off(resume)]).unwrap();
    let verified = primed.verified_end();
    assert!(verified <= Lsn(spanning));
    let e = primed.feed(&bad[off(resume)..]).unwrap_err();
    assert_eq!((e.check, e.lsn), (Check::Crc, Lsn(spanning)));
    assert_eq!(
        primed.verified_end(),
        verified,
        "nothing past it is verified"
    );
}
