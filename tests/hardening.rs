//! What a careless operator or a hostile neighbour meets, end to end against the real binary:
//! one process per `data_dir`, SIGHUP, errors said once and without debug dumps, a full WAL or
//! output disk (tmpfs mounts: the test suite runs as root), local objects staged where readers do
//! not look, and intake that opens while a sink hangs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_firehose::Client;
use aws_sdk_firehose::config::retry::RetryConfig;
use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, WAIT, local_objects};

fn yaml(out: &str, server_extra: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 10\n  healthcheck_interval_seconds: 1\n{server_extra}\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   sink: {{ type: s3, url: 'file://{out}' }}\n"
    )
}

/// Run `spillway <args>` in `dir` to its exit (killed and failed after [`WAIT`]): code, stdout, stderr.
fn run_to_exit(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spillway");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("spillway {args:?} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// A client that does not retry, so each refusal is seen as it was answered.
async fn client_without_retries(endpoint: &str) -> Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_firehose::config::Credentials::new("t", "t", None, None, "t"))
        .retry_config(RetryConfig::disabled())
        .load()
        .await;
    Client::new(&config)
}

async fn put(client: &Client, lines: &[String]) -> Result<(), aws_sdk_firehose::Error> {
    let records =
        lines.iter().map(|line| Record::builder().data(Blob::new(line.as_bytes())).build().unwrap()).collect();
    client.put_record_batch().delivery_stream_name("app-logs").set_records(Some(records)).send().await?;
    Ok(())
}

fn delivered_lines(out: &Path) -> Vec<String> {
    let mut lines: Vec<String> = local_objects(out)
        .into_iter()
        .flat_map(|(_, bytes)| String::from_utf8_lossy(&bytes).lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    lines.sort();
    lines
}

async fn ready(spillway: &Spillway) -> (u16, String) {
    let response = reqwest::get(format!("{}/ready", spillway.endpoint)).await.expect("/ready");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

/// Poll `/ready` until `accept` takes its answer.
async fn wait_for_ready(spillway: &Spillway, what: &str, accept: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = ready(spillway).await;
        if accept(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: /ready {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_second_process_on_one_data_dir_exits_naming_the_folder_and_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = Spillway::start(dir.path(), &yaml("./out", ""));
    let (code, _, stderr) = run_to_exit(dir.path(), &["run", "--config", "spillway.yaml"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("data_dir") && stderr.contains("data is in use by another spillway process"), "{stderr}");
    assert!(stderr.contains(&format!("(pid {})", first.child.id())), "{stderr}");
    assert_eq!(stderr.matches("in use").count(), 1, "said once: {stderr}");

    // The first one never noticed: it takes and delivers records as before.
    put(&first.client().await, &["still-here".to_string()]).await.expect("put");
    assert_eq!(first.terminate(), 0);
    assert_eq!(delivered_lines(&dir.path().join("out")), ["still-here"]);
    // Its lock went with it: a new process starts.
    let again = Spillway::start(dir.path(), &yaml("./out", ""));
    assert_eq!(again.terminate(), 0);
}

#[tokio::test]
async fn sighup_reloads_an_unchanged_file_without_touching_anything() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &yaml("./out", ""));
    common::signal(&spillway.child, "HUP");
    let deadline = Instant::now() + WAIT;
    while !spillway.log_text().contains("configuration reloaded: 0 added, 0 changed, 0 removed, 1 unchanged") {
        assert!(Instant::now() < deadline, "no log line for SIGHUP: {}", spillway.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    put(&spillway.client().await, &["after-hup".to_string()]).await.expect("still serving");
    assert_eq!(spillway.terminate(), 0);
    assert_eq!(delivered_lines(&dir.path().join("out")), ["after-hup"]);
}

#[tokio::test]
async fn errors_are_said_once_without_debug_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &yaml("./out", ""));
    std::fs::write(dir.path().join("lines.txt"), "a\nb\n").unwrap();
    let (code, _, stderr) =
        run_to_exit(dir.path(), &["put", "--stream", "nope", "--endpoint", &spillway.endpoint, "lines.txt"]);
    assert_eq!(code, 1, "{stderr}");
    let said = stderr.trim();
    assert!(said.starts_with("error: ResourceNotFoundException: Firehose nope under account"), "{said}");
    assert!(said.ends_with("not found.") && said.lines().count() == 1 && said.len() < 200, "{said}");

    // Another process on the same address (its own data_dir): the cause is said once.
    let port = spillway.endpoint.rsplit(':').next().unwrap().to_string();
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("spillway.yaml"),
        yaml("./out", "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let (code, _, stderr) = run_to_exit(other.path(), &["run", "--config", "spillway.yaml"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{stderr}");
    assert_eq!(stderr.matches("Address already in use").count(), 1, "{stderr}");
    assert_eq!(spillway.terminate(), 0);
}

/// A tmpfs of `size` mounted on `path` for the test's life (needs root, as the suite runs).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs on {} failed: this test needs root", path.display());
        Tmpfs(path.to_path_buf())
    }

    /// Fill the filesystem until only about `leave` bytes are free.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.0.join("filler");
        let free = nix::sys::statvfs::statvfs(&self.0).map(|s| s.blocks_available() * s.fragment_size()).unwrap();
        std::fs::write(&filler, vec![0u8; free.saturating_sub(leave) as usize]).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_wal_disk_answers_service_unavailable_and_turns_ready_503_until_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let data = Tmpfs::mount(&dir.path().join("data"), "4m");
    let spillway = Spillway::start(dir.path(), &yaml("./out", ""));
    wait_for_ready(&spillway, "ready", |status, _| status == 200).await;
    let client = client_without_retries(&spillway.endpoint).await;
    put(&client, &["before".to_string()]).await.expect("room at first");

    let filler = data.fill(64 << 10);
    let big: Vec<String> = (0..4).map(|index| format!("{index}-{}", "x".repeat(100_000))).collect();
    let refused = put(&client, &big).await.expect_err("no room for 400 KB");
    assert_eq!(refused.code(), Some("ServiceUnavailableException"), "{refused:?}");
    assert!(refused.message().unwrap_or_default().contains("disk is full"), "{refused:?}");
    let body = wait_for_ready(&spillway, "503 for the full disk", |status, _| status == 503).await;
    assert!(body.contains("wal disk full"), "{body}");

    std::fs::remove_file(filler).unwrap();
    wait_for_ready(&spillway, "room again", |status, _| status == 200).await;
    put(&client, &["after".to_string()]).await.expect("room again");
    assert_eq!(spillway.terminate(), 0);
    assert_eq!(delivered_lines(&dir.path().join("out")), ["after", "before"]);
}

#[tokio::test]
async fn a_full_output_disk_turns_ready_503_and_its_records_are_delivered_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let out = Tmpfs::mount(&dir.path().join("out"), "4m");
    let spillway = Spillway::start(dir.path(), &yaml("./out", ""));
    wait_for_ready(&spillway, "ready", |status, _| status == 200).await;
    let filler = out.fill(4 << 10);
    let body = wait_for_ready(&spillway, "503 for the full output disk", |status, _| status == 503).await;
    assert!(body.contains("stream app-logs: s3 sink healthcheck failed") && body.contains("full filesystem"), "{body}");
    let client = spillway.client().await;
    let lines: Vec<String> = (0..20).map(|index| format!("{index:02}-{}", "y".repeat(1000))).collect();
    put(&client, &lines).await.expect("the wal takes them");

    std::fs::remove_file(filler).unwrap();
    wait_for_ready(&spillway, "room again", |status, _| status == 200).await;
    assert_eq!(spillway.terminate(), 0);
    assert_eq!(delivered_lines(&dir.path().join("out")), lines);
}

