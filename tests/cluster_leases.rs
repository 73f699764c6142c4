//! The cluster lease store against real PostgreSQL (`scripts/services.sh`): several
//! `LeaseStore`s with different node ids in one process, each test on a database of its own.
//! Claims split leases, renewals keep them, a store that stops renewing loses them after
//! `lease_seconds` to another with a higher epoch, the old owner's writes are fenced, hand-off
//! requests reserve a lease for the requester, one expired lease per scan, concurrent claimers
//! never share a lease, migrations under concurrency, and a newer schema is refused.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::pg;
use spillway::cluster::leases::LeaseSpec;
use spillway::cluster::{ClusterError, LeaseStore, ResolvedCluster};
use spillway::metrics::ClusterStats;

fn store(url: &str, node_id: &str, lease_seconds: u64) -> (LeaseStore, Arc<ClusterStats>) {
    let resolved = ResolvedCluster {
        coordinator: url.parse().expect("a postgres url"),
        ca_file: None,
        node_id: node_id.to_string(),
        advertise: format!("{node_id}.test:4573"),
        lease_seconds,
    };
    let stats = Arc::new(ClusterStats::default());
    (LeaseStore::new(&resolved, stats.clone()).expect("a lease store"), stats)
}

/// A registered store on `url` (schema migrated).
async fn joined(url: &str, node_id: &str, lease_seconds: u64) -> (LeaseStore, Arc<ClusterStats>) {
    let (store, stats) = store(url, node_id, lease_seconds);
    store.migrate().await.expect("migrate");
    store.register().await.expect("register");
    (store, stats)
}

fn keys(count: usize) -> Vec<String> {
    (0..count).map(|index| format!("kinesis:orders:shardId-{index:012}")).collect()
}

async fn ensure(store: &LeaseStore, keys: &[String]) {
    let specs: Vec<LeaseSpec> = keys.iter().map(|key| LeaseSpec { key: key.clone(), parents: vec![] }).collect();
    store.ensure_leases(&specs).await.expect("ensure leases");
}

