//! `walrcv cleanup -D s3://BUCKET/PREFIX`: the same rules ([`super::plan`])
//! over a bucket's listing ([`crate::tools::bucket`]).
//!
//! Each object directly under the prefix is an entry as a directory's file
//! is (its size, and its Last-Modified time: when it was uploaded, which is
//! what `--older-than` compares). The receivers' `.partial` copies of one
//! segment whose complete segment is not in the bucket are one entry (named
//! by the longest copy's local name, the newest time): the newest segment
//! of a timeline is protected as locally, and when a rule removes that
//! segment all of its copies go. Copies of a segment that is in the bucket
//! complete are superseded (restore never reads them): every run removes
//! them, whatever the rules. Conflict markers (`conflicts/...`) are never
//! deleted: a DBA removes them once the conflict is resolved.

use std::collections::BTreeMap;

use crate::archive::names::ArchiveName;
use crate::tools::bucket::BucketListing;

use super::plan::Entry;

/// The entries the plan judges, each with the objects it stands for.
#[derive(Debug, Default)]
pub struct BucketEntries {
    pub entries: Vec<Entry>,
    /// Object names per entry name.
    pub objects: BTreeMap<String, Vec<String>>,
}

/// The plan's entries of a bucket listing (pure).
pub fn entries(listing: &BucketListing) -> BucketEntries {
    let mut by_name: BTreeMap<String, (Entry, Vec<String>)> = BTreeMap::new();
    for o in &listing.files {
        if ArchiveName::classify(&o.name).is_segment() {
            let entry = Entry {
                name: o.name.clone(),
                size: o.size,
                modified: o.modified,
            };
            by_name.insert(o.name.clone(), (entry, vec![o.name.clone()]));
        }
    }
    let mut by_segment: BTreeMap<&str, Vec<&crate::tools::bucket::CopyObject>> = BTreeMap::new();
    for c in &listing.copies {
        by_segment.entry(&c.segment).or_default().push(c);
    }
    for copies in by_segment.values() {
        let Some(longest) = copies.iter().max_by_key(|c| c.object.size) else {
            continue;
        };
        let newest = copies.iter().map(|c| c.object.modified).max();
        let name = longest.copy.local.clone();
        let slot = by_name.entry(name.clone()).or_insert_with(|| {
            let entry = Entry {
                name,
                size: longest.object.size,
                modified: longest.object.modified,
            };
            (entry, Vec::new())
        });
        slot.0.modified = slot.0.modified.max(newest.unwrap_or(slot.0.modified));
        slot.1.extend(copies.iter().map(|c| c.object.name.clone()));
    }
    let mut out = BucketEntries::default();
    for (name, (entry, objects)) in by_name {
        out.entries.push(entry);
        out.objects.insert(name, objects);
    }
    out
}

/// The object names to delete, in order: the planned entries' objects
/// (oldest first), then the superseded copies.
pub fn objects_to_delete(
    planned: &[&Entry],
    entries: &BucketEntries,
    listing: &BucketListing,
) -> Vec<(String, u64)> {
    let sizes: BTreeMap<&str, u64> = listing
        .files
        .iter()
        .map(|o| (o.name.as_str(), o.size))
        .chain(
            listing
                .copies
                .iter()
                .map(|c| (c.object.name.as_str(), c.object.size)),
        )
        .collect();
    let mut out: Vec<(String, u64)> = planned
        .iter()
        .flat_map(|e| entries.objects.get(&e.name).into_iter().flatten())
        .map(|n| (n.clone(), sizes.get(n.as_str()).copied().unwrap_or(0)))
        .collect();
    out.extend(
        listing
            .superseded
            .iter()
            .map(|c| (c.object.name.clone(), c.object.size)),
    );
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::super::plan::{plan, Rules};
    use super::*;
    use crate::archive::names::SegmentName;
    use crate::objstore::Listed;
    use crate::tools::bucket::sort_listing;

    fn l(name: &str, size: u64, secs: u64) -> Listed {
        Listed {
            name: name.into(),
            size,
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    fn seg(n: u32) -> String {
        format!("0000000100000000000000{n:02X}")
    }

    fn listing() -> BucketListing {
        let s4 = seg(4);
        let s5 = seg(5);
        sort_listing(vec![
            l(&seg(2), 100, 1),
            l(&format!("{}.zst", seg(3)), 50, 2),
            l(&s4, 100, 3),
            l("00000001.history", 10, 0),
            l(
                &format!("partial/{s4}/{s4}.partial.walrcv_a.64-00000001"),
                100,
                2,
            ),
            l(
                &format!("partial/{s5}/{s5}.partial.walrcv_a.20-00000001"),
                32,
                4,
            ),
            l(
                &format!("partial/{s5}/{s5}.partial.walrcv_b.30-00000002"),
                48,
                5,
            ),
            // A conflict marker (of segment 2, removed below): never deleted.
            l(&format!("conflicts/{}.walrcv_a.0123abcd", seg(2)), 200, 1),
        ])
    }

    #[test]
    fn copies_of_a_segment_are_one_entry_and_the_newest_is_kept() {
        let listing = listing();
        let e = entries(&listing);
        let names: Vec<_> = e.entries.iter().map(|e| e.name.as_str()).collect();
        let s5p = format!("{}.partial", seg(5));
        assert_eq!(
            names,
            [seg(2).as_str(), &format!("{}.zst", seg(3)), &seg(4), &s5p]
        );
        let last = e.entries.last().unwrap();
        assert_eq!(last.size, 48);
        assert_eq!(
            last.modified,
            SystemTime::UNIX_EPOCH + Duration::from_secs(5)
        );
        assert_eq!(e.objects[&s5p].len(), 2);
        // A cut-off past everything: the newest (the copies) stays; the
        // superseded copy of segment 4 goes in any case.
        let rules = Rules {
            before: SegmentName::parse(&seg(9)),
            ..Rules::default()
        };
        let planned = plan(&e.entries, &rules);
        let del: Vec<_> = objects_to_delete(&planned, &e, &listing)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            del,
            [
                seg(2),
                format!("{}.zst", seg(3)),
                seg(4),
                format!("partial/{0}/{0}.partial.walrcv_a.64-00000001", seg(4)),
            ]
        );
    }

    #[test]
    fn no_rule_match_deletes_only_superseded_copies() {
        let listing = listing();
        let e = entries(&listing);
        let rules = Rules {
            before: SegmentName::parse(&seg(2)),
            ..Rules::default()
        };
        let planned = plan(&e.entries, &rules);
        let del = objects_to_delete(&planned, &e, &listing);
        assert_eq!(del.len(), 1);
        assert!(del[0].0.starts_with("partial/"));
    }
}
