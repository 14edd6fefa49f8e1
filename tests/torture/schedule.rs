//! The torture test's fault vocabulary and the seeded draw of one cycle's
//! schedule (pure: no IO, no clock). The same seed and the same fault list
//! always give the same schedule, which is what makes `--seed S` a replay.

use std::fmt;

/// splitmix64: small, fast, good enough to draw a schedule, and stable
/// across Rust and crate versions (a replay must not depend on either).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }
}

/// A fault kind, as named on the command line (`--faults kill,cut,...`) and
/// in the report. The names are stable: scripts and the guide (`docs/src/torture.md`) use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Kill,
    Stop,
    Compress,
    Cut,
    Stall,
    Bitflip,
    Diskfull,
    Eio,
    Switchover,
    Failover,
    Crash,
    Powerloss,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Kill,
        Kind::Stop,
        Kind::Compress,
        Kind::Cut,
        Kind::Stall,
        Kind::Bitflip,
        Kind::Diskfull,
        Kind::Eio,
        Kind::Switchover,
        Kind::Failover,
        Kind::Crash,
        Kind::Powerloss,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Stop => "stop",
            Kind::Compress => "compress",
            Kind::Cut => "cut",
            Kind::Stall => "stall",
            Kind::Bitflip => "bitflip",
            Kind::Diskfull => "diskfull",
            Kind::Eio => "eio",
            Kind::Switchover => "switchover",
            Kind::Failover => "failover",
            Kind::Crash => "crash",
            Kind::Powerloss => "powerloss",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether the cycle needs a streaming standby to promote.
    fn needs_standby(self) -> bool {
        matches!(self, Kind::Switchover | Kind::Failover)
    }
}

/// The cycle's `-Z` method (fault kind `compress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Compression {
    None,
    Gzip,
    Lz4,
    Zstd,
}

