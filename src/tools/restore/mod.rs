//! `walrcv restore %f %p -D ARCHIVE`: PostgreSQL's `restore_command`.
//!
//! Serves complete segments (any compression), the newest `.partial` of a
//! timeline under the segment's own name (valid WAL, then zeros), and history
//! files, each checked before it is served; see [`plan`] for which file
//! answers which request.
//!
//! The exit status is the whole interface with the startup process
//! (`RestoreArchivedFile` in PostgreSQL's `xlogarchive.c`): 0 is "restored";
//! any other status up to 125 is "not in the archive", after which recovery
//! ends and the server promotes; a status above 125 (or a signal) is FATAL,
//! and recovery stops. A file that exists but must not be used has to give
//! the last, or recovery would end early and promote at the damage.
//!
//! - [`plan`]: which archive file answers `%f` (pure).
//! - [`serve`]: reading, decompressing, checking and writing `%p` (IO).

pub mod plan;
pub mod prefetch;
pub mod remote;
pub mod serve;

use std::path::PathBuf;

pub use serve::{read_segment, restore, RestoreError, SegmentBytes, Served};

/// Exit statuses of `walrcv restore`, in one place (documented in
/// `docs/src/restore.md`).
pub mod status {
    /// `%p` holds the file asked for.
    pub const SERVED: i32 = 0;
    /// Nothing in the archive answers: PostgreSQL ends recovery normally
    /// (it probes for files that do not exist all the time).
    pub const NOT_FOUND: i32 = 1;
    /// The file exists but must not be served (fails verification, truncated
    /// or undecodable compressed file, a hole), or the request cannot be
    /// answered (bad `%f`, `%p`'s directory missing, archive unreadable, usage
    /// error). Above 125 so that PostgreSQL stops recovery (FATAL) instead of
    /// promoting. Not 126 or 127 (the server would log "command not
    /// executable" / "command not found"), and above 128 + every signal number
    /// (the server reads 128 + N as "killed by signal N", and 143, SIGTERM,
    /// as a shutdown request it obeys silently): the server logs "child
    /// process exited with exit code 200" next to walrcv's own message.
    pub const REFUSED: i32 = 200;
}

/// `walrcv restore` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The file name PostgreSQL asks for (`%f`).
    #[arg(value_name = "FILE")]
    pub file: String,
    /// Where to write it (`%p`, relative to the data directory).
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// The archive directory (where walrcv stream or pg_receivewal writes).
    #[arg(
        short = 'D',
        long = "directory",
        value_name = "DIR",
        required_unless_present = "from"
    )]
    pub directory: Option<PathBuf>,
    /// The object store (s3://BUCKET/PREFIX), asked after -D when both are
    /// given; configured from the AWS_* environment.
    #[arg(long = "from", value_name = "URL")]
    pub from: Option<String>,
    /// With --from: how many of the next segments to fetch in the
    /// background once a segment comes from the store (0: none).
    #[arg(long = "prefetch", value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    pub prefetch: u32,
    /// Internal: run as the prefetch worker for the segments after FILE
    /// (the compression suffix of the objects).
    #[arg(long = "prefetch-worker", value_name = "SUFFIX", hide = true)]
    pub prefetch_worker: Option<String>,
    /// Internal: the segment size, for the prefetch worker.
    #[arg(long = "segment-size", value_name = "BYTES", hide = true)]
    pub segment_size: Option<u64>,
}

/// Runs the command; returns its exit status.
pub fn run(args: &RestoreArgs) -> i32 {
    let result = match (&args.from, &args.directory) {
        (Some(url), dir) => run_remote(url, dir.as_deref(), args),
        (None, Some(dir)) => restore(dir, &args.file, &args.path).map_err(|e| e.to_string()),
        (None, None) => Err("one of -D and --from is needed".to_string()),
    };
    match result {
        Ok(Served::File {
            from,
            valid_end,
            partial: true,
        }) => {
            tracing::info!(
                file = %args.file,
                from = %from,
                valid_end = ?valid_end,
                "restored {} from \"{from}\": valid WAL up to {}, zeros after",
                args.file,
                valid_end.unwrap_or_default()
            );
            status::SERVED
        }
        Ok(Served::File { from, .. }) => {
            tracing::info!(file = %args.file, from = %from, "restored {} from \"{from}\"", args.file);
            status::SERVED
        }
        Ok(Served::NotFound) => {
            tracing::info!(file = %args.file, "{} is not in the archive", args.file);
            status::NOT_FOUND
        }
        Err(e) => {
            tracing::error!(
                file = %args.file,
                "walrcv restore: refusing {}: {e}; exiting with status {} so that recovery stops here",
                args.file,
                status::REFUSED
            );
            status::REFUSED
        }
    }
}

/// `--from`: the bucket tier, on a runtime of its own.
fn run_remote(
    url: &str,
    dir: Option<&std::path::Path>,
    args: &RestoreArgs,
) -> Result<Served, String> {
    let store = crate::objstore::Store::from_env(url).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("could not start the runtime: {e}"))?;
    if let (Some(suffix), Some(size)) = (&args.prefetch_worker, args.segment_size) {
        runtime.block_on(prefetch::run_worker(
            store,
            &args.file,
            suffix,
            &args.path,
            size,
            args.prefetch,
        ));
        return Ok(Served::NotFound);
    }
    runtime
        .block_on(remote::restore_from(
            &store,
            dir,
            &args.file,
            &args.path,
            args.prefetch,
        ))
        .map_err(|e| e.to_string())
}
