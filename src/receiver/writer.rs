//! The writer: a dedicated thread that verifies, writes and fsyncs the WAL of
//! one timeline, off the network task.
//!
//! The network task hands it `(start LSN, bytes)` chunks through a bounded
//! channel (back-pressure). For each chunk the writer runs the verifier first,
//! then writes the bytes into the segment files, splitting at segment
//! boundaries. It calls `fdatasync` whenever its queue is empty (group commit:
//! one fsync covers every chunk that arrived meanwhile) and before completing a
//! segment. After each fsync it publishes [`Progress`]: `flushed` is the end of
//! the last verified record that is durable, the only position the primary is
//! ever told is flushed.
//!
//! A failure (verification, write, fsync) stops the writer: the chunk that
//! failed verification is not written, the open segment keeps its `.partial`
//! name, and the failed fsync is never retried on that descriptor.

use std::path::PathBuf;
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::archive::{ArchiveError, SegmentWriter};
use crate::lsn::{wal_file_name, Lsn, TimeLineId};
use crate::wal::{Verifier, VerifierConfig, VerifyError};

/// How far the writer got. Both positions only move forward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// End of the bytes written to segment files (not necessarily durable).
    pub written: Lsn,
    /// Durable and verified: safe to report as flushed.
    pub flushed: Lsn,
    /// Set when the writer stopped on an error (see [`WriterHandle::finish`]).
    pub failed: bool,
}

/// Why the writer stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("{error} (segment file {file}, offset {offset:#X}); nothing past {verified} is acknowledged")]
    Verify {
        error: VerifyError,
        file: String,
        offset: u64,
        verified: Lsn,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("got WAL data at {got}, expected {expected}")]
    Discontinuity { expected: Lsn, got: Lsn },
    #[error("the WAL writer thread panicked")]
    Panicked,
}

/// What the writer needs to know.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub directory: PathBuf,
    pub timeline: TimeLineId,
    pub segment_size: u64,
    /// fsync files and directories (`--no-sync` turns it off).
    pub sync: bool,
    /// Where the first chunk starts: a segment boundary.
    pub start: Lsn,
    pub verifier: VerifierConfig,
}

struct Chunk {
    start: Lsn,
    data: Bytes,
}

/// The network task's side of the writer.
pub struct WriterHandle {
    tx: Option<mpsc::Sender<Chunk>>,
    pub progress: watch::Receiver<Progress>,
    join: Option<JoinHandle<Result<(), WriterError>>>,
}

/// Chunks in flight between the network task and the writer: at 128 KiB per
/// XLogData message this bounds the memory held to about 32 MiB.
const QUEUE_DEPTH: usize = 256;

impl WriterHandle {
    /// Starts the writer thread.
    pub fn spawn(config: WriterConfig) -> Result<WriterHandle, WriterError> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let start = config.start;
        let (ptx, prx) = watch::channel(Progress {
            written: start,
            flushed: start,
            failed: false,
        });
        let join = std::thread::Builder::new()
            .name(format!("walrcv-writer-tl{}", config.timeline))
            .spawn(move || Writer::new(config, ptx).run(rx))
            .map_err(|e| {
                WriterError::Archive(ArchiveError::Io {
                    path: PathBuf::from("<writer thread>"),
                    source: e,
                })
            })?;
        Ok(WriterHandle {
            tx: Some(tx),
            progress: prx,
            join: Some(join),
        })
    }

    /// Queues a chunk. Returns `false` when the writer has stopped (on an
    /// error: call [`WriterHandle::finish`] to learn which).
    pub async fn send(&mut self, start: Lsn, data: Bytes) -> bool {
        match &self.tx {
            Some(tx) => tx.send(Chunk { start, data }).await.is_ok(),
            None => false,
        }
    }

    /// Stops the writer after the queued chunks: final fsync, the open segment
    /// stays `.partial`. Returns the final progress, or the writer's error.
    pub async fn finish(mut self) -> (Progress, Result<(), WriterError>) {
        self.tx.take();
        let join = self.join.take();
        let result = match join {
            Some(j) => tokio::task::spawn_blocking(move || j.join())
                .await
                .map_err(|_| WriterError::Panicked)
                .and_then(|r| r.map_err(|_| WriterError::Panicked))
                .and_then(|r| r),
            None => Ok(()),
        };
        let progress = *self.progress.borrow();
        (progress, result)
    }
}

struct Writer {
    config: WriterConfig,
    verifier: Verifier,
    segment: Option<SegmentWriter>,
    /// Next byte expected (and end of what was written).
    position: Lsn,
    /// End of what the last fsync covered.
    synced: Lsn,
    progress: watch::Sender<Progress>,
    published: Progress,
}

