//! The writer: a dedicated thread that verifies, writes and fsyncs the WAL of
//! one timeline, off the network task.
//!
//! The network task hands it `(start LSN, bytes)` chunks through a bounded
//! channel (back-pressure). For each chunk the writer runs the verifier first,
//! then writes the bytes into the segment files, splitting at segment
//! boundaries. It calls `fdatasync` at the end of each batch, when the network
//! task has drained the socket and nothing more is queued (group commit: one
//! fsync covers every message that arrived together), and before completing a
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

enum Msg {
    Data(Chunk),
    /// The network task has no more complete message buffered: the batch that
    /// arrived together ends here, so this is the moment to fsync (unless more
    /// data is already queued behind this marker: then a later marker will do).
    BatchEnd,
}

/// The network task's side of the writer.
pub struct WriterHandle {
    tx: Option<mpsc::Sender<Msg>>,
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
            Some(tx) => tx.send(Msg::Data(Chunk { start, data })).await.is_ok(),
            None => false,
        }
    }

    /// Marks the end of a batch of messages that arrived together: the writer
    /// fsyncs once it has written them, unless more data is already queued.
    pub async fn batch_end(&mut self) -> bool {
        match &self.tx {
            Some(tx) => tx.send(Msg::BatchEnd).await.is_ok(),
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

    fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> Result<(), WriterError> {
        let result = self.run_inner(&mut rx);
        // Whatever happened, keep what was verified and make it durable once
        // (unless the failure was the fsync itself: never retry it).
        let closing = match (&result, self.segment.take()) {
            (Err(WriterError::Archive(ArchiveError::Fsync { .. })), _) | (_, None) => Ok(()),
            (_, Some(seg)) => self.close_partial(seg),
        };
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

    fn run_inner(&mut self, rx: &mut mpsc::Receiver<Msg>) -> Result<(), WriterError> {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Data(chunk) => self.handle(chunk)?,
                // One fsync for the whole batch (group commit); skipped while
                // more data is queued, whose own marker follows it.
                Msg::BatchEnd if rx.is_empty() => {
                    self.sync()?;
                    self.publish(false);
                }
                Msg::BatchEnd => {}
            }
        }
        Ok(())
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
        if let Some(seg) = self.segment.take() {
            // complete() fdatasyncs, renames, then fsyncs the directory.
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

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;
    const SYSID: u64 = 7710430266889386786;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/wal/pg15")
            .join(name);
        std::fs::read(path).unwrap()
    }

    fn config(dir: &std::path::Path, start: Lsn) -> WriterConfig {
        WriterConfig {
            directory: dir.to_path_buf(),
            timeline: 1,
            segment_size: SEG,
            sync: true,
            start,
            verifier: VerifierConfig {
                segment_size: SEG,
                block_size: 8192,
                system_id: Some(SYSID),
                timeline: 1,
                server_major: Some(15),
            },
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Real WAL in odd-sized chunks that cross page and segment boundaries is
    /// written byte for byte, completed segments are renamed, and the flushed
    /// position is the verified end, never beyond.
    #[test]
    fn writes_real_wal_identically_and_reports_verified_flush() {
        let tmp = tempfile::tempdir().unwrap();
        let names = [
            "000000010000000000000008",
            "000000010000000000000009",
            "00000001000000000000000A",
        ];
        let wal: Vec<u8> = names.iter().flat_map(|n| fixture(n)).collect();
        let start = Lsn(8 * SEG);
        // Stop inside segment A, in the middle of whatever record is there.
        let stop = 2 * SEG as usize + 600_001;
        let (progress, result) = runtime().block_on(async {
            let mut w = WriterHandle::spawn(config(tmp.path(), start)).unwrap();
            let mut pos = 0usize;
            let mut size = 1usize;
            while pos < stop {
                let n = size.min(stop - pos);
                assert!(
                    w.send(
                        Lsn(start.0 + pos as u64),
                        Bytes::copy_from_slice(&wal[pos..pos + n])
                    )
                    .await
                );
                pos += n;
                size = (size * 7 + 13) % 200_000 + 1;
            }
            w.finish().await
        });
        result.unwrap();
        for n in &names[..2] {
            assert!(
                std::fs::read(tmp.path().join(n)).unwrap() == fixture(n),
                "{n} identical"
            );
        }
        let partial = std::fs::read(tmp.path().join("00000001000000000000000A.partial")).unwrap();
        let upto = stop - 2 * SEG as usize;
        assert_eq!(partial.len() as u64, SEG);
        assert!(partial[..upto] == fixture(names[2])[..upto]);
        assert!(partial[upto..].iter().all(|&b| b == 0));
        assert_eq!(progress.written, Lsn(start.0 + stop as u64));
        // What a fresh verifier accepts over the same bytes bounds the flush.
        let mut v = Verifier::at_segment_start(config(tmp.path(), start).verifier, start);
        v.feed(&wal[..stop]).unwrap();
        assert_eq!(progress.flushed, v.verified_end());
        assert!(progress.flushed <= progress.written);
        assert!(
            progress.flushed > Lsn(10 * SEG + 0x7_0000),
            "flush advanced past the big record"
        );
    }

    /// A flipped bit: the chunk is not written, nothing past the last good
    /// record is reported, and the error names the file and offset.
    #[test]
    fn corrupted_chunk_is_not_written_nor_acknowledged() {
        let tmp = tempfile::tempdir().unwrap();
        let mut wal = fixture("000000010000000000000008");
        let bad = 0x2_0100; // inside a record body on page 0x20000
        wal[bad] ^= 0x10;
        let start = Lsn(8 * SEG);
        let (progress, result) = runtime().block_on(async {
            let mut w = WriterHandle::spawn(config(tmp.path(), start)).unwrap();
            for (i, chunk) in wal.chunks(8192).enumerate() {
                if !w
                    .send(
                        Lsn(start.0 + (i * 8192) as u64),
                        Bytes::copy_from_slice(chunk),
                    )
                    .await
                {
                    break;
                }
            }
            w.finish().await
        });
        let err = result.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, WriterError::Verify { .. }), "{msg}");
        assert!(msg.contains("000000010000000000000008"), "{msg}");
        assert!(progress.failed);
        assert!(
            progress.flushed.0 <= start.0 + bad as u64,
            "flush {} past the bad byte",
            progress.flushed
        );
        assert_eq!(
            progress.written,
            Lsn(start.0 + 0x2_0000),
            "the bad page was not written"
        );
        let partial = std::fs::read(tmp.path().join("000000010000000000000008.partial")).unwrap();
        assert!(partial[0x2_0000..].iter().all(|&b| b == 0));
        assert!(!tmp.path().join("000000010000000000000008").exists());
    }

    #[test]
    fn a_gap_in_the_stream_stops_the_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = fixture("000000010000000000000008");
        let start = Lsn(8 * SEG);
        let (_, result) = runtime().block_on(async {
            let mut w = WriterHandle::spawn(config(tmp.path(), start)).unwrap();
            w.send(start, Bytes::copy_from_slice(&wal[..8192])).await;
            w.send(
                Lsn(start.0 + 16384),
                Bytes::copy_from_slice(&wal[16384..24576]),
            )
            .await;
            w.finish().await
        });
        assert!(matches!(result, Err(WriterError::Discontinuity { .. })));
    }
}
