//! The user guide (`docs/src/`, an mdBook) documents every subcommand, every
//! flag and every metric: the names are taken from the clap definitions and
//! from a fresh metrics registry, so a new flag or metric without a line in
//! its chapter fails here. The guide's links are checked by
//! `scripts/check-doc-links.sh` (CI, `scripts/build-docs.sh`).

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;

/// The chapter that documents each subcommand's flags.
const CHAPTERS: &[(&str, &str)] = &[
    ("stream", "stream.md"),
    ("verify", "verify.md"),
    ("status", "status.md"),
    ("restore", "restore.md"),
    ("cleanup", "cleanup.md"),
    ("serve", "serve.md"),
    ("generate-assets", "production.md"),
];

fn chapter(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/src")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `--long` flag of a subcommand (global ones included), without clap's
/// own `--help` and `--version` and the hidden internal ones.
fn long_flags(sub: &clap::Command) -> BTreeSet<String> {
    sub.get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "help" | "version"))
        .map(|l| format!("--{l}"))
        .collect()
}

#[test]
fn every_subcommand_has_a_chapter_naming_each_of_its_flags() {
    let mut cli = walrcv::cli::Cli::command();
    cli.build();
    let subcommands: BTreeSet<&str> = cli
        .get_subcommands()
        .map(|s| s.get_name())
        .filter(|n| *n != "help")
        .collect();
    let mapped: BTreeSet<&str> = CHAPTERS.iter().map(|(s, _)| *s).collect();
    assert_eq!(subcommands, mapped, "a subcommand without a chapter here");
    let mut missing = Vec::new();
    for (name, file) in CHAPTERS {
        let text = chapter(file);
        assert!(
            text.contains(&format!("walrcv {name}")),
            "{file} never shows `walrcv {name}`"
        );
        let sub = cli.find_subcommand(name).expect("listed subcommand");
        let flags = long_flags(sub);
        if *name == "stream" {
            assert!(flags.len() >= 20, "stream has only {flags:?}");
        }
        missing.extend(
            flags
                .into_iter()
                .filter(|f| !text.contains(f.as_str()))
                .map(|f| format!("{name} {f} (in {file})")),
        );
    }
    assert!(missing.is_empty(), "undocumented flags: {missing:?}");
}

#[test]
fn the_pg_receivewal_name_takes_no_flag_the_stream_chapter_lacks() {
    let text = chapter("stream.md");
    let flags = long_flags(&walrcv::cli::PgReceivewalCli::command());
    let missing: Vec<&String> = flags
        .iter()
        .filter(|f| !text.contains(f.as_str()))
        .collect();
    assert!(missing.is_empty(), "undocumented: {missing:?}");
}

#[test]
fn every_metric_is_in_the_metrics_chapter() {
    let exposition = walrcv::metrics::Metrics::new().encode();
    let names: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.len() >= 15, "only {names:?} in\n{exposition}");
    let text = chapter("metrics.md");
    let missing: Vec<&&str> = names.iter().filter(|n| !text.contains(**n)).collect();
    assert!(
        missing.is_empty(),
        "not in docs/src/metrics.md: {missing:?}"
    );
}

#[test]
fn the_summary_lists_every_chapter() {
    let summary = chapter("SUMMARY.md");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src");
    for entry in std::fs::read_dir(&dir).expect("docs/src") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".md") && name != "SUMMARY.md" {
            assert!(summary.contains(&format!("]({name})")), "{name} not listed");
        }
    }
}
