//! Adopting a dead node's ingest slots: one task per push stream (on every node) scans the
//! stream's slot leases every `lease_seconds / 3`, claims one expired (or released) slot per
//! scan, and delivers it: the slot's segments are read back from the object store into a fresh
//! local WAL at the sequences they had, and a delivery loop under the slot's lease carries on
//! from the coordinator's checkpoint and intents exactly as a shard's next owner does. Once
//! everything indexed is delivered, the slot is retired. The same task sweeps the stream's
//! objects that no slot indexes (never acknowledged) once they are older than the grace period.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Replication, slot_lease_prefix};
use crate::config::StreamConfig;
use crate::metrics::StreamMetrics;
use crate::sources::shards::Boundaries;
use crate::streams::{DeliveryBuilder, DeliveryPlace};
use crate::wal::{Wal, WalError, WalOptions, decode_frames};

/// What one stream's adoption task needs.
pub struct OrphanSlots {
    pub replication: Arc<Replication>,
    pub config: StreamConfig,
    pub version_id: u64,
    pub metrics: Arc<StreamMetrics>,
    pub builder: DeliveryBuilder,
    /// Adopted slots keep their local cache under `<stream_dir>/adopted/<slot>/`.
    pub stream_dir: PathBuf,
    pub wal: WalOptions,
}

