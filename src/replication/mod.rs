//! Replication commands and the CopyBoth stream payloads.
