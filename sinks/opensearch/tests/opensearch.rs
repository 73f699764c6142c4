//! The sink crate against the real OpenSearch of `scripts/services.sh`: the shared conformance
//! checks (write, read back, idempotent replay, empty batch, error output), per-item outcomes of
//! a mapping conflict, and the 413 split (a proxy that refuses large bodies).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use spillway_sink_api::testkit::{ReadBack, check_conformance, encode_batch};
use spillway_sink_api::{Batch, ErrorClass, PartitionKeys, Record, Sink};
use spillway_sink_opensearch::{BuiltOpenSearch, OpenSearchSinkConfig};
use uuid::Uuid;

fn opensearch_url() -> String {
    std::env::var("SPILLWAY_TEST_OPENSEARCH_URL")
        .expect("SPILLWAY_TEST_OPENSEARCH_URL (eval \"$(scripts/services.sh env)\")")
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("spw-sink-{name}-{}", nanos % 1_000_000_000_000)
}

fn build(url: &str, index: &str, backup: &std::path::Path, extra: &str) -> BuiltOpenSearch {
    let yaml = format!(
        "url: '{url}'\nindex: {index}\nindex_rotation: none\n{extra}backup: {{ sink: {{ url: 'file://{}' }} }}\n",
        backup.display()
    );
    let config: OpenSearchSinkConfig = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(config.validate(), Vec::new());
    config.build("conformance", 1).unwrap()
}

struct OpenSearchReadBack {
    url: String,
    index: String,
    backup: std::path::PathBuf,
}

#[async_trait]
impl ReadBack for OpenSearchReadBack {
    /// The batch's documents by their ids (stream + sequence), concatenated in order with the
    /// newline the sample records carry; ids are unique, so a copy can only be one entry.
    async fn read_back(&self, batch: &Batch) -> Vec<Vec<u8>> {
        let http = reqwest::Client::new();
        let ids: Vec<String> = batch.sequences.iter().map(|sequence| format!("{}-{sequence}", batch.stream)).collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut joined = Vec::new();
        for id in ids {
            // `_source/{id}` answers the stored source byte for byte.
            let response = http.get(format!("{}/{}/_source/{id}", self.url, self.index)).send().await.unwrap();
            if !response.status().is_success() {
                return Vec::new();
            }
            joined.extend(response.bytes().await.unwrap());
            joined.push(b'\n');
        }
        vec![joined]
    }

    async fn read_error_output(&self, batch: &Batch, error_output_type: &str) -> Vec<Vec<u8>> {
        let mut found = Vec::new();
        let mut pending = vec![self.backup.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.to_string_lossy().contains(error_output_type)
                    && path.to_string_lossy().contains(&batch.id.to_string())
                {
                    found.push(std::fs::read(&path).unwrap());
                }
            }
        }
        found
    }
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn opensearch_sink_passes_conformance() {
    let url = opensearch_url();
    let backup = tempfile::tempdir().unwrap();
    let index = unique("conf");
    let built = build(&url, &index, backup.path(), "");
    let reader = OpenSearchReadBack { url, index, backup: backup.path().to_path_buf() };
    check_conformance(
        built.sink.as_ref(),
        built.backup.as_ref(),
        built.encoders.as_ref(),
        &reader,
        "conformance",
        PartitionKeys::new(),
    )
    .await;
}

fn records(data: &[String]) -> Vec<Record> {
    data.iter()
        .enumerate()
        .map(|(sequence, data)| Record {
            data: Bytes::from(data.clone()),
            arrival_ms: 1_764_000_000_000,
            sequence: sequence as u64,
            output: 0,
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn a_mapping_conflict_is_a_partial_failure_naming_only_those_records() {
    let url = opensearch_url();
    let backup = tempfile::tempdir().unwrap();
    let index = unique("partial");
    let http = reqwest::Client::new();
    let created = http
        .put(format!("{url}/{index}"))
        .json(&serde_json::json!({ "mappings": { "properties": { "n": { "type": "integer" } } } }))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success());
    let built = build(&url, &index, backup.path(), "");
    let data: Vec<String> = (0..10)
        .map(|n| if n == 2 || n == 7 { format!("{{\"n\":\"x{n}\"}}") } else { format!("{{\"n\":{n}}}") })
        .collect();
    let batch =
        encode_batch(built.encoders.as_ref(), "conformance", Uuid::new_v4(), PartitionKeys::new(), &records(&data));
    let error = built.sink.write(&batch).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Partial);
    let failed: Vec<(usize, bool, String)> =
        error.failures.iter().map(|failure| (failure.index, failure.retriable, failure.code.clone())).collect();
    assert_eq!(failed, [(2, false, "400".to_string()), (7, false, "400".to_string())]);
    assert!(error.failures[0].message.contains("mapper_parsing_exception"), "{}", error.failures[0].message);
}

/// A proxy that answers 413 to `_bulk` bodies over `limit` bytes and forwards the rest.
async fn start_size_limited_proxy(upstream: String, limit: usize) -> (String, Arc<AtomicUsize>) {
    let refused = Arc::new(AtomicUsize::new(0));
    let state = (upstream, refused.clone(), reqwest::Client::new());
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
        let (upstream, refused, http) = state.clone();
        async move {
            if body.len() > limit {
                refused.fetch_add(1, Ordering::SeqCst);
                return (axum::http::StatusCode::PAYLOAD_TOO_LARGE, Vec::new());
            }
            let path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            let response = http
                .post(format!("{upstream}{path}"))
                .header("content-type", "application/x-ndjson")
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            (
                axum::http::StatusCode::from_u16(response.status().as_u16()).unwrap(),
                response.bytes().await.unwrap().to_vec(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, refused)
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn a_request_refused_as_too_large_is_split_until_it_fits() {
    let url = opensearch_url();
    let backup = tempfile::tempdir().unwrap();
    let index = unique("split");
    let (proxy, refused) = start_size_limited_proxy(url.clone(), 4096).await;
    let built = build(&proxy, &index, backup.path(), "");
    let mut data: Vec<String> = (0..100).map(|n| format!("{{\"n\":{n},\"pad\":\"{}\"}}", "p".repeat(100))).collect();
    // One document alone is over the limit: it must come back as a permanent 413, nothing else.
    data[40] = format!("{{\"n\":40,\"pad\":\"{}\"}}", "p".repeat(5000));
    let batch =
        encode_batch(built.encoders.as_ref(), "conformance", Uuid::new_v4(), PartitionKeys::new(), &records(&data));
    let error = built.sink.write(&batch).await.unwrap_err();
    let failed: Vec<(usize, bool, String)> =
        error.failures.iter().map(|failure| (failure.index, failure.retriable, failure.code.clone())).collect();
    assert_eq!(failed, [(40, false, "413".to_string())]);
    assert!(refused.load(Ordering::SeqCst) > 3, "split several times");
    let http = reqwest::Client::new();
    let _ = http.post(format!("{url}/{index}/_refresh")).send().await.unwrap();
    let count: serde_json::Value =
        http.get(format!("{url}/{index}/_count")).send().await.unwrap().json().await.unwrap();
    assert_eq!(count["count"], serde_json::json!(99));
}
