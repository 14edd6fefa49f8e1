//! Replication commands sent as simple queries, parsed sans-IO (the subset
//! of PostgreSQL's `repl_gram.y` a physical standby and pg_receivewal send,
//! plus recognising what walrcv refuses so that it can say why).

use crate::lsn::{Lsn, TimeLineId};

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty query string.
    Empty,
    IdentifySystem,
    Show(String),
    TimelineHistory(TimeLineId),
    ReadReplicationSlot(String),
    StartPhysical {
        slot: Option<String>,
        start: Lsn,
        timeline: Option<TimeLineId>,
    },
    /// A command walrcv knows but does not serve: its name, for the error.
    Unsupported(&'static str),
}

/// Why a command is refused before it runs (a `42601` syntax error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("syntax error in replication command: {0}")]
    Syntax(String),
    #[error("walrcv serves only replication commands, not SQL: {0}")]
    NotReplication(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A bare word, kept as written (keywords are compared case-insensitively).
    Word(String),
    /// A double-quoted identifier.
    Quoted(String),
    /// A single-quoted string.
    Literal(String),
    Semicolon,
    Other(char),
}

fn tokenize(text: &str) -> Result<Vec<Token>, CommandError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some(q) if q == c => {
                        if chars.peek() == Some(&c) {
                            chars.next();
                            s.push(c);
                        } else {
                            break;
                        }
                    }
                    Some(other) => s.push(other),
                    None => return Err(CommandError::Syntax("unterminated quoted string".into())),
                }
            }
            out.push(if c == '"' {
                Token::Quoted(s)
            } else {
                Token::Literal(s)
            });
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '/' {
            let mut s = String::new();
            while let Some(&w) = chars.peek() {
                if w.is_ascii_alphanumeric() || w == '_' || w == '/' || w == '.' {
                    s.push(w);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token::Word(s));
        } else if c == ';' {
            chars.next();
            out.push(Token::Semicolon);
        } else {
            chars.next();
            out.push(Token::Other(c));
        }
    }
    // A trailing semicolon is allowed, as by the replication grammar.
    if out.last() == Some(&Token::Semicolon) {
        out.pop();
    }
    Ok(out)
}

