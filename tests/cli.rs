//! The command line as users meet it: `validate` on good and broken YAML (and on a type this
//! build left out), `--version`, and `put` sending a file to a running spillway.

mod common;

use std::process::Command;

use common::{Spillway, local_objects, local_yaml};

fn spillway(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_spillway")).args(args).current_dir(dir).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn validate_accepts_the_shipped_examples() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, stdout, stderr) = spillway(&["validate", "--config", "config/local.yaml"], root);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok"));
    // Every example in config/, with the variables examples reference set to something.
    let mut examples: Vec<_> = std::fs::read_dir(root.join("config"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 5, "{examples:?}");
    // `validate` also checks what `run` needs on the machine; give the TLS example the files its
    // header comment makes (run from a folder of its own, so nothing lands in the repository).
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("tls")).unwrap();
    for file in ["server.pem", "server-key.pem"] {
        std::fs::write(work.path().join("tls").join(file), b"").unwrap();
    }
    for example in examples {
        let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
            .arg("validate")
            .arg("-c")
            .arg(&example)
            .current_dir(work.path())
            .envs(EXAMPLE_ENV.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        // An example whose sink or source this build left out is refused, naming the feature.
        let yaml = std::fs::read_to_string(&example).unwrap();
        let missing: Vec<_> = OPTIONAL_TYPES
            .iter()
            .filter(|(type_name, _, built)| !built && yaml.contains(&format!("type: {type_name}")))
            .collect();
        if missing.is_empty() {
            assert!(output.status.success(), "{}: {stderr}", example.display());
        } else {
            assert!(!output.status.success(), "{}: accepted without {missing:?}", example.display());
            let named = missing.iter().any(|(type_name, feature, _)| {
                stderr
                    .contains(&format!("type `{type_name}` is not built into this binary (cargo feature `{feature}`)"))
            });
            assert!(named, "{}: {stderr}", example.display());
        }
    }
}

/// The sink, source and transform types behind a cargo feature: (YAML type, feature, built into this binary).
const OPTIONAL_TYPES: &[(&str, &str, bool)] = &[
    ("postgres", "sink-postgres", cfg!(feature = "sink-postgres")),
    ("opensearch", "sink-opensearch", cfg!(feature = "sink-opensearch")),
    ("http_endpoint", "sink-http-endpoint", cfg!(feature = "sink-http-endpoint")),
    ("iceberg", "sink-iceberg", cfg!(feature = "sink-iceberg")),
    ("kinesis", "source-kinesis", cfg!(feature = "source-kinesis")),
    ("dynamodb_streams", "source-dynamodb-streams", cfg!(feature = "source-dynamodb-streams")),
    ("file", "source-file", cfg!(feature = "source-file")),
    ("kafka", "source-kafka", cfg!(feature = "source-kafka")),
    ("sql", "transform-sql", cfg!(feature = "transform-sql")),
];

/// A binary built without `sink-postgres` (scripts/test.sh builds one) refuses a PostgreSQL sink
/// by name and feature, in `validate` and in `run`, instead of serde's bare "unknown variant".
#[cfg(not(feature = "sink-postgres"))]
#[test]
fn a_sink_type_left_out_of_this_build_is_refused_with_the_feature_that_adds_it() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "data_dir: ./data\nstreams:\n  - name: rows\n    sink: { type: postgres, url: 'postgres://u@127.0.0.1/db', table: t }\n";
    std::fs::write(dir.path().join("postgres.yaml"), yaml).unwrap();
    let expected = "postgres.yaml:4:5: at streams[0].sink: sink type `postgres` is not built into this binary (cargo feature `sink-postgres`)";
    for command in ["validate", "run"] {
        let (code, _, stderr) = spillway(&[command, "-c", "postgres.yaml"], dir.path());
        assert_ne!(code, 0, "{command}");
        assert!(stderr.contains(expected), "{command}: {stderr}");
    }
}

/// Values for the `${VAR}` references of the shipped examples.
const EXAMPLE_ENV: &[(&str, &str)] =
    &[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s"), ("SPILLWAY_COORDINATOR_PASSWORD", "p")];

#[test]
fn validate_requires_dynamic_partitioning_for_partition_keys_in_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "streams:\n  - name: a\n    sink:\n      type: s3\n      url: file://out\n      prefix: 'svc=!{partitionKeyFromQuery:service}/'\n      error_output_prefix: 'errors/!{firehose:error-output-type}/'\n";
    std::fs::write(dir.path().join("keys.yaml"), yaml).unwrap();
    let (code, _, stderr) = spillway(&["validate", "-c", "keys.yaml"], dir.path());
    assert_ne!(code, 0);
    assert!(stderr.contains("streams[0].sink.prefix"), "{stderr}");
    assert!(stderr.contains("partitionKeyFromQuery:service"), "{stderr}");
}

