//! The stream catalog shared by every node (cluster mode): [`PostgresCatalog`] keeps each
//! stream's record in `spillway_streams`, so a stream created, changed or deleted through the API
//! on one node is known to all of them (`crate::control::follow` applies it on each), and a YAML
//! stream's `VersionId` counts once for the cluster. [`check_yaml_streams`] refuses a node whose
//! YAML streams differ from a live node's.
//!
//! Must not: build or run streams.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio_postgres::Client;

use super::ClusterError;
use super::config::ResolvedCluster;
use super::coordinator::Coordinator;
use crate::control::catalog::{Catalog, CatalogError, StreamRecord};

/// The catalog in the coordinator (see the module header).
pub struct PostgresCatalog {
    coordinator: Coordinator,
}

impl PostgresCatalog {
    /// One connection of its own: catalog reads never hold up the heartbeat.
    pub fn new(cluster: &ResolvedCluster) -> Result<Self, ClusterError> {
        Ok(Self { coordinator: Coordinator::new(cluster, 1)? })
    }

    async fn with_client<T>(
        &self,
        operation: impl AsyncFnOnce(&mut Client) -> Result<T, ClusterError>,
    ) -> Result<T, CatalogError> {
        self.coordinator.with_client(operation).await.map_err(|error| match error {
            ClusterError::Rejected(_) => CatalogError::Rejected(error.to_string()),
            other => CatalogError::Coordinator(other.to_string()),
        })
    }
}

// JSON crosses as text (`$n::jsonb`, `record::text`): no serde feature of the driver needed.
fn to_json(record: &StreamRecord) -> Result<String, ClusterError> {
    serde_json::to_string(record).map_err(|error| ClusterError::Config(format!("a stream record: {error}")))
}

fn from_json(name: &str, text: &str) -> Result<StreamRecord, ClusterError> {
    serde_json::from_str(text)
        .map_err(|error| ClusterError::Config(format!("the catalog record of stream {name} is unreadable: {error}")))
}

#[async_trait]
impl Catalog for PostgresCatalog {
    async fn load_yaml_record(&self, name: &str, fingerprint: &str, now_ms: i64) -> Result<StreamRecord, CatalogError> {
        self.with_client(async |client| {
            let transaction = client.transaction().await?;
            let fresh = StreamRecord {
                fingerprint: Some(fingerprint.to_string()),
                ..StreamRecord::new(name, crate::control::catalog::StreamOrigin::Yaml, now_ms)
            };
            // Nodes starting together: the first insert wins, the others lock and read it.
            transaction
                .execute(
                    "INSERT INTO spillway_streams (origin, name, record) VALUES ('yaml', $1, $2::text::jsonb)
                     ON CONFLICT (origin, name) DO NOTHING",
                    &[&name, &to_json(&fresh)?],
                )
                .await?;
            let stored: String = transaction
                .query_one("SELECT record::text FROM spillway_streams WHERE origin = 'yaml' AND name = $1 FOR UPDATE", &[
                    &name,
                ])
                .await?
                .get(0);
            let stored = from_json(name, &stored)?;
            if stored.fingerprint.as_deref() == Some(fingerprint) {
                transaction.commit().await?;
                return Ok(stored);
            }
            let bumped = StreamRecord {
                version_id: stored.version_id + 1,
                last_update_timestamp_ms: now_ms,
                fingerprint: Some(fingerprint.to_string()),
                ..stored
            };
            transaction
                .execute(
                    "UPDATE spillway_streams SET record = $2::text::jsonb, updated_at = now() WHERE origin = 'yaml' AND name = $1",
                    &[&name, &to_json(&bumped)?],
                )
                .await?;
            transaction.commit().await?;
            Ok(bumped)
        })
        .await
    }

    async fn load_api_records(&self) -> Result<Vec<StreamRecord>, CatalogError> {
        self.with_client(async |client| {
            let rows = client
                .query("SELECT name, record::text FROM spillway_streams WHERE origin = 'api' ORDER BY name", &[])
                .await?;
            // One unreadable record (written by a newer spillway, or by hand) must not stop the
            // others from running or every change from being made.
            Ok(rows
                .iter()
                .filter_map(|row| {
                    from_json(row.get(0), row.get(1))
                        .inspect_err(|error| tracing::error!(%error, "skipping a catalog record"))
                        .ok()
                })
                .collect())
        })
        .await
    }

