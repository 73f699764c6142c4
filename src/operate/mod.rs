//! Operator tools the CLI runs against a stopped spillway's data directory. They sit above the
//! layers whose files they read together (the WAL, the checkpoint, the intents), so none of those
//! layers has to know the others.
//!
//! Must not: run while spillway runs on the same data_dir, or be used by the running service.

pub mod wal_inspect;
