use super::*;
use crate::pgwire::backend::parse;
use crate::pgwire::BackendMessage as B;

fn catalog() -> Catalog {
    Catalog {
        system_id: 7_310_415_656_024_096_833,
        major: 15,
        segment_size: 16 << 20,
        block_size: 8192,
        timeline: 2,
        end: Lsn(0x500_0100),
        history: vec![HistoryEntry {
            parent: 1,
            switchpoint: Lsn(0x300_0158),
        }],
    }
}

fn history(tli: TimeLineId) -> Option<Vec<u8>> {
    (tli == 2).then(|| b"1\t0/3000158\tno recovery target specified\n".to_vec())
}

fn messages(outcome: Outcome) -> Vec<B> {
    let Outcome::Reply(mut out) = outcome else {
        panic!("expected a reply, got {outcome:?}")
    };
    let mut msgs = Vec::new();
    while let Some(m) = parse(&mut out).unwrap() {
        msgs.push(m);
    }
    assert!(out.is_empty());
    assert!(matches!(msgs.last(), Some(B::ReadyForQuery)), "{msgs:?}");
    msgs
}

fn row(msgs: &[B]) -> Vec<Option<String>> {
    msgs.iter()
        .find_map(|m| match m {
            B::DataRow { values } => Some(
                values
                    .iter()
                    .map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
                    .collect(),
            ),
            _ => None,
        })
        .expect("a data row")
}

fn error_of(msgs: &[B]) -> (String, String) {
    msgs.iter()
        .find_map(|m| match m {
            B::Error(e) => Some((e.code.clone(), e.message.clone())),
            _ => None,
        })
        .expect("an error")
}

#[test]
fn identify_system_reports_the_archive() {
    let msgs = messages(answer("IDENTIFY_SYSTEM", &catalog(), history));
    assert_eq!(
        row(&msgs),
        vec![
            Some("7310415656024096833".into()),
            Some("2".into()),
            Some("0/5000100".into()),
            None
        ]
    );
}

#[test]
fn show_what_clients_ask() {
    let msgs = messages(answer("SHOW wal_segment_size", &catalog(), history));
    assert_eq!(row(&msgs), vec![Some("16MB".into())]);
    let msgs = messages(answer("SHOW data_directory_mode", &catalog(), history));
    assert_eq!(row(&msgs), vec![Some("0700".into())]);
    let msgs = messages(answer("SHOW work_mem", &catalog(), history));
    assert_eq!(
        error_of(&msgs),
        (
            "42704".into(),
            "unrecognized configuration parameter \"work_mem\"".into()
        )
    );
}

#[test]
fn timeline_history_raw_content() {
    let msgs = messages(answer("TIMELINE_HISTORY 2", &catalog(), history));
    assert_eq!(
        row(&msgs),
        vec![
            Some("00000002.history".into()),
            Some("1\t0/3000158\tno recovery target specified\n".into())
        ]
    );
    let msgs = messages(answer("TIMELINE_HISTORY 3", &catalog(), history));
    assert_eq!(error_of(&msgs).0, "58P01");
}

#[test]
fn read_replication_slot_is_no_slot() {
    let msgs = messages(answer("READ_REPLICATION_SLOT s", &catalog(), history));
    assert_eq!(row(&msgs), vec![None, None, None]);
}

#[test]
fn start_on_the_current_timeline_streams() {
    let Outcome::Stream(plan) = answer(
        "START_REPLICATION SLOT \"s\" 0/4000000 TIMELINE 2",
        &catalog(),
        history,
    ) else {
        panic!()
    };
    assert_eq!(plan.timeline, 2);
    assert_eq!(plan.start, Lsn(0x400_0000));
    assert_eq!(plan.switch, None);
    assert_eq!(plan.slot.as_deref(), Some("s"));
    let Outcome::Stream(plan) = answer("START_REPLICATION 0/4000000", &catalog(), history) else {
        panic!()
    };
    assert_eq!(plan.timeline, 2);
}

#[test]
fn start_on_a_historic_timeline_stops_at_its_switch() {
    let Outcome::Stream(plan) = answer(
        "START_REPLICATION 0/2000000 TIMELINE 1",
        &catalog(),
        history,
    ) else {
        panic!()
    };
    assert_eq!(plan.switch, Some((Lsn(0x300_0158), 2)));
    // Exactly at the switch point: no copy mode, the next timeline at once.
    let msgs = messages(answer(
        "START_REPLICATION 0/3000158 TIMELINE 1",
        &catalog(),
        history,
    ));
    assert_eq!(row(&msgs), vec![Some("2".into()), Some("0/3000158".into())]);
    // Past it: not in this history.
    let msgs = messages(answer(
        "START_REPLICATION 0/3000200 TIMELINE 1",
        &catalog(),
        history,
    ));
    assert!(error_of(&msgs)
        .1
        .contains("is not in this server's history"));
}

#[test]
fn refusals_in_postgres_words() {
    let msgs = messages(answer(
        "START_REPLICATION 0/0 TIMELINE 3",
        &catalog(),
        history,
    ));
    assert_eq!(
        error_of(&msgs).1,
        "requested timeline 3 is not in this server's history"
    );
    let msgs = messages(answer("BASE_BACKUP", &catalog(), history));
    assert_eq!(error_of(&msgs).0, "0A000");
    let msgs = messages(answer(
        "START_REPLICATION SLOT sub LOGICAL 0/0",
        &catalog(),
        history,
    ));
    assert!(error_of(&msgs).1.contains("logical replication"));
    let msgs = messages(answer("SELECT 1", &catalog(), history));
    assert_eq!(error_of(&msgs).0, "0A000");
    let msgs = messages(answer("START_REPLICATION junk", &catalog(), history));
    assert_eq!(error_of(&msgs).0, "42601");
    let msgs = messages(answer("", &catalog(), history));
    assert!(matches!(msgs[0], B::EmptyQueryResponse));
}

#[test]
fn parameter_statuses_carry_the_archive_major() {
    let mut out = BytesMut::new();
    parameter_statuses(&mut out, 13, "rep", "s1");
    let mut found = Vec::new();
    while let Some(m) = parse(&mut out).unwrap() {
        if let B::ParameterStatus { name, value } = m {
            found.push((name, value));
        }
    }
    assert!(found.contains(&("server_version".into(), "13.0".into())));
    assert!(found.contains(&("integer_datetimes".into(), "on".into())));
    assert!(!found.iter().any(|(n, _)| n == "in_hot_standby"));
}
