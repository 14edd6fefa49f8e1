//! Offline tools over an archive directory.

pub mod cleanup;
pub mod restore;
pub mod status;
pub mod verify;
