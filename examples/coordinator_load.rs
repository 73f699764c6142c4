//! Coordinator load: what cluster mode asks of PostgreSQL, measured on a real server
//! (`scripts/bench-coordinator.sh` runs it against `scripts/services.sh`'s PostgreSQL).
//!
//! 1. One node's rounds, by leases held (100 / 1,000 / 10,000): `heartbeat`, `renew_all` (one
//!    statement for every lease), `scan` (every node and lease, what the balancer reads) and
//!    the shared catalog's poll with 100 API streams — min / median / max over 30 rounds each.
//! 2. Throughput: 10,000 leases over 40 simulated nodes (250 each; 100 nodes would need 300
//!    connections, past PostgreSQL's default `max_connections` of 100), every node running its
//!    periodic round (heartbeat + renew_all + catalog poll) as fast as 16 workers allow: the
//!    rounds per second the server sustains, against what 100 nodes need at `lease_seconds` 10
//!    (one round per node every 10/3 s = 30 rounds/s, each renewing 100 leases: lighter than
//!    the 250 measured here).
//!
//! Usage: `cargo run --release --example coordinator_load -- postgres://user@host:port/db`
//! (creates and drops a database of its own on that server).

use std::sync::Arc;
use std::time::{Duration, Instant};

use spillway::cluster::catalog::PostgresCatalog;
use spillway::cluster::leases::LeaseSpec;
use spillway::cluster::{LeaseStore, ResolvedCluster};
use spillway::control::catalog::{Catalog, StreamOrigin, StreamRecord};
use spillway::metrics::ClusterStats;
use tokio_postgres::NoTls;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn resolved(url: &str, node_id: &str) -> Result<ResolvedCluster, Error> {
    Ok(ResolvedCluster {
        coordinator: url.parse()?,
        ca_file: None,
        node_id: node_id.to_string(),
        advertise: format!("{node_id}.bench:4573"),
        lease_seconds: 10,
    })
}

async fn node(url: &str, node_id: &str) -> Result<LeaseStore, Error> {
    let store = LeaseStore::new(&resolved(url, node_id)?, Arc::new(ClusterStats::default()))?;
    store.migrate().await?;
    store.register().await?;
    Ok(store)
}

/// min / median / max in milliseconds of `rounds` runs of `work`.
async fn timed<F, Fut>(rounds: usize, mut work: F) -> Result<(f64, f64, f64), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        work().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[0], times[times.len() / 2], times[times.len() - 1]))
}

fn row(what: &str, (min, median, max): (f64, f64, f64)) {
    println!("| {what} | {min:.2} | {median:.2} | {max:.2} |");
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let server = std::env::args().nth(1).ok_or("usage: coordinator_load postgres://user@host:port/db")?;
    let (admin, connection) = tokio_postgres::connect(&server, NoTls).await?;
    tokio::spawn(connection);
    let database = format!("spw_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    admin.batch_execute(&format!("CREATE DATABASE {database}")).await?;
    let (base, _) = server.rsplit_once('/').ok_or("a url ending in /database")?;
    let url = format!("{base}/{database}");
    let result = run(&url).await;
    admin.batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)")).await?;
    result
}

async fn run(url: &str) -> Result<(), Error> {
    let catalog = PostgresCatalog::new(&resolved(url, "catalog")?)?;
    println!("## One node's rounds (ms)\n\n| round | min | median | max |\n|---|---|---|---|");
    let first = node(url, "node-000").await?;
    for stream in 0..100 {
        let mut record = StreamRecord::new(&format!("stream-{stream:03}"), StreamOrigin::Api, 0);
        record.destination = Some(serde_json::json!({ "BucketARN": "arn:aws:s3:::bench", "Prefix": "logs/" }));
        catalog.insert_api_record(&record).await?;
    }
    let mut held = 0;
    for leases in [100usize, 1_000, 10_000] {
        let specs: Vec<LeaseSpec> = (held..leases)
            .map(|shard| LeaseSpec { key: format!("kinesis:bench:{shard:05}"), parents: vec![] })
            .collect();
        first.ensure_leases(&specs).await?;
        let keys: Vec<String> = specs.iter().map(|spec| spec.key.clone()).collect();
        let claimed = first.claim(&keys, keys.len()).await?;
        held += claimed.len();
        assert_eq!(held, leases, "claimed every lease");
        row(
            &format!("renew_all, {leases} leases held"),
            timed(30, || async { Ok(first.renew_all().await.map(drop)?) }).await?,
        );
        row(&format!("scan, {leases} leases"), timed(30, || async { Ok(first.scan().await.map(drop)?) }).await?);
    }
    row("heartbeat", timed(30, || async { Ok(first.heartbeat().await?) }).await?);
    row(
        "catalog poll, 100 API streams",
        timed(30, || async { Ok(catalog.load_api_records().await.map(drop)?) }).await?,
    );
    first.deregister().await?;

    // 40 nodes × 250 leases each: the same 10,000 leases, handed out.
    const NODES: usize = 40;
    const PER_NODE: usize = 10_000 / NODES;
    let mut nodes = Vec::new();
    for index in 0..NODES {
        let store = node(url, &format!("node-{:03}", index + 1)).await?;
        let keys: Vec<String> =
            (index * PER_NODE..(index + 1) * PER_NODE).map(|shard| format!("kinesis:bench:{shard:05}")).collect();
        // node-000 left: its leases are free again, claimed all at once.
        let claimed = store.claim(&keys, PER_NODE).await?.len();
        assert_eq!(claimed, PER_NODE, "node {index} claimed its share");
        nodes.push(Arc::new(store));
    }
    drop(catalog);
    let concurrency = 16;
    let duration = Duration::from_secs(20);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let nodes: Vec<Arc<LeaseStore>> = nodes.iter().skip(worker).step_by(concurrency).cloned().collect();
        let catalog = PostgresCatalog::new(&resolved(url, "catalog")?)?;
        workers.push(tokio::spawn(async move {
            let mut rounds = 0u64;
            while started.elapsed() < duration {
                for store in &nodes {
                    store.heartbeat().await?;
                    store.renew_all().await?;
                    catalog.load_api_records().await?;
                    rounds += 1;
                }
            }
            Ok::<u64, Error>(rounds)
        }));
    }
    let mut rounds = 0;
    for worker in workers {
        rounds += worker.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "\n## {NODES} nodes × {PER_NODE} leases, {concurrency} workers at once\n\n\
         node rounds (heartbeat + renew_all of {PER_NODE} leases + catalog poll of 100 streams): {rounds} in {elapsed:.1} s \
         = {:.0} rounds/s = {:.0} statements/s; 100 nodes at lease_seconds 10 need 30 rounds/s",
        rounds as f64 / elapsed,
        3.0 * rounds as f64 / elapsed
    );
    Ok(())
}
