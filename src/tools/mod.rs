//! Offline tools over an archive directory, or over an archive in a bucket
//! (`s3://BUCKET/PREFIX`, read through [`bucket`]).

pub mod bucket;
pub mod cleanup;
pub mod restore;
pub mod status;
pub mod verify;
