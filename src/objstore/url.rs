//! `s3://BUCKET/PREFIX` (pure): the bucket, and the prefix under which the
//! archive's files are kept with their local names.

/// A parsed `s3://BUCKET/PREFIX` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    prefix: String,
}

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid object storage URL \"{url}\": {reason} (expected s3://BUCKET/PREFIX)")]
pub struct UrlError {
    pub url: String,
    pub reason: &'static str,
}

impl StoreUrl {
    /// Parses `s3://BUCKET[/PREFIX]`. The prefix may not hold an empty, `.`
    /// or `..` component: each file's key is `PREFIX/NAME`, exactly.
    pub fn parse(url: &str) -> Result<StoreUrl, UrlError> {
        let bad = |reason| UrlError {
            url: url.to_string(),
            reason,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("the scheme must be s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if !valid_bucket(bucket) {
            return Err(bad(
                "the bucket name must be 3 to 63 characters a-z, 0-9, '.' or '-'",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == ".." || c.chars().any(char::is_control))
        {
            return Err(bad("the prefix may not hold empty, '.' or '..' components"));
        }
        Ok(StoreUrl {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of the archive file `name` (a name relative to the prefix,
    /// such as `000000010000000000000003.zst` or `partial/SEG/...`).
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// The name relative to the prefix of a key listed under it.
    pub fn name_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            return Some(key);
        }
        key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_prefix() {
        let u = StoreUrl::parse("s3://wal-archive/prod/db1/").unwrap();
        assert_eq!(u.bucket(), "wal-archive");
        assert_eq!(u.prefix(), "prod/db1");
        assert_eq!(
            u.key("000000010000000000000001"),
            "prod/db1/000000010000000000000001"
        );
        assert_eq!(
            u.name_of("prod/db1/00000002.history"),
            Some("00000002.history")
        );
        assert_eq!(u.name_of("prod/db10/x"), None);
        assert_eq!(u.to_string(), "s3://wal-archive/prod/db1");
    }

    #[test]
    fn bucket_root() {
        let u = StoreUrl::parse("s3://wal").unwrap();
        assert_eq!(u.prefix(), "");
        assert_eq!(u.key("x"), "x");
        assert_eq!(StoreUrl::parse("s3://wal/").unwrap(), u);
    }

    #[test]
    fn refused() {
        for url in [
            "http://wal/x",
            "s3://",
            "s3://ab/x",
            "s3://Upper/x",
            "s3://wal//x",
            "s3://wal/a/../b",
            "s3://wal/./b",
            "wal/x",
        ] {
            assert!(StoreUrl::parse(url).is_err(), "{url} accepted");
        }
    }
}
