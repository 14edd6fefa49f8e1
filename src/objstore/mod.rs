//! The archive in S3-compatible object storage (`s3://BUCKET/PREFIX`), over
//! the `object_store` crate: AWS S3, MinIO, Ceph RGW, SeaweedFS, R2...
//!
//! Configuration is the ecosystem's: the standard `AWS_*` environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, web identity and
//! container credentials, `AWS_SERVER_SIDE_ENCRYPTION` and
//! `AWS_SSE_KMS_KEY_ID` for SSE, `AWS_ALLOW_HTTP` for a plain-HTTP endpoint),
//! read by [`object_store::aws::AmazonS3Builder::from_env`]. Path-style
//! addressing is the default (what S3-compatible servers expect);
//! `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true` turns it off. Every PUT carries
//! an `x-amz-checksum-sha256` of its payload unless `WALRCV_S3_CHECKSUM=none`
//! (for servers that reject the header).
//!
//! Objects keep the local file names (`PREFIX/000000010000000000000003.zst`,
//! `PREFIX/00000002.history`); `.partial` copies live under
//! `PREFIX/partial/SEG/` (see [`partial`]). Every upload is create-only
//! ([`Store::put_create`], see [`conflict`]); a conflict also leaves a
//! marker object under `PREFIX/conflicts/` (see [`marker`]).

pub mod conflict;
pub mod marker;
pub mod partial;
pub mod url;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, Checksum, S3ConditionalPut};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, RetryConfig};

pub use conflict::{ReadBack, Resolution};
pub use url::{StoreUrl, UrlError};

/// Object storage failures; each names the object concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("could not configure object storage for {url}: {source}")]
    Config {
        url: String,
        source: object_store::Error,
    },
    /// The object exists with other content: nothing was overwritten.
    #[error(
        "CONFLICT: object \"{key}\" already exists with different content than the local file \
         (local: {ours}; object: {theirs}); nothing was overwritten (another cluster or receiver \
         writing to the same prefix?)"
    )]
    Conflict {
        key: String,
        ours: marker::Side,
        theirs: marker::Side,
    },
    /// A PUT ended without a clear answer and the object is not there.
    #[error("upload of \"{key}\" not confirmed: {cause}")]
    NotStored { key: String, cause: String },
    #[error(
        "the object store does not support create-only uploads (If-None-Match: *) for \"{key}\""
    )]
    NoConditionalPut { key: String },
    #[error("{op} of \"{key}\" failed: {source}")]
    Request {
        op: &'static str,
        key: String,
        source: object_store::Error,
    },
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// The marker `receiver` leaves for a conflict on `object` (its name
    /// relative to the prefix); `None` for any other error.
    pub fn conflict_marker(&self, object: &str, receiver: &str) -> Option<marker::Marker> {
        match self {
            StoreError::Conflict { ours, theirs, .. } => Some(marker::Marker {
                object: object.to_string(),
                receiver: receiver.to_string(),
                ours: *ours,
                theirs: *theirs,
            }),
            _ => None,
        }
    }
}

/// One listed object: its name relative to the prefix, size and
/// Last-Modified time (when it was uploaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

/// The archive's prefix in a bucket.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    url: StoreUrl,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

impl Store {
    /// Configures the store for `url` from the environment (see the module
    /// documentation). No request is sent.
    pub fn from_env(url: &str) -> Result<Store, StoreError> {
        let url = StoreUrl::parse(url)?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(url.bucket())
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if std::env::var("AWS_VIRTUAL_HOSTED_STYLE_REQUEST").is_err() {
            builder = builder.with_virtual_hosted_style_request(false);
        }
        if checksum_wanted(std::env::var("WALRCV_S3_CHECKSUM").ok().as_deref()) {
            builder = builder.with_checksum_algorithm(Checksum::SHA256);
        }
        let inner = builder.build().map_err(|source| StoreError::Config {
            url: url.to_string(),
            source,
        })?;
        Ok(Store {
            inner: Arc::new(inner),
            url,
        })
    }

    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    fn path(&self, name: &str) -> ObjectPath {
        ObjectPath::from(self.url.key(name))
    }

    /// Uploads `bytes` as `name` only if no such object exists. On a 412, or
    /// an answer lost (timeout, reset, 5xx), the object is read back and
    /// compared: identical is success, different is [`StoreError::Conflict`]
    /// (nothing overwritten), missing is [`StoreError::NotStored`].
    pub async fn put_create(&self, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        let key = self.url.key(name);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let cause = match self
            .inner
            .put_opts(&self.path(name), bytes.clone().into(), opts)
            .await
        {
            Ok(_) => return Ok(()),
            Err(object_store::Error::NotImplemented) => {
                return Err(StoreError::NoConditionalPut { key })
            }
            Err(object_store::Error::AlreadyExists { .. }) => "it already exists".to_string(),
            Err(e) => {
                tracing::warn!(key = %key, "upload of \"{key}\" has no clear answer ({e}); reading it back");
                e.to_string()
            }
        };
        let found = self.get(name).await?;
        let read_back = match &found {
            Some(b) => ReadBack::Found(b),
            None => ReadBack::Missing,
        };
        match conflict::resolve(&bytes, read_back) {
            Resolution::Stored => Ok(()),
            Resolution::Conflict => Err(StoreError::Conflict {
                key,
                ours: marker::Side::of(&bytes),
                theirs: marker::Side::of(found.as_deref().unwrap_or_default()),
            }),
            Resolution::Retry => Err(StoreError::NotStored { key, cause }),
        }
    }

