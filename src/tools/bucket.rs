//! The archive in a bucket (`s3://BUCKET/PREFIX`) for the offline tools
//! (`walrcv verify`, `walrcv cleanup`).
//!
//! One LIST of the whole prefix ([`Bucket::list`]), sorted out purely by
//! [`sort_listing`] with the same name rules as a local directory
//! ([`ArchiveName::classify`]): the objects directly under the prefix are the
//! archive's files under their local names; the receivers' `.partial` copies
//! (`partial/SEG/LOCAL.RECEIVER.VERSION`, see [`crate::objstore::partial`])
//! stand for `LOCAL`, and are *superseded* once the complete segment `SEG`
//! (any compression) is in the bucket: restore never reads them then.
//!
//! Conflict markers (`conflicts/...`, see [`crate::objstore::marker`]) are
//! sorted out apart: no tool reads them as WAL, cleanup never deletes them,
//! `walrcv status` reports them.
//!
//! The IO is thin: a current-thread runtime blocks on each request, one
//! object at a time, so a tool holds at most about one segment in memory.

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::archive::names::ArchiveName;
use crate::objstore::marker::{self, MarkerName};
use crate::objstore::partial::{self, Copy};
use crate::objstore::{Listed, Store, StoreError};

/// Why the bucket could not be read (each names the URL or object key).
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not start the runtime for {url}: {source}")]
    Runtime { url: String, source: std::io::Error },
}

/// A receiver's uploaded `.partial` copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyObject {
    pub object: Listed,
    /// The segment name (`SEG` of `partial/SEG/`).
    pub segment: String,
    pub copy: Copy,
}

/// The listing, sorted out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketListing {
    /// Objects directly under the prefix, by name.
    pub files: Vec<Listed>,
    /// Copies whose complete segment is not in the bucket, by name.
    pub copies: Vec<CopyObject>,
    /// Copies of a segment that is in the bucket complete, by name.
    pub superseded: Vec<CopyObject>,
    /// Conflict markers left by the uploaders, by name.
    pub conflicts: Vec<MarkerObject>,
}

/// A conflict marker in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerObject {
    pub object: Listed,
    pub marker: MarkerName,
}

/// Sorts a listing out (pure). Objects that are neither (deeper names that
/// are no copy, SeaweedFS's directory markers) are left out.
pub fn sort_listing(mut listed: Vec<Listed>) -> BucketListing {
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let complete: BTreeSet<String> = listed
        .iter()
        .filter(|l| !l.name.contains('/'))
        .filter_map(|l| match ArchiveName::classify(&l.name) {
            ArchiveName::Segment {
                name,
                partial: false,
                ..
            } => Some(name.as_str().to_owned()),
            _ => None,
        })
        .collect();
    let mut out = BucketListing::default();
    for object in listed {
        if !object.name.contains('/') {
            out.files.push(object);
            continue;
        }
        if let Some(m) = marker::parse(&object.name) {
            out.conflicts.push(MarkerObject { object, marker: m });
            continue;
        }
        let Some(c) = copy_of(object) else { continue };
        if complete.contains(&c.segment) {
            out.superseded.push(c);
        } else {
            out.copies.push(c);
        }
    }
    out
}

/// `partial/SEG/FILE` parsed, when FILE is a copy of SEG's `.partial`.
fn copy_of(object: Listed) -> Option<CopyObject> {
    let rest = object.name.strip_prefix("partial/")?;
    let (segment, file) = rest.split_once('/')?;
    let copy = partial::parse(file)?;
    let same_segment = matches!(
        ArchiveName::classify(&copy.local),
        ArchiveName::Segment { name, partial: true, .. } if name.as_str() == segment
    );
    let segment = segment.to_owned();
    same_segment.then_some(CopyObject {
        segment,
        copy,
        object,
    })
}

/// A bucket prefix with a runtime to block on.
pub struct Bucket {
    store: Store,
    runtime: tokio::runtime::Runtime,
}

