//! `walrcv stream --upload s3://BUCKET/PREFIX`: the uploader.
//!
//! It runs on a thread of its own with its own runtime, and reads the local
//! archive as any other reader would: streaming and acknowledgements never
//! wait for it (the local, fsynced, verified archive is what walrcv
//! acknowledges; RPO = 0 holds locally while the store is down or slow).
//! Every second it lists the archive directory and uploads, oldest first,
//! the complete segments and history files not confirmed yet (final by
//! construction once they carry their name), create-only (see
//! [`crate::objstore`]); failures are retried per file with backoff
//! (1 s doubling to 60 s). The `.partial` files are uploaded as new
//! versions at start, every `--upload-partial-interval`, at once at a
//! timeline switch (a `.partial` of a new timeline: the old timeline's last
//! `.partial` is final then), and at a clean stop ([`plan::partial_pass`]);
//! not at a plain segment switch, whose new `.partial` holds almost nothing
//! yet (uploading it at once doubled the bytes sent). A failed `.partial`
//! upload is retried with the same backoff. Older versions are deleted once
//! a newer one (or the complete segment) is confirmed. With
//! `--upload-keep-local`, confirmed complete segments beyond what is kept
//! are removed locally ([`plan::removable`]). The thread runs at nice
//! [`UPLOAD_NICE`] (Linux), below the threads that receive and acknowledge.
//!
//! A conflict (an object of the name holding other bytes: never
//! overwritten) also leaves a marker object in the bucket, create-only
//! ([`crate::objstore::marker`]), so that `walrcv status` on the bucket
//! sees it; failing to write it is a warning.
//!
//! What is confirmed is persisted in the archive directory ([`state`]): a
//! restart neither uploads nor reads back what an earlier process
//! confirmed (for a `.partial`: the same content, its object still there
//! by one HEAD). Without a usable state file, the files still in the directory
//! are offered again, which the create-only rule turns into a read-back and
//! compare (one GET per file still local).

pub mod plan;
pub mod state;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;

use crate::lsn::TimeLineId;
use crate::objstore::{partial, Store, StoreError};
use plan::{KeepLocal, Kind, LocalFile, PartialClock};

/// What `--upload*` asked for.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    pub directory: PathBuf,
    pub partial_interval: Duration,
    pub keep_local: Option<KeepLocal>,
    /// This receiver's name in `.partial` copies.
    pub receiver_id: String,
}