#[test]
fn validate_lists_every_type_error_at_its_key_and_what_run_would_refuse_here() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "streams:\n  - name: a\n    sink:\n      type: s3\n      url: file://out\n      prefx: a\n  - name: b\n    buffering: { size_mib: x }\n    sink: { type: s3, url: file://out }\n";
    std::fs::write(dir.path().join("types.yaml"), yaml).unwrap();
    let (code, _, stderr) = spillway(&["validate", "-c", "types.yaml"], dir.path());
    assert_ne!(code, 0);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].starts_with("types.yaml:6:7: at streams[0].sink: unknown field `prefx`"), "{stderr}");
    assert!(lines[1].starts_with("types.yaml:8:18: at streams[1].buffering.size_mib: invalid type"), "{stderr}");

    std::fs::write(dir.path().join("blocked"), b"a file where a folder should be").unwrap();
    let yaml = "server:\n  tls: { cert: ./missing.pem, key: ./missing-key.pem }\ndata_dir: ./blocked/data\nstreams:\n  - name: a\n    sink: { type: s3, url: 'file://./blocked/out' }\n";
    std::fs::write(dir.path().join("machine.yaml"), yaml).unwrap();
    let (code, _, stderr) = spillway(&["validate", "-c", "machine.yaml"], dir.path());
    assert_ne!(code, 0);
    for expected in [
        "machine.yaml: 4 problem(s) on this machine:",
        "server.tls.cert: cannot read ./missing.pem",
        "server.tls.key: cannot read ./missing-key.pem",
        "data_dir: ./blocked is not a folder",
        "streams[0].sink.url: ./blocked is not a folder",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3, "validate made nothing");
}

#[test]
fn validate_warns_about_what_aws_would_refuse_but_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "streams:\n  - name: a\n    buffering: { size_mib: 8 }\n    processing:\n      dynamic_partitioning: { enabled: true, keys: { service: .service } }\n    sink:\n      type: s3\n      url: file://out\n      prefix: 'svc=!{partitionKeyFromQuery:service}/'\n      error_output_prefix: 'errors/!{firehose:error-output-type}/'\n";
    std::fs::write(dir.path().join("small.yaml"), yaml).unwrap();
    let (code, stdout, stderr) = spillway(&["validate", "-c", "small.yaml"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(
        stderr.starts_with("warning: streams[0].buffering.size_mib: 8 is below Firehose's minimum of 64"),
        "{stderr}"
    );
}

#[test]
fn validate_reports_malformed_yaml_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "streams:\n  - name: a\n    sink: { type: s3, url: [unclosed\n")
        .unwrap();
    let (code, _, stderr) = spillway(&["validate", "-c", "broken.yaml"], dir.path());
    assert_ne!(code, 0);
    assert!(
        stderr.starts_with(
            "broken.yaml:4:1: at streams[0].sink.url: did not find expected ',' or ']', while parsing a flow sequence"
        ),
        "line and column first: {stderr}"
    );

    std::fs::write(
        dir.path().join("typo.yaml"),
        "streams:\n  - name: a\n    buffering: { size_mb: 5 }\n    sink: { type: s3, url: file://out }\n",
    )
    .unwrap();
    let (code, _, stderr) = spillway(&["validate", "-c", "typo.yaml"], dir.path());
    assert_ne!(code, 0);
    assert!(
        stderr.contains("typo.yaml:3:")
            && stderr.contains("streams[0].buffering")
            && stderr.contains("unknown field `size_mb`"),
        "{stderr}"
    );
}

#[test]
fn validate_lists_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "streams:\n  - name: 'bad name!'\n    buffering: { size_mib: 500, interval_seconds: 901 }\n    retry: { duration_seconds: 100000 }\n    sink: { type: s3, url: 'ftp://x' }\n  - name: dup\n    sink: { type: s3, url: file://a }\n  - name: dup\n    sink: { type: s3, url: file://b }\n";
    std::fs::write(dir.path().join("bad.yaml"), yaml).unwrap();
    let (code, _, stderr) = spillway(&["validate", "-c", "bad.yaml"], dir.path());
    assert_ne!(code, 0);
    for expected in [
        "streams[0].name",
        "streams[0].buffering.size_mib: must be between 1 and 128",
        "streams[0].buffering.interval_seconds: must be between 0 and 900",
        "streams[0].retry.duration_seconds: must be between 0 and 86400",
        "streams[0].sink.url",
        "streams[2].name: duplicate stream name",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

#[test]
fn validate_names_unset_environment_variables_and_unknown_sink_types() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("env.yaml"),
        "streams:\n  - name: a\n    sink: { type: s3, url: 's3://${SPILLWAY_TEST_UNSET_BUCKET}' }\n",
    )
    .unwrap();
    let (code, _, stderr) = spillway(&["validate", "-c", "env.yaml"], dir.path());
    assert_ne!(code, 0);
    assert!(stderr.contains("line 3 column 34: ${SPILLWAY_TEST_UNSET_BUCKET}"), "{stderr}");

    std::fs::write(dir.path().join("kafka.yaml"), "streams:\n  - name: a\n    sink: { type: kafka }\n").unwrap();
    let (code, _, stderr) = spillway(&["validate", "-c", "kafka.yaml"], dir.path());
    assert_ne!(code, 0);
    assert!(stderr.contains("unknown variant `kafka`, expected one of `s3`, `postgres`, `opensearch`"), "{stderr}");
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = spillway(&["--version"], dir.path());
    assert_eq!(code, 0);
    // `spillway 0.1.0 (commit 4bac0f5, built 2026-01-31)`: the commit this binary was built from
    // (`unknown` outside a git checkout) and the build's UTC date.
    let version = stdout.trim().strip_prefix(&format!("spillway {} (commit ", env!("CARGO_PKG_VERSION")));
    let (commit, date) = version
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|rest| rest.split_once(", built "))
        .unwrap_or_else(|| panic!("unexpected --version: {stdout}"));
    let checked_out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string());
    assert_eq!(commit, checked_out.as_deref().unwrap_or("unknown"), "{stdout}");
    let date_shape = date.len() == 10
        && date.char_indices().all(|(at, c)| if at == 4 || at == 7 { c == '-' } else { c.is_ascii_digit() });
    assert!(date_shape, "a YYYY-MM-DD build date: {stdout}");
    let (code, stdout, _) = spillway(&["--help"], dir.path());
    assert_eq!(code, 0);
    for command in ["run", "validate", "put", "bench"] {
        assert!(stdout.contains(command));
    }
}

