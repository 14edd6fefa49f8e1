//! Offline tools over an archive directory.

pub mod status;
pub mod verify;
