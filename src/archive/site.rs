//! The names of the archive's IO: what a durable operation is for ([`Site`])
//! and which system call it is ([`Op`]). [`super::durable`] takes them with
//! every call and [`super::failpoints`] names its failpoints after them
//! (`"{site}-{op}"`), so both depend on this file and not on each other.

/// What a durable operation is for. Together with the [`Op`] it names the
/// failpoint (`"{site}-{op}"`, e.g. `wal-fdatasync`, `complete-rename`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// WAL written into the open segment, its fdatasync, and the directory
    /// fsync an installed segment's new name owes.
    Wal,
    /// Creating and zero-filling the next segment (`NAME.partial.tmp`).
    Prepare,
    /// Renaming a prepared segment to `NAME.partial`; renaming a compressed
    /// segment streamed again aside over its old `NAME.gz.partial`, and the
    /// directory fsync after it.
    Install,
    /// Completing a segment: final fdatasync, rename to `NAME`, directory fsync.
    Complete,
    /// Closing a segment written direct as a padded `.partial`.
    ClosePartial,
    /// A timeline history file written through `.tmp`.
    History,
    /// Files found in the archive at start: their fsync, and the reopening of
    /// an existing `.partial`.
    Startup,
    /// `walrcv cleanup`: removing old WAL, then the one directory fsync.
    Cleanup,
    /// Setting a divergent segment file aside (`NAME.divergent.tmp`).
    Divergent,
}

impl Site {
    pub const ALL: [Site; 9] = [
        Site::Wal,
        Site::Prepare,
        Site::Install,
        Site::Complete,
        Site::ClosePartial,
        Site::History,
        Site::Startup,
        Site::Cleanup,
        Site::Divergent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Site::Wal => "wal",
            Site::Prepare => "prepare",
            Site::Install => "install",
            Site::Complete => "complete",
            Site::ClosePartial => "close",
            Site::History => "history",
            Site::Startup => "startup",
            Site::Cleanup => "cleanup",
            Site::Divergent => "divergent",
        }
    }
}

/// The system call a durable operation makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Opening a file for writing (creating it or not).
    Open,
    Pwrite,
    Fdatasync,
    Fsync,
    Rename,
    FsyncDir,
    /// Removing a file (`walrcv cleanup`).
    Unlink,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Open,
        Op::Pwrite,
        Op::Fdatasync,
        Op::Fsync,
        Op::Rename,
        Op::FsyncDir,
        Op::Unlink,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Pwrite => "pwrite",
            Op::Fdatasync => "fdatasync",
            Op::Fsync => "fsync",
            Op::Rename => "rename",
            Op::FsyncDir => "fsync-dir",
            Op::Unlink => "unlink",
        }
    }
}