impl Compression {
    /// Indexed by `seed % 4`, so that any four consecutive seeds cover all.
    pub const ALL: [Compression; 4] = [
        Compression::None,
        Compression::Gzip,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The `-Z` value.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Failpoints of `src/archive/failpoints.rs` that the `eio` fault arms at a
/// restart of walrcv, with how many calls to let through at most before the
/// one that fails.
pub const EIO_POINTS: [(&str, u64); 8] = [
    ("wal-pwrite", 40),
    ("wal-fdatasync", 40),
    ("startup-fsync", 2),
    ("complete-fdatasync", 2),
    ("complete-rename", 2),
    ("complete-fsync-dir", 2),
    ("prepare-pwrite", 2),
    ("history-fsync", 0),
];

/// Whether a `Fault::Bitflip` with this `pick` aims at a record's length.
/// Taken from the pick already drawn, so that the draws of every seed stay
/// as they were.
pub fn flips_a_length(pick: u64) -> bool {
    pick % 4 == 0
}

/// One fault with its drawn parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL walrcv, check the archive against the flush positions
    /// reported, wait `down_ms`, start it again.
    Kill { down_ms: u64 },
    /// SIGSTOP walrcv for `ms`, then SIGCONT.
    Stop { ms: u64 },
    /// The proxy closes every connection it relays.
    Cut,
    /// The proxy moves no byte for `ms`.
    Stall { ms: u64 },
    /// The proxy flips bit `bit` of byte `pick % len` of the next XLogData
    /// payload that starts at or past every flush position reported so far;
    /// or, one time in four ([`flips_a_length`]), of byte 2 of the
    /// `xl_tot_len` of a record that starts a payload where walrcv's flush
    /// stands (torture seed 305: a record that claims more WAL than a
    /// primary waiting for walrcv will ever send).
    Bitflip { pick: u64, bit: u8 },
    /// The archive's tmpfs is filled for `ms`, then freed.
    Diskfull { ms: u64 },
    /// Kill walrcv and start it again with `FAILPOINTS='POINT=SKIP*off->1*return->off'`.
    Eio { point: &'static str, skip: u64 },
    /// (Kind `eio`, drawn only in a cycle on lazyfs, before a power loss.)
    /// The next fsync/fdatasync of a `.partial` fails with EIO as Linux
    /// fails it: reported once, the dirty data dropped. `at_start`: walrcv
    /// is killed first and the EIO hits the fsync of its start-up (what a
    /// SIGKILL left un-synced is dropped); else walrcv runs on and the EIO
    /// hits a sync of its stream.
    FsyncEio { at_start: bool },
    /// SIGKILL walrcv and cut the power (lazyfs forgets what was not
    /// synced), check the archive, start walrcv again after `down_ms`.
    /// `at_sync`: the cut comes right after walrcv's next fsync that changes
    /// a `.partial` on disk; else at a moment the schedule does not choose.
    Powerloss { down_ms: u64, at_sync: bool },
    /// Fast stop of the primary, promotion of the standby.
    Switchover,
    /// Immediate stop of the primary, promotion of the standby.
    Failover,
    /// Immediate stop of the current primary, start again after `down_ms`.
    Crash { down_ms: u64 },
}

impl Fault {
    pub fn kind(&self) -> Kind {
        match self {
            Fault::Kill { .. } => Kind::Kill,
            Fault::Stop { .. } => Kind::Stop,
            Fault::Cut => Kind::Cut,
            Fault::Stall { .. } => Kind::Stall,
            Fault::Bitflip { .. } => Kind::Bitflip,
            Fault::Diskfull { .. } => Kind::Diskfull,
            Fault::Eio { .. } | Fault::FsyncEio { .. } => Kind::Eio,
            Fault::Powerloss { .. } => Kind::Powerloss,
            Fault::Switchover => Kind::Switchover,
            Fault::Failover => Kind::Failover,
            Fault::Crash { .. } => Kind::Crash,
        }
    }

    fn draw(kind: Kind, rng: &mut Rng) -> Fault {
        match kind {
            Kind::Kill => Fault::Kill {
                down_ms: rng.range(0, 1500),
            },
            Kind::Stop => Fault::Stop {
                ms: rng.range(300, 4000),
            },
            Kind::Cut => Fault::Cut,
            Kind::Stall => Fault::Stall {
                ms: rng.range(500, 7000),
            },
            Kind::Bitflip => Fault::Bitflip {
                pick: rng.next_u64(),
                bit: rng.range(0, 7) as u8,
            },
            Kind::Diskfull => Fault::Diskfull {
                ms: rng.range(500, 4000),
            },
            Kind::Eio => {
                let (point, max_skip) = *rng.pick(&EIO_POINTS);
                Fault::Eio {
                    point,
                    skip: rng.range(0, max_skip),
                }
            }
            Kind::Switchover => Fault::Switchover,
            Kind::Failover => Fault::Failover,
            Kind::Crash => Fault::Crash {
                down_ms: rng.range(0, 1000),
            },
            Kind::Powerloss => Fault::Powerloss {
                down_ms: rng.range(0, 1500),
                at_sync: rng.range(0, 1) == 1,
            },
            Kind::Compress => unreachable!("compress is the cycle's -Z method, not an event"),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill { down_ms } => write!(f, "kill (down {down_ms} ms)"),
            Fault::Stop { ms } => write!(f, "stop ({ms} ms)"),
            Fault::Cut => write!(f, "cut"),
            Fault::Stall { ms } => write!(f, "stall ({ms} ms)"),
            Fault::Bitflip { pick, bit } if flips_a_length(*pick) => {
                write!(f, "bitflip (pick {pick:#x}, bit {bit}, in xl_tot_len)")
            }
            Fault::Bitflip { pick, bit } => write!(f, "bitflip (pick {pick:#x}, bit {bit})"),
            Fault::Diskfull { ms } => write!(f, "diskfull ({ms} ms)"),
            Fault::Eio { point, skip } => {
                write!(f, "eio ({point}={skip}*off->1*return->off)")
            }
            Fault::Switchover => write!(f, "switchover"),
            Fault::Failover => write!(f, "failover"),
            Fault::Crash { down_ms } => write!(f, "crash (down {down_ms} ms)"),
            Fault::FsyncEio { at_start } => write!(
                f,
                "eio (lazyfs: the next fsync of a .partial fails{})",
                if *at_start {
                    "; walrcv killed and started again first"
                } else {
                    ""
                }
            ),
            Fault::Powerloss { down_ms, at_sync } => write!(
                f,
                "powerloss ({}, down {down_ms} ms)",
                if *at_sync {
                    "right after an fsync of a .partial"
                } else {
                    "at once"
                }
            ),
        }
    }
}

/// One fault, `after_ms` after the previous one ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub after_ms: u64,
    pub fault: Fault,
}

/// Everything one cycle does, drawn from its seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub seed: u64,
    pub compression: Compression,
    pub events: Vec<Event>,
    /// How the cycle ends: the primary crashes `crash_after_ms` after the last
    /// event, either at once (`settle` false: walrcv may still be catching up
    /// after a restart, which is when a lost resume shows) or after commits
    /// were acknowledged again (`settle` true: the cycle also checks liveness).
    pub settle: bool,
    pub crash_after_ms: u64,
}

