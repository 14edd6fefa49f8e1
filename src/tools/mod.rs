//! Offline tools over an archive directory.

pub mod verify;
