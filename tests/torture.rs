//! The torture test (issue 17, "Acknowledged means kept"): seeded cycles of
//! faults against real servers, with walrcv as the synchronous standby; every
//! commit a client saw acknowledged must come back from the archive, and no
//! flush position walrcv reported may exceed what the archive holds verified.
//! See `docs/src/torture.md` and `scripts/torture.sh`.
//!
//! ```text
//! torture [--cycles N] [--seed S] [--faults LIST] [--clients C] [--keep] [--dry-run]
//! ```
//!
//! `--dry-run` prints the schedules and runs nothing.
//!
//! Cycle `k` of a run uses seed `S + k`; `--seed X --cycles 1` replays the
//! cycle of seed `X` (same schedule). Without arguments (as `cargo test` runs
//! it) one short cycle: seed 0, `--faults kill`. Exit status 0 when every
//! check of every cycle held, 1 otherwise, 2 on a usage error.

// support/proxy.rs's unit tests are compiled (cfg(test)) but not run here.
#[allow(unused_imports)]
mod support;

#[path = "torture/archive.rs"]
mod archive;
#[path = "torture/clients.rs"]
mod clients;
#[path = "torture/cycle.rs"]
mod cycle;
#[path = "torture/proxy.rs"]
mod proxy;
#[path = "torture/schedule.rs"]
mod schedule;

use std::collections::BTreeMap;
use std::process::ExitCode;

use schedule::{Compression, Kind, Schedule};

struct Args {
    cycles: u64,
    seed: u64,
    faults: Vec<Kind>,
    clients: usize,
    keep: bool,
    dry_run: bool,
}

const USAGE: &str =
    "usage: torture [--cycles N] [--seed S] [--faults kill,stop,compress,cut,stall,\
bitflip,diskfull,eio,switchover,failover,crash,powerloss | all] [--clients C] [--keep] [--dry-run]";

fn parse_args() -> Result<Option<Args>, String> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut args = Args {
        cycles: 1,
        seed: 0,
        faults: vec![Kind::Kill],
        clients: 4,
        keep: false,
        dry_run: false,
    };
    let mut it = raw.iter();
    let mut explicit_faults = false;
    let mut explicit_seed = false;
    let mut explicit_cycles = false;
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--cycles" => {
                args.cycles = value(a)?.parse().map_err(|e| format!("--cycles: {e}"))?;
                explicit_cycles = true;
                if !explicit_faults {
                    args.faults = Kind::ALL.to_vec();
                }
            }
            "--seed" => {
                args.seed = value(a)?.parse().map_err(|e| format!("--seed: {e}"))?;
                explicit_seed = true;
            }
            "--faults" => {
                explicit_faults = true;
                let v = value(a)?;
                args.faults = if v == "all" {
                    Kind::ALL.to_vec()
                } else {
                    v.split(',')
                        .map(|n| {
                            Kind::parse(n.trim()).ok_or_else(|| format!("unknown fault {n:?}"))
                        })
                        .collect::<Result<_, _>>()?
                };
            }
            "--clients" => {
                args.clients = value(a)?.parse().map_err(|e| format!("--clients: {e}"))?;
            }
            "--keep" => args.keep = true,
            "--dry-run" => args.dry_run = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            // libtest's flags (cargo test passes them to every test binary).
            "--nocapture" | "--quiet" | "-q" | "--include-ignored" | "--ignored" => {}
            "--test-threads" | "--color" | "--format" => {
                value(a)?;
            }
            // A test-name filter from `cargo test FILTER`: run only if it names us.
            filter if !filter.starts_with('-') => {
                if !"torture".contains(filter) {
                    println!("torture: filtered out by {filter:?}");
                    return Ok(None);
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if explicit_cycles && !explicit_seed {
        // A fresh run without --seed: a new seed, printed for the replay.
        args.seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 1_000_000)
            .unwrap_or(0);
    }
    if args.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    Ok(Some(args))
}

#[derive(Default)]
struct Row {
    cycles: usize,
    acked: usize,
    lost: usize,
    overack: usize,
    failed: usize,
}

impl Row {
    fn add(&mut self, o: &cycle::Outcome) {
        self.cycles += 1;
        self.acked += o.acked;
        self.lost += o.lost;
        self.overack += o.overack;
        self.failed += usize::from(!o.ok());
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("torture: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    schedule::self_check();
    cycle::self_check();
    if args.keep {
        std::env::set_var("WALRCV_KEEP_PG", "1");
    }
    let faults: Vec<&str> = args.faults.iter().map(|k| k.name()).collect();
    let faults = if args.faults.len() == Kind::ALL.len() {
        "all".to_string()
    } else {
        faults.join(",")
    };
    println!(
        "torture: {} cycle(s) from seed {}, faults {faults}, {} clients",
        args.cycles, args.seed, args.clients
    );
    let opts = cycle::Options {
        clients: args.clients,
        keep: args.keep,
    };
    let mut by_kind: BTreeMap<Kind, Row> = BTreeMap::new();
    let mut by_method: BTreeMap<Compression, Row> = BTreeMap::new();
    let mut total = Row::default();
    let mut failed = Vec::new();
    for k in 0..args.cycles {
        let seed = args.seed + k;
        let schedule = Schedule::draw(seed, &args.faults);
        if args.dry_run {
            print!("{schedule}");
            continue;
        }
        println!("\n=== cycle {}/{}: {schedule}", k + 1, args.cycles);
        let outcome = cycle::run(&schedule, &opts);
        for kind in schedule.kinds() {
            by_kind.entry(kind).or_default().add(&outcome);
        }
        by_method
            .entry(schedule.compression)
            .or_default()
            .add(&outcome);
        total.add(&outcome);
        println!(
            "=== cycle {} (seed {seed}): {} in {:.0} s: {} acknowledged, {} lost, {} over-acknowledged, \
             walrcv exited by itself {} time(s)",
            k + 1,
            if outcome.ok() { "ok" } else { "FAILED" },
            outcome.secs,
            outcome.acked,
            outcome.lost,
            outcome.overack,
            outcome.exits
        );
        for n in &outcome.notes {
            println!("    note: {n}");
        }
        if !outcome.ok() {
            for f in &outcome.failures {
                println!("    FAILED: {f}");
            }
            println!("    schedule: {schedule}");
            println!("    replay: scripts/torture.sh --seed {seed} --cycles 1 --faults {faults}");
            if let Some(d) = &outcome.logdir {
                println!("    logs: {}", d.display());
            }
            failed.push(seed);
        } else if let Some(d) = &outcome.logdir {
            println!("    logs: {}", d.display());
        }
    }
    if args.dry_run {
        return ExitCode::SUCCESS;
    }
    print_table(&by_kind, &by_method, &total);
    if failed.is_empty() {
        println!("torture: OK");
        ExitCode::SUCCESS
    } else {
        println!("torture: FAILED cycles, seeds {failed:?}");
        ExitCode::FAILURE
    }
}

fn print_table(by_kind: &BTreeMap<Kind, Row>, by_method: &BTreeMap<Compression, Row>, total: &Row) {
    println!("\n| fault | cycles | acknowledged | lost | over-acknowledged | failed cycles |");
    println!("|---|---|---|---|---|---|");
    let line = |name: &str, r: &Row| {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            r.cycles, r.acked, r.lost, r.overack, r.failed
        )
    };
    for (kind, row) in by_kind {
        line(kind.name(), row);
    }
    for (method, row) in by_method {
        line(&format!("-Z {}", method.name()), row);
    }
    line("all", total);
}
