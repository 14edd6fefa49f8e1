//! Starts real PostgreSQL servers for the integration tests.