    async fn insert_api_record(&self, record: &StreamRecord) -> Result<bool, CatalogError> {
        self.with_client(async |client| {
            let inserted = client
                .execute(
                    "INSERT INTO spillway_streams (origin, name, record) VALUES ('api', $1, $2::text::jsonb)
                     ON CONFLICT (origin, name) DO NOTHING",
                    &[&record.name, &to_json(record)?],
                )
                .await?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn save_api_record(&self, record: &StreamRecord) -> Result<(), CatalogError> {
        self.with_client(async |client| {
            client
                .execute(
                    "INSERT INTO spillway_streams (origin, name, record) VALUES ('api', $1, $2::text::jsonb)
                     ON CONFLICT (origin, name) DO UPDATE SET record = excluded.record, updated_at = now()",
                    &[&record.name, &to_json(record)?],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn replace_api_record(&self, current: &StreamRecord, new: &StreamRecord) -> Result<bool, CatalogError> {
        self.with_client(async |client| {
            let transaction = client.transaction().await?;
            let stored = transaction
                .query_opt(
                    "SELECT record::text FROM spillway_streams WHERE origin = 'api' AND name = $1 FOR UPDATE",
                    &[&new.name],
                )
                .await?;
            // Compared as this binary reads them (not as jsonb): a field only a newer spillway
            // writes does not make every change of an older node fail.
            let Some(stored) = stored else { return Ok(false) };
            let stored: String = stored.get(0);
            if from_json(&new.name, &stored).ok().as_ref() != Some(current) {
                return Ok(false);
            }
            transaction
                .execute(
                    "UPDATE spillway_streams SET record = $2::text::jsonb, updated_at = now()
                     WHERE origin = 'api' AND name = $1",
                    &[&new.name, &to_json(new)?],
                )
                .await?;
            transaction.commit().await?;
            Ok(true)
        })
        .await
    }

    fn shared(&self) -> bool {
        true
    }

    async fn remove_api_record(&self, record: &StreamRecord) -> Result<(), CatalogError> {
        self.with_client(async |client| {
            client
                .execute(
                    "DELETE FROM spillway_streams WHERE origin = 'api' AND name = $1
                     AND (record->>'create_timestamp_ms')::bigint = $2",
                    &[&record.name, &record.create_timestamp_ms],
                )
                .await?;
            Ok(())
        })
        .await
    }
}

/// How this node's YAML streams differ from a live node's: the first difference, by stream name.
fn first_difference(
    mine: &BTreeMap<String, String>,
    theirs: &BTreeMap<String, String>,
    node: &str,
) -> Option<ClusterError> {
    let names: std::collections::BTreeSet<&String> = mine.keys().chain(theirs.keys()).collect();
    names.into_iter().find_map(|name| {
        let how = match (mine.get(name), theirs.get(name)) {
            (Some(a), Some(b)) if a == b => return None,
            (Some(_), Some(_)) => "runs it with another configuration",
            (Some(_), None) => "does not run it",
            (None, _) => "runs it and this node's file does not have it",
        };
        Some(ClusterError::YamlDiffers { stream: name.clone(), node: node.to_string(), how: how.to_string() })
    })
}

/// Compare this node's YAML streams (`name → fingerprint`) with every other live node's, then
/// record them as this node's, in one transaction under an advisory lock (two nodes starting
/// with different files cannot both pass). A difference is [`ClusterError::YamlDiffers`],
/// naming the stream and the node.
pub async fn check_yaml_streams(
    store: &super::LeaseStore,
    streams: &BTreeMap<String, String>,
) -> Result<(), ClusterError> {
    const YAML_CHECK_LOCK: i64 = 0x7370_696c_6c77_6179 + 1;
    let mine = serde_json::to_string(streams).map_err(|error| ClusterError::Config(error.to_string()))?;
    let node_id = store.node_id().to_string();
    store
        .with_client(async |client| {
            let transaction = client.transaction().await?;
            transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&YAML_CHECK_LOCK]).await?;
            let others = transaction
                .query(
                    "SELECT node_id, yaml_streams::text FROM spillway_nodes
                     WHERE node_id <> $1 AND stopped_at IS NULL AND yaml_streams IS NOT NULL
                       AND heartbeat_at > now() - lease_seconds * interval '1 second'
                     ORDER BY node_id",
                    &[&node_id],
                )
                .await?;
            for row in others {
                let (other, theirs): (String, String) = (row.get(0), row.get(1));
                let theirs: BTreeMap<String, String> = serde_json::from_str(&theirs).unwrap_or_default();
                if let Some(difference) = first_difference(streams, &theirs, &other) {
                    return Err(difference);
                }
            }
            transaction
                .execute(
                    "UPDATE spillway_nodes SET yaml_streams = $2::text::jsonb WHERE node_id = $1",
                    &[&node_id, &mine],
                )
                .await?;
            transaction.commit().await?;
            Ok(())
        })
        .await
}

/// Record this node's YAML streams after a reload changed them, without comparing: during a
/// rolling change nodes differ for a moment; a node *starting* with a file that differs is what
/// [`check_yaml_streams`] refuses.
pub async fn publish_yaml_streams(
    store: &super::LeaseStore,
    streams: &BTreeMap<String, String>,
) -> Result<(), ClusterError> {
    let mine = serde_json::to_string(streams).map_err(|error| ClusterError::Config(error.to_string()))?;
    let node_id = store.node_id().to_string();
    store
        .with_client(async |client| {
            client
                .execute(
                    "UPDATE spillway_nodes SET yaml_streams = $2::text::jsonb WHERE node_id = $1",
                    &[&node_id, &mine],
                )
                .await?;
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(name, fingerprint)| (name.to_string(), fingerprint.to_string())).collect()
    }

    #[test]
    fn the_first_differing_stream_is_named_with_how_it_differs() {
        let mine = streams(&[("a", "1"), ("b", "2")]);
        assert!(first_difference(&mine, &mine.clone(), "n2").is_none());
        let message = |theirs: &[(&str, &str)]| {
            first_difference(&mine, &streams(theirs), "n2").map(|error| error.to_string()).unwrap_or_default()
        };
        let changed = message(&[("a", "1"), ("b", "3")]);
        assert!(changed.contains("`b`") && changed.contains("n2 runs it with another configuration"), "{changed}");
        let missing = message(&[("a", "1")]);
        assert!(missing.contains("`b`") && missing.contains("does not run it"), "{missing}");
        let extra = message(&[("a", "1"), ("b", "2"), ("c", "9")]);
        assert!(extra.contains("`c`") && extra.contains("this node's file does not have it"), "{extra}");
    }
}
