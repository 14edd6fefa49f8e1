//! `walrcv status -D s3://BUCKET/PREFIX`: the archive read from a bucket
//! (one LIST, [`crate::tools::bucket`]) into the same [`ArchiveRead`] the
//! directory gives, so that the same checks judge it.
//!
//! The segment files are the objects under the prefix and, for a segment
//! not there complete, the receivers' `.partial` copies (superseded copies
//! are left out, as restore leaves them). The age is the newest object's
//! Last-Modified (for a `.partial` copy: its last upload). Where the WAL of
//! the newest `.partial` ends is estimated as for a directory, on the copy
//! that reaches furthest (only the newest segment's copies are fetched);
//! the segment size comes from the first segment object's long page header
//! (a ranged GET). A conflict (an object differing from a receiver's local
//! file) shows through the marker the uploader left under `conflicts/`
//! ([`crate::objstore::marker`]): found in the same LIST, each one is
//! CRITICAL until a DBA deletes it.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

use crate::archive::compression::decompress_partial;
use crate::archive::listing::{Scan, SegmentFile};
use crate::archive::names::{ArchiveName, Compression};
use crate::lsn::{is_valid_block_size, is_valid_segment_size};
use crate::tools::bucket::{Bucket, BucketError, BucketListing, CopyObject};
use crate::wal::page::PageHeader;

use super::archive::{written_end, ArchiveRead, ArchiveReadError, DivergentTally};
use super::check::SegmentEntry;

/// One receiver's uploaded `.partial` copy, as `--json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartialCopy {
    pub segment: String,
    pub receiver: String,
    pub object: String,
    pub size: u64,
}

/// A conflict marker, as `--json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConflictMarker {
    /// The conflicting object's key.
    pub object: String,
    pub receiver: String,
    /// The marker's own key (what to delete once resolved).
    pub marker: String,
}

/// The bucket read for status, the copies and the conflict markers it holds.
pub struct BucketRead {
    pub read: ArchiveRead,
    pub copies: Vec<PartialCopy>,
    pub conflicts: Vec<ConflictMarker>,
}

/// How much of an object is fetched to read its long page header.
const HEADER_FETCH: u64 = 64 << 10;

/// Reads `url`; `server_segment_size` is used only when no object carries a
/// long page header.
pub fn read_bucket(
    url: &str,
    server_segment_size: Option<u64>,
) -> Result<BucketRead, ArchiveReadError> {
    let bucket = Bucket::open(url)?;
    let listing = bucket.list()?;
    let sizes = sizes_from_headers(&bucket, &listing)?;
    let segment_size = sizes
        .map(|(s, _)| s)
        .or(server_segment_size)
        .unwrap_or(16 << 20);
    let block_size = sizes.map_or(8192, |(_, b)| b);
    let (scan, modified) = scan(&listing, segment_size);
    let newest_file = scan.newest().cloned();
    let newest = newest_file.as_ref().map(|f| SegmentEntry {
        timeline: f.timeline,
        segno: f.segno,
        partial: f.partial,
    });
    let mut partial_written = 0;
    let mut newest_age_secs = None;
    if let Some(f) = &newest_file {
        if f.partial {
            partial_written = furthest_copy(&bucket, &listing, f, segment_size, block_size)?;
        }
        newest_age_secs = modified
            .iter()
            .find(|(p, _)| *p == f.path)
            .and_then(|(_, m)| SystemTime::now().duration_since(*m).ok())
            .map(|d| d.as_secs());
    }
    let copies = listing
        .copies
        .iter()
        .map(|c| PartialCopy {
            segment: c.segment.clone(),
            receiver: c.copy.receiver.clone(),
            object: bucket.key(&c.object.name),
            size: c.object.size,
        })
        .collect();
    let conflicts = listing
        .conflicts
        .iter()
        .map(|m| ConflictMarker {
            object: bucket.key(&m.marker.object),
            receiver: m.marker.receiver.clone(),
            marker: bucket.key(&m.object.name),
        })
        .collect();
    Ok(BucketRead {
        read: ArchiveRead {
            segment_size,
            scan,
            newest,
            partial_written,
            newest_age_secs,
            divergent: divergent_tally(&listing),
        },
        copies,
        conflicts,
    })
}

/// The listing as a directory scan (pure): the objects' segments, one entry
/// per segment for its copies (the newest modified time), histories. Also
/// each entry's modified time, by its path (the object name).
pub fn scan(listing: &BucketListing, segment_size: u64) -> (Scan, Vec<(PathBuf, SystemTime)>) {
    let mut scan = Scan::default();
    let mut modified = Vec::new();
    let mut add = |name: &str, kind: ArchiveName, size: u64, m: SystemTime| match kind {
        ArchiveName::History { timeline, .. } => scan.histories.push(timeline),
        ArchiveName::Segment {
            name: seg,
            compression,
            partial,
        } => {
            let Some((timeline, segno)) = seg.segno(segment_size) else {
                return;
            };
            let path = PathBuf::from(name);
            modified.push((path.clone(), m));
            scan.segments.push(SegmentFile {
                timeline,
                segno,
                partial,
                size,
                path,
                compression,
            });
        }
        _ => {}
    };
    for o in &listing.files {
        add(&o.name, ArchiveName::classify(&o.name), o.size, o.modified);
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &listing.copies {
        if !seen.insert(c.segment.as_str()) {
            continue;
        }
        let of_segment = copies_of(listing, &c.segment);
        let newest = of_segment.iter().map(|c| c.object.modified).max();
        let biggest = of_segment.iter().map(|c| c.object.size).max();
        let kind = ArchiveName::classify(&c.copy.local);
        add(
            &c.object.name,
            kind,
            biggest.unwrap_or(0),
            newest.unwrap_or(c.object.modified),
        );
    }
    scan.segments
        .sort_by_key(|s| (s.segno, s.timeline, !s.partial));
    scan.histories.sort_unstable();
    scan.histories.dedup();
    (scan, modified)
}

fn copies_of<'a>(listing: &'a BucketListing, segment: &str) -> Vec<&'a CopyObject> {
    listing
        .copies
        .iter()
        .filter(|c| c.segment == segment)
        .collect()
}