/// The running uploader; [`Uploader::finish`] stops it after a last pass.
pub struct Uploader {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl Uploader {
    /// Starts the uploader thread.
    pub fn start(store: Store, opts: UploadOptions) -> std::io::Result<Uploader> {
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("walrcv-upload".into())
            .spawn(move || {
                lower_priority();
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("upload: could not start the runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(State::new(store, opts).run(stopped));
            })?;
        Ok(Uploader { stop, thread })
    }

    /// Asks for a last pass (the `.partial` files, then what is pending) and
    /// waits for it, at most `limit`.
    pub fn finish(self, limit: Duration) {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + limit;
        while !self.thread.is_finished() {
            if Instant::now() > deadline {
                tracing::warn!("upload: the last upload pass did not end within {limit:?}; what is pending is uploaded at the next start");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.thread.join();
    }
}

/// The uploader thread's nice value (Linux: per thread).
pub const UPLOAD_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`UPLOAD_NICE`], so that on
/// busy cores the uploads yield to the receive, fsync and acknowledge path
/// (threads the uploader's runtime starts inherit it). On Linux a nice
/// value belongs to the thread, not the process; elsewhere nothing is done.
/// A failure (a seccomp profile, say) is logged and the uploader runs at
/// the normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority only changes
        // this thread's nice value.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, UPLOAD_NICE)
        };
        if rc != 0 {
            tracing::warn!(
                "upload: could not lower the uploader's CPU priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Retry state of one file.
#[derive(Debug, Clone, Copy)]
struct Retry {
    attempts: u32,
    next: Instant,
}

fn retry_delay(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(6)).min(Duration::from_secs(60))
}

struct State {
    store: Store,
    opts: UploadOptions,
    done: HashSet<String>,
    retries: HashMap<String, Retry>,
    conflicted: HashSet<String>,
    /// Local `.partial` name → the object of its newest confirmed version.
    partials: HashMap<String, String>,
    /// Local `.partial` name → its size and mtime at that upload: an
    /// unchanged file is not read again.
    partial_stamps: HashMap<String, (u64, SystemTime)>,
    /// Segments whose stale copies of ours were cleaned in this process.
    partial_dirs_cleaned: HashSet<String>,
    last_partial_pass: Option<Instant>,
    /// The timelines of the `.partial` files the passes have seen: a new
    /// one beside them is a timeline switch ([`plan::partial_pass`]).
    partial_timelines: BTreeSet<TimeLineId>,
    /// Set while a `.partial` upload of the last pass failed.
    partial_retry: Option<Retry>,
    /// Files an earlier process confirmed ([`state`]), taken into `done`
    /// when the local file has the same size.
    vouched: state::Confirmed,
    /// What the state file says now.
    saved: state::Saved,
}

impl State {
    fn new(store: Store, opts: UploadOptions) -> State {
        State {
            store,
            opts,
            done: HashSet::new(),
            retries: HashMap::new(),
            conflicted: HashSet::new(),
            partials: HashMap::new(),
            partial_stamps: HashMap::new(),
            partial_dirs_cleaned: HashSet::new(),
            last_partial_pass: None,
            partial_timelines: BTreeSet::new(),
            partial_retry: None,
            vouched: state::Confirmed::new(),
            saved: state::Saved::default(),
        }
    }

    /// Loads the state file, once the store confirms it still has the
    /// newest file it names (one HEAD; a bucket emptied or replaced since,
    /// or a store that cannot answer, means every file is offered again).
    /// Its `.partial` objects become this process's confirmed versions: a
    /// local `.partial` whose content gives the same object is not offered
    /// again.
    async fn load_state(&mut self) {
        let url = self.store.url().to_string();
        let Some(saved) = state::load(&self.opts.directory, &url) else {
            return;
        };
        if let Some(newest) = saved.newest_object() {
            match self.store.exists(newest).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("upload: the state file names \"{newest}\" as uploaded, but {url} does not have it: every local file is offered again");
                    return;
                }
                Err(e) => {
                    tracing::warn!("upload: cannot check the state file against the store ({e}): every local file is offered again");
                    return;
                }
            }
        }
        tracing::info!(
            "upload: {} files and {} .partial versions confirmed by an earlier run (\"{}\")",
            saved.files.len(),
            saved.partials.len(),
            state::FILE_NAME
        );
        self.vouch_partials(&saved.partials).await;
        self.vouched = saved.files.clone();
        self.saved = saved;
    }

    /// Takes the state's `.partial` objects as confirmed versions, each once
    /// the store shows it still has it (one HEAD per local `.partial`,
    /// instead of a PUT, a 412, a GET and a compare); one it does not have,
    /// or cannot say, is offered again.
    async fn vouch_partials(&mut self, saved: &state::Partials) {
        for (local, object) in saved {
            match self.store.exists(object).await {
                Ok(true) => {
                    self.partials.insert(local.clone(), object.clone());
                }
                Ok(false) => tracing::info!(
                    "upload: \"{object}\" named by the state file is not in the store: \"{local}\" is offered again"
                ),
                Err(e) => tracing::warn!("upload: {e}; \"{local}\" is offered again"),
            }
        }
    }

    /// Takes the vouched files whose local size matches as confirmed.
    fn apply_vouched(&mut self, files: &[LocalFile]) {
        if self.vouched.is_empty() {
            return;
        }
        for f in files {
            if self.vouched.get(&f.name) == Some(&f.size) {
                self.done.insert(f.name.clone());
            }
        }
        self.vouched.clear();
    }

