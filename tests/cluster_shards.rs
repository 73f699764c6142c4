//! Shard sharing in cluster mode end to end: real `spillway run` processes with a `cluster:`
//! block on one PostgreSQL (`scripts/services.sh`, a database of the test's own) read one
//! kinesalite stream of 8 shards while four producers (the real `aws-sdk-kinesis`) write into it. The nodes split the
//! shards between them; in seeded rounds a node is killed with SIGKILL (its shards move to the
//! others within two lease periods, then it restarts and gets its share back by hand-off) or
//! stopped with SIGSTOP past its lease (the others take its shards; when it continues, its late
//! writes are fenced and counted); a shard is split during the run. In the end every record is
//! in the shared local folder exactly once and in key order.

mod common;
#[path = "common/kinesis.rs"]
mod kinesis_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{COORDINATOR_VARIABLE, Spillway, pg, signal};
use kinesis_common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LEASE_SECONDS: u64 = 2;
const LEASE: Duration = Duration::from_secs(LEASE_SECONDS);

/// Three streams read the same Kinesis stream, each sharing its shards on its own: a plain
/// local folder, a local folder partitioned by key (many batches per range: done intents above
/// the watermark), and a PostgreSQL table.
fn node_yaml(kinesis_stream: &str, root: &Path, table: &str) -> String {
    let source = format!(
        "{{ type: kinesis, stream_name: {kinesis_stream}, endpoint: '{}', region: us-east-1, poll_interval_ms: 200, shard_discovery_interval_ms: 500, starting_position: TRIM_HORIZON }}",
        endpoint()
    );
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 20\n\
         data_dir: ./data\n\
         cluster:\n  coordinator: '${{{COORDINATOR_VARIABLE}}}'\n  lease_seconds: {LEASE_SECONDS}\n\
         streams:\n\
         \x20 - name: orders\n\
         \x20   source: {source}\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: 'file://{root}/out', compression: gzip }}\n\
         \x20 - name: by-key\n\
         \x20   source: {source}\n\
         \x20   processing: {{ record_delimiter: newline, dynamic_partitioning: {{ keys: {{ k: .k }} }} }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: 'file://{root}/by-key', prefix: 'k=!{{partitionKeyFromQuery:k}}/', error_output_prefix: 'errors/' }}\n\
         \x20 - name: rows\n\
         \x20   source: {source}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: postgres, url: '{}', table: {table}, backup: {{ sink: {{ url: 'file://{root}/pg-errors' }} }} }}\n",
        pg::shared_url(),
        root = root.display(),
    )
}

struct Node {
    dir: PathBuf,
    coordinator: String,
    process: Option<Spillway>,
}

