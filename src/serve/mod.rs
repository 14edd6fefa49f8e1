//! walrcv as an upstream (issue 21): the walsender side of the streaming
//! replication protocol, serving the verified WAL of an archive to physical
//! standbys, pg_receivewal and other walrcv instances.
//!
//! Sans-IO cores, each unit-tested (and the parsers fuzzed):
//! - [`wire`]: the start-up packet and frontend messages;
//! - [`command`]: replication commands;
//! - [`walsender`]: the answer to each command against a [`walsender::Catalog`];
//! - [`streamer`]: one client's copy mode (pieces, keepalives, replies, the
//!   end of a timeline);
//! - [`reply`]: backend message encoding;
//! - [`hba`]: the `--serve-hba` rules; [`ident`]: the `--serve-ident` user
//!   name maps (both through [`conf`]); [`scram`]: server-side SCRAM-SHA-256.
//!
//! IO: [`source`] reads the archive (only WAL that `walrcv restore` would
//! serve: verified, never a set-aside divergent tail), [`server`] runs the
//! listener and the sessions; under `walrcv stream --serve` it never serves
//! past the receiver's flushed end ([`crate::archive::live::LiveEnd`]).

pub mod command;
pub mod conf;
pub mod hba;
pub mod ident;
pub mod reply;
pub mod scram;
pub mod server;
pub mod source;
pub mod streamer;
pub mod walsender;
pub mod wire;

pub use server::{run, serve, spawn_live, ServeArgs, ServeOptions};
