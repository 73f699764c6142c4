//! Shard sharing in cluster mode end to end: real `spillway run` processes with a `cluster:`
//! block on one PostgreSQL (`scripts/services.sh`, a database of the test's own) read one
//! kinesalite stream while the real `aws-sdk-kinesis` produces into it. The nodes split the
//! shards between them; in seeded rounds a node is killed with SIGKILL (its shards move to the
//! others within two lease periods, then it restarts and gets its share back by hand-off) or
//! stopped with SIGSTOP past its lease (the others take its shards; when it continues, its late
//! writes are fenced and counted); a shard is split during the run. In the end every record is
//! in the shared local folder exactly once and in key order.

mod common;
#[path = "common/kinesis.rs"]
mod kinesis_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Spillway, pg, signal};
use kinesis_common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const COORDINATOR_VARIABLE: &str = "SPILLWAY_TEST_COORDINATOR";
const LEASE_SECONDS: u64 = 2;
const LEASE: Duration = Duration::from_secs(LEASE_SECONDS);

fn node_yaml(kinesis_stream: &str, out: &Path) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 20\n\
         data_dir: ./data\n\
         cluster:\n  coordinator: '${{{COORDINATOR_VARIABLE}}}'\n  lease_seconds: {LEASE_SECONDS}\n\
         streams:\n\
         \x20 - name: orders\n\
         \x20   source: {{ type: kinesis, stream_name: {kinesis_stream}, endpoint: '{}', region: us-east-1, poll_interval_ms: 200, shard_discovery_interval_ms: 500, starting_position: TRIM_HORIZON }}\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: 'file://{}', compression: gzip }}\n",
        endpoint(),
        out.display()
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

    async fn leases(&self) -> usize {
        self.metric("spillway_cluster_leases_held").await as usize
    }
}

/// Leases held per running node (stopped or killed nodes count 0).
async fn lease_counts(nodes: &[Node], running: &[bool]) -> Vec<usize> {
    let mut counts = Vec::new();
    for (node, up) in nodes.iter().zip(running) {
        counts.push(if *up { node.leases().await } else { 0 });
    }
    counts
}

/// Wait until the running nodes hold `shards` leases between them, each within one of the
/// others; how long it took.
async fn wait_balanced(nodes: &[Node], running: &[bool], shards: usize, bound: Duration, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let counts = lease_counts(nodes, running).await;
        let live: Vec<usize> = counts.iter().zip(running).filter(|(_, up)| **up).map(|(count, _)| *count).collect();
        let (max, min) = (live.iter().max().copied().unwrap_or(0), live.iter().min().copied().unwrap_or(0));
        if live.iter().sum::<usize>() == shards && max - min <= 1 {
            return started.elapsed();
        }
        assert!(started.elapsed() < bound, "{what}: not balanced within {bound:?}: leases per node {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn three_nodes_share_shards_through_kills_stops_restarts_and_a_split_delivering_every_record_once() {
    let seed: u64 = std::env::var("SPILLWAY_TEST_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(24);
    eprintln!("seed {seed} (SPILLWAY_TEST_SEED)");
    let mut rng = StdRng::seed_from_u64(seed);
    let client = kinesis().await;
    let name = unique_name("shared");
    let mut shards = 6;
    let _stream = create_stream(&client, &name, shards as i32).await;
    let coordinator = pg::fresh_database("spw_shards").await;
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let yaml = node_yaml(&name, &out);
    let mut nodes: Vec<Node> = (0..3).map(|index| Node::new(root.path(), index, &yaml, &coordinator)).collect();
    let mut running = vec![true; 3];

    let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let keys = 24;
    let producer = tokio::spawn(produce(
        client.clone(),
        name.clone(),
        keys,
        stop.clone(),
        written.clone(),
        Duration::from_millis(20),
    ));

    let took = wait_balanced(&nodes, &running, shards, Duration::from_secs(30), "at start").await;
    eprintln!("{shards} shards balanced over 3 nodes {took:?} after the nodes answered");

    let rounds = 4;
    let mut fenced_seen = 0.0;
    for round in 0..rounds {
        let victim = rng.random_range(0..nodes.len());
        if round % 2 == 0 {
            // SIGKILL: the others take its shards within two lease periods (plus one scan).
            let held = nodes[victim].leases().await;
            nodes[victim].process.take().expect("running").kill();
            running[victim] = false;
            let moved = wait_balanced(&nodes, &running, shards, 2 * LEASE + LEASE, "after a kill").await;
            eprintln!("round {round}: killed node {victim} ({held} leases); its shards moved in {moved:?}");
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
            nodes[victim].start();
            running[victim] = true;
            let back = wait_balanced(&nodes, &running, shards, Duration::from_secs(30), "after a restart").await;
            eprintln!("round {round}: node {victim} restarted and got its share back by hand-off in {back:?}");
        } else {
            // SIGSTOP past the lease: the others take its shards; when it continues, what it
            // still tries to write is fenced.
            let before = nodes[victim].metric("spillway_cluster_fenced_writes_total").await;
            signal(&nodes[victim].process().child, "STOP");
            running[victim] = false;
            let moved = wait_balanced(&nodes, &running, shards, 3 * LEASE + LEASE, "after a stop").await;
            signal(&nodes[victim].process().child, "CONT");
            running[victim] = true;
            let back = wait_balanced(&nodes, &running, shards, Duration::from_secs(30), "after SIGCONT").await;
            let fenced = nodes[victim].metric("spillway_cluster_fenced_writes_total").await - before;
            fenced_seen += fenced;
            eprintln!(
                "round {round}: stopped node {victim}; shards moved in {moved:?}; {fenced} fenced writes after SIGCONT; balanced again in {back:?}"
            );
        }
        if round == 1 {
            split_first_shard(&client, &name).await;
            // Two children, and the parent finishes once read to its end and delivered.
            shards += 1;
            eprintln!("split a shard: {shards} active leases once the parent is finished");
        }
    }
    assert!(fenced_seen > 0.0, "a node stopped past its lease had its late writes fenced");

    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let expected = expected_lines(keys, written.load(Ordering::Relaxed));
    wait_for_lines(root.path(), "out", expected.len(), Duration::from_secs(90)).await;
    for node in &mut nodes {
        assert_eq!(node.process.take().expect("running").terminate(), 0, "a clean stop hands every lease over");
    }
    assert_exactly_once(root.path(), "out", &expected);
    assert_key_order(&delivered_objects(root.path(), "out"));
    eprintln!("{} records over {keys} keys, {rounds} rounds: every record once, in key order", expected.len());
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