#[tokio::test]
async fn put_sends_every_line_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let yaml =
        local_yaml(5, 900, "").replace("    sink:\n", "    processing: { record_delimiter: newline }\n    sink:\n");
    let server = Spillway::start(dir.path(), &yaml);
    let lines: String = (0..1234).map(|index| format!("{{\"line\":{index}}}\n")).collect();
    std::fs::write(dir.path().join("lines.ndjson"), &lines).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["put", "--stream", "app-logs", "--endpoint", &server.endpoint, "lines.ndjson"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("sent 1234 records") && stdout.contains("in 3 PutRecordBatch calls"), "{stdout}");
    assert_eq!(server.terminate(), 0);
    let objects = local_objects(&dir.path().join("out"));
    assert_eq!(common::concat_in_sent_order(objects, lines.as_bytes()), lines.into_bytes());
}

#[tokio::test]
async fn listen_and_data_dir_flags_win_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // The file names a port and a folder; the flags name others.
    let yaml = local_yaml(5, 900, "").replace("data_dir: ./data", "data_dir: ./from-file");
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, yaml.replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:1")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let server = Spillway::start_with_args(dir.path(), &config, &["--listen", &listen, "--data-dir", "./from-flag"]);
    assert_eq!(server.endpoint, format!("http://{listen}"));
    server.wait_ready().await;
    let client = server.client().await;
    client
        .put_record()
        .delivery_stream_name("app-logs")
        .record(
            aws_sdk_firehose::types::Record::builder()
                .data(aws_sdk_firehose::primitives::Blob::new("hello"))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("put");
    let wal = dir.path().join("from-flag/streams/app-logs/wal");
    assert!(
        common::files_under(&wal).iter().any(|file| std::fs::metadata(file).unwrap().len() > 0),
        "wal in --data-dir"
    );
    assert!(!dir.path().join("from-file").exists(), "the file's data_dir is not used");
    assert_eq!(server.terminate(), 0);
}

#[test]
fn log_level_flag_sets_the_level_and_wins_over_spillway_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, local_yaml(5, 900, "")).unwrap();
    let debug = Spillway::start_with_options(dir.path(), &config, &["--log-level", "debug"], &[], &["SPILLWAY_LOG"]);
    let log = wait_for_line(&debug, "status page at");
    assert!(log.contains(" DEBUG spillway: configuration loaded"), "debug lines with --log-level debug:\n{log}");
    // The start-up summary: each stream with its source and destination, and the status page.
    assert!(
        log.contains(
            "stream ready stream=app-logs source=direct_put origin=\"Firehose API and NDJSON\" sink=s3 destination=\"file://./out\""
        ),
        "{log}"
    );
    assert!(log.contains(&format!("status page at {}/", debug.endpoint)), "{log}");
    assert_eq!(debug.terminate(), 0);

    // The harness sets SPILLWAY_LOG=info,spillway=debug; the flag wins over it.
    // The start-up lines (streams, status page) are written before the listening line.
    let warn = Spillway::start_with_args(dir.path(), &config, &["--log-level", "warn"]);
    let log = warn.log_text();
    assert_eq!(warn.terminate(), 0);
    assert!(
        !log.contains(" INFO ") && !log.contains(" DEBUG "),
        "only warnings and errors with --log-level warn:\n{log}"
    );
}

/// The log once it holds `line` (bounded wait).
fn wait_for_line(server: &Spillway, line: &str) -> String {
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let log = server.log_text();
        if log.contains(line) {
            return log;
        }
        assert!(std::time::Instant::now() < deadline, "no {line:?} in the log:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
