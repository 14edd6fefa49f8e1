//! One torture cycle against real servers: a PostgreSQL 15 primary (1 MB
//! segments) with walrcv as its synchronous standby through the torture proxy,
//! committing clients, a base backup without WAL, the cycle's faults one after
//! the other, a crash of the primary, then the checks:
//!
//! - after every SIGKILL of walrcv (and at the end): the archive's valid WAL
//!   end (`walrcv verify --json`) on each timeline is at least the highest
//!   flush position walrcv ever reported on it; in a `powerloss` cycle (the
//!   archive on lazyfs) a power cut follows each SIGKILL of a power loss and
//!   of the end, and the check runs on what the archive kept;
//! - no flush position reported exceeded the WAL the servers had sent by then;
//! - after a bit flip, walrcv never reported a flush past it on that connection;
//! - `walrcv verify` passes on the final archive;
//! - the base backup restored with `walrcv restore` as restore_command (to the
//!   end of the newest timeline) holds every acknowledged commit.
//!
//! Every server, process, proxy, tmpfs and lazyfs mount is owned by [`Cycle`]
//! and torn down by its fields' `Drop` (also on panic), in declaration order:
//! clients and walrcv first, the archive's mount last.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::archive::{verify, ArchiveDir};
use crate::clients::{Clients, CREATE_TABLE};
use crate::proxy::{Recorder, Status, TortureProxy};
use crate::schedule::{Compression, Fault, Schedule};
use crate::support::{
    format_lsn, give_to_server_user, parse_lsn, walrcv_recovery_settings, BackgroundProcess,
    PgServer, Recovery, SUPERUSER,
};

/// walrcv's application_name, named in synchronous_standby_names.
const APP: &str = "walrcv";
/// The harness's standby's application_name (`PgServer::create_standby`).
const STANDBY_APP: &str = "walrcv_test_standby";
const SLOT: &str = "torture";
/// walrcv's `--receive-timeout`: short, so that a stall ends connections.
const RECEIVE_TIMEOUT_SECS: &str = "5";
/// How long the cycle waits for acknowledged commits again after its last fault.
const SETTLE: Duration = Duration::from_secs(60);
/// How long commits may wait after a bit flipped in a record's length.
const LENGTH_FLIP_STALL: Duration = Duration::from_secs(30);
/// How long a power loss waits for walrcv's next fsync of a `.partial`, and
/// an fsync EIO from lazyfs for that fsync, before going on without it.
const SYNC_WAIT: Duration = Duration::from_secs(10);
/// The files lazyfs pauses at or fails the fsync of: the segment being written.
const PARTIAL: &str = ".partial";

pub struct Options {
    pub clients: usize,
    pub keep: bool,
}

/// What one cycle found.
pub struct Outcome {
    pub acked: usize,
    pub lost: usize,
    pub overack: usize,
    /// Times walrcv exited by itself (and was started again).
    pub exits: usize,
    /// Failed checks (each also counted in lost or overack when it is one).
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    pub secs: f64,
    pub logdir: Option<PathBuf>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.lost == 0 && self.overack == 0
    }
}

/// Runs the cycle of `schedule`; a panic (a harness step that failed) is a
/// failure of the cycle, after its servers are torn down.
pub fn run(schedule: &Schedule, opts: &Options) -> Outcome {
    let started = Instant::now();
    let logdir = tempfile::Builder::new()
        .prefix(&format!("walrcv-torture-seed{}-", schedule.seed))
        .tempdir()
        .expect("log tempdir");
    let log_path = logdir.path().to_path_buf();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut cycle = Cycle::start(schedule, opts, started, &log_path);
        cycle.run_events();
        cycle.finish()
    }));
    let mut outcome = match result {
        Ok(o) => o,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into());
            Outcome {
                acked: 0,
                lost: 0,
                overack: 0,
                exits: 0,
                failures: vec![format!("the cycle panicked: {msg}")],
                notes: vec![],
                secs: 0.0,
                logdir: None,
            }
        }
    };
    outcome.secs = started.elapsed().as_secs_f64();
    if !outcome.ok() || opts.keep {
        outcome.logdir = Some(logdir.keep());
    }
    outcome
}

/// walrcv as the cycle runs it, restarted at will, its logs kept in one file.
struct Walrcv {
    archive: PathBuf,
    conninfo: String,
    compression: Compression,
    process: Option<BackgroundProcess>,
    log: PathBuf,
}

