//! Offline tools over an archive directory.

pub mod cleanup;
pub mod status;
pub mod verify;