impl Node {
    fn new(root: &Path, index: usize, yaml: &str, coordinator: &str) -> Node {
        let dir = root.join(format!("node-{index}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("spillway.yaml"), yaml).unwrap();
        let mut node = Node { dir, coordinator: coordinator.to_string(), process: None };
        node.start();
        node
    }

    fn start(&mut self) {
        let config = self.dir.join("spillway.yaml");
        self.process = Some(Spillway::start_with_env(
            &self.dir,
            &config,
            &[
                (COORDINATOR_VARIABLE, self.coordinator.as_str()),
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
            ],
            &["AWS_PROFILE", "AWS_SESSION_TOKEN"],
        ));
    }

    fn process(&self) -> &Spillway {
        self.process.as_ref().expect("node running")
    }

    async fn metric(&self, name: &str) -> f64 {
        match &self.process {
            Some(process) => process.metric(name).await.unwrap_or(0.0),
            None => 0.0,
        }
    }

    /// The node's `cluster.node_id`, from its status API.
    async fn node_id(&self) -> String {
        let status: serde_json::Value =
            reqwest::get(format!("{}/api/status", self.process().endpoint)).await.unwrap().json().await.unwrap();
        status["node_id"].as_str().expect("the status API names the node in cluster mode").to_string()
    }
}

/// Valid leases per stream and owner, as the coordinator holds them.
async fn lease_owners(coordinator: &str) -> BTreeMap<String, BTreeMap<String, usize>> {
    let client = pg::connect(coordinator).await;
    let rows = client
        .query(
            "SELECT split_part(lease_key, ':', 2), owner, count(*) FROM spillway_leases
             WHERE owner IS NOT NULL AND expires_at > now() AND NOT finished GROUP BY 1, 2",
            &[],
        )
        .await
        .unwrap_or_default();
    let mut owners: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for row in rows {
        let count: i64 = row.get(2);
        owners.entry(row.get(0)).or_default().insert(row.get(1), count as usize);
    }
    owners
}

/// Wait until, for each of `streams`, the `live` nodes hold its `shards` active leases between
/// them, each within one of the others; how long it took.
async fn wait_balanced(coordinator: &str, live: &[&str], shards: usize, bound: Duration, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let owners = lease_owners(coordinator).await;
        let balanced = STREAMS.iter().all(|stream| {
            let held = owners.get(*stream).cloned().unwrap_or_default();
            let counts: Vec<usize> = live.iter().map(|node| held.get(*node).copied().unwrap_or(0)).collect();
            let (max, min) = (counts.iter().max().copied().unwrap_or(0), counts.iter().min().copied().unwrap_or(0));
            held.values().sum::<usize>() == shards && counts.iter().sum::<usize>() == shards && max - min <= 1
        });
        if balanced {
            return started.elapsed();
        }
        assert!(started.elapsed() < bound, "{what}: not balanced over {live:?} within {bound:?}: {owners:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const STREAMS: [&str; 3] = ["orders", "by-key", "rows"];

/// The tests here run one at a time: each runs several nodes, and two clusters at once on two
/// cores stretch every take-over past the bounds the tests check.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn three_nodes_share_shards_through_kills_stops_restarts_and_a_split_delivering_every_record_once() {
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
    let seed: u64 = std::env::var("SPILLWAY_TEST_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(24);
    eprintln!("seed {seed} (SPILLWAY_TEST_SEED)");
    let mut rng = StdRng::seed_from_u64(seed);
    let client = kinesis().await;
    let name = unique_name("shared");
    let mut shards = 8;
    let _stream = create_stream(&client, &name, shards as i32).await;
    let coordinator = pg::fresh_database("spw_shards").await;
    let db = pg::connect(&pg::shared_url()).await;
    let table = pg::unique_table("shared_rows");
    db.batch_execute(&format!("CREATE TABLE {table} (k text, n bigint, pad text)")).await.unwrap();
    // SPILLWAY_TEST_KEEP=1 keeps the folders (logs) after the test.
    let root = tempfile::Builder::new()
        .prefix("spw-shards")
        .disable_cleanup(std::env::var_os("SPILLWAY_TEST_KEEP").is_some())
        .tempdir()
        .unwrap();
    eprintln!("nodes' folders and logs under {}", root.path().display());
    let yaml = node_yaml(&name, root.path(), &table);
    let mut nodes: Vec<Node> = (0..3).map(|index| Node::new(root.path(), index, &yaml, &coordinator)).collect();
    let mut ids = Vec::new();
    for node in &nodes {
        ids.push(node.node_id().await);
    }
    let live = |down: Option<usize>| -> Vec<&str> {
        ids.iter().enumerate().filter(|(index, _)| Some(*index) != down).map(|(_, id)| id.as_str()).collect()
    };

    // Four producers, 8 keys each.
    let stop = Arc::new(AtomicBool::new(false));
    let (producers, keys_each) = (4u64, 8u64);
    let keys = producers * keys_each;
    let written: Vec<Arc<AtomicU64>> = (0..producers).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let tasks: Vec<_> = (0..producers)
        .map(|index| {
            let range = index * keys_each..(index + 1) * keys_each;
            let pace = Duration::from_millis(20);
            tokio::spawn(produce_keys(
                client.clone(),
                name.clone(),
                range,
                stop.clone(),
                written[index as usize].clone(),
                pace,
            ))
        })
        .collect();

    let took = wait_balanced(&coordinator, &live(None), shards, Duration::from_secs(30), "at start").await;
    eprintln!("{shards} shards of 3 streams balanced over 3 nodes {took:?} after the nodes answered");
    // The status API (and page) names the node and the shard leases it holds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: serde_json::Value =
            reqwest::get(format!("{}/api/status", nodes[0].process().endpoint)).await.unwrap().json().await.unwrap();
        let leases: Vec<&str> = status["leases"]
            .as_array()
            .map(|leases| leases.iter().filter_map(|lease| lease.as_str()).collect())
            .unwrap_or_default();
        if status["node_id"] == ids[0].as_str()
            && leases.len() >= STREAMS.len()
            && leases.iter().all(|lease| lease.starts_with("kinesis:"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the status API does not list the node's leases: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let rounds = 4;
    let mut fenced_seen = 0.0;
    for round in 0..rounds {
        let victim = rng.random_range(0..nodes.len());
        if round % 2 == 0 {
            // SIGKILL: the others take its shards within two lease periods (plus a scan).
            nodes[victim].process.take().expect("running").kill();
            let moved = wait_balanced(&coordinator, &live(Some(victim)), shards, 4 * LEASE, "after a kill").await;
            eprintln!("round {round}: killed node {victim}; its shards moved in {moved:?}");
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
            nodes[victim].start();
            let back =
                wait_balanced(&coordinator, &live(None), shards, Duration::from_secs(30), "after a restart").await;
            eprintln!("round {round}: node {victim} restarted and got its share back by hand-off in {back:?}");
        } else {
            // SIGSTOP past the lease: the others take its shards (and any they were handing
            // over to it when it stopped, once delivered); when it continues, what it still tries
            // to write is fenced.
            let before = nodes[victim].metric("spillway_cluster_fenced_writes_total").await;
            signal(&nodes[victim].process().child, "STOP");
            let moved = wait_balanced(&coordinator, &live(Some(victim)), shards, 6 * LEASE, "after a stop").await;
            signal(&nodes[victim].process().child, "CONT");
            let back = wait_balanced(&coordinator, &live(None), shards, Duration::from_secs(30), "after SIGCONT").await;
            let fenced = nodes[victim].metric("spillway_cluster_fenced_writes_total").await - before;
            fenced_seen += fenced;
            eprintln!(
                "round {round}: stopped node {victim}; shards moved in {moved:?}; {fenced} fenced writes after SIGCONT; balanced again in {back:?}"
            );
        }
        if round == 1 {
            split_first_shard(&client, &name).await;
            // Two children; the parent finishes once read to its end and delivered.
            shards += 1;
            eprintln!("split a shard: {shards} active leases per stream once the parent is finished");
        }
    }
    assert!(fenced_seen > 0.0, "a node stopped past its lease had its late writes fenced");

    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let expected: BTreeSet<String> = (0..producers)
        .flat_map(|index| {
            let range = index * keys_each..(index + 1) * keys_each;
            expected_lines_of(range, written[index as usize].load(Ordering::Relaxed))
        })
        .collect();
    for out in ["out", "by-key"] {
        wait_for_lines(root.path(), out, expected.len(), Duration::from_secs(90)).await;
    }
    pg::wait_rows(&db, &table, expected.len() as i64, Duration::from_secs(90)).await;
    // `spillway cluster status` names each shard's owner and how far it is delivered.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["cluster", "status", "--config", "spillway.yaml"])
        .current_dir(&nodes[0].dir)
        .env(COORDINATOR_VARIABLE, &coordinator)
        .output()
        .expect("spillway cluster status");
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.status.success(), "{text}{}", String::from_utf8_lossy(&status.stderr));
    assert!(text.contains("DELIVERED") && text.contains("BATCHES"), "{text}");
    let orders: Vec<&str> = text.lines().filter(|line| line.starts_with("kinesis:orders:")).collect();
    assert_eq!(orders.len(), shards + 1, "every shard of `orders` and the finished parent: {text}");
    for line in orders.iter().filter(|line| !line.contains("finished")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(ids.iter().any(|id| id == fields[1]), "owned by a node: {line}");
        assert!(fields[5].parse::<u64>().is_ok_and(|delivered| delivered > 0), "delivered up to a sequence: {line}");
    }
    let mut handed_over = 0.0;
    for node in &mut nodes {
        handed_over += node.metric("spillway_cluster_lease_handoffs_total").await;
        assert_eq!(node.process.take().expect("running").terminate(), 0, "a clean stop hands every lease over");
    }
    assert!(handed_over > 0.0, "restarted nodes got their share by hand-off");
    assert_exactly_once(root.path(), "out", &expected);
    assert_key_order(&delivered_objects(root.path(), "out"));
    assert_exactly_once(root.path(), "by-key", &expected);
    let rows = db
        .query(&format!("SELECT k, n, count(*) FROM {table} GROUP BY k, n HAVING count(*) > 1 LIMIT 5"), &[])
        .await
        .unwrap();
    assert!(
        rows.is_empty(),
        "rows loaded twice: {:?}",
        rows.iter().map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1))).collect::<Vec<_>>()
    );
    assert_eq!(pg::count(&db, &table).await, expected.len() as i64, "every record one row");
    let errors = common::files_under(&root.path().join("pg-errors"));
    assert!(errors.is_empty(), "nothing went to the PostgreSQL sink's error output: {errors:?}");
    eprintln!(
        "{} records over {keys} keys, {rounds} rounds, 3 streams: every record once, in key order",
        expected.len()
    );
}

async fn split_first_shard(client: &aws_sdk_kinesis::Client, stream: &str) {
    let listed = client.list_shards().stream_name(stream).send().await.unwrap();
    let first = &listed.shards()[0];
    let range = first.hash_key_range().unwrap();
    let (low, high): (u128, u128) =
        (range.starting_hash_key().parse().unwrap(), range.ending_hash_key().parse().unwrap());
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(first.shard_id())
        .new_starting_hash_key(((low + high) / 2).to_string())
        .send()
        .await
        .unwrap();
    wait_active(client, stream).await;
}

/// The coordinator stopped in the middle of a run: the nodes stop reading shards within a lease
/// period (no two owners), `/ready` says why, and when it is back they take their shards again
/// and deliver every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_coordinator_restarted_mid_run_loses_and_repeats_nothing_and_every_node_reads_again() {
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
    let server = pg::OwnPostgres::start();
    let coordinator = server.url("postgres");
    let client = kinesis().await;
    let name = unique_name("outage");
    let shards = 4;
    let _stream = create_stream(&client, &name, shards as i32).await;
    let db = pg::connect(&pg::shared_url()).await;
    let table = pg::unique_table("outage_rows");
    db.batch_execute(&format!("CREATE TABLE {table} (k text, n bigint, pad text)")).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let yaml = node_yaml(&name, root.path(), &table);
    let nodes: Vec<Node> = (0..2).map(|index| Node::new(root.path(), index, &yaml, &coordinator)).collect();
    let mut ids = Vec::new();
    for node in &nodes {
        ids.push(node.node_id().await);
    }
    let live: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let keys = 16;
    let producer = tokio::spawn(produce(
        client.clone(),
        name.clone(),
        keys,
        stop.clone(),
        written.clone(),
        Duration::from_millis(20),
    ));
    wait_balanced(&coordinator, &live, shards, Duration::from_secs(30), "at start").await;

    server.stop();
    for node in &nodes {
        // `/ready` says why, and past a lease period without renewal no shard is read.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = reqwest::get(format!("{}/ready", node.process().endpoint)).await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            let active = node.metric("spillway_source_active_shards").await;
            if status == 503 && body.contains("cluster coordinator unreachable") && active == 0.0 {
                break;
            }
            assert!(Instant::now() < deadline, "during the outage: /ready {status} {body}, {active} shards read");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(LEASE).await;
    server.start_again();
    let back = wait_balanced(&coordinator, &live, shards, Duration::from_secs(60), "after the outage").await;
    eprintln!("coordinator back: shards balanced again in {back:?}");
    for node in &nodes {
        node.process().wait_ready().await;
    }

    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let expected = expected_lines(keys, written.load(Ordering::Relaxed));
    for out in ["out", "by-key"] {
        wait_for_lines(root.path(), out, expected.len(), Duration::from_secs(90)).await;
    }
    pg::wait_rows(&db, &table, expected.len() as i64, Duration::from_secs(90)).await;
    for mut node in nodes {
        assert_eq!(node.process.take().expect("running").terminate(), 0);
    }
    assert_exactly_once(root.path(), "out", &expected);
    assert_exactly_once(root.path(), "by-key", &expected);
    assert_eq!(pg::count(&db, &table).await, expected.len() as i64, "every record one row");
    eprintln!("{} records across a coordinator restart: every record once", expected.len());
}
