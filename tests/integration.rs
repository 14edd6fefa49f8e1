//! Integration tests against real PostgreSQL servers started by the tests.
mod auth;
mod cleanup;
mod compress;
mod conninfo_service;
mod corruption;
mod disk_full;
mod divergent_tools;
mod dropin_messages;
mod failover;
#[cfg(feature = "failpoints")]
mod failpoints;
mod fake_primary;
mod file_modes;
mod harness;
mod metrics;
mod multi_host;
mod network_faults;
mod restore;
mod resume;
mod server_faults;
mod service;
mod status;
mod stream;
mod support;
mod sync_commit;
mod tls;
mod verify_compressed;
