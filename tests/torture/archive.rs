//! The cycle's archive directory (on its own small tmpfs when the cycle fills
//! the disk, on lazyfs when it cuts the power; never both, see
//! `Schedule::draw`) and what `walrcv verify --json` says about it: where the
//! valid, verified WAL of each timeline ends.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::lazyfs::{LazyFs, PowerLossReport};
use crate::support::{parse_lsn, walrcv_run};

/// Size of the tmpfs of a `diskfull` cycle: room for a cycle's WAL (a few
/// tens of MB) and little enough to fill in a moment.
const TMPFS_SIZE: &str = "160m";

/// The archive: `ROOT/archive`, ROOT a temporary directory (a tmpfs mount
/// point for `diskfull` cycles; `ROOT/archive` a lazyfs mount point for
/// `powerloss` cycles), unmounted and removed on drop.
pub struct ArchiveDir {
    /// Dropped (lazily unmounted, its own watchdog stopped) before the rest.
    lazyfs: Option<LazyFs>,
    root: Option<tempfile::TempDir>,
    mounted: bool,
    keep: bool,
    /// Unmounts the tmpfs if this process dies without running `Drop`
    /// (SIGKILL, SIGINT from a timeout).
    watchdog: Option<std::process::Child>,
}

impl ArchiveDir {
    pub fn create(tmpfs: bool, lazyfs: bool, keep: bool) -> ArchiveDir {
        assert!(
            !(tmpfs && lazyfs),
            "an archive on tmpfs or on lazyfs, not both"
        );
        let root = tempfile::Builder::new()
            .prefix("walrcv-torture-archive-")
            .tempdir()
            .expect("archive tempdir");
        let mut dir = ArchiveDir {
            lazyfs: None,
            root: Some(root),
            mounted: false,
            keep,
            watchdog: None,
        };
        if tmpfs {
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE},mode=0755")])
                .arg("walrcv-torture")
                .arg(dir.root())
                .output()
                .expect("run mount");
            assert!(
                out.status.success(),
                "mount -t tmpfs on {} failed (the diskfull fault needs root): {}",
                dir.root().display(),
                String::from_utf8_lossy(&out.stderr)
            );
            dir.mounted = true;
            dir.watchdog = Command::new("sh")
                .args(["-c", "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; umount -l \"$2\"; rm -rf \"$2\""])
                .arg("walrcv-torture-tmpfs-watchdog")
                .arg(std::process::id().to_string())
                .arg(dir.root())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .spawn()
                .ok();
        }
        // The restore_command runs as the server user: it must reach the archive.
        fs::set_permissions(dir.root(), fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::create_dir(dir.path()).expect("create the archive directory");
        if lazyfs {
            // LazyFs starts its own watchdog: a lazy unmount if this process
            // dies without running Drop (SIGKILL, a timeout).
            let lazy = LazyFs::mount(&dir.path()).unwrap_or_else(|e| {
                panic!(
                    "mount lazyfs on {} (the powerloss fault needs root and /dev/fuse): {e}",
                    dir.path().display()
                )
            });
            dir.lazyfs = Some(lazy);
        }
        dir
    }

    /// The archive's lazyfs, in a `powerloss` cycle.
    pub fn lazyfs(&self) -> Option<&LazyFs> {
        self.lazyfs.as_ref()
    }

    /// Cuts the power under the archive (walrcv must be dead): everything
    /// not synced is forgotten. None when the archive is not on lazyfs.
    pub fn power_loss(&self) -> Option<PowerLossReport> {
        self.lazyfs.as_ref().map(|l| l.power_loss())
    }

    fn root(&self) -> &Path {
        self.root.as_ref().expect("archive root").path()
    }

    pub fn path(&self) -> PathBuf {
        self.root().join("archive")
    }

