//! Test harness for end-to-end tests: start the real `spillway` binary from a YAML file in a
//! temporary directory, talk to it with the real `aws-sdk-firehose` client, and read what landed
//! in the sink. Waits are bounded polls, never fixed sleeps.

#![allow(dead_code)]

pub mod pg;
pub mod s3;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_firehose::Client;
use aws_sdk_firehose::config::{BehaviorVersion, Credentials, Region};

pub const WAIT: Duration = Duration::from_secs(60);

/// The variable cluster tests' YAML names the coordinator's url by (`${SPILLWAY_TEST_COORDINATOR}`).
pub const COORDINATOR_VARIABLE: &str = "SPILLWAY_TEST_COORDINATOR";

/// One cluster node: `yaml` written to `<dir>/spillway.yaml` (`dir` created), started with its
/// coordinator's url in [`COORDINATOR_VARIABLE`].
pub fn start_node(dir: &Path, yaml: &str, coordinator: &str) -> Spillway {
    std::fs::create_dir_all(dir).expect("node folder");
    let config = dir.join("spillway.yaml");
    std::fs::write(&config, yaml).expect("write config");
    Spillway::start_with_env(dir, &config, &[(COORDINATOR_VARIABLE, coordinator)], &[])
}

/// A spillway process; killed (SIGKILL) on drop if still running.
pub struct Spillway {
    pub child: Child,
    pub endpoint: String,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Spillway {
    /// Write `yaml` to `<dir>/spillway.yaml` and start `spillway run` in `dir`.
    pub fn start(dir: &Path, yaml: &str) -> Spillway {
        let config = dir.join("spillway.yaml");
        std::fs::write(&config, yaml).expect("write config");
        Self::start_with_config(dir, &config)
    }

    pub fn start_with_config(dir: &Path, config: &Path) -> Spillway {
        Self::start_with_env(dir, config, &[], &[])
    }

    /// Start with extra environment variables set and others removed.
    pub fn start_with_env(dir: &Path, config: &Path, set: &[(&str, &str)], remove: &[&str]) -> Spillway {
        Self::start_with_options(dir, config, &[], set, remove)
    }

    /// Start with extra `run` arguments (`--watch-config`, `--listen`, …).
    pub fn start_with_args(dir: &Path, config: &Path, args: &[&str]) -> Spillway {
        Self::start_with_options(dir, config, args, &[], &[])
    }

    /// Start with extra `run` arguments, environment variables set and others removed.
    pub fn start_with_options(
        dir: &Path,
        config: &Path,
        args: &[&str],
        set: &[(&str, &str)],
        remove: &[&str],
    ) -> Spillway {
        let log = dir.join(format!(
            "spillway-{}.log",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        let log_file = std::fs::File::create(&log).expect("create log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_spillway"));
        command
            .args(["run", "--config"])
            .arg(config)
            .args(args)
            .current_dir(dir)
            .env("SPILLWAY_LOG", "info,spillway=debug")
            .stdout(Stdio::piped())
            .stderr(log_file);
        for (name, value) in set {
            command.env(name, value);
        }
        for name in remove {
            command.env_remove(name);
        }
        let mut child = command.spawn().expect("start spillway");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let endpoint = line
            .trim()
            .strip_prefix("spillway listening on ")
            .unwrap_or_else(|| {
                panic!("spillway did not start: {line:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default())
            })
            .to_string();
        Spillway { child, endpoint, dir: dir.to_path_buf(), log }
    }

    pub async fn client(&self) -> Client {
        firehose_client(&self.endpoint).await
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status code.
    pub fn terminate(mut self) -> i32 {
        signal(&self.child, "TERM");
        let status = wait_exit(&mut self.child, WAIT);
        status.code().unwrap_or(-1)
    }

    /// SIGKILL: a crash.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        let _ = self.child.wait();
    }

    /// One value from the running server's `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.endpoint)).await.ok()?.text().await.ok()?;
        spillway::metrics::read_metric(&text, name)
    }

    /// Poll `/ready` until it answers 200 (its first healthchecks run beside intake, so a fresh
    /// start answers 503 "pending" for a moment); fails with the last answer after [`WAIT`].
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let response = reqwest::get(format!("{}/ready", self.endpoint)).await.expect("/ready");
            let status = response.status().as_u16();
            if status == 200 {
                return;
            }
            let body = response.text().await.unwrap_or_default();
            assert!(Instant::now() < deadline, "/ready still answers {status}: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Spillway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args(["-s", name, &child.id().to_string()]).status().expect("kill command");
    assert!(status.success());
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "spillway did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn firehose_client(endpoint: &str) -> Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .load()
        .await;
    Client::new(&config)
}

/// Every regular file under `root`, sorted by path.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Decompress an object according to its extension.
pub fn decode_object(name: &str, bytes: &[u8]) -> Vec<u8> {
    if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out).expect("gunzip");
        out
    } else {
        bytes.to_vec()
    }
}

/// Poll until `condition` returns Some, or panic after `timeout`.
pub async fn eventually<T>(timeout: Duration, what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Objects (decoded) in a local sink folder, sorted by key; keys relative to the folder. Read as
/// a user's reader would: every file under the folder is an object, except the sink's staging
/// folder (`.spillway-staging/`, partly written objects a crash left, removed at the next start).
pub fn local_objects(root: &Path) -> Vec<(String, Vec<u8>)> {
    files_under(root)
        .into_iter()
        .filter(|path| !path.strip_prefix(root).is_ok_and(|key| key.starts_with(spillway_sink_s3::STAGING_DIR)))
        .filter_map(|path| {
            let key = path.strip_prefix(root).ok()?.to_string_lossy().to_string();
            let bytes = std::fs::read(&path).ok()?;
            Some((key.clone(), decode_object(&key, &bytes)))
        })
        .collect()
}

/// A local-sink YAML for tests.
pub fn local_yaml(size_mib: u64, interval_seconds: u64, extra_stream_yaml: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   buffering: {{ size_mib: {size_mib}, interval_seconds: {interval_seconds} }}\n\
         \x20   sink:\n\
         \x20     type: s3\n\
         \x20     url: file://./out\n\
         \x20     compression: gzip\n\
         {extra_stream_yaml}"
    )
}

/// Concatenate objects in the order their contents appear in `expected`. Object keys only sort by
/// the second their oldest record arrived (then by a uuid), so two objects of one second may list
/// in either order; each object must still be one contiguous, in-order run of what was sent.
pub fn concat_in_sent_order(mut objects: Vec<(String, Vec<u8>)>, expected: &[u8]) -> Vec<u8> {
    let position = |body: &[u8]| {
        if body.is_empty() {
            return Some(0);
        }
        expected.windows(body.len()).position(|window| window == body)
    };
    objects.sort_by_key(|(_, body)| position(body).unwrap_or(usize::MAX));
    objects.into_iter().flat_map(|(_, body)| body).collect()
}

/// The JSON lines of the objects whose key starts with `prefix`.
pub fn json_lines_under(objects: &[(String, Vec<u8>)], prefix: &str) -> Vec<serde_json::Value> {
    objects
        .iter()
        .filter(|(key, _)| key.starts_with(prefix))
        .flat_map(|(_, body)| {
            body.split(|&byte| byte == b'\n')
                .filter(|line| !line.is_empty())
                .map(|line| serde_json::from_slice(line).expect("a JSON line"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The JSON lines of the local folder `root`'s objects under `prefix`.
pub fn local_json_lines(root: &Path, prefix: &str) -> Vec<serde_json::Value> {
    json_lines_under(&local_objects(root), prefix)
}

/// Put `records` into `stream` in `PutRecordBatch`es of `batch_len`, one after another (so the
/// WAL holds them in this order); every record must be accepted.
pub async fn put_in_batches(client: &Client, stream: &str, records: &[String], batch_len: usize) {
    use aws_sdk_firehose::primitives::Blob;
    use aws_sdk_firehose::types::Record;
    for chunk in records.chunks(batch_len) {
        let records = chunk.iter().map(|data| Record::builder().data(Blob::new(data.as_bytes())).build().unwrap());
        let output = client
            .put_record_batch()
            .delivery_stream_name(stream)
            .set_records(Some(records.collect()))
            .send()
            .await
            .expect("put");
        assert_eq!(output.failed_put_count(), 0);
    }
}

/// `spillway validate` on `yaml`: whether it passed, and what it wrote to stderr.
pub fn validate_yaml(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, yaml).unwrap();
    let output =
        Command::new(env!("CARGO_BIN_EXE_spillway")).args(["validate", "--config"]).arg(&config).output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}
