//! WAL file names and archive-versus-primary comparisons, written independently
//! of the walrcv library (the tests must not check walrcv with its own code).

use std::fs;
use std::io::Read;
use std::path::Path;

use super::{format_lsn, PgServer};

/// The WAL file name (`TTTTTTTTXXXXXXXXYYYYYYYY`) of the segment holding `lsn`.
pub fn wal_file_name(timeline: u32, lsn: u64, segment_size: u64) -> String {
    let segno = lsn / segment_size;
    let per_xlogid = 0x1_0000_0000 / segment_size;
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segno / per_xlogid,
        segno % per_xlogid
    )
}

/// (timeline, start LSN of the segment) of a WAL file name, `.partial` allowed.
pub fn parse_wal_file_name(name: &str, segment_size: u64) -> Option<(u32, u64)> {
    let base = name.strip_suffix(".partial").unwrap_or(name);
    if base.len() != 24 || !base.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&base[0..8], 16).ok()?;
    let hi = u64::from_str_radix(&base[8..16], 16).ok()?;
    let lo = u64::from_str_radix(&base[16..24], 16).ok()?;
    let per_xlogid = 0x1_0000_0000 / segment_size;
    Some((tli, (hi * per_xlogid + lo) * segment_size))
}

/// Sorted names of the files in `dir` (not recursive).
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Sorted names of the complete segments (24 hex digits) in `dir`.
pub fn complete_segments(dir: &Path) -> Vec<String> {
    file_names(dir)
        .into_iter()
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// Panics unless every name in `dir` is one Barman accepts: a segment, a
/// `.partial` segment, or a `.history` file. Returns the names.
pub fn assert_only_wal_names(dir: &Path) -> Vec<String> {
    let names = file_names(dir);
    for n in &names {
        let base = n.strip_suffix(".partial").unwrap_or(n);
        let seg = base.len() == 24 && base.bytes().all(|b| b.is_ascii_hexdigit());
        let hist = n.len() == 16
            && n.ends_with(".history")
            && n[..8].bytes().all(|b| b.is_ascii_hexdigit());
        assert!(seg || hist, "unexpected file {n:?} in {}", dir.display());
    }
    names
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b.iter())
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

fn read_prefix(path: &Path, len: u64) -> Vec<u8> {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = Vec::new();
    f.by_ref()
        .take(len)
        .read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    buf
}

/// Every complete segment in `archive` must be byte-identical to the primary's
/// file of the same name in pg_wal (which must still be there: the harness's
/// `wal_keep_size` is 256 MB or 16 segments; use a slot for longer tests). Returns the
/// names compared. Panics naming the first difference.
pub fn assert_segments_identical(archive: &Path, pg: &PgServer) -> Vec<String> {
    let segs = complete_segments(archive);
    for name in &segs {
        let ours = fs::read(archive.join(name)).expect("read archive segment");
        let theirs_path = pg.wal_dir().join(name);
        assert!(
            theirs_path.is_file(),
            "{name} is in the archive but no longer in the primary's pg_wal \
             (recycled: keep more WAL in this test)"
        );
        let theirs = fs::read(&theirs_path).expect("read pg_wal segment");
        assert_eq!(
            ours.len() as u64,
            pg.wal_segment_size(),
            "{name}: archive file has the wrong size"
        );
        if let Some(at) = first_difference(&ours, &theirs) {
            let (_, start) = parse_wal_file_name(name, pg.wal_segment_size()).unwrap();
            panic!(
                "{name} differs from the primary's at offset {at:#x} (LSN {})",
                format_lsn(start + at as u64)
            );
        }
    }
    segs
}

/// The archive's `NAME.partial` must match the primary's `NAME` from the
/// segment start up to `upto_lsn` (e.g. the last flush position walrcv
/// reported); past that the `.partial` may hold anything. `upto_lsn` must lie in
/// that segment (or be its end).
pub fn assert_partial_matches(archive: &Path, pg: &PgServer, partial_name: &str, upto_lsn: u64) {
    let seg_size = pg.wal_segment_size();
    let (_, start) = parse_wal_file_name(partial_name, seg_size)
        .unwrap_or_else(|| panic!("{partial_name:?} is not a WAL file name"));
    assert!(
        upto_lsn >= start && upto_lsn <= start + seg_size,
        "LSN {} is not in {partial_name}",
        format_lsn(upto_lsn)
    );
    let len = upto_lsn - start;
    let path = archive.join(partial_name);
    let meta = fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        meta.len() == seg_size || meta.len() == 0,
        "{partial_name} has size {} (expected 0 or {seg_size})",
        meta.len()
    );
    let base = partial_name
        .strip_suffix(".partial")
        .unwrap_or(partial_name);
    let ours = read_prefix(&path, len);
    let theirs = read_prefix(&pg.wal_dir().join(base), len);
    assert_eq!(
        theirs.len() as u64,
        len,
        "{base}: the primary has fewer bytes than {}",
        format_lsn(upto_lsn)
    );
    if let Some(at) = first_difference(&ours, &theirs) {
        panic!(
            "{partial_name} differs from the primary's {base} at offset {at:#x} (LSN {}), \
             before the flush position {}",
            format_lsn(start + at as u64),
            format_lsn(upto_lsn)
        );
    }
}
