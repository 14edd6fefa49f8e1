//! Integration tests against real PostgreSQL servers started by the tests.
mod harness;
mod support;