/// Run until `stop`; an adoption in progress stops with it (its lease is released: the next
/// owner carries on from the coordinator's state).
pub async fn run(orphans: OrphanSlots, mut stop: watch::Receiver<bool>) {
    let orphans = Arc::new(orphans);
    let leases = orphans.replication.states.leases().clone();
    let period = leases.lease_duration() / 3;
    let prefix = slot_lease_prefix(&orphans.config.name);
    let mut adopting: JoinSet<()> = JoinSet::new();
    let mut next_sweep = tokio::time::Instant::now() + period * 3;
    loop {
        while adopting.try_join_next().is_some() {}
        // A slot is adopted only by a node that has reached the coordinator for a whole lease
        // period: right after an outage every slot looks expired, and its live owner needs a
        // renewal round to claim it back; adopting it then would fence a live node.
        if leases.reachable_for() >= leases.lease_duration() {
            claim_one(&orphans, &prefix, &mut adopting, &stop).await;
        }
        if tokio::time::Instant::now() >= next_sweep {
            sweep(&orphans).await;
            next_sweep = tokio::time::Instant::now() + Duration::from_secs(60).max(period * 3);
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
    while adopting.join_next().await.is_some() {}
}

/// Claim one expired (or released) slot of the stream, if any, and start delivering it.
async fn claim_one(orphans: &Arc<OrphanSlots>, prefix: &str, adopting: &mut JoinSet<()>, stop: &watch::Receiver<bool>) {
    let leases = orphans.replication.states.leases();
    let rows = match leases.scan().await {
        Ok((_, rows)) => rows,
        Err(error) => {
            tracing::debug!(%error, "cannot scan the ingest slots");
            return;
        }
    };
    let held = leases.held();
    let candidates: Vec<String> = rows
        .into_iter()
        .filter(|row| row.state.key.starts_with(prefix) && !row.state.finished)
        .filter(|row| row.state.owner.is_none() || row.state.expired)
        .filter(|row| !held.contains_key(&row.state.key))
        .map(|row| row.state.key)
        .collect();
    if candidates.is_empty() {
        return;
    }
    match leases.claim(&candidates, 1).await {
        Ok(claimed) => {
            for claim in claimed {
                let (orphans, stop) = (orphans.clone(), stop.clone());
                adopting.spawn(async move { adopt(&orphans, claim.key, claim.epoch, stop).await });
            }
        }
        Err(error) => tracing::debug!(%error, "cannot claim an orphan ingest slot"),
    }
}

#[derive(Debug, thiserror::Error)]
enum AdoptError {
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{0}")]
    Local(String),
    #[error("the lease moved on")]
    Lost,
    #[error("stopping")]
    Stopped,
}

/// Deliver one adopted slot to its end and retire it; on any failure release it (or, when the
/// coordinator cannot be reached, let it expire) for the next try.
async fn adopt(orphans: &OrphanSlots, key: String, epoch: i64, stop: watch::Receiver<bool>) {
    let leases = orphans.replication.states.leases().clone();
    let dir = orphans.stream_dir.join("adopted").join(key.rsplit(':').next().unwrap_or("slot"));
    match deliver_slot(orphans, &key, epoch, &dir, stop).await {
        Ok(records) => match super::retire_slot(&orphans.replication, &key, epoch).await {
            Ok(()) => {
                tracing::info!(stream = %orphans.config.name, lease = %key, records, "adopted ingest slot delivered and retired")
            }
            Err(error) => {
                tracing::warn!(lease = %key, %error, "cannot retire the adopted ingest slot; it is adopted again")
            }
        },
        Err(AdoptError::Lost) => {
            tracing::warn!(lease = %key, "adopted ingest slot's lease moved on; stopped delivering it")
        }
        Err(error) => {
            tracing::warn!(stream = %orphans.config.name, lease = %key, %error, "adopted ingest slot not finished; releasing it");
            if leases.release(&key, epoch).await.is_err() {
                leases.forget(&key, epoch);
            }
        }
    }
    leases.forget(&key, epoch);
    clear(dir).await;
}

async fn clear(dir: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
}

/// Read the slot's indexed segments into a fresh WAL and deliver them; returns the records
/// delivered in this adoption.
async fn deliver_slot(
    orphans: &OrphanSlots,
    key: &str,
    epoch: i64,
    dir: &std::path::Path,
    mut stop: watch::Receiver<bool>,
) -> Result<u64, AdoptError> {
    let replication = &orphans.replication;
    let leases = replication.states.leases().clone();
    let resume = replication.states.open(key, epoch).await?;
    let rows = replication.index.rows_from(key, resume.checkpoint).await?;
    // Only a gapless run of segments from the checkpoint was ever acknowledged (puts wait for
    // every segment before theirs); anything after a gap was not.
    let start = rows.first().map_or(resume.checkpoint, |row| row.first_sequence.min(resume.checkpoint));
    let mut end = start;
    let mut run = Vec::new();
    for row in rows {
        if row.first_sequence > end {
            tracing::info!(lease = %key, missing_from = end, "segments after a gap were never acknowledged; ignored");
            break;
        }
        end = end.max(row.end_sequence);
        run.push(row);
    }
    tracing::info!(stream = %orphans.config.name, lease = %key, epoch, checkpoint = resume.checkpoint, segments = run.len(), from = start, to = end, "adopting an ingest slot");
    let options = super::cache_options(WalOptions { dir: dir.join("wal"), ..orphans.wal.clone() });
    let wal = tokio::task::spawn_blocking(move || Wal::open_cleared(options, start))
        .await
        .map_err(|join| AdoptError::Local(join.to_string()))?
        .map_err(AdoptError::Local)?;
    let place = DeliveryPlace {
        wal: wal.clone(),
        state: replication.states.delivery_state(key, epoch, Arc::new(Boundaries::default()), None),
        instance_id: resume.generation,
        stopped: Arc::new(OnceLock::new()),
    };
    let delivery = match orphans.builder.spawn(&orphans.config, orphans.version_id, &orphans.metrics, place).await {
        Ok(delivery) => delivery,
        Err(error) => {
            close(wal).await;
            return Err(AdoptError::Local(error.to_string()));
        }
    };
    let valid = || leases.valid_leases().get(key) == Some(&epoch);
    let outcome = async {
        let mut next = start;
        for row in &run {
            if !valid() {
                return Err(AdoptError::Lost);
            }
            if *stop.borrow() {
                return Err(AdoptError::Stopped);
            }
            let body = replication
                .segments
                .get(&row.object_key)
                .await
                .map_err(|error| AdoptError::Local(format!("cannot read segment {}: {error}", row.object_key)))?;
            let frames = decode_frames(body)
                .map_err(|reason| AdoptError::Local(format!("segment {}: {reason}", row.object_key)))?;
            for frame in frames {
                if frame.end_sequence() <= next {
                    continue;
                }
                if frame.first_sequence != next {
                    return Err(AdoptError::Local(format!(
                        "segment {} holds sequence {} where {next} was expected",
                        row.object_key, frame.first_sequence
                    )));
                }
                next = append(&wal, frame, &mut stop).await?;
            }
        }
        // Everything read back: wait until it is delivered (or the lease is lost, or stop).
        let mut delivered = wal.delivered();
        loop {
            if *delivered.borrow_and_update() >= end {
                return Ok(end - resume.checkpoint.min(end));
            }
            if delivery.is_finished() {
                return Err(AdoptError::Local("the adopted slot's delivery stopped".to_string()));
            }
            if !valid() {
                return Err(AdoptError::Lost);
            }
            tokio::select! {
                _ = delivered.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => {
                    if *stop.borrow() {
                        return Err(AdoptError::Stopped);
                    }
                }
            }
        }
    }
    .await;
    match &outcome {
        Ok(_) => {
            let _ = delivery.drain(Duration::from_secs(5)).await;
        }
        Err(AdoptError::Stopped) => {
            let _ = delivery.drain(Duration::from_secs(30)).await;
        }
        Err(_) => delivery.abort().await,
    }
    close(wal).await;
    outcome
}

/// Append one frame read back from a segment, waiting while the local WAL is full.
async fn append(wal: &Wal, frame: crate::wal::Frame, stop: &mut watch::Receiver<bool>) -> Result<u64, AdoptError> {
    loop {
        let appended = match &frame.source {
            Some(source) => {
                wal.append_pulled_with_metadata(
                    frame.arrival_ms,
                    frame.records.clone(),
                    source.clone(),
                    frame.metadata.clone(),
                )
                .await
            }
            None => wal.append(frame.arrival_ms, frame.records.clone()).await,
        };
        match appended {
            Ok(range) => return Ok(range.end),
            Err(WalError::Full { .. }) => {
                if *stop.borrow() {
                    return Err(AdoptError::Stopped);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(AdoptError::Local(format!("cannot append to the local wal: {error}"))),
        }
    }
}

async fn close(wal: Wal) {
    let _ = tokio::task::spawn_blocking(move || wal.close()).await;
}

/// Delete the stream's objects no slot indexes (written, never acknowledged) and those of slots
/// that no longer exist, once older than the grace period.
async fn sweep(orphans: &OrphanSlots) {
    let replication = &orphans.replication;
    let grace = replication.config.orphan_grace_seconds as f64;
    let stream = &orphans.config.name;
    let indexed = match replication.index.indexed_objects(stream).await {
        Ok(found) => found,
        Err(error) => {
            tracing::debug!(%error, "cannot read the segment index for the sweep");
            return;
        }
    };
    let objects = match replication.segments.list(stream).await {
        Ok(objects) => objects,
        Err(error) => {
            tracing::debug!(%error, "cannot list the wal segments for the sweep");
            return;
        }
    };
    // An object is indexed before any put in it is acknowledged and its upload takes seconds:
    // one not indexed after the grace period was never acknowledged (or its slot was retired).
    let indexed: std::collections::BTreeSet<String> = indexed.into_iter().collect();
    let stale: Vec<String> =
        objects.into_iter().filter(|(key, age)| *age >= grace && !indexed.contains(key)).map(|(key, _)| key).collect();
    if stale.is_empty() {
        return;
    }
    match replication.segments.delete(&stale).await {
        Ok(()) => {
            tracing::info!(%stream, objects = stale.len(), "deleted wal segment objects never acknowledged (older than the grace period)")
        }
        Err(error) => tracing::warn!(%stream, %error, "cannot delete unreferenced wal segment objects"),
    }
}