impl Writer {
    fn new(config: WriterConfig, progress: watch::Sender<Progress>) -> Writer {
        let verifier = Verifier::at_segment_start(config.verifier.clone(), config.start);
        let published = *progress.borrow();
        Writer {
            position: config.start,
            synced: config.start,
            verifier,
            segment: None,
            progress,
            published,
            config,
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Chunk>) -> Result<(), WriterError> {
        let result = self.run_inner(&mut rx);
        // Whatever happened, keep what was verified and make it durable once
        // (unless the failure was the fsync itself: never retry it).
        let closing = match (&result, self.segment.take()) {
            (Err(WriterError::Archive(ArchiveError::Fsync { .. })), _) | (_, None) => Ok(()),
            (_, Some(seg)) => self.close_partial(seg),
        };
        if closing.is_ok() && result.is_ok() {
            self.synced = self.position;
        }
        self.publish(result.is_err() || closing.is_err());
        result.and(closing)
    }

    fn close_partial(&mut self, seg: SegmentWriter) -> Result<(), WriterError> {
        seg.close_partial()?;
        if self.config.sync {
            self.synced = self.position;
        }
        Ok(())
    }

    fn run_inner(&mut self, rx: &mut mpsc::Receiver<Chunk>) -> Result<(), WriterError> {
        loop {
            let chunk = match rx.try_recv() {
                Ok(c) => c,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // The queue is drained: one fsync for everything written since.
                    self.sync()?;
                    self.publish(false);
                    match rx.blocking_recv() {
                        Some(c) => c,
                        None => return Ok(()),
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
            };
            self.handle(chunk)?;
        }
    }

    fn handle(&mut self, chunk: Chunk) -> Result<(), WriterError> {
        if chunk.start != self.position {
            return Err(WriterError::Discontinuity {
                expected: self.position,
                got: chunk.start,
            });
        }
        // Verify before writing: bytes that fail are never written.
        if let Err(error) = self.verifier.feed(&chunk.data) {
            let seg = self.config.segment_size;
            let file = wal_file_name(self.config.timeline, error.lsn.segment_number(seg), seg);
            return Err(WriterError::Verify {
                offset: error.lsn.segment_offset(seg),
                file,
                verified: self.verifier.verified_end(),
                error,
            });
        }
        let mut data = &chunk.data[..];
        while !data.is_empty() {
            let seg_size = self.config.segment_size;
            let offset = self.position.segment_offset(seg_size);
            let n = (seg_size - offset).min(data.len() as u64) as usize;
            let segment = match self.segment.take() {
                Some(s) => s,
                None => SegmentWriter::open(
                    &self.config.directory,
                    self.config.timeline,
                    self.position.segment_number(seg_size),
                    seg_size,
                    self.config.sync,
                )?,
            };
            let mut segment = segment;
            let write = segment.write_at(offset, &data[..n]);
            self.segment = Some(segment);
            write?;
            data = &data[n..];
            self.position = Lsn(self.position.0 + n as u64);
            if offset + n as u64 == seg_size {
                self.complete_segment()?;
            }
        }
        Ok(())
    }

    fn complete_segment(&mut self) -> Result<(), WriterError> {
        if let Some(mut seg) = self.segment.take() {
            seg.sync()?;
            let path = seg.complete()?;
            if self.config.sync {
                self.synced = self.position;
            }
            tracing::info!(
                "finished segment at {} (timeline {}): {}",
                self.position,
                self.config.timeline,
                path.display()
            );
            self.publish(false);
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), WriterError> {
        if self.synced == self.position {
            return Ok(());
        }
        if let Some(seg) = self.segment.as_mut() {
            seg.sync()?;
        }
        if self.config.sync {
            self.synced = self.position;
        }
        Ok(())
    }

    /// Publishes the progress; `flushed` is durable ∩ verified. Without `sync`
    /// (`--no-sync`) nothing is durable and written WAL is reported instead, as
    /// pg_receivewal does in that mode.
    fn publish(&mut self, failed: bool) {
        let durable = if self.config.sync {
            self.synced
        } else {
            self.position
        };
        // The verified end is MAXALIGNed; the padding after a record is no data,
        // so a durable position inside it covers the record.
        let flushed = self.verifier.verified_end().min(durable.max_align());
        let p = Progress {
            written: self.position.max(self.published.written),
            flushed: flushed.max(self.published.flushed),
            failed: failed || self.published.failed,
        };
        if p != self.published {
            self.published = p;
            self.progress.send_replace(p);
        }
    }
}
