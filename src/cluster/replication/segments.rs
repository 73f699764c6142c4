//! The segment objects of the replicated WAL and their index rows in the coordinator.
//!
//! A segment object holds WAL frames exactly as the local WAL writes them (checked again when
//! read back), named `<prefix><stream>/<slot>/<first>-<end>.frames` after the sequences it holds.
//! Its index row (`spillway_wal_segments`) is written under the slot's lease (fenced): a segment
//! counts only once indexed, and a node that lost its slot can index nothing more.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::super::ClusterError;
use super::super::shard_state::ShardStates;

/// One indexed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRow {
    pub first_sequence: u64,
    pub end_sequence: u64,
    pub object_key: String,
}

/// The object store side: keys, puts, gets, deletes, the sweep's listing.
pub struct SegmentStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl SegmentStore {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: String) -> Self {
        Self { store, prefix }
    }

    /// Where a stream's slots keep their objects.
    pub fn stream_prefix(&self, stream: &str) -> String {
        format!("{}{stream}/", self.prefix)
    }

    pub fn key(&self, stream: &str, slot: &str, first: u64, end: u64) -> String {
        format!("{}{slot}/{first:020}-{end:020}.frames", self.stream_prefix(stream))
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), object_store::Error> {
        self.store.put(&ObjectPath::from(key), body.into()).await.map(|_| ())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, object_store::Error> {
        self.store.get(&ObjectPath::from(key)).await?.bytes().await
    }

    /// Delete objects; one already gone counts as deleted. The first other failure is returned
    /// (the sweep catches what is left).
    pub async fn delete(&self, keys: &[String]) -> Result<(), object_store::Error> {
        let mut first_error = None;
        for key in keys {
            match self.store.delete(&ObjectPath::from(key.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Every object under a stream's prefix with its age in seconds.
    pub async fn list(&self, stream: &str) -> Result<Vec<(String, f64)>, object_store::Error> {
        let prefix = ObjectPath::from(self.stream_prefix(stream).trim_end_matches('/'));
        let now = chrono::Utc::now();
        let mut listing = self.store.list(Some(&prefix));
        let mut objects = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let age = (now - meta.last_modified).num_milliseconds() as f64 / 1000.0;
            objects.push((meta.location.to_string(), age));
        }
        Ok(objects)
    }
}

fn stored(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

fn sequence(stored: i64) -> u64 {
    u64::try_from(stored).unwrap_or(0)
}

/// The coordinator side: the slot's index rows.
pub struct SegmentIndex {
    pub states: Arc<ShardStates>,
}

impl SegmentIndex {
    /// Index a stored segment, only while this node owns the slot at `epoch`.
    pub async fn insert(&self, key: &str, epoch: i64, row: &SegmentRow, bytes: u64) -> Result<(), ClusterError> {
        let (first, end, bytes) = (stored(row.first_sequence), stored(row.end_sequence), stored(bytes));
        self.states
            .fenced(key, epoch, async |transaction| {
                transaction
                    .execute(
                        "INSERT INTO spillway_wal_segments (lease_key, first_sequence, end_sequence, object_key, bytes)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (lease_key, first_sequence) DO UPDATE
                         SET end_sequence = excluded.end_sequence, object_key = excluded.object_key, bytes = excluded.bytes",
                        &[&key, &first, &end, &row.object_key, &bytes],
                    )
                    .await?;
                Ok(())
            })
            .await
    }

    /// The slot's segments holding records at or after `from`, in order.
    pub async fn rows_from(&self, key: &str, from: u64) -> Result<Vec<SegmentRow>, ClusterError> {
        let from = stored(from);
        self.states
            .with_client(async |client| {
                let rows = client
                    .query(
                        "SELECT first_sequence, end_sequence, object_key FROM spillway_wal_segments
                         WHERE lease_key = $1 AND end_sequence > $2 ORDER BY first_sequence",
                        &[&key, &from],
                    )
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|row| SegmentRow {
                        first_sequence: sequence(row.get(0)),
                        end_sequence: sequence(row.get(1)),
                        object_key: row.get(2),
                    })
                    .collect())
            })
            .await
    }

    /// Forget the segments wholly below `delivered`; returns their object keys (to delete).
    pub async fn delete_below(&self, key: &str, epoch: i64, delivered: u64) -> Result<Vec<String>, ClusterError> {
        let delivered = stored(delivered);
        self.states
            .fenced(key, epoch, async |transaction| {
                let rows = transaction
                    .query(
                        "DELETE FROM spillway_wal_segments WHERE lease_key = $1 AND end_sequence <= $2
                         RETURNING object_key",
                        &[&key, &delivered],
                    )
                    .await?;
                Ok(rows.into_iter().map(|row| row.get(0)).collect())
            })
            .await
    }

    /// A slot delivered to its end: forget its segments, its delivery state and its lease in
    /// one fenced transaction. Returns the object keys (to delete).
    pub async fn retire(&self, key: &str, epoch: i64) -> Result<Vec<String>, ClusterError> {
        self.states
            .fenced(key, epoch, async |transaction| {
                let rows = transaction
                    .query("DELETE FROM spillway_wal_segments WHERE lease_key = $1 RETURNING object_key", &[&key])
                    .await?;
                transaction.execute("DELETE FROM spillway_shard_intents WHERE lease_key = $1", &[&key]).await?;
                transaction.execute("DELETE FROM spillway_shard_state WHERE lease_key = $1", &[&key]).await?;
                transaction.execute("DELETE FROM spillway_leases WHERE lease_key = $1", &[&key]).await?;
                Ok(rows.into_iter().map(|row| row.get(0)).collect())
            })
            .await
    }

    /// Every object key the index holds for `stream`'s slots (for the sweep).
    pub async fn indexed_objects(&self, stream: &str) -> Result<Vec<String>, ClusterError> {
        let pattern = format!("{}%", super::slot_lease_prefix(stream).replace('%', "\\%").replace('_', "\\_"));
        self.states
            .with_client(async |client| {
                Ok(client
                    .query("SELECT object_key FROM spillway_wal_segments WHERE lease_key LIKE $1", &[&pattern])
                    .await?
                    .into_iter()
                    .map(|row| row.get(0))
                    .collect())
            })
            .await
    }
}
