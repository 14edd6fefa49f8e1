//! Integration tests against real PostgreSQL servers started by the tests.
mod corruption;
mod harness;
mod stream;
mod support;
mod sync_commit;