impl Walrcv {
    fn start(&mut self, failpoints: Option<&str>) {
        assert!(self.process.is_none(), "walrcv is already running");
        let mut cmd = crate::support::Walrcv::new(["stream", "-D"])
            .arg(&self.archive)
            .args(["-d", &self.conninfo, "--slot", SLOT, "--synchronous"])
            .args([
                "--create-slot-if-missing",
                "--receive-timeout",
                RECEIVE_TIMEOUT_SECS,
            ])
            .args(["-v", "-Z", self.compression.name()]);
        if let Some(fp) = failpoints {
            cmd = cmd.env("FAILPOINTS", fp);
        }
        self.append_log(&format!("--- start (FAILPOINTS={failpoints:?})\n"));
        self.process = Some(cmd.spawn());
    }

    /// SIGKILL (a crash) and reap.
    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
            self.append_log(&p.stderr());
            self.append_log("--- SIGKILL\n");
        }
    }

    fn signal(&mut self, sig: i32) {
        if let Some(p) = self.process.as_mut() {
            p.signal(sig);
        }
    }

    /// The exit status when walrcv ended by itself (then it is gone).
    fn exited(&mut self) -> Option<(ExitStatus, String)> {
        let status = self.process.as_mut()?.try_wait()?;
        let p = self.process.take().expect("checked");
        let stderr = p.stderr();
        self.append_log(&stderr);
        self.append_log(&format!("--- exited by itself: {status}\n"));
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        Some((
            status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        ))
    }

    fn append_log(&self, text: &str) {
        if let Ok(mut f) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = f.write_all(text.as_bytes());
        }
    }
}

impl Drop for Walrcv {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cycle<'a> {
    // Field order is teardown order.
    clients: Option<Clients>,
    walrcv: Walrcv,
    proxies: Vec<TortureProxy>,
    base: Option<crate::support::BaseBackup>,
    restored: Option<PgServer>,
    primary: PgServer,
    standby: Option<PgServer>,
    retired: Vec<PgServer>,
    archive: ArchiveDir,

    schedule: &'a Schedule,
    started: Instant,
    recorder: Arc<Recorder>,
    /// (parent, switch point) of every timeline a promotion created.
    history: BTreeMap<u32, (u32, u64)>,
    kills: usize,
    exits: usize,
    overack: usize,
    failures: Vec<String>,
    notes: Vec<String>,
    logdir: PathBuf,
}