#[tokio::test]
async fn local_objects_are_staged_out_of_readers_way_and_a_crash_s_leftovers_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("out/.spillway-staging/app-logs");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("0123abcd"), b"half an object").unwrap();
    let spillway = Spillway::start(dir.path(), &yaml("./out", ""));
    let client = spillway.client().await;
    for round in 0..5 {
        put(&client, &[format!("line-{round}")]).await.expect("put");
    }
    assert_eq!(spillway.terminate(), 0);
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "the leftover is gone, nothing else is left");
    let files = common::files_under(&dir.path().join("out"));
    assert!(files.iter().all(|path| !path.to_string_lossy().contains('#')), "{files:?}");
    assert_eq!(
        delivered_lines(&dir.path().join("out")),
        (0..5).map(|round| format!("line-{round}")).collect::<Vec<_>>()
    );
}

#[cfg(feature = "sink-opensearch")]
#[tokio::test]
async fn intake_opens_at_once_while_a_sink_hangs_and_ready_says_pending() {
    // An OpenSearch that accepts connections and never answers.
    let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let frozen_addr = frozen.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut connections = Vec::new();
        for connection in frozen.incoming().take(16) {
            connections.push(connection);
        }
        connections
    });
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 1\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   sink:\n\
         \x20     type: opensearch\n\
         \x20     url: http://{frozen_addr}\n\
         \x20     index: logs\n\
         \x20     backup: {{ sink: {{ url: 'file://./backup' }} }}\n"
    );
    let spillway = Spillway::start(dir.path(), &yaml);
    // The healthcheck waits up to 10 s for the frozen server; the first answer comes before that.
    let (status, body) = ready(&spillway).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("stream app-logs: opensearch sink healthcheck pending"), "{body}");
    put(&spillway.client().await, &[r#"{"a":1}"#.to_string()]).await.expect("intake is open");
    spillway.kill();
    drop(held);
}