    /// Writes `bytes` as `name` unless an object of that name exists (its
    /// content is not compared: for markers, whose content only describes).
    /// An answer lost is resolved by one HEAD.
    pub async fn put_if_absent(&self, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        let key = self.url.key(name);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(&self.path(name), bytes.into(), opts)
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(object_store::Error::NotImplemented) => Err(StoreError::NoConditionalPut { key }),
            Err(e) => match self.exists(name).await? {
                true => Ok(()),
                false => Err(StoreError::NotStored {
                    key,
                    cause: e.to_string(),
                }),
            },
        }
    }

    /// The whole object, or `None` when there is none.
    pub async fn get(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        let request = |source| StoreError::Request {
            op: "GET",
            key: self.url.key(name),
            source,
        };
        match self.inner.get(&self.path(name)).await {
            Ok(result) => result.bytes().await.map(Some).map_err(request),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(request(e)),
        }
    }

    /// Whether an object exists (one HEAD).
    pub async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        match self.inner.head(&self.path(name)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(StoreError::Request {
                op: "HEAD",
                key: self.url.key(name),
                source,
            }),
        }
    }

    /// Deletes an object (no error when it is already gone).
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StoreError::Request {
                op: "DELETE",
                key: self.url.key(name),
                source,
            }),
        }
    }

    /// The objects directly under `dir` (a name relative to the prefix
    /// ending in `/`, or "" for the prefix itself): one LIST (paged).
    pub async fn list(&self, dir: &str) -> Result<Vec<Listed>, StoreError> {
        let key = self.url.key(dir.trim_end_matches('/'));
        let prefix = (!key.is_empty()).then(|| ObjectPath::from(key.as_str()));
        let listed = self
            .inner
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(|source| StoreError::Request {
                op: "LIST",
                key: key.clone(),
                source,
            })?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|meta| {
                let name = self.url.name_of(meta.location.as_ref())?.to_string();
                Some(Listed {
                    name,
                    size: meta.size,
                    modified: meta.last_modified.into(),
                })
            })
            .collect())
    }

    /// The first object whose name sorts after `after` (a name relative to
    /// the prefix), at any depth under `dir` ("" for the prefix itself):
    /// one LIST that starts there (S3's `start-after`), whatever the bucket
    /// holds beyond it.
    pub async fn first_after(&self, dir: &str, after: &str) -> Result<Option<Listed>, StoreError> {
        use futures_util::StreamExt;
        let key = self.url.key(dir.trim_end_matches('/'));
        let prefix = (!key.is_empty()).then(|| ObjectPath::from(key.as_str()));
        let offset = ObjectPath::from(self.url.key(after));
        let mut listed = self.inner.list_with_offset(prefix.as_ref(), &offset);
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|source| StoreError::Request {
                op: "LIST",
                key: key.clone(),
                source,
            })?;
            // A store that ignores the offset lists from the start.
            if meta.location.as_ref() <= offset.as_ref() {
                continue;
            }
            if let Some(name) = self.url.name_of(meta.location.as_ref()) {
                return Ok(Some(Listed {
                    name: name.to_string(),
                    size: meta.size,
                    modified: meta.last_modified.into(),
                }));
            }
        }
        Ok(None)
    }

    /// Every object under the prefix, at any depth (`partial/SEG/...`
    /// included): one paged LIST without delimiter, for the offline tools.
    pub async fn list_all(&self) -> Result<Vec<Listed>, StoreError> {
        use futures_util::TryStreamExt;
        let key = self.url.prefix().to_string();
        let prefix = (!key.is_empty()).then(|| ObjectPath::from(key.as_str()));
        let metas: Vec<object_store::ObjectMeta> = self
            .inner
            .list(prefix.as_ref())
            .try_collect()
            .await
            .map_err(|source| StoreError::Request {
                op: "LIST",
                key: key.clone(),
                source,
            })?;
        Ok(metas
            .into_iter()
            .filter_map(|meta| {
                let name = self.url.name_of(meta.location.as_ref())?.to_string();
                Some(Listed {
                    name,
                    size: meta.size,
                    modified: meta.last_modified.into(),
                })
            })
            .collect())
    }

    /// The first `len` bytes of an object (a ranged GET), or `None` when
    /// there is no such object.
    pub async fn get_prefix(&self, name: &str, len: u64) -> Result<Option<Bytes>, StoreError> {
        match self.inner.get_range(&self.path(name), 0..len).await {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(StoreError::Request {
                op: "GET",
                key: self.url.key(name),
                source,
            }),
        }
    }
}

/// `WALRCV_S3_CHECKSUM`: on unless `none` (or `off`).
fn checksum_wanted(setting: Option<&str>) -> bool {
    !matches!(setting, Some("none" | "off"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_names_its_marker() {
        let e = StoreError::Conflict {
            key: "db1/000000010000000000000003".into(),
            ours: marker::Side::of(b"ours"),
            theirs: marker::Side::of(b"theirs"),
        };
        let text = e.to_string();
        assert!(text.contains("CONFLICT"), "{text}");
        assert!(text.contains("local: 4 bytes"), "{text}");
        assert!(text.contains("object: 6 bytes"), "{text}");
        let m = e
            .conflict_marker("000000010000000000000003", "walrcv_a")
            .unwrap();
        assert_eq!(
            (m.ours, m.theirs),
            (marker::Side::of(b"ours"), marker::Side::of(b"theirs"))
        );
        assert!(m
            .name()
            .starts_with("conflicts/000000010000000000000003.walrcv_a."));
        let other = StoreError::NotStored {
            key: "k".into(),
            cause: "reset".into(),
        };
        assert_eq!(other.conflict_marker("k", "walrcv_a"), None);
    }

    #[test]
    fn checksum_setting() {
        assert!(checksum_wanted(None));
        assert!(checksum_wanted(Some("sha256")));
        assert!(!checksum_wanted(Some("none")));
        assert!(!checksum_wanted(Some("off")));
    }
}