fn claimed_keys(claims: &[spillway::cluster::leases::Claimed]) -> BTreeSet<String> {
    claims.iter().map(|claim| claim.key.clone()).collect()
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn leases_split_renew_expire_to_a_higher_epoch_and_the_old_owner_is_fenced() {
    let url = pg::fresh_database("spw_cluster").await;
    let (a, a_stats) = joined(&url, "node-a", 2).await;
    let (b, b_stats) = joined(&url, "node-b", 2).await;
    let all = keys(6);
    ensure(&a, &all).await;

    let for_a = a.claim(&all, 3).await.unwrap();
    let for_b = b.claim(&all, 3).await.unwrap();
    assert_eq!(for_a.len(), 3);
    assert_eq!(for_b.len(), 3);
    assert!(claimed_keys(&for_a).is_disjoint(&claimed_keys(&for_b)));
    assert!(for_a.iter().chain(&for_b).all(|claim| claim.epoch == 1 && claim.taken_from.is_none()));
    assert_eq!(b.claim(&all, 3).await.unwrap(), [], "nothing free is left");
    assert_eq!(a_stats.leases_held.load(Ordering::Relaxed), 3);

    // Renewals past the lease period keep them.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(a.renew_all().await.unwrap().lost, Vec::<String>::new());
        assert_eq!(b.renew_all().await.unwrap().lost, Vec::<String>::new());
    }
    assert_eq!(b.claim(&all, 6).await.unwrap(), [], "renewed leases are not taken");

    // a stops renewing: after its lease, b takes its leases one per scan, each with epoch + 1.
    let a_leases = a.held();
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let taken = b.claim(&all, 6).await.unwrap();
        if !taken.is_empty() {
            break taken;
        }
        assert!(Instant::now() < deadline, "a's leases never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(first.len(), 1, "one expired lease per scan: {first:?}");
    let moved = &first[0];
    assert_eq!(moved.taken_from.as_deref(), Some("node-a"));
    assert_eq!(moved.epoch, a_leases[&moved.key].epoch + 1);
    assert_eq!(b_stats.lease_takeovers.load(Ordering::Relaxed), 1);

    // a finds out at its next renewal, and any write of it under the old epoch is refused.
    let renewal = a.renew_all().await.unwrap();
    assert_eq!(renewal.lost, vec![moved.key.clone()]);
    assert!(!a.held().contains_key(&moved.key));
    let setup = pg::connect(&url).await;
    setup.batch_execute("CREATE TABLE positions (lease_key text PRIMARY KEY, position text)").await.unwrap();
    let write =
        "INSERT INTO positions VALUES ($1, $2) ON CONFLICT (lease_key) DO UPDATE SET position = excluded.position";
    let old_epoch = a_leases[&moved.key].epoch;
    let fenced = a.fenced_execute(&moved.key, old_epoch, write, &[&moved.key, &"from-a"]).await;
    assert!(matches!(fenced, Err(ClusterError::Fenced { .. })), "{fenced:?}");
    assert!(a_stats.fenced_writes.load(Ordering::Relaxed) >= 2, "the lost renewal and the refused write");
    assert_eq!(b.fenced_execute(&moved.key, moved.epoch, write, &[&moved.key, &"from-b"]).await.unwrap(), 1);
    let rows = setup.query("SELECT position FROM positions", &[]).await.unwrap();
    let positions: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(positions, ["from-b"], "nothing of the fenced write landed");
    // a's other leases, renewed just now, are still a's.
    assert_eq!(a.held().len(), 2);
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn a_hand_off_request_reserves_the_released_lease_for_a_live_requester() {
    let url = pg::fresh_database("spw_cluster").await;
    let (a, _) = joined(&url, "node-a", 5).await;
    let (b, _) = joined(&url, "node-b", 5).await;
    let (c, _) = joined(&url, "node-c", 5).await;
    let all = keys(4);
    ensure(&a, &all).await;
    let held = a.claim(&all, 4).await.unwrap();
    assert_eq!(held.len(), 4);
    let wanted = held[0].clone();

    assert!(b.request_handoff(&wanted.key).await.unwrap());
    assert!(!c.request_handoff(&wanted.key).await.unwrap(), "one request at a time");
    assert!(!a.request_handoff(&wanted.key).await.unwrap(), "not for one's own lease");
    let renewal = a.renew_all().await.unwrap();
    assert_eq!(renewal.requests.get(&wanted.key).map(String::as_str), Some("node-b"));

    a.release(&wanted.key, wanted.epoch).await.unwrap();
    assert!(!a.held().contains_key(&wanted.key));
    assert_eq!(c.claim(&all, 4).await.unwrap(), [], "reserved for node-b");
    let taken = b.claim(&all, 4).await.unwrap();
    assert_eq!(claimed_keys(&taken), BTreeSet::from([wanted.key.clone()]));
    assert_eq!(taken[0].epoch, wanted.epoch + 1);
    assert_eq!(taken[0].taken_from, None, "released, not taken over");
    // A second release with the old epoch is fenced.
    let again = a.release(&wanted.key, wanted.epoch).await;
    assert!(matches!(again, Err(ClusterError::Fenced { .. })), "{again:?}");
    // A requester that is gone by the time the owner lets go reserves nothing.
    let next = held[1].clone();
    assert!(c.request_handoff(&next.key).await.unwrap());
    c.deregister().await.unwrap();
    a.release(&next.key, next.epoch).await.unwrap();
    let (d, _) = joined(&url, "node-d", 5).await;
    assert_eq!(
        claimed_keys(&d.claim(std::slice::from_ref(&next.key), 1).await.unwrap()),
        BTreeSet::from([next.key.clone()])
    );
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn children_wait_until_their_parents_are_finished() {
    let url = pg::fresh_database("spw_cluster").await;
    let (a, _) = joined(&url, "node-a", 5).await;
    let specs = [
        LeaseSpec { key: "kinesis:s:parent".into(), parents: vec![] },
        LeaseSpec { key: "kinesis:s:child".into(), parents: vec!["kinesis:s:parent".into()] },
    ];
    a.ensure_leases(&specs).await.unwrap();
    let child = vec!["kinesis:s:child".to_string()];
    assert_eq!(a.claim(&child, 1).await.unwrap(), []);
    let parent = a.claim(&["kinesis:s:parent".to_string()], 1).await.unwrap();
    assert_eq!(a.claim(&child, 1).await.unwrap(), [], "the parent is owned, not finished");
    a.finish(&parent[0].key, parent[0].epoch).await.unwrap();
    assert_eq!(claimed_keys(&a.claim(&child, 1).await.unwrap()), BTreeSet::from([child[0].clone()]));
    let (_, leases) = a.scan().await.unwrap();
    assert!(leases.iter().any(|lease| lease.state.key == "kinesis:s:parent" && lease.state.finished));
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn concurrent_claimers_never_get_the_same_lease() {
    let url = pg::fresh_database("spw_cluster").await;
    let mut stores = Vec::new();
    for index in 0..6 {
        stores.push(Arc::new(joined(&url, &format!("node-{index}"), 30).await.0));
    }
    let all = keys(40);
    ensure(&stores[0], &all).await;
    let admin = pg::connect(&url).await;
    for round in 0..8 {
        admin.batch_execute("UPDATE spillway_leases SET owner = NULL, expires_at = now()").await.unwrap();
        let claims = stores.iter().map(|store| {
            let (store, all) = (store.clone(), all.clone());
            tokio::spawn(async move { store.claim(&all, 40).await.expect("claim") })
        });
        let mut seen = BTreeSet::new();
        for claimed in futures::future::join_all(claims).await {
            for claim in claimed.unwrap() {
                assert!(seen.insert(claim.key.clone()), "round {round}: {} claimed twice", claim.key);
            }
        }
        // SKIP LOCKED never waits, so a round may leave some free; a second pass takes the rest.
        let owners: i64 =
            admin.query_one("SELECT count(*) FROM spillway_leases WHERE owner IS NOT NULL", &[]).await.unwrap().get(0);
        assert_eq!(owners as usize, seen.len(), "round {round}");
    }
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn nodes_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let url = pg::fresh_database("spw_cluster").await;
    let migrations = (0..8).map(|index| {
        let url = url.clone();
        tokio::spawn(async move {
            let (store, _) = store(&url, &format!("node-{index}"), 5);
            store.migrate().await?;
            store.register().await
        })
    });
    for outcome in futures::future::join_all(migrations).await {
        outcome.unwrap().expect("every node migrates and registers");
    }
    let admin = pg::connect(&url).await;
    let versions: Vec<i32> = admin
        .query("SELECT version FROM spillway_cluster_schema ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, (1..=spillway::cluster::schema::CURRENT_VERSION).collect::<Vec<_>>());
    assert_eq!(pg::count(&admin, "spillway_nodes").await, 8);

    admin
        .execute("INSERT INTO spillway_cluster_schema (version, applied_by) VALUES (99, 'spillway 9.9.9')", &[])
        .await
        .unwrap();
    let (newer, _) = store(&url, "node-old", 5);
    let refused = newer.migrate().await.unwrap_err().to_string();
    assert!(
        refused.contains("version 99")
            && refused.contains(&format!("(version {})", spillway::cluster::schema::CURRENT_VERSION)),
        "{refused}"
    );
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn a_node_id_held_by_a_live_process_is_refused_and_a_dead_ones_is_taken() {
    let url = pg::fresh_database("spw_cluster").await;
    let (first, _) = joined(&url, "node-a", 2).await;
    let first = Arc::new(first);
    let beating = {
        let first = first.clone();
        tokio::spawn(async move {
            loop {
                let _ = first.heartbeat().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let (second, _) = store(&url, "node-a", 2);
    let refused = second.register().await.unwrap_err().to_string();
    assert!(refused.contains("node_id node-a is in use by a live node (advertising node-a.test:4573)"), "{refused}");
    beating.abort();
    // Once the first stops beating, its id is free after one lease period; its leases expire.
    let started = Instant::now();
    second.register().await.expect("register after the old heartbeat expired");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(matches!(first.heartbeat().await, Err(ClusterError::Replaced { .. })));
}

/// The shared stream catalog on real PostgreSQL, as two nodes see it.
#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn the_shared_catalog_takes_a_name_once_replaces_only_what_was_read_and_skips_an_unreadable_record() {
    use spillway::cluster::catalog::PostgresCatalog;
    use spillway::control::catalog::{Catalog, CatalogError, StreamOrigin, StreamRecord};
    let url = pg::fresh_database("spw_cluster").await;
    let (first_node, _) = joined(&url, "node-a", 5).await;
    let catalog = |node: &str| {
        PostgresCatalog::new(&ResolvedCluster {
            coordinator: url.parse().unwrap(),
            ca_file: None,
            node_id: node.to_string(),
            advertise: format!("{node}.test:4573"),
            lease_seconds: 5,
        })
        .unwrap()
    };
    let (a, b) = (catalog("node-a"), catalog("node-b"));

    let mut record = StreamRecord::new("orders", StreamOrigin::Api, 1_000);
    record.destination =
        Some(serde_json::json!({ "BucketARN": "arn:aws:s3:::x", "BufferingHints": { "SizeInMBs": 5 } }));
    assert!(a.insert_api_record(&record).await.unwrap());
    let again = StreamRecord::new("orders", StreamOrigin::Api, 2_000);
    assert!(!b.insert_api_record(&again).await.unwrap(), "the name is taken for every node");

    // Both read version 1; b changes it first; a's change of what it read is refused.
    let read_by_a = a.load_api_records().await.unwrap().remove(0);
    assert_eq!(read_by_a, record, "read back as written (numbers, nested objects)");
    let mut tagged = record.clone();
    tagged.tags.insert("team".into(), "data".into());
    assert!(b.replace_api_record(&record, &tagged).await.unwrap());
    let updated = StreamRecord { version_id: 2, ..read_by_a.clone() };
    assert!(!a.replace_api_record(&read_by_a, &updated).await.unwrap(), "a lost update is refused");
    assert_eq!(a.load_api_records().await.unwrap(), vec![tagged.clone()]);

    // Removing by incarnation: an older record's removal leaves a newer one of the name alone.
    a.remove_api_record(&again).await.unwrap();
    assert_eq!(a.load_api_records().await.unwrap().len(), 1);

    // A record the server refuses (a NUL character, which jsonb cannot hold) is refused data,
    // not an outage.
    let mut refused = StreamRecord::new("nul", StreamOrigin::Api, 3_000);
    refused.destination = Some(serde_json::json!({ "Prefix": "a\u{0}b" }));
    let error = a.insert_api_record(&refused).await.unwrap_err();
    assert!(matches!(error, CatalogError::Rejected(_)), "{error}");

    // A record this spillway cannot read is skipped, the others still load.
    let admin = pg::connect(&url).await;
    admin
        .execute(
            "INSERT INTO spillway_streams (origin, name, record) VALUES ('api', 'broken', '{\"name\": 7}'::jsonb)",
            &[],
        )
        .await
        .unwrap();
    let loaded = b.load_api_records().await.unwrap();
    assert_eq!(loaded.iter().map(|record| record.name.as_str()).collect::<Vec<_>>(), ["orders"]);

    // YAML records count versions once for the cluster.
    let first = a.load_yaml_record("logs", "f1", 10).await.unwrap();
    assert_eq!(b.load_yaml_record("logs", "f1", 20).await.unwrap(), first);
    assert_eq!(b.load_yaml_record("logs", "f2", 30).await.unwrap().version_id, 2);
    assert_eq!(a.load_yaml_record("logs", "f2", 40).await.unwrap().version_id, 2);
    first_node.deregister().await.unwrap();
}