impl<'a> Cycle<'a> {
    fn start(schedule: &'a Schedule, opts: &Options, started: Instant, logdir: &Path) -> Cycle<'a> {
        let _ = fs::write(logdir.join("schedule.txt"), schedule.to_string());
        let sync_names = if schedule.needs_standby() {
            format!("FIRST 2 ({APP}, {STANDBY_APP})")
        } else {
            APP.to_string()
        };
        let primary = PgServer::builder()
            .wal_segsize_mb(1)
            .conf(&format!("synchronous_standby_names = '{sync_names}'"))
            .conf("wal_retrieve_retry_interval = '500ms'")
            .start();
        primary.psql(CREATE_TABLE);
        primary.create_physical_slot(SLOT);
        let standby = schedule.needs_standby().then(|| primary.create_standby());
        let recorder = Recorder::new(started);
        let mut proxies = vec![TortureProxy::start(primary.port(), recorder.clone())];
        if let Some(s) = &standby {
            proxies.push(TortureProxy::start(s.port(), recorder.clone()));
        }
        let ports: Vec<String> = proxies.iter().map(|p| p.port().to_string()).collect();
        let hosts = vec!["127.0.0.1"; ports.len()].join(",");
        let conninfo = format!(
            "host={hosts} port={} user={SUPERUSER} application_name={APP} sslmode=disable \
             connect_timeout=5 target_session_attrs=primary",
            ports.join(",")
        );
        let archive =
            ArchiveDir::create(schedule.needs_tmpfs(), schedule.needs_lazyfs(), opts.keep);
        let walrcv = Walrcv {
            archive: archive.path(),
            conninfo,
            compression: schedule.compression,
            process: None,
            log: logdir.join("walrcv.log"),
        };
        let mut cycle = Cycle {
            clients: None,
            walrcv,
            proxies,
            base: None,
            restored: None,
            primary,
            standby,
            retired: Vec::new(),
            archive,
            schedule,
            started,
            recorder,
            history: BTreeMap::new(),
            kills: 0,
            exits: 0,
            overack: 0,
            failures: Vec::new(),
            notes: Vec::new(),
            logdir: logdir.to_path_buf(),
        };
        cycle.walrcv.start(None);
        cycle.wait_synchronous(Duration::from_secs(60));
        // Taken once walrcv streams: the backup's WAL must come from the archive.
        cycle.base = Some(cycle.primary.base_backup_without_wal());
        cycle.clients = Some(Clients::start(opts.clients, cycle.primary.port()));
        cycle.log(&format!(
            "primary on port {}, walrcv -Z {}, {} clients",
            cycle.primary.port(),
            schedule.compression.name(),
            opts.clients
        ));
        cycle
    }

    fn log(&self, msg: &str) {
        eprintln!(
            "[seed {} {:>5.1}s] {msg}",
            self.schedule.seed,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn note(&mut self, msg: String) {
        self.log(&format!("note: {msg}"));
        self.notes.push(msg);
    }

    fn fail(&mut self, msg: String) {
        self.log(&format!("FAILED: {msg}"));
        self.failures.push(msg);
    }

    fn acked(&self) -> usize {
        self.clients.as_ref().map_or(0, |c| c.acked_count())
    }

    /// Sleeps `ms`, starting walrcv again whenever it exits by itself.
    fn pause(&mut self, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
            self.watch_walrcv();
        }
    }

    fn watch_walrcv(&mut self) {
        if let Some((status, tail)) = self.walrcv.exited() {
            self.exits += 1;
            self.note(format!(
                "walrcv exited by itself ({status}), started again; its last lines:\n{tail}"
            ));
            std::thread::sleep(Duration::from_millis(500));
            self.walrcv.start(None);
        }
    }

    fn wait_synchronous(&mut self, limit: Duration) {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{APP}' \
             AND sync_state = 'sync'"
        );
        let start = Instant::now();
        while self.primary.try_psql(&sql).ok().as_deref() != Some("1") {
            assert!(
                start.elapsed() < limit,
                "walrcv is not the synchronous standby after {limit:?}"
            );
            self.pause(100);
        }
    }

    fn run_events(&mut self) {
        // Some acknowledged commits before the first fault.
        let start = Instant::now();
        while self.acked() < 20 && start.elapsed() < Duration::from_secs(30) {
            self.pause(100);
        }
        for (i, event) in self.schedule.events.iter().enumerate() {
            self.pause(event.after_ms);
            self.log(&format!(
                "event {}: {} ({} acknowledged so far)",
                i + 1,
                event.fault,
                self.acked()
            ));
            self.apply(&event.fault);
        }
    }

    fn apply(&mut self, fault: &Fault) {
        match *fault {
            Fault::Kill { down_ms } => {
                self.kill_and_check("kill", false);
                std::thread::sleep(Duration::from_millis(down_ms));
                self.walrcv.start(None);
            }
            Fault::Stop { ms } => {
                self.walrcv.signal(libc::SIGSTOP);
                std::thread::sleep(Duration::from_millis(ms));
                self.walrcv.signal(libc::SIGCONT);
            }
            Fault::Cut => {
                let n: usize = self.proxies.iter().map(|p| p.cut()).sum();
                self.log(&format!("cut {n} connection(s)"));
            }
            Fault::Stall { ms } => {
                self.proxies.iter().for_each(|p| p.stall(true));
                std::thread::sleep(Duration::from_millis(ms));
                self.proxies.iter().for_each(|p| p.stall(false));
            }
            Fault::Bitflip { pick, bit } => self.bitflip(pick, bit),
            Fault::Diskfull { ms } => {
                let filled = self.archive.fill();
                self.log(&format!("archive's tmpfs filled ({filled} bytes more)"));
                self.pause(ms);
                self.archive.free();
            }
            Fault::Eio { point, skip } => {
                self.kill_and_check("eio", false);
                let fp = format!("{point}={skip}*off->1*return->off");
                self.walrcv.start(Some(&fp));
            }
            Fault::FsyncEio { at_start } => self.fsync_eio(at_start),
            Fault::Powerloss { down_ms, at_sync } => {
                self.power_loss(at_sync);
                std::thread::sleep(Duration::from_millis(down_ms));
                self.walrcv.start(None);
            }
            Fault::Switchover => self.promote(true),
            Fault::Failover => self.promote(false),
            Fault::Crash { down_ms } => {
                self.primary.stop_immediate();
                std::thread::sleep(Duration::from_millis(down_ms));
                self.primary.start_again();
            }
        }
    }

    fn bitflip(&mut self, pick: u64, bit: u8) {
        let before = self.recorder.arm_flip(pick, bit);
        let start = Instant::now();
        while self.recorder.flip_pending() && start.elapsed() < Duration::from_secs(5) {
            self.pause(20);
        }
        if self.recorder.flip_pending() {
            self.recorder.disarm_flip();
            self.note("bitflip: no new XLogData within 5 s, nothing flipped".into());
        } else if let Some(f) = self.recorder.flips().get(before) {
            self.log(&format!(
                "flipped bit {} at {} (timeline {}, connection {})",
                f.bit,
                format_lsn(f.lsn),
                f.tli,
                f.conn
            ));
            if crate::schedule::flips_a_length(pick) {
                self.wait_acknowledged_after_length_flip(f.lsn);
            }
        }
    }

    /// A record whose length claims more WAL than the primary will send must
    /// not hold its commits for longer than walrcv's patience for it (10 s),
    /// a reconnection and a margin: seed 305 held them for good, and the
    /// cycle's end (SETTLE) would not notice a stall that some later event
    /// happens to break.
    fn wait_acknowledged_after_length_flip(&mut self, lsn: u64) {
        let acked = self.acked();
        let start = Instant::now();
        while self.acked() == acked {
            if start.elapsed() > LENGTH_FLIP_STALL {
                return self.fail(format!(
                    "a length flipped at {} held every commit for {LENGTH_FLIP_STALL:?}",
                    format_lsn(lsn)
                ));
            }
            self.pause(100);
        }
        self.log(&format!(
            "commits acknowledged again {} ms after the length flip",
            start.elapsed().as_millis()
        ));
    }

    /// Switchover (`fast`: the old primary stops cleanly) or failover
    /// (immediate stop) to the standby, which then needs walrcv alone.
    fn promote(&mut self, fast: bool) {
        let Some(standby) = self.standby.take() else {
            self.note("no standby left to promote".into());
            return;
        };
        standby.set_conf_and_reload(&format!("synchronous_standby_names = '{APP}'"));
        if let Some(c) = &self.clients {
            c.set_port(standby.port());
        }
        if fast {
            self.primary.stop();
        } else {
            self.primary.stop_immediate();
        }
        standby.promote();
        let tli = standby.timeline();
        let text = fs::read_to_string(standby.wal_dir().join(format!("{tli:08X}.history")))
            .expect("the new timeline's history file");
        let last = text
            .lines()
            .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .expect("a history line");
        let mut fields = last.split_whitespace();
        let parent: u32 = fields.next().and_then(|p| p.parse().ok()).expect("parent");
        let switchpoint = parse_lsn(fields.next().expect("switch point"));
        self.history.insert(tli, (parent, switchpoint));
        self.log(&format!(
            "promoted: timeline {tli} from {parent} at {}",
            format_lsn(switchpoint)
        ));
        let old = std::mem::replace(&mut self.primary, standby);
        self.retired.push(old);
    }

    fn lazyfs(&self) -> &crate::support::lazyfs::LazyFs {
        self.archive
            .lazyfs()
            .expect("a cycle with powerloss has its archive on lazyfs")
    }

    /// The next fsync of a `.partial` fails with EIO, Linux-like (lazyfs
    /// drops the dirty data); with `at_start` walrcv is killed first and the
    /// EIO meets the fsync of its start-up. walrcv does what it does; a power
    /// loss later in the schedule shows whether it reported that data flushed.
    fn fsync_eio(&mut self, at_start: bool) {
        if at_start {
            self.kill_and_check("eio", false);
        }
        self.lazyfs().fail_next_fsync(PARTIAL);
        if at_start {
            self.walrcv.start(None);
        }
        let start = Instant::now();
        while self.lazyfs().fsync_fault_pending() && start.elapsed() < SYNC_WAIT {
            self.pause(20);
        }
        if self.lazyfs().fsync_fault_pending() {
            self.note(format!(
                "eio: no fsync of a {PARTIAL} within {SYNC_WAIT:?}; the EIO stays armed"
            ));
        } else {
            self.log(&format!(
                "eio: an fsync of a {PARTIAL} failed with EIO (lazyfs)"
            ));
        }
    }

    /// SIGKILL walrcv and cut the power (`at_sync`: right after its next
    /// fsync of a `.partial`, which lazyfs holds until walrcv is killed),
    /// then check the archive that is left.
    fn power_loss(&mut self, at_sync: bool) {
        let mut moment = "at once".to_string();
        if at_sync {
            self.lazyfs().pause_at_next_sync(PARTIAL);
            match self.lazyfs().wait_paused(SYNC_WAIT) {
                Some(file) => {
                    // SIGKILL first: walrcv dies as its fsync returns.
                    self.walrcv.signal(libc::SIGKILL);
                    moment = format!("right after an fsync of {file}");
                }
                None => self.note(format!(
                    "powerloss: no fsync of a {PARTIAL} within {SYNC_WAIT:?}; power cut at once"
                )),
            }
            self.lazyfs().release_pause();
        }
        self.kill_and_check(&format!("powerloss ({moment})"), true);
    }

    /// SIGKILL walrcv (and with `cut_power`, when the archive is on lazyfs,
    /// cut the power), then: the archive's valid WAL end on every timeline
    /// is at least the highest flush position walrcv reported on it.
    fn kill_and_check(&mut self, what: &str, cut_power: bool) {
        self.walrcv.kill();
        self.kills += 1;
        if let Some(report) = cut_power.then(|| self.archive.power_loss()).flatten() {
            self.log(&format!(
                "{what}: power cut: {} file(s) and {} dir(s) reverted, {} removed {:?}",
                report.files_reverted,
                report.dirs_reverted,
                report.nodes_removed,
                report.removed_names
            ));
        }
        let verified = verify(&self.archive.path());
        let reported = self.recorder.max_flush();
        let mut line = String::new();
        for (&tli, &flush) in &reported {
            if tli == 0 || flush == 0 {
                continue;
            }
            let end = verified.end_on(tli, &self.history);
            let _ = write!(
                line,
                " TL{tli}: reported {} / archive {}",
                format_lsn(flush),
                format_lsn(end)
            );
            if flush > end {
                self.overack += 1;
                self.fail(format!(
                    "over-acknowledged ({what} #{}): walrcv reported {} flushed on timeline {tli}, \
                     the archive's valid WAL there ends at {} ({} bytes short){}",
                    self.kills,
                    format_lsn(flush),
                    format_lsn(end),
                    flush - end,
                    if verified.problems.is_empty() {
                        String::new()
                    } else {
                        format!("; verify: {}", verified.problems.join("; "))
                    }
                ));
            }
        }
        self.log(&format!("{what}: SIGKILL; checked{line}"));
    }

    /// The end of the cycle: commits acknowledged again, the primary crashes,
    /// walrcv is killed, and the checks run.
    fn finish(mut self) -> Outcome {
        let before = self.acked();
        let start = Instant::now();
        while self.schedule.settle && self.acked() < before + 20 {
            if start.elapsed() > SETTLE {
                self.fail(format!(
                    "no commit acknowledged for {SETTLE:?} after the last fault ({} in all)",
                    self.acked()
                ));
                break;
            }
            self.pause(100);
        }
        self.pause(self.schedule.crash_after_ms);
        self.log("crash: immediate stop of the primary");
        self.primary.stop_immediate();
        std::thread::sleep(Duration::from_millis(300));
        self.kill_and_check("end", true);
        let acked = self.clients.take().map(|c| c.finish()).unwrap_or_default();
        self.summarize_walrcv_log();
        self.check_statuses();
        for p in self.recorder.problems() {
            self.fail(format!("proxy: {p}"));
        }
        let verified = verify(&self.archive.path());
        if !verified.ok {
            self.fail(format!(
                "walrcv verify failed on the final archive: {}",
                verified.problems.join("; ")
            ));
        }
        let lost = self.restore_and_count_lost(&acked);
        Outcome {
            acked: acked.len(),
            lost,
            overack: self.overack,
            exits: self.exits,
            failures: std::mem::take(&mut self.failures),
            notes: std::mem::take(&mut self.notes),
            secs: 0.0,
            logdir: None,
        }
    }

    /// What walrcv logged of the faults: whether it saw them at all.
    fn summarize_walrcv_log(&mut self) {
        let log = fs::read_to_string(&self.walrcv.log).unwrap_or_default();
        let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
        self.log(&format!(
            "walrcv's log: {} WAL verification failure(s), {} failpoint(s) fired, {} ENOSPC, \
             {} bit(s) flipped",
            count("(segment file "),
            count("failpoint fired"),
            count("No space left on device"),
            self.recorder.flips().len()
        ));
    }

    /// Flush positions against what the servers had sent at that moment, and
    /// against the bits flipped on the same connection.
    fn check_statuses(&mut self) {
        let statuses = self.recorder.statuses();
        let mut beyond_sent: Vec<&Status> = Vec::new();
        for s in &statuses {
            if s.flush != 0 && s.flush > allowed_end(s.tli, &s.sent, &self.history) {
                beyond_sent.push(s);
            }
        }
        if let Some(first) = beyond_sent.first() {
            self.overack += beyond_sent.len();
            let msg = format!(
                "over-acknowledged: {} status update(s) reported a flush position past the WAL \
                 the servers had sent; the first at {} ms on connection {} (timeline {}): \
                 write {}, flush {}, sent {:?}",
                beyond_sent.len(),
                first.ms,
                first.conn,
                first.tli,
                format_lsn(first.write),
                format_lsn(first.flush),
                first
                    .sent
                    .iter()
                    .map(|(t, e)| format!("TL{t} {}", format_lsn(*e)))
                    .collect::<Vec<_>>()
            );
            self.fail(msg);
        }
        for f in self.recorder.flips() {
            let past = statuses
                .iter()
                .filter(|s| s.conn == f.conn && s.ms >= f.ms && s.flush > f.lsn)
                .max_by_key(|s| s.flush);
            if let Some(s) = past {
                if let Some(records) = self.flip_in_padding(f.tli, f.lsn) {
                    self.note(format!(
                        "bit flipped at {} fell in the alignment padding between records \
                         ({records}), which no CRC covers: walrcv's flush past it is not counted",
                        format_lsn(f.lsn)
                    ));
                    continue;
                }
                self.overack += 1;
                self.fail(format!(
                    "over-acknowledged: bit {} flipped at {} (timeline {}, connection {}) and \
                     walrcv reported {} flushed on that connection",
                    f.bit,
                    format_lsn(f.lsn),
                    f.tli,
                    f.conn,
                    format_lsn(s.flush)
                ));
            }
        }
        self.log(&format!(
            "{} status updates, {} flips checked",
            statuses.len(),
            self.recorder.flips().len()
        ));
    }

    /// Whether `lsn` on timeline `tli` lies in the alignment padding after a
    /// record (no CRC covers it, and PostgreSQL never reads it), according to
    /// `pg_waldump` over the primary's own WAL: Some(the records around it)
    /// when it does, None when it is inside a record or a page header, or
    /// when that cannot be told.
    fn flip_in_padding(&self, tli: u32, lsn: u64) -> Option<String> {
        let server = if tli == 1 {
            self.retired.first().unwrap_or(&self.primary)
        } else {
            &self.primary
        };
        let seg = server.wal_segment_size();
        let from = lsn.saturating_sub(64 * 1024).max(lsn / seg * seg);
        let out = std::process::Command::new(crate::support::debian_bin("pg_waldump"))
            .arg("-p")
            .arg(server.wal_dir())
            .args(["-t", &tli.to_string(), "-s", &format_lsn(from)])
            .args(["-e", &format_lsn(lsn + 64 * 1024)])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut previous_end: Option<(u64, u64)> = None;
        for line in text.lines() {
            // Not every line is a record: "first record is after X, at Y,
            // skipping over N bytes" comes first whenever the window's start
            // is not a record's (it used to end the search: every flip then
            // counted as inside a record).
            let Some((start, total)) = waldump_record(line) else {
                continue;
            };
            let end = record_end(start, total, seg);
            if start <= lsn && lsn < end {
                return None;
            }
            if let Some((prev_start, prev_end)) = previous_end {
                if prev_end <= lsn && lsn < start && !in_page_header(lsn, seg) {
                    return Some(format!(
                        "record at {} ends at {}, next at {}",
                        format_lsn(prev_start),
                        format_lsn(prev_end),
                        format_lsn(start)
                    ));
                }
            }
            if start > lsn {
                return None;
            }
            previous_end = Some((start, end));
        }
        None
    }

    /// Restores the base backup from the archive with `walrcv restore`, to
    /// the end of the newest timeline; returns how many acknowledged ids are
    /// missing there.
    fn restore_and_count_lost(&mut self, acked: &[i64]) -> usize {
        self.walrcv.kill();
        let archive = self.archive.path();
        give_to_server_user(&archive);
        let base = self.base.take().expect("the base backup");
        let mut settings = walrcv_recovery_settings(&archive);
        settings.push("hot_standby = on".into());
        let server = match base.start_recovery(&settings) {
            Recovery::Started(s) => s,
            Recovery::Failed { log } => {
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                self.fail(format!(
                    "the restore from the archive failed; all {} acknowledged commits lost:\n{}",
                    acked.len(),
                    tail.join("\n")
                ));
                return acked.len();
            }
        };
        server.wait_for_promotion(Duration::from_secs(300));
        let rows = server.psql("SELECT id FROM acked");
        let restored: HashSet<i64> = rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let missing: Vec<i64> = acked
            .iter()
            .copied()
            .filter(|id| !restored.contains(id))
            .collect();
        let redo = server
            .full_log()
            .lines()
            .filter(|l| l.contains("redo done at") || l.contains("selected new timeline"))
            .map(str::to_string)
            .collect::<Vec<_>>()
            .join(" | ");
        if !missing.is_empty() {
            let mut sample = missing.clone();
            sample.sort_unstable();
            sample.truncate(10);
            self.fail(format!(
                "LOST: {} of {} acknowledged commits are missing after the restore (ids {:?}...); \
                 recovery: {redo}",
                missing.len(),
                acked.len(),
                sample
            ));
        }
        self.log(&format!(
            "restored: {} rows, {} acknowledged, {} missing; {redo}",
            restored.len(),
            acked.len(),
            missing.len()
        ));
        if !self.failures.is_empty() {
            let _ = fs::write(self.logdir.join("restored-server.log"), server.full_log());
            let _ = fs::write(
                self.logdir.join("primary-server.log"),
                self.primary.full_log(),
            );
        }
        self.restored = Some(server);
        missing.len()
    }
}

/// How far WAL on timeline `tli` had been sent when `sent` was recorded:
/// its own XLogData, and the parent's up to the switch point (a session that
/// starts on a new timeline reports the ancestor's WAL it already has).
fn allowed_end(tli: u32, sent: &BTreeMap<u32, u64>, history: &BTreeMap<u32, (u32, u64)>) -> u64 {
    let own = sent.get(&tli).copied().unwrap_or(0);
    match history.get(&tli) {
        Some(&(parent, switchpoint)) if parent < tli => {
            own.max(allowed_end(parent, sent, history).min(switchpoint))
        }
        _ => own,
    }
}

const PAGE: u64 = 8192;

/// Whether `lsn` is inside a page header (24 bytes, 40 at a segment start).
fn in_page_header(lsn: u64, segment_size: u64) -> bool {
    let header = if lsn / PAGE * PAGE % segment_size == 0 {
        40
    } else {
        24
    };
    lsn % PAGE < header
}

/// Where the bytes of a record of `total` bytes starting at `start` end,
/// counting the page headers it crosses.
fn record_end(start: u64, total: u64, segment_size: u64) -> u64 {
    let (mut pos, mut left) = (start, total);
    while left > 0 {
        if pos % PAGE == 0 {
            pos += if pos % segment_size == 0 { 40 } else { 24 };
        }
        let take = (PAGE - pos % PAGE).min(left);
        pos += take;
        left -= take;
    }
    pos
}

/// Self-checks of the page arithmetic behind the bit-flip classification
/// (the binary has no libtest harness; `main` runs this first).
pub fn self_check() {
    let seg = 1 << 20;
    assert_eq!(record_end(PAGE + 24, 100, seg), PAGE + 124);
    assert_eq!(record_end(PAGE - 16, 100, seg), PAGE + 24 + 84);
    assert_eq!(record_end(seg - 8, 50, seg), seg + 40 + 42);
    assert!(in_page_header(PAGE + 10, seg) && !in_page_header(PAGE + 24, seg));
    assert!(in_page_header(seg + 30, seg) && !in_page_header(seg + 40, seg));
}

/// The start and total length of the record on one line of `pg_waldump`'s
/// output; `None` for any other line.
fn waldump_record(line: &str) -> Option<(u64, u64)> {
    let start = line
        .split("lsn: ")
        .nth(1)?
        .split(',')
        .next()
        .map(parse_lsn)?;
    let total = line
        .split("len (rec/tot):")
        .nth(1)?
        .split(',')
        .next()?
        .split('/')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((start, total))
}
