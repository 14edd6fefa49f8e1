//! PostgreSQL frontend/backend protocol: sans-IO message codecs and the async
//! connection (TCP or Unix socket, authentication).