    /// Rewrites the state file when the confirmed local files changed. A
    /// failure is logged: the next start offers the files again.
    fn save_state(&mut self, files: &[LocalFile]) {
        let now = state::Saved {
            files: files
                .iter()
                .filter(|f| plan::kind(&f.name) == Kind::Final && self.done.contains(&f.name))
                .map(|f| (f.name.clone(), f.size))
                .collect(),
            // Of the .partial files still local: the others are complete
            // (or gone) and need no entry.
            partials: files
                .iter()
                .filter_map(|f| Some((f.name.clone(), self.partials.get(&f.name)?.clone())))
                .collect(),
        };
        if now == self.saved {
            return;
        }
        let url = self.store.url().to_string();
        match state::save(&self.opts.directory, &url, &now) {
            Ok(()) => {
                crate::metrics::global()
                    .upload()
                    .state_files
                    .set(now.files.len() as u64);
                self.saved = now;
            }
            Err(e) => tracing::warn!(
                "upload: could not write \"{}\" ({e}); a restart offers the files again",
                self.opts.directory.join(state::FILE_NAME).display()
            ),
        }
    }

    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        tracing::info!(url = %self.store.url(), "uploading the archive to {}", self.store.url());
        self.load_state().await;
        crate::metrics::global()
            .upload()
            .state_files
            .set(self.vouched.len() as u64);
        loop {
            let stopping = *stopped.borrow();
            let files = match scan(&self.opts.directory) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(
                        "upload: could not list \"{}\": {e}",
                        self.opts.directory.display()
                    );
                    Vec::new()
                }
            };
            self.apply_vouched(&files);
            // Before the uploads too: with the store hanging, a pass can
            // take a while and the backlog must show meanwhile.
            self.report_backlog(&files);
            self.partial_pass(&files, stopping).await;
            self.upload_finals(&files, stopping).await;
            if !files.is_empty() {
                self.save_state(&files);
            }
            self.remove_local(&files);
            self.report_backlog(&files);
            if stopping {
                tracing::info!("upload: last pass done");
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopped.changed() => {}
            }
        }
    }

    /// A pass over the `.partial` files when one is due.
    async fn partial_pass(&mut self, files: &[LocalFile], stopping: bool) {
        let clock = PartialClock {
            since_last: self.last_partial_pass.map(|t| t.elapsed()),
            interval: self.opts.partial_interval,
            retry_due: self.partial_retry.is_some_and(|r| r.next <= Instant::now()),
            stopping,
        };
        let Some(why) = plan::partial_pass(files, &self.partial_timelines, clock) else {
            return;
        };
        tracing::debug!(?why, "upload: a pass over the .partial files");
        let all_confirmed = self.upload_partials(files).await;
        self.last_partial_pass = Some(Instant::now());
        self.partial_timelines
            .extend(plan::partial_timelines(files));
        self.partial_retry = if all_confirmed {
            None
        } else {
            let attempts = self.partial_retry.map_or(0, |r| r.attempts) + 1;
            Some(Retry {
                attempts,
                next: Instant::now() + retry_delay(attempts),
            })
        };
    }

    async fn upload_finals(&mut self, files: &[LocalFile], ignore_backoff: bool) {
        let pending: Vec<LocalFile> = plan::pending(files, &self.done)
            .into_iter()
            .cloned()
            .collect();
        for file in pending {
            if let Some(r) = self.retries.get(&file.name) {
                if !ignore_backoff && r.next > Instant::now() {
                    continue;
                }
            }
            let Some(bytes) = read(&self.opts.directory, &file.name) else {
                continue;
            };
            match self.put(&file.name, bytes).await {
                Ok(()) => {
                    self.done.insert(file.name.clone());
                    self.retries.remove(&file.name);
                    if self.conflicted.remove(&file.name) {
                        // Resolved (the object removed or replaced by hand).
                        crate::metrics::global()
                            .upload()
                            .conflicts_pending
                            .set(self.conflicted.len() as u64);
                    }
                    if let Some(segment) = plan::segment_of(&file.name) {
                        self.drop_partial_copies(&segment).await;
                    }
                }
                Err(e) => self.failed(&file.name, &e).await,
            }
        }
    }

    /// Uploads the `.partial` files changed since their last upload; false
    /// when one failed.
    async fn upload_partials(&mut self, files: &[LocalFile]) -> bool {
        let mut all_confirmed = true;
        for file in files
            .iter()
            .filter(|f| plan::kind(&f.name) == Kind::Partial)
        {
            let Some(segment) = plan::segment_of(&file.name) else {
                continue;
            };
            let stamp = (file.size, file.modified);
            if self.partial_stamps.get(&file.name) == Some(&stamp) {
                continue;
            }
            let Some(bytes) = read(&self.opts.directory, &file.name) else {
                continue;
            };
            let object = partial::object_name(&segment, &file.name, &self.opts.receiver_id, &bytes);
            if self.partials.get(&file.name) == Some(&object) {
                // Confirmed already (by this process, or by an earlier one
                // through the state file): no PUT, no read-back.
                self.partial_stamps.insert(file.name.clone(), stamp);
                continue;
            }
            match self.put(&object, bytes).await {
                Ok(()) => {
                    self.partial_stamps.insert(file.name.clone(), stamp);
                    let older = self.partials.insert(file.name.clone(), object.clone());
                    if let Some(older) = older {
                        self.delete(&older).await;
                    }
                    if self.partial_dirs_cleaned.insert(segment.clone()) {
                        self.delete_own_copies(&segment, Some(&object)).await;
                    }
                }
                Err(e) => {
                    all_confirmed = false;
                    self.failed(&object, &e).await;
                }
            }
        }
        // Partials gone locally (completed) keep their entry until the
        // complete segment is confirmed: drop_partial_copies.
        all_confirmed
    }

    async fn put(&self, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        let m = crate::metrics::global().upload();
        let len = bytes.len() as u64;
        let started = Instant::now();
        self.store.put_create(name, bytes).await?;
        m.latency.observe(started.elapsed().as_secs_f64());
        m.uploaded_files.inc();
        m.uploaded_bytes.inc_by(len);
        tracing::debug!(name, bytes = len, "uploaded {name}");
        Ok(())
    }

    async fn failed(&mut self, name: &str, e: &StoreError) {
        self.count_failure(name, e);
        if let Some(marker) = e.conflict_marker(name, &self.opts.receiver_id) {
            self.mark_conflict(&marker).await;
        }
    }

    /// Leaves `marker` in the bucket (create-only: one that is there
    /// already stays as it is). At every conflict, so that a marker deleted
    /// while the conflict remains comes back at the file's next retry; a
    /// failure is a warning, tried again then too.
    async fn mark_conflict(&self, marker: &crate::objstore::marker::Marker) {
        let name = marker.name();
        let url = self.store.url();
        let body = marker.body(&url.key(&marker.object), &url.key(&name), SystemTime::now());
        match self.store.put_if_absent(&name, Bytes::from(body)).await {
            Ok(()) => tracing::info!(
                "upload: conflict marker \"{}\" is in the bucket (delete it once resolved)",
                url.key(&name)
            ),
            Err(e) => tracing::warn!("upload: could not write the conflict marker: {e}"),
        }
    }

    fn count_failure(&mut self, name: &str, e: &StoreError) {
        let m = crate::metrics::global().upload();
        let r = self.retries.entry(name.to_string()).or_insert(Retry {
            attempts: 0,
            next: Instant::now(),
        });
        r.attempts += 1;
        r.next = Instant::now() + retry_delay(r.attempts);
        if e.is_conflict() {
            m.conflicts.inc();
            self.conflicted.insert(name.to_string());
            tracing::error!(name, "upload: {e}");
        } else {
            m.failures.inc();
            tracing::warn!(
                name,
                attempts = r.attempts,
                "upload: {e}; retrying in {:?}",
                retry_delay(r.attempts)
            );
        }
        m.conflicts_pending.set(self.conflicted.len() as u64);
    }

    /// The complete `segment` is confirmed: our `.partial` copies of it go.
    async fn drop_partial_copies(&mut self, segment: &str) {
        let locals: Vec<String> = self
            .partials
            .keys()
            .filter(|l| plan::segment_of(l).as_deref() == Some(segment))
            .cloned()
            .collect();
        for local in locals {
            self.partial_stamps.remove(&local);
            if let Some(object) = self.partials.remove(&local) {
                self.delete(&object).await;
            }
        }
        if self.partial_dirs_cleaned.remove(segment) {
            self.delete_own_copies(segment, None).await;
        }
    }

    /// Deletes this receiver's copies of `segment` other than `keep` (left
    /// by an earlier process): one LIST.
    async fn delete_own_copies(&self, segment: &str, keep: Option<&str>) {
        let dir = partial::dir(segment);
        let listed = match self.store.list(&dir).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("upload: {e}");
                return;
            }
        };
        for obj in listed {
            let file = obj.name.strip_prefix(dir.as_str()).unwrap_or(&obj.name);
            let ours = partial::parse(file).is_some_and(|c| c.receiver == self.opts.receiver_id);
            if ours && Some(obj.name.as_str()) != keep {
                self.delete(&obj.name).await;
            }
        }
    }

    async fn delete(&self, name: &str) {
        if let Err(e) = self.store.delete(name).await {
            tracing::warn!("upload: {e}");
        }
    }

    fn remove_local(&mut self, files: &[LocalFile]) {
        let Some(keep) = self.opts.keep_local else {
            return;
        };
        for name in plan::removable(files, &self.done, keep, SystemTime::now()) {
            let path = self.opts.directory.join(&name);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    crate::metrics::global().upload().local_removed.inc();
                    tracing::info!(
                        "upload: removed \"{}\" (confirmed in the object store)",
                        path.display()
                    );
                }
                Err(e) => tracing::warn!("upload: could not remove \"{}\": {e}", path.display()),
            }
        }
    }

    fn report_backlog(&self, files: &[LocalFile]) {
        let m = crate::metrics::global().upload();
        let pending = plan::pending(files, &self.done);
        m.backlog_files.set(pending.len() as u64);
        m.backlog_bytes.set(pending.iter().map(|f| f.size).sum());
        let oldest = pending
            .iter()
            .filter_map(|f| SystemTime::now().duration_since(f.modified).ok())
            .max()
            .unwrap_or_default();
        m.oldest_pending_seconds.set(oldest.as_secs());
    }
}

