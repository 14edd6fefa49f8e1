//! The streaming session pipeline and its supervisor.
