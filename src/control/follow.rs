//! Cluster mode: keeps the API-created streams this node runs in step with the shared catalog
//! (`crate::cluster::catalog`), so a stream created, changed, tagged or deleted through the API
//! on any node runs, changes or goes on every node. Every `period` the follower reads the
//! catalog's API records and, under the lifecycle's control lock (so it never sees a change of
//! this node's half done), applies the differences:
//!
//! - a record `ACTIVE` that does not run here: the stream starts here;
//! - a record whose definition changed (destination, source, `VersionId`): the stream restarts
//!   with it, as `UpdateDestination` does on the node that was asked;
//! - a record whose tags or encryption status changed: the description follows, nothing restarts;
//! - a record `DELETING`, or gone: the stream stops taking records here, delivers what this node
//!   accepted, and its files go (the record is the deleting node's to remove).
//!
//! A record `CREATING` is left alone while its node builds it; one older than five minutes (its
//! node died in the middle) is marked `ACTIVE`. A record created again under a running name
//! (another creation time) replaces the old stream: the old one is deleted here first. A failed read of the catalog
//! is logged once and retried next period; the streams keep running as they are. The control
//! plane also calls [`sync`] before each change, so a change starts from the catalog as it is;
//! its write is conditional on the record it started from (`ConcurrentModificationException` if
//! another node changed it in between).
//!
//! Must not: write the catalog.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::catalog::{CatalogError, StreamOrigin, StreamRecord, StreamStatus};
use super::{Control, follow_delete, stream_config_for};
use crate::sources::Ingest;

/// Follow the catalog every `period` until `stop`.
pub async fn follow(control: Control, ingest: Arc<Ingest>, period: Duration, mut stop: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
        // Held across the read too: a create or delete of this node finishing between the read and
        // the apply would otherwise look like another node's change.
        let _one_at_a_time = control.lifecycle.control.lock().await;
        match sync(&control, &ingest).await {
            Ok(()) => {
                if failing {
                    tracing::info!("the shared stream catalog answers again");
                }
                failing = false;
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "cannot read the shared stream catalog; streams run as they are until it answers");
                }
                failing = true;
            }
        }
    }
}

/// Read the catalog and apply what changed. The caller holds the lifecycle's control lock.
pub async fn sync(control: &Control, ingest: &Arc<Ingest>) -> Result<(), CatalogError> {
    let records = control.catalog.load_api_records().await?;
    apply(control, ingest, records).await;
    Ok(())
}

/// Whether `new` needs the stream rebuilt (not only its description updated).
fn definition_changed(running: &StreamRecord, new: &StreamRecord) -> bool {
    running.version_id != new.version_id
        || running.destination != new.destination
        || running.destination_type != new.destination_type
        || running.source != new.source
}

async fn apply(control: &Control, ingest: &Arc<Ingest>, records: Vec<StreamRecord>) {
    let mut listed = BTreeSet::new();
    for record in records {
        listed.insert(record.name.clone());
        let name = record.name.clone();
        let Some(running) = ingest.stream(&name) else {
            match record.status {
                StreamStatus::Active => run(control, ingest, record, false).await,
                StreamStatus::Creating => promote_if_abandoned(control, record).await,
                StreamStatus::Deleting => {}
            }
            continue;
        };
        // Deleted and created again under the name since this node last looked: the old one goes
        // (delivering what this node accepted for it); the new one starts next round.
        if running.record.origin == StreamOrigin::Api
            && running.record.status != StreamStatus::Deleting
            && running.record.create_timestamp_ms != record.create_timestamp_ms
        {
            tracing::info!(stream = %name, "deleted and created again through another node; delivering what this node holds for the old one first");
            let old = StreamRecord { status: StreamStatus::Deleting, ..StreamRecord::clone(&running.record) };
            ingest.update_record(&name, old);
            follow_delete(control.clone(), ingest.clone(), name);
            continue;
        }
        let running_record = &running.record;
        // A YAML stream of the same name wins; one being deleted here finishes first.
        if running_record.origin == StreamOrigin::Yaml
            || running_record.status == StreamStatus::Deleting
            || **running_record == record
        {
            continue;
        }
        match record.status {
            StreamStatus::Creating => {}
            StreamStatus::Deleting => {
                tracing::info!(stream = %name, "deleted through another node; delivering what this node holds, then removing it");
                ingest.update_record(&name, record);
                follow_delete(control.clone(), ingest.clone(), name);
            }
            StreamStatus::Active if definition_changed(running_record, &record) => {
                run(control, ingest, record, true).await;
            }
            StreamStatus::Active => {
                ingest.update_record(&name, record);
            }
        }
    }
    // API streams that run here and are no longer listed: deleted through another node, which has
    // finished already.
    for name in ingest.stream_names() {
        let Some(running) = ingest.stream(&name) else { continue };
        if listed.contains(&name)
            || running.record.origin != StreamOrigin::Api
            || running.record.status == StreamStatus::Deleting
        {
            continue;
        }
        tracing::info!(stream = %name, "deleted through another node; delivering what this node holds, then removing it");
        let record = StreamRecord { status: StreamStatus::Deleting, ..StreamRecord::clone(&running.record) };
        ingest.update_record(&name, record);
        follow_delete(control.clone(), ingest.clone(), name);
    }
}

/// How long a record may stay `CREATING` before the follower takes its creator for dead (a create
/// takes seconds: its sink is built and checked once).
const ABANDONED_CREATE_MS: i64 = 5 * 60 * 1000;

/// A record left `CREATING` by a node that died in the middle of the create: marked `ACTIVE`
/// (if still unchanged), so every node runs it from the next round on.
async fn promote_if_abandoned(control: &Control, record: StreamRecord) {
    let age_ms = chrono::Utc::now().timestamp_millis() - record.last_update_timestamp_ms;
    if age_ms < ABANDONED_CREATE_MS {
        return;
    }
    let active = StreamRecord { status: StreamStatus::Active, ..record.clone() };
    match control.catalog.replace_api_record(&record, &active).await {
        Ok(true) => tracing::warn!(stream = %record.name, "a create left unfinished by its node is taken as done"),
        Ok(false) => {}
        Err(error) => tracing::warn!(stream = %record.name, %error, "cannot finish an abandoned create"),
    }
}

/// Start a stream created through another node, or (`restart`) rebuild one changed there.
async fn run(control: &Control, ingest: &Arc<Ingest>, record: StreamRecord, restart: bool) {
    let name = record.name.clone();
    let version_id = record.version_id;
    let what = if restart { "changed" } else { "created" };
    let stream_config = match stream_config_for(&ingest.config, &record) {
        Ok(stream_config) => stream_config,
        Err(message) => {
            tracing::error!(stream = %name, %message, "a stream {what} through another node cannot run here");
            return;
        }
    };
    let started = if restart {
        control.lifecycle.restart(&stream_config, record).await
    } else {
        control.lifecycle.start(&stream_config, record).await
    };
    match started {
        Ok(stream) => {
            ingest.put_stream(&name, stream);
            tracing::info!(stream = %name, version_id, "delivery stream {what} through another node; running here too");
        }
        Err(error) => tracing::error!(stream = %name, %error, "a stream {what} through another node cannot run here"),
    }
}
