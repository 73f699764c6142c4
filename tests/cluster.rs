//! Cluster mode end to end: real `spillway run` processes with a `cluster:` block pointing at
//! real PostgreSQL (`scripts/services.sh`; a database of the test's own, or a throwaway server
//! for the outage test). Three nodes join and `spillway cluster status` lists them; Direct PUT
//! to each node is delivered by that node into one shared local folder, every record exactly
//! once; a node killed with SIGKILL shows dead after its lease, one stopped with SIGTERM shows
//! stopped (shard sources: `tests/cluster_shards.rs`); a coordinator that refuses, does not
//! answer or rejects the user fails the start fast; a coordinator outage turns `/ready` false
//! while Direct PUT keeps working, and the node recovers by itself. A stream created through the
//! API on one node runs on every node (the shared catalog), follows updates and tags made through
//! another, survives a restart of every node and is deleted through a third; a node whose YAML
//! streams differ from a live node's is refused with the stream named. During a coordinator
//! outage two nodes keep delivering an API stream fed through both, a create is refused as
//! `ServiceUnavailableException`, and both catch up when it returns.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::pg::{self, OwnPostgres};
use common::{COORDINATOR_VARIABLE, Spillway, WAIT, eventually, local_objects, start_node};

/// A node's YAML: its own data_dir, a Direct PUT stream into `out`, the coordinator read from
/// the environment (`${…}`, as a password would be).
fn node_yaml(out: &Path, extra_cluster: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 10\n\
         data_dir: ./data\n\
         cluster:\n  coordinator: '${{{COORDINATOR_VARIABLE}}}'\n  lease_seconds: 2\n{extra_cluster}\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   sink: {{ type: s3, url: 'file://{}' }}\n",
        out.display()
    )
}

/// `spillway <args>` run to its end (bounded): (exit code, stdout, stderr, how long it took).
fn run_spillway(dir: &Path, args: &[&str], coordinator: &str, bound: Duration) -> (i32, String, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .current_dir(dir)
        .env(COORDINATOR_VARIABLE, coordinator)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spillway");
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let output = child.wait_with_output().expect("output");
            return (
                status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stdout).to_string(),
                String::from_utf8_lossy(&output.stderr).to_string(),
                started.elapsed(),
            );
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            panic!("spillway {args:?} still running after {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `spillway cluster status`: node id → state (alive / dead / stopped).
fn cluster_states(dir: &Path, coordinator: &str) -> BTreeMap<String, String> {
    let (code, stdout, stderr, _) =
        run_spillway(dir, &["cluster", "status", "--config", "spillway.yaml"], coordinator, Duration::from_secs(30));
    assert_eq!(code, 0, "cluster status failed: {stderr}");
    stdout
        .lines()
        .skip_while(|line| !line.starts_with("NODE"))
        .skip(1)
        .take_while(|line| !line.is_empty() && !line.starts_with("no leases"))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?.to_string(), fields.next()?.to_string()))
        })
        .collect()
}

async fn node_id_of(node: &Spillway) -> String {
    let status: serde_json::Value =
        reqwest::get(format!("{}/api/status", node.endpoint)).await.unwrap().json().await.unwrap();
    status["node_id"].as_str().expect("the status page names the node in cluster mode").to_string()
}