fn is_kw(t: Option<&Token>, kw: &str) -> bool {
    matches!(t, Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
}

fn ident(t: Option<&Token>) -> Option<String> {
    match t {
        Some(Token::Quoted(s)) => Some(s.clone()),
        Some(Token::Word(w)) => Some(w.to_ascii_lowercase()),
        _ => None,
    }
}

/// Parses one replication command.
pub fn parse_command(text: &str) -> Result<Command, CommandError> {
    let tokens = tokenize(text)?;
    let mut it = tokens.iter();
    let Some(first) = it.next() else {
        return Ok(Command::Empty);
    };
    let Token::Word(word) = first else {
        return Err(CommandError::Syntax(format!("unexpected {first:?}")));
    };
    let rest: Vec<&Token> = it.collect();
    match word.to_ascii_uppercase().as_str() {
        "IDENTIFY_SYSTEM" => no_more(&rest).map(|()| Command::IdentifySystem),
        "SHOW" => match rest.as_slice() {
            [t] => ident(Some(t))
                .map(Command::Show)
                .ok_or_else(|| CommandError::Syntax("SHOW needs a parameter name".into())),
            _ => Err(CommandError::Syntax("SHOW takes one parameter name".into())),
        },
        "TIMELINE_HISTORY" => match rest.as_slice() {
            [Token::Word(n)] => timeline(n).map(Command::TimelineHistory),
            _ => Err(CommandError::Syntax(
                "TIMELINE_HISTORY takes a timeline".into(),
            )),
        },
        "READ_REPLICATION_SLOT" => match rest.as_slice() {
            [t] => ident(Some(t))
                .map(Command::ReadReplicationSlot)
                .ok_or_else(|| {
                    CommandError::Syntax("READ_REPLICATION_SLOT takes a slot name".into())
                }),
            _ => Err(CommandError::Syntax(
                "READ_REPLICATION_SLOT takes a slot name".into(),
            )),
        },
        "START_REPLICATION" => parse_start(&rest),
        "BASE_BACKUP" => Ok(Command::Unsupported("BASE_BACKUP")),
        "CREATE_REPLICATION_SLOT" => Ok(Command::Unsupported("CREATE_REPLICATION_SLOT")),
        "DROP_REPLICATION_SLOT" => Ok(Command::Unsupported("DROP_REPLICATION_SLOT")),
        "ALTER_REPLICATION_SLOT" => Ok(Command::Unsupported("ALTER_REPLICATION_SLOT")),
        "UPLOAD_MANIFEST" => Ok(Command::Unsupported("UPLOAD_MANIFEST")),
        _ => Err(CommandError::NotReplication(
            text.chars().take(80).collect(),
        )),
    }
}

fn no_more(rest: &[&Token]) -> Result<(), CommandError> {
    match rest.first() {
        None => Ok(()),
        Some(t) => Err(CommandError::Syntax(format!("unexpected {t:?}"))),
    }
}

fn timeline(n: &str) -> Result<TimeLineId, CommandError> {
    match n.parse::<TimeLineId>() {
        Ok(t) if t > 0 => Ok(t),
        _ => Err(CommandError::Syntax(format!("invalid timeline \"{n}\""))),
    }
}

/// `START_REPLICATION [SLOT s] [PHYSICAL] X/X [TIMELINE n]`, or the logical form.
fn parse_start(rest: &[&Token]) -> Result<Command, CommandError> {
    let mut i = 0;
    let mut slot = None;
    if is_kw(rest.get(i).copied(), "SLOT") {
        slot = Some(ident(rest.get(i + 1).copied()).ok_or_else(|| {
            CommandError::Syntax("START_REPLICATION SLOT needs a slot name".into())
        })?);
        i += 2;
    }
    if is_kw(rest.get(i).copied(), "LOGICAL") {
        return Ok(Command::Unsupported("logical replication"));
    }
    if is_kw(rest.get(i).copied(), "PHYSICAL") {
        i += 1;
    }
    let start = match rest.get(i) {
        Some(Token::Word(w)) => w
            .parse::<Lsn>()
            .map_err(|_| CommandError::Syntax(format!("invalid start point \"{w}\"")))?,
        _ => {
            return Err(CommandError::Syntax(
                "START_REPLICATION needs a start point".into(),
            ))
        }
    };
    i += 1;
    let mut tli = None;
    if is_kw(rest.get(i).copied(), "TIMELINE") {
        match rest.get(i + 1) {
            Some(Token::Word(n)) => tli = Some(timeline(n)?),
            _ => return Err(CommandError::Syntax("TIMELINE needs a number".into())),
        }
        i += 2;
    }
    no_more(rest.get(i..).unwrap_or(&[]))?;
    Ok(Command::StartPhysical {
        slot,
        start,
        timeline: tli,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commands_clients_send() {
        assert_eq!(
            parse_command("IDENTIFY_SYSTEM").unwrap(),
            Command::IdentifySystem
        );
        assert_eq!(
            parse_command("identify_system;").unwrap(),
            Command::IdentifySystem
        );
        assert_eq!(parse_command("").unwrap(), Command::Empty);
        assert_eq!(
            parse_command("SHOW wal_segment_size").unwrap(),
            Command::Show("wal_segment_size".into())
        );
        assert_eq!(
            parse_command("TIMELINE_HISTORY 2").unwrap(),
            Command::TimelineHistory(2)
        );
        assert_eq!(
            parse_command("READ_REPLICATION_SLOT s1").unwrap(),
            Command::ReadReplicationSlot("s1".into())
        );
        assert_eq!(
            parse_command("START_REPLICATION SLOT \"My\"\"slot\" 0/3000000 TIMELINE 1").unwrap(),
            Command::StartPhysical {
                slot: Some("My\"slot".into()),
                start: Lsn(0x300_0000),
                timeline: Some(1),
            }
        );
        assert_eq!(
            parse_command("START_REPLICATION PHYSICAL 1/A0").unwrap(),
            Command::StartPhysical {
                slot: None,
                start: Lsn(0x1_0000_00A0),
                timeline: None,
            }
        );
    }

    #[test]
    fn refused_and_malformed() {
        assert_eq!(
            parse_command("BASE_BACKUP (CHECKPOINT 'fast')").unwrap(),
            Command::Unsupported("BASE_BACKUP")
        );
        assert_eq!(
            parse_command("START_REPLICATION SLOT s LOGICAL 0/0").unwrap(),
            Command::Unsupported("logical replication")
        );
        assert!(matches!(
            parse_command("SELECT 1"),
            Err(CommandError::NotReplication(_))
        ));
        assert!(parse_command("TIMELINE_HISTORY 0").is_err());
        assert!(parse_command("START_REPLICATION 0/0 TIMELINE").is_err());
        assert!(parse_command("START_REPLICATION 0/0 junk").is_err());
        assert!(parse_command("START_REPLICATION zz").is_err());
        assert!(parse_command("SHOW \"unterminated").is_err());
        assert!(parse_command("IDENTIFY_SYSTEM now").is_err());
    }
}