    /// Fills the file system of a tmpfs archive (a filler file beside the
    /// archive, written until ENOSPC); returns the bytes written.
    pub fn fill(&self) -> u64 {
        assert!(self.mounted, "fill: the archive is not on its own tmpfs");
        let mut f = fs::File::create(self.filler()).expect("create the filler");
        let chunk = vec![0xA5u8; 256 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        written
    }

    /// Frees what [`fill`](Self::fill) took.
    pub fn free(&self) {
        let _ = fs::remove_file(self.filler());
    }

    fn filler(&self) -> PathBuf {
        self.root().join("filler")
    }
}

impl Drop for ArchiveDir {
    fn drop(&mut self) {
        if let Some(lazy) = self.lazyfs.take() {
            if self.keep {
                // Writes what the archive holds now into the directory under
                // the mount, kept below.
                if let Err(e) = lazy.unmount() {
                    eprintln!("--keep: lazyfs unmount failed ({e}): the archive is not kept");
                }
            }
        }
        if self.mounted {
            if self.keep {
                let copy = std::env::temp_dir().join(format!(
                    "walrcv-torture-kept-{}",
                    self.root()
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                ));
                let _ = Command::new("cp")
                    .arg("-a")
                    .arg(self.path())
                    .arg(&copy)
                    .status();
                eprintln!("--keep: archive copied to {}", copy.display());
            }
            let _ = Command::new("umount").arg("-l").arg(self.root()).status();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(root) = self.root.take() {
            if self.keep && !self.mounted {
                eprintln!(
                    "--keep: archive kept in {}",
                    root.keep().join("archive").display()
                );
            }
        }
    }
}

/// What `walrcv verify --json` found.
pub struct Verified {
    /// Exit status 0.
    pub ok: bool,
    /// Per timeline: end of the verified WAL in that timeline's files, of its
    /// last complete segment, or of its divergent tail set aside, whichever
    /// is further.
    pub ends: BTreeMap<u32, u64>,
    /// Per timeline: (parent, switch point), from the archive's history files.
    pub history: BTreeMap<u32, (u32, u64)>,
    /// The human-readable problems, for the report.
    pub problems: Vec<String>,
}

impl Verified {
    /// Where the WAL of timeline `tli` that the archive holds ends, following
    /// `history` (the archive's, completed by the cycle's own record of the
    /// promotions) into the parent when `tli` has no file of its own.
    ///
    /// A timeline's own files that end before its switch point (its switch
    /// segment being streamed again when walrcv was killed) do not hide the
    /// parent's WAL up to it: `walrcv restore` serves the parent's copy of
    /// that segment up to the switch point then (seed 5128).
    pub fn end_on(&self, tli: u32, known: &BTreeMap<u32, (u32, u64)>) -> u64 {
        let inherited = match self.history.get(&tli).or_else(|| known.get(&tli)) {
            Some(&(parent, switchpoint)) if parent < tli => {
                self.end_on(parent, known).min(switchpoint)
            }
            _ => 0,
        };
        self.ends
            .get(&tli)
            .map_or(inherited, |&own| own.max(inherited))
    }
}

/// Runs `walrcv verify --json` on the archive.
pub fn verify(archive: &Path) -> Verified {
    let dir = archive.to_str().expect("utf-8 archive path");
    let out = walrcv_run(
        &["verify", "--json", "--no-progress", dir],
        Duration::from_secs(300),
    );
    let json: serde_json::Value = match serde_json::from_str(&out.stdout) {
        Ok(v) => v,
        Err(e) => {
            return Verified {
                ok: false,
                ends: BTreeMap::new(),
                history: BTreeMap::new(),
                problems: vec![format!(
                    "walrcv verify --json: not JSON ({e}):\n{}",
                    out.text()
                )],
            }
        }
    };
    let lsn = |v: &serde_json::Value| v.as_str().map(parse_lsn);
    let mut ends = BTreeMap::new();
    let mut history = BTreeMap::new();
    for t in json["timelines"].as_array().into_iter().flatten() {
        let Some(tli) = t["timeline"].as_u64() else {
            continue;
        };
        let tli = tli as u32;
        if let Some(end) = lsn(&t["last_lsn"]) {
            ends.insert(tli, end);
        }
        if let (Some(parent), Some(sp)) = (t["parent"].as_u64(), lsn(&t["switchpoint"])) {
            history.insert(tli, (parent as u32, sp));
        }
    }
    // A complete segment holds all its bytes, fsynced before its rename; its
    // tail may be the start of a record that ends in the next segment (not
    // verifiable yet, and no commit ends inside it), and walrcv may report
    // the segment's end as flushed then.
    let segment_size = json["segment_size"].as_u64().unwrap_or(0);
    for f in json["files"].as_array().into_iter().flatten() {
        let complete =
            f["partial"] == false && f["in_sequence"] == true && f["valid_end"].is_null();
        if let (true, Some(tli), Some(segno)) =
            (complete, f["timeline"].as_u64(), f["segno"].as_u64())
        {
            let e = ends.entry(tli as u32).or_insert(0);
            *e = (*e).max((segno + 1) * segment_size);
        }
    }
    for d in json["divergent"].as_array().into_iter().flatten() {
        if let (Some(tli), Some(to)) = (d["timeline"].as_u64(), lsn(&d["to"])) {
            // A set-aside range ends at its last record's end; the server's
            // positions (and walrcv's flush) end at the MAXALIGNed start of
            // the next record, the padding included (seed 9209: 0/942351
            // against a flush of 0/942358).
            let to = (to + 7) & !7;
            let e = ends.entry(tli as u32).or_insert(0);
            *e = (*e).max(to);
        }
    }
    let problems = json["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} {}: {}",
                p["severity"].as_str().unwrap_or("?"),
                p["file"].as_str().unwrap_or("?"),
                p["message"].as_str().unwrap_or("?")
            )
        })
        .collect();
    Verified {
        ok: out.success(),
        ends,
        history,
        problems,
    }
}