impl Schedule {
    /// The schedule of the cycle with this seed, using only `enabled` kinds.
    ///
    /// `compress` (when enabled) sets the `-Z` method to `Compression::ALL[seed % 4]`;
    /// the other kinds are events. The cycle always has the event kind at
    /// `seed % n` and, when there are more than ten kinds, also the one at
    /// `(seed + 3) % n` (so that any ten consecutive seeds cover every kind;
    /// offset 3 never pairs switchover with failover nor diskfull with
    /// powerloss, which cannot share a cycle), plus two to five more drawn at
    /// random; switchover and failover
    /// happen at most once per cycle, together (the cycle has one standby).
    /// A cycle has diskfull (a tmpfs archive) or powerloss (a lazyfs archive),
    /// never both: see [`Schedule::one_archive_medium`]. In a cycle on lazyfs
    /// an `eio` followed by a power loss is most often a real fsync EIO from
    /// lazyfs ([`Fault::FsyncEio`]) rather than a failpoint.
    pub fn draw(seed: u64, enabled: &[Kind]) -> Schedule {
        let compression = if enabled.contains(&Kind::Compress) {
            Compression::ALL[(seed % 4) as usize]
        } else {
            Compression::None
        };
        let kinds: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| *k != Kind::Compress && enabled.contains(k))
            .collect();
        let mut rng = Rng::new(seed);
        let mut events = Vec::new();
        if !kinds.is_empty() {
            let n = kinds.len() as u64;
            let featured = kinds[(seed % n) as usize];
            let second = (n > 10).then(|| kinds[((seed + 3) % n) as usize]);
            let others = rng.range(2, 5) as usize;
            let featured_at = rng.range(0, others as u64) as usize;
            // No rng draw: the schedules of ten kinds or fewer stay as they were.
            let second_at = (featured_at + 1) % (others + 1);
            let mut promoted = false;
            for i in 0..=others {
                let mut kind = match second {
                    _ if i == featured_at => featured,
                    Some(k) if i == second_at => k,
                    _ => *rng.pick(&kinds),
                };
                if kind.needs_standby() && promoted {
                    kind = Kind::Kill;
                }
                promoted |= kind.needs_standby();
                events.push(Event {
                    after_ms: rng.range(300, 2500),
                    fault: Fault::draw(kind, &mut rng),
                });
            }
            // A featured kind may have been drawn after a promotion: put it back.
            for featured in std::iter::once(featured).chain(second) {
                if featured.needs_standby() && !events.iter().any(|e| e.fault.kind() == featured) {
                    let i = events
                        .iter()
                        .position(|e| e.fault.kind().needs_standby())
                        .expect("a promotion was drawn");
                    events[i].fault = Fault::draw(featured, &mut rng);
                }
            }
            let featured: Vec<Kind> = std::iter::once(featured).chain(second).collect();
            Schedule::one_archive_medium(&mut events, &featured, &mut rng);
            Schedule::fsync_eio_before_power_loss(&mut events, &mut rng);
        }
        let settle = rng.range(0, 1) == 1;
        let crash_after_ms = rng.range(0, 1500);
        Schedule {
            seed,
            compression,
            events,
            settle,
            crash_after_ms,
        }
    }

    /// diskfull needs the archive on a small tmpfs, powerloss on lazyfs
    /// (whose data lives in a store elsewhere, so a full tmpfs under it would
    /// not fill its disk): a cycle keeps one of the two kinds, the featured
    /// one, else the one drawn first, and the other's events become kills.
    fn one_archive_medium(events: &mut [Event], featured: &[Kind], rng: &mut Rng) {
        let media = [Kind::Diskfull, Kind::Powerloss];
        if !media
            .iter()
            .all(|m| events.iter().any(|e| e.fault.kind() == *m))
        {
            return;
        }
        let keep = media
            .into_iter()
            .find(|m| featured.contains(m))
            .or_else(|| {
                events
                    .iter()
                    .map(|e| e.fault.kind())
                    .find(|k| media.contains(k))
            })
            .expect("both media drawn");
        for e in events.iter_mut() {
            let kind = e.fault.kind();
            if media.contains(&kind) && kind != keep {
                e.fault = Fault::draw(Kind::Kill, rng);
            }
        }
    }

    /// In a cycle on lazyfs, an `eio` with a power loss after it becomes a
    /// real fsync EIO from lazyfs two times out of three: the dropped data
    /// must not be reported flushed, and the later power loss tells.
    fn fsync_eio_before_power_loss(events: &mut [Event], rng: &mut Rng) {
        let Some(last_cut) = events
            .iter()
            .rposition(|e| e.fault.kind() == Kind::Powerloss)
        else {
            return;
        };
        for e in &mut events[..last_cut] {
            if matches!(e.fault, Fault::Eio { .. }) && rng.range(0, 2) != 0 {
                e.fault = Fault::FsyncEio {
                    at_start: rng.range(0, 1) == 1,
                };
            }
        }
    }

    /// Whether the cycle needs a standby (a switchover or a failover).
    pub fn needs_standby(&self) -> bool {
        self.events.iter().any(|e| e.fault.kind().needs_standby())
    }

    /// Whether the archive must be on its own small tmpfs.
    pub fn needs_tmpfs(&self) -> bool {
        self.events.iter().any(|e| e.fault.kind() == Kind::Diskfull)
    }

    /// Whether the archive must be on lazyfs (a power loss is drawn).
    pub fn needs_lazyfs(&self) -> bool {
        self.events
            .iter()
            .any(|e| e.fault.kind() == Kind::Powerloss)
    }

    /// The fault kinds this cycle exercises (compress when it has a `-Z`).
    pub fn kinds(&self) -> Vec<Kind> {
        let mut kinds: Vec<Kind> = self.events.iter().map(|e| e.fault.kind()).collect();
        if self.compression != Compression::None {
            kinds.push(Kind::Compress);
        }
        kinds.sort();
        kinds.dedup();
        kinds
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {}: -Z {}", self.seed, self.compression.name())?;
        let mut at = 0;
        for (i, e) in self.events.iter().enumerate() {
            at += e.after_ms;
            writeln!(
                f,
                "  {:>2}. +{:>4} ms (>= {at} ms): {}",
                i + 1,
                e.after_ms,
                e.fault
            )?;
        }
        writeln!(
            f,
            "  end: the primary crashes {} ms after {}",
            self.crash_after_ms,
            if self.settle {
                "commits are acknowledged again"
            } else {
                "the last event"
            }
        )
    }
}