impl Bucket {
    /// Configures the store for `url` from the environment (no request).
    pub fn open(url: &str) -> Result<Bucket, BucketError> {
        let store = Store::from_env(url)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| BucketError::Runtime {
                url: url.to_owned(),
                source,
            })?;
        Ok(Bucket { store, runtime })
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn url(&self) -> String {
        self.store.url().to_string()
    }

    /// The key of an object name.
    pub fn key(&self, name: &str) -> String {
        self.store.url().key(name)
    }

    /// `s3://BUCKET/KEY` of an object name.
    pub fn object_url(&self, name: &str) -> String {
        format!("s3://{}/{}", self.store.url().bucket(), self.key(name))
    }

    /// One LIST of the prefix, sorted out.
    pub fn list(&self) -> Result<BucketListing, BucketError> {
        let listed = self.runtime.block_on(self.store.list_all())?;
        Ok(sort_listing(listed))
    }

    /// A whole object (`None`: gone meanwhile).
    pub fn get(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        self.runtime.block_on(self.store.get(name))
    }

    /// The first `len` bytes of an object.
    pub fn get_prefix(&self, name: &str, len: u64) -> Result<Option<Bytes>, StoreError> {
        self.runtime.block_on(self.store.get_prefix(name, len))
    }

    /// Deletes an object (gone already is fine).
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.runtime.block_on(self.store.delete(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(name: &str) -> Listed {
        Listed {
            name: name.into(),
            size: 1,
            modified: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    const S3: &str = "000000010000000000000003";
    const S4: &str = "000000010000000000000004";

    #[test]
    fn files_copies_and_superseded_copies() {
        let listing = sort_listing(vec![
            l(&format!(
                "partial/{S4}/{S4}.zst.partial.walrcv_b.10-0000000a"
            )),
            l(&format!("{S3}.zst")),
            l("00000002.history"),
            l(&format!(
                "partial/{S3}/{S3}.zst.partial.walrcv_a.10-0000000a"
            )),
            l(&format!(
                "partial/{S4}/{S4}.zst.partial.walrcv_a.20-0000000b"
            )),
            l(&format!("partial/{S4}")), // SeaweedFS directory marker
            l(&format!("partial/{S4}/{S3}.partial.walrcv_a.20-0000000b")), // wrong dir
            l("other/thing"),
            l(&format!("conflicts/{S3}.zst.walrcv_a.0123abcd")),
            l("conflicts/not-a-marker"),
        ]);
        let names = |v: &[Listed]| v.iter().map(|o| o.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&listing.files),
            [&format!("{S3}.zst"), "00000002.history"]
        );
        let copies: Vec<_> = listing
            .copies
            .iter()
            .map(|c| c.copy.receiver.as_str())
            .collect();
        assert_eq!(copies, ["walrcv_a", "walrcv_b"]);
        assert!(listing.copies.iter().all(|c| c.segment == S4));
        assert_eq!(listing.superseded.len(), 1);
        assert_eq!(listing.superseded[0].segment, S3);
        assert_eq!(
            listing.superseded[0].copy.local,
            format!("{S3}.zst.partial")
        );
        // A marker is neither a file nor a copy: verify, restore and
        // cleanup never see it.
        assert_eq!(listing.conflicts.len(), 1);
        assert_eq!(listing.conflicts[0].marker.object, format!("{S3}.zst"));
        assert_eq!(listing.conflicts[0].marker.receiver, "walrcv_a");
    }

    #[test]
    fn a_top_level_partial_supersedes_nothing() {
        let listing = sort_listing(vec![
            l(&format!("{S3}.partial")),
            l(&format!("partial/{S3}/{S3}.partial.walrcv_a.10-0000000a")),
        ]);
        assert_eq!(listing.files.len(), 1);
        assert_eq!(listing.copies.len(), 1);
        assert!(listing.superseded.is_empty());
    }
}