async fn put_lines(node: &Spillway, lines: &[String]) {
    put_api_lines(node, "app-logs", lines).await;
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn three_nodes_join_deliver_their_own_puts_once_and_a_killed_node_shows_dead() {
    let coordinator = pg::fresh_database("spw_cluster").await;
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("shared-out");
    let yaml = node_yaml(&out, "");
    let nodes: Vec<Spillway> =
        (0..3).map(|index| start_node(&root.path().join(format!("node-{index}")), &yaml, &coordinator)).collect();
    for node in &nodes {
        node.wait_ready().await;
        assert_eq!(node.metric("spillway_cluster_coordinator_up").await, Some(1.0));
        assert_eq!(node.metric("spillway_cluster_leases_held").await, Some(0.0));
    }
    let mut ids = Vec::new();
    for node in &nodes {
        ids.push(node_id_of(node).await);
    }
    let first_dir = root.path().join("node-0");
    let states = cluster_states(&first_dir, &coordinator);
    assert_eq!(states.len(), 3, "{states:?}");
    assert!(ids.iter().all(|id| states.get(id).map(String::as_str) == Some("alive")), "{ids:?} vs {states:?}");

    // Each node takes puts into its own WAL and delivers them; object keys do not collide in
    // the shared folder (each data_dir has its own instance id in its batch ids).
    let mut sent = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let lines: Vec<String> = (0..300).map(|line| format!("{{\"node\":{index},\"n\":{line}}}")).collect();
        put_lines(node, &lines).await;
        sent.extend(lines);
    }
    let got = eventually(WAIT, "every record in the shared folder", || {
        let lines = lines_under(&out);
        (lines.len() >= sent.len()).then_some(lines)
    })
    .await;
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(got, expected, "every record exactly once: none missing, none twice");

    // kill -9: after its lease the node shows dead; SIGTERM: shown stopped at once.
    let mut nodes = nodes.into_iter();
    let (survivor, stopped, killed) = (nodes.next().unwrap(), nodes.next().unwrap(), nodes.next().unwrap());
    killed.kill();
    assert_eq!(stopped.terminate(), 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let states = cluster_states(&first_dir, &coordinator);
        let expected = BTreeMap::from([
            (ids[0].clone(), "alive".to_string()),
            (ids[1].clone(), "stopped".to_string()),
            (ids[2].clone(), "dead".to_string()),
        ]);
        if states == expected {
            break;
        }
        assert!(Instant::now() < deadline, "states after kill -9 and SIGTERM: {states:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    survivor.wait_ready().await;
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn a_coordinator_that_refuses_is_silent_or_rejects_the_user_fails_the_start_fast() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    std::fs::write(root.path().join("spillway.yaml"), node_yaml(&out, "")).unwrap();
    let run = |coordinator: &str| {
        run_spillway(root.path(), &["run", "--config", "spillway.yaml"], coordinator, Duration::from_secs(30))
    };

    // Nothing listens on the port.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, _, stderr, took) = run(&format!("postgres://spillway@127.0.0.1:{closed_port}/spillway"));
    assert_ne!(code, 0);
    assert!(stderr.contains("cluster coordinator unreachable") && stderr.contains("onnection refused"), "{stderr}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // Something accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let (code, _, stderr, took) = run(&format!("postgres://spillway@127.0.0.1:{silent_port}/spillway"));
    assert_ne!(code, 0);
    assert!(stderr.contains("cluster coordinator unreachable: no answer within 2 s"), "{stderr}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    drop(silent);

    // A user the server does not know.
    let shared = pg::shared_url();
    let (_, host_and_db) = shared.split_once('@').expect("postgres://user@host/db");
    let (code, _, stderr, _) = run(&format!("postgres://no_such_user@{host_and_db}"));
    assert_ne!(code, 0);
    assert!(stderr.contains("cluster coordinator unreachable") && stderr.contains("no_such_user"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn a_coordinator_outage_turns_ready_false_puts_keep_working_and_the_node_recovers() {
    let server = OwnPostgres::start();
    let coordinator = server.url("postgres");
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let node = start_node(&root.path().join("node"), &node_yaml(&out, ""), &coordinator);
    node.wait_ready().await;

    server.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = reqwest::get(format!("{}/ready", node.endpoint)).await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        if status == 503 {
            assert!(body.contains("cluster coordinator unreachable"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/ready still {status} with the coordinator down: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(node.metric("spillway_cluster_coordinator_up").await, Some(0.0));
    // Push sources keep serving and delivering.
    let lines: Vec<String> = (0..50).map(|line| format!("{{\"n\":{line}}}")).collect();
    put_lines(&node, &lines).await;
    eventually(WAIT, "the puts delivered during the outage", || {
        let count: usize =
            local_objects(&out).iter().map(|(_, body)| body.iter().filter(|byte| **byte == b'\n').count()).sum();
        (count == lines.len()).then_some(())
    })
    .await;

    server.start_again();
    node.wait_ready().await;
    assert_eq!(node.metric("spillway_cluster_coordinator_up").await, Some(1.0));
    assert!(node.log_text().contains("cluster coordinator reachable again"), "{}", node.log_text());
    assert_eq!(node.terminate(), 0);
}

/// A node's YAML with the Firehose API's streams delivering under `buckets/{bucket}` in `root`
/// (shared by every node) besides the YAML stream.
fn api_node_yaml(root: &Path) -> String {
    let yaml = node_yaml(&root.join("shared-out"), "");
    yaml.replacen(
        "cluster:",
        &format!("api_defaults:\n  s3:\n    url: 'file://{}/buckets/{{bucket}}'\ncluster:", root.display()),
        1,
    )
}

async fn describe(client: &aws_sdk_firehose::Client, name: &str) -> Result<(String, String, Option<String>), String> {
    use aws_sdk_firehose::error::ProvideErrorMetadata;
    match client.describe_delivery_stream().delivery_stream_name(name).send().await {
        Ok(output) => {
            let description = output.delivery_stream_description().expect("description");
            let prefix = description
                .destinations()
                .first()
                .and_then(|destination| destination.extended_s3_destination_description())
                .and_then(|s3| s3.prefix())
                .map(str::to_string);
            Ok((
                description.delivery_stream_status().as_str().to_string(),
                description.version_id().to_string(),
                prefix,
            ))
        }
        Err(error) => Err(error.into_service_error().code().unwrap_or("unknown").to_string()),
    }
}

/// Poll `describe` on `node` until `accept` holds (bounded by [`WAIT`]).
async fn wait_describe(
    node: &Spillway,
    name: &str,
    what: &str,
    accept: impl Fn(&Result<(String, String, Option<String>), String>) -> bool,
) {
    let client = node.client().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = describe(&client, name).await;
        if accept(&answer) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} on {}: still {answer:?}", node.endpoint);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put_api_lines(node: &Spillway, stream: &str, lines: &[String]) {
    let client = node.client().await;
    for chunk in lines.chunks(100) {
        let records: Vec<Record> = chunk
            .iter()
            .map(|line| Record::builder().data(Blob::new(line.as_bytes().to_vec())).build().unwrap())
            .collect();
        let output =
            client.put_record_batch().delivery_stream_name(stream).set_records(Some(records)).send().await.unwrap();
        assert_eq!(output.failed_put_count(), 0);
    }
}

/// An S3 destination into bucket `bucket` (1 MiB / 1 s buffers, newline after each record).
fn api_destination(bucket: &str, prefix: Option<&str>) -> aws_sdk_firehose::types::ExtendedS3DestinationConfiguration {
    use aws_sdk_firehose::types::{
        BufferingHints, ExtendedS3DestinationConfiguration, ProcessingConfiguration, Processor, ProcessorType,
    };
    ExtendedS3DestinationConfiguration::builder()
        .role_arn("arn:aws:iam::000000000000:role/firehose")
        .bucket_arn(format!("arn:aws:s3:::{bucket}"))
        .set_prefix(prefix.map(str::to_string))
        .buffering_hints(BufferingHints::builder().size_in_mbs(1).interval_in_seconds(1).build())
        .processing_configuration(
            ProcessingConfiguration::builder()
                .enabled(true)
                .processors(Processor::builder().r#type(ProcessorType::AppendDelimiterToRecord).build().unwrap())
                .build(),
        )
        .build()
        .unwrap()
}

fn lines_under(folder: &Path) -> Vec<String> {
    let mut lines: Vec<String> = local_objects(folder)
        .into_iter()
        .flat_map(|(_, body)| String::from_utf8(body).unwrap().lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn an_api_stream_created_on_one_node_runs_on_every_node_survives_restarts_and_is_deleted_through_another() {
    use aws_sdk_firehose::types::{ExtendedS3DestinationConfiguration, ExtendedS3DestinationUpdate, Tag};
    let coordinator = pg::fresh_database("spw_cluster").await;
    let root = tempfile::tempdir().unwrap();
    let yaml = api_node_yaml(root.path());
    let dirs: Vec<_> = (0..3).map(|index| root.path().join(format!("node-{index}"))).collect();
    let start_all = || dirs.iter().map(|dir| start_node(dir, &yaml, &coordinator)).collect::<Vec<Spillway>>();
    let nodes = start_all();
    for node in &nodes {
        node.wait_ready().await;
    }

    let destination = api_destination("shared", Some("v1/"));
    let first = nodes[0].client().await;
    first
        .create_delivery_stream()
        .delivery_stream_name("orders")
        .extended_s3_destination_configuration(destination)
        .send()
        .await
        .expect("created through node 0");
    // The name is taken cluster-wide at once, even on a node that does not run it yet.
    let again = nodes[1]
        .client()
        .await
        .create_delivery_stream()
        .delivery_stream_name("orders")
        .extended_s3_destination_configuration(
            ExtendedS3DestinationConfiguration::builder()
                .role_arn("arn:aws:iam::000000000000:role/firehose")
                .bucket_arn("arn:aws:s3:::other")
                .build()
                .unwrap(),
        )
        .send()
        .await;
    let code = again.map(|_| String::new()).map_err(|error| {
        use aws_sdk_firehose::error::ProvideErrorMetadata;
        error.into_service_error().code().unwrap_or_default().to_string()
    });
    assert_eq!(code, Err("ResourceInUseException".to_string()), "a second create of the name through node 1");
    for node in &nodes {
        wait_describe(
            node,
            "orders",
            "the stream running",
            |answer| matches!(answer, Ok((status, _, _)) if status == "ACTIVE"),
        )
        .await;
    }

    // Fed through every node: each delivers what it accepted, once.
    let bucket = root.path().join("buckets/shared");
    let mut sent = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let lines: Vec<String> = (0..200).map(|line| format!("{{\"via\":{index},\"n\":{line}}}")).collect();
        put_api_lines(node, "orders", &lines).await;
        sent.extend(lines);
    }
    sent.sort();
    eventually(WAIT, "every record put through every node", || {
        let lines = lines_under(&bucket);
        (lines.len() >= sent.len()).then_some(())
    })
    .await;
    assert_eq!(lines_under(&bucket), sent, "every record exactly once");

    // Changed through node 1, tagged through node 2: every node follows.
    let second = nodes[1].client().await;
    second
        .update_destination()
        .delivery_stream_name("orders")
        .current_delivery_stream_version_id("1")
        .destination_id("destinationId-000000000001")
        .extended_s3_destination_update(ExtendedS3DestinationUpdate::builder().prefix("v2/").build())
        .send()
        .await
        .expect("updated through node 1");
    nodes[2]
        .client()
        .await
        .tag_delivery_stream()
        .delivery_stream_name("orders")
        .tags(Tag::builder().key("team").value("data").build().unwrap())
        .send()
        .await
        .expect("tagged through node 2");
    for node in &nodes {
        wait_describe(
            node,
            "orders",
            "the update",
            |answer| matches!(answer, Ok((_, version, Some(prefix))) if version == "2" && prefix == "v2/"),
        )
        .await;
        let client = node.client().await;
        let deadline = Instant::now() + WAIT;
        loop {
            let tags = client.list_tags_for_delivery_stream().delivery_stream_name("orders").send().await.unwrap();
            if tags.tags().iter().any(|tag| tag.key() == "team" && tag.value() == Some("data")) {
                break;
            }
            assert!(Instant::now() < deadline, "the tag on {}: {:?}", node.endpoint, tags.tags());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Every node restarted: the stream is still there on each, and still fed.
    for node in nodes {
        assert_eq!(node.terminate(), 0);
    }
    let nodes = start_all();
    for node in &nodes {
        node.wait_ready().await;
        let answer = describe(&node.client().await, "orders").await;
        assert!(matches!(&answer, Ok((status, version, _)) if status == "ACTIVE" && version == "2"), "{answer:?}");
    }
    let after: Vec<String> = (0..100).map(|line| format!("{{\"after_restart\":{line}}}")).collect();
    put_api_lines(&nodes[2], "orders", &after).await;
    sent.extend(after);
    sent.sort();
    eventually(WAIT, "the records put after the restart", || (lines_under(&bucket).len() >= sent.len()).then_some(()))
        .await;

    // Put through node 0, deleted through node 2: node 0 still delivers what it accepted.
    let last: Vec<String> = (0..100).map(|line| format!("{{\"before_delete\":{line}}}")).collect();
    put_api_lines(&nodes[0], "orders", &last).await;
    sent.extend(last);
    sent.sort();
    nodes[2].client().await.delete_delivery_stream().delivery_stream_name("orders").send().await.expect("deleted");
    for node in &nodes {
        wait_describe(
            node,
            "orders",
            "the delete",
            |answer| matches!(answer, Err(code) if code == "ResourceNotFoundException"),
        )
        .await;
    }
    assert_eq!(lines_under(&bucket), sent, "every record exactly once, the last ones delivered before the delete");
    let coordinator_db = pg::connect(&coordinator).await;
    let rows: i64 = coordinator_db
        .query_one("SELECT count(*) FROM spillway_streams WHERE origin = 'api'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the catalog forgot the stream");
    for node in nodes {
        assert_eq!(node.terminate(), 0);
    }
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn a_node_whose_yaml_streams_differ_from_a_live_node_is_refused_naming_the_stream() {
    let coordinator = pg::fresh_database("spw_cluster").await;
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let yaml = node_yaml(&out, "");
    let first = start_node(&root.path().join("node-0"), &yaml, &coordinator);
    first.wait_ready().await;
    let first_id = node_id_of(&first).await;

    let refused = |name: &str, yaml: &str| {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("spillway.yaml"), yaml).unwrap();
        let (code, _, stderr, _) =
            run_spillway(&dir, &["run", "--config", "spillway.yaml"], &coordinator, Duration::from_secs(30));
        assert_ne!(code, 0, "{name} started: {stderr}");
        stderr
    };
    let changed = refused("changed", &yaml.replace("interval_seconds: 1", "interval_seconds: 2"));
    assert!(
        changed.contains(&format!(
            "stream `app-logs` differs from the cluster's: live node {first_id} runs it with another configuration"
        )),
        "{changed}"
    );
    let extra = format!("{yaml}\x20 - name: extra\n\x20   sink: {{ type: s3, url: 'file://{}' }}\n", out.display());
    let stderr = refused("extra", &extra);
    assert!(
        stderr.contains(&format!("stream `extra` differs from the cluster's: live node {first_id} does not run it")),
        "{stderr}"
    );
    let states = cluster_states(&root.path().join("node-0"), &coordinator);
    assert_eq!(states.values().filter(|state| *state == "alive").count(), 1, "refused nodes left: {states:?}");

    // Once the node with the old file stops, the new file is the cluster's.
    assert_eq!(first.terminate(), 0);
    let changed_dir = root.path().join("changed");
    let second = start_node(&changed_dir, &yaml.replace("interval_seconds: 1", "interval_seconds: 2"), &coordinator);
    second.wait_ready().await;
    assert_eq!(second.terminate(), 0);
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn during_a_coordinator_outage_streams_keep_delivering_api_changes_are_refused_and_both_nodes_catch_up() {
    use aws_sdk_firehose::error::ProvideErrorMetadata;
    let server = OwnPostgres::start();
    let coordinator = server.url("postgres");
    let root = tempfile::tempdir().unwrap();
    let yaml = api_node_yaml(root.path());
    let nodes: Vec<Spillway> =
        (0..2).map(|index| start_node(&root.path().join(format!("node-{index}")), &yaml, &coordinator)).collect();
    for node in &nodes {
        node.wait_ready().await;
    }
    let create = async |node: &Spillway, name: &str| {
        node.client()
            .await
            .create_delivery_stream()
            .delivery_stream_name(name)
            .extended_s3_destination_configuration(api_destination(name, None))
            .send()
            .await
            .map(drop)
            .map_err(|error| {
                let error = error.into_service_error();
                (error.code().unwrap_or_default().to_string(), error.message().unwrap_or_default().to_string())
            })
    };
    create(&nodes[0], "before").await.expect("created before the outage");
    wait_describe(
        &nodes[1],
        "before",
        "the stream on node 1",
        |answer| matches!(answer, Ok((status, _, _)) if status == "ACTIVE"),
    )
    .await;

    server.stop();
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{}/ready", node.endpoint)).await.unwrap().status() != 503 {
            assert!(Instant::now() < deadline, "/ready of {} with the coordinator down", node.endpoint);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Streams run as they are: the API stream is fed through both nodes and delivered.
    let mut sent = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let lines: Vec<String> = (0..100).map(|line| format!("{{\"outage_via\":{index},\"n\":{line}}}")).collect();
        put_api_lines(node, "before", &lines).await;
        sent.extend(lines);
    }
    sent.sort();
    let bucket = root.path().join("buckets/before");
    eventually(WAIT, "the puts made during the outage", || (lines_under(&bucket).len() >= sent.len()).then_some(()))
        .await;
    assert_eq!(lines_under(&bucket), sent);
    // A change needs the catalog: refused as an outage the client may retry, with the reason.
    let (code, message) = create(&nodes[1], "during").await.expect_err("no catalog, no create");
    assert_eq!(code, "ServiceUnavailableException", "{message}");
    assert!(message.contains("cluster coordinator unreachable"), "{message}");

    server.start_again();
    for node in &nodes {
        node.wait_ready().await;
    }
    create(&nodes[1], "after").await.expect("created once the coordinator is back");
    wait_describe(
        &nodes[0],
        "after",
        "the stream created after the outage",
        |answer| matches!(answer, Ok((status, _, _)) if status == "ACTIVE"),
    )
    .await;
    let (code, _) = create(&nodes[0], "during").await.map(|()| (String::new(), String::new())).unwrap_or_else(|e| e);
    assert_eq!(code, "", "the name refused during the outage is free");
    for node in nodes {
        assert_eq!(node.terminate(), 0);
    }
}