/// Self-checks of the pure part, run at the start of every torture run (the
/// binary has no libtest harness): a replay must draw the same schedule, and
/// consecutive seeds must cover every kind and every `-Z` method.
pub fn self_check() {
    let all = Kind::ALL.to_vec();
    for seed in 0..200 {
        let a = Schedule::draw(seed, &all);
        assert_eq!(
            a,
            Schedule::draw(seed, &all),
            "seed {seed}: same schedule twice"
        );
        assert!(a.events.len() >= 3, "seed {seed}: at least three events");
        let promotions = a
            .events
            .iter()
            .filter(|e| e.fault.kind().needs_standby())
            .count();
        assert!(promotions <= 1, "seed {seed}: one promotion at most");
        assert!(
            !(a.needs_tmpfs() && a.needs_lazyfs()),
            "seed {seed}: diskfull and powerloss in one cycle"
        );
        let last_cut = a
            .events
            .iter()
            .rposition(|e| e.fault.kind() == Kind::Powerloss);
        for (i, e) in a.events.iter().enumerate() {
            if matches!(e.fault, Fault::FsyncEio { .. }) {
                assert!(
                    last_cut.is_some_and(|c| c > i),
                    "seed {seed}: a lazyfs fsync EIO without a power loss after it"
                );
            }
        }
    }
    for first in 0..190 {
        let mut seen: Vec<Kind> = (first..first + 10)
            .flat_map(|s| Schedule::draw(s, &all).kinds())
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen, all,
            "ten consecutive seeds from {first} cover every kind"
        );
    }
    assert!(
        (0..200).any(|s| Schedule::draw(s, &all)
            .events
            .iter()
            .any(|e| e.fault == Fault::FsyncEio { at_start: true })),
        "some cycle has a lazyfs fsync EIO"
    );
    let only_kill = Schedule::draw(7, &[Kind::Kill]);
    assert!(only_kill
        .events
        .iter()
        .all(|e| e.fault.kind() == Kind::Kill));
    assert_eq!(only_kill.compression, Compression::None);
}