/// The regular files of the archive directory.
fn scan(dir: &Path) -> std::io::Result<Vec<LocalFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(meta) = entry.metadata() else { continue };
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if meta.is_file() && plan::kind(&name) != Kind::Other {
            out.push(LocalFile {
                name,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    Ok(out)
}

/// A file's bytes; `None` when it went away meanwhile (a `.partial`
/// renamed) or cannot be read (logged; tried again next pass).
fn read(dir: &Path, name: &str) -> Option<Bytes> {
    match std::fs::read(dir.join(name)) {
        Ok(b) => Some(Bytes::from(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(
                "upload: could not read \"{}\": {e}",
                dir.join(name).display()
            );
            None
        }
    }
}

/// The default receiver id: the slot name, else the host name, else
/// "walrcv" (characters outside `A-Z a-z 0-9 _ -` become `_`).
pub fn default_receiver_id(slot: Option<&str>) -> String {
    let raw = slot
        .map(str::to_string)
        .or_else(hostname)
        .unwrap_or_else(|| "walrcv".into());
    let id: String = raw
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() {
        "walrcv".into()
    } else {
        id
    }
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it when the name fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&buf[..end]).ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_ids() {
        assert_eq!(default_receiver_id(Some("walrcv_a")), "walrcv_a");
        assert_eq!(default_receiver_id(Some("db.example")), "db_example");
        assert!(partial::valid_receiver(&default_receiver_id(None)));
    }

    #[test]
    fn backoff_grows_to_a_minute() {
        assert_eq!(retry_delay(1), Duration::from_secs(2));
        assert_eq!(retry_delay(5), Duration::from_secs(32));
        assert_eq!(retry_delay(50), Duration::from_secs(60));
    }
}