/// Set-aside files under the prefix (not uploaded by walrcv; counted as a
/// directory's are).
fn divergent_tally(listing: &BucketListing) -> DivergentTally {
    let mut tally = DivergentTally::default();
    for o in &listing.files {
        if matches!(
            ArchiveName::classify(&o.name),
            ArchiveName::Divergent { .. }
        ) {
            tally.files += 1;
            tally.bytes += o.size;
        }
    }
    tally
}

/// Segment and block size from the first segment object with a valid long
/// page header.
fn sizes_from_headers(
    bucket: &Bucket,
    listing: &BucketListing,
) -> Result<Option<(u64, u64)>, ArchiveReadError> {
    let objects = listing
        .files
        .iter()
        .map(|o| (o.name.as_str(), o.size, ArchiveName::classify(&o.name)))
        .chain(listing.copies.iter().map(|c| {
            let kind = ArchiveName::classify(&c.copy.local);
            (c.object.name.as_str(), c.object.size, kind)
        }));
    for (name, size, kind) in objects {
        let ArchiveName::Segment { compression, .. } = kind else {
            continue;
        };
        if size == 0 {
            continue;
        }
        let Some(bytes) = bucket
            .get_prefix(name, size.min(HEADER_FETCH))
            .map_err(BucketError::from)?
        else {
            continue;
        };
        let Some(long) = decoded(&bytes, compression, HEADER_FETCH)
            .as_deref()
            .and_then(PageHeader::parse)
            .and_then(|h| h.long)
        else {
            continue;
        };
        let (seg, block) = (u64::from(long.segment_size), u64::from(long.block_size));
        if is_valid_segment_size(seg) && is_valid_block_size(block) {
            return Ok(Some((seg, block)));
        }
    }
    Ok(None)
}

/// What decodes of `raw` (all of it when not compressed).
fn decoded(raw: &[u8], compression: Compression, limit: u64) -> Option<Vec<u8>> {
    if compression == Compression::None {
        return Some(raw.to_vec());
    }
    decompress_partial(compression, raw, limit)
        .ok()
        .map(|d| d.bytes)
}

/// Where the WAL written in the newest segment's copies ends, furthest first.
fn furthest_copy(
    bucket: &Bucket,
    listing: &BucketListing,
    newest: &SegmentFile,
    segment_size: u64,
    block_size: u64,
) -> Result<u64, ArchiveReadError> {
    let name = newest.path.to_string_lossy();
    let wanted: Vec<(String, Compression)> =
        match listing.copies.iter().find(|c| c.object.name == name) {
            Some(c) => copies_of(listing, &c.segment)
                .iter()
                .map(|c| (c.object.name.clone(), compression_of(&c.copy.local)))
                .collect(),
            None => vec![(name.into_owned(), newest.compression)],
        };
    let mut furthest = 0;
    for (name, compression) in wanted {
        let Some(raw) = bucket
            .get(&name)
            .map_err(crate::tools::bucket::BucketError::from)?
        else {
            continue;
        };
        let Some(bytes) = decoded(&raw, compression, segment_size) else {
            continue;
        };
        let size = (bytes.len() as u64).min(segment_size);
        let end = written_end(size, block_size, |offset, buf| {
            let start = usize::try_from(offset).map_err(std::io::Error::other)?;
            let src = bytes
                .get(start..start + buf.len())
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        })
        .unwrap_or(0);
        furthest = furthest.max(end);
    }
    Ok(furthest)
}

fn compression_of(local: &str) -> Compression {
    match ArchiveName::classify(local) {
        ArchiveName::Segment { compression, .. } => compression,
        _ => Compression::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::Listed;
    use crate::tools::bucket::sort_listing;
    use std::time::Duration;

    fn l(name: &str, size: u64, secs: u64) -> Listed {
        Listed {
            name: name.into(),
            size,
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    #[test]
    fn copies_stand_for_their_segment_and_superseded_ones_do_not() {
        let s5 = "000000010000000000000005";
        let s6 = "000000010000000000000006";
        let listing = sort_listing(vec![
            l("000000010000000000000004.zst", 10, 1),
            l(&format!("{s5}.zst"), 10, 2),
            l("00000002.history", 1, 0),
            l(
                &format!("partial/{s5}/{s5}.zst.partial.walrcv_a.5-00000001"),
                5,
                1,
            ),
            l(
                &format!("partial/{s6}/{s6}.zst.partial.walrcv_a.5-00000001"),
                5,
                3,
            ),
            l(
                &format!("partial/{s6}/{s6}.zst.partial.walrcv_b.9-00000002"),
                9,
                4,
            ),
        ]);
        let (scan, modified) = scan(&listing, 16 << 20);
        let got: Vec<_> = scan
            .segments
            .iter()
            .map(|s| (s.segno, s.partial, s.size))
            .collect();
        assert_eq!(got, [(4, false, 10), (5, false, 10), (6, true, 9)]);
        assert_eq!(scan.histories, [2]);
        let newest = scan.newest().unwrap();
        assert!(newest.path.starts_with(format!("partial/{s6}")));
        let m = modified.iter().find(|(p, _)| *p == newest.path).unwrap().1;
        assert_eq!(m, SystemTime::UNIX_EPOCH + Duration::from_secs(4));
        assert_eq!(divergent_tally(&listing), DivergentTally::default());
    }
}
