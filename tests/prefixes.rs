//! Firehose's prefix rules end to end (YAML or the API in, objects out of the real binary):
//! `custom_time_zone` for prefix and object name, Java pattern letters, a leading `/`, the
//! default error prefix `<prefix><error-output-type>/…`, the 512-character limit on the evaluated
//! prefix, and `validate` naming a bad zone or pattern with its YAML path.

mod common;

use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::{BufferingHints, ExtendedS3DestinationConfiguration, Record};
use chrono::{DateTime, FixedOffset, Utc};
use common::{Spillway, WAIT, eventually, local_objects};

fn stream_yaml(sink_lines: &str, processing: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
         data_dir: ./data\n\
         api_defaults:\n  s3:\n    url: file://./buckets/{{bucket}}\n\
         streams:\n\
         \x20 - name: app-logs\n\
         {processing}\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink:\n\
         \x20     type: s3\n\
         \x20     url: file://./out\n\
         {sink_lines}"
    )
}

async fn put(spillway: &Spillway, stream: &str, lines: &[String]) {
    let client = spillway.client().await;
    let records: Vec<Record> =
        lines.iter().map(|line| Record::builder().data(Blob::new(line.as_bytes())).build().expect("record")).collect();
    let output =
        client.put_record_batch().delivery_stream_name(stream).set_records(Some(records)).send().await.expect("put");
    assert_eq!(output.failed_put_count(), 0);
}

/// Tokyo has no summer time: UTC+9 all year.
fn in_tokyo(instant: DateTime<Utc>) -> DateTime<FixedOffset> {
    instant.with_timezone(&FixedOffset::east_opt(9 * 3600).expect("offset"))
}

#[tokio::test]
async fn custom_time_zone_renders_prefix_and_object_name_in_that_zone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = "\x20     custom_time_zone: Asia/Tokyo\n\
                \x20     prefix: \"logs/!{timestamp:yyyy-MM-dd'T'HH XXX}/!{timestamp:YYYY-'W'ww-e}/!{timestamp:VV z}/\"\n\
                \x20     error_output_prefix: 'errors/!{firehose:error-output-type}/'\n";
    let spillway = Spillway::start(dir.path(), &stream_yaml(sink, ""));
    let before = Utc::now();
    put(&spillway, "app-logs", &["{\"n\":1}".to_string()]).await;
    let after = Utc::now();
    let out = dir.path().join("out");
    let objects =
        eventually(WAIT, "the object", || Some(local_objects(&out)).filter(|objects| !objects.is_empty())).await;
    let (key, body) = &objects[0];
    assert_eq!(body, b"{\"n\":1}");

    // The arrival instant is between `before` and `after`; the key must match one of them in
    // Tokyo time (an hour boundary may fall between the two).
    let expected = |instant: DateTime<Utc>| {
        let tokyo = in_tokyo(instant);
        let week_sunday_first = {
            // Locale.US weeks: weeks start on Sunday, week 1 holds January 1st.
            let day = tokyo.date_naive();
            let jan1 = chrono::NaiveDate::from_ymd_opt(chrono::Datelike::year(&day) + 1, 1, 1).expect("date");
            let week_start = |date: chrono::NaiveDate| {
                date - chrono::Days::new(u64::from(chrono::Datelike::weekday(&date).num_days_from_sunday()))
            };
            let (year, first) = if day >= week_start(jan1) {
                (chrono::Datelike::year(&jan1), week_start(jan1))
            } else {
                let this = chrono::NaiveDate::from_ymd_opt(chrono::Datelike::year(&day), 1, 1).expect("date");
                (chrono::Datelike::year(&this), week_start(this))
            };
            let week = (day - first).num_days() / 7 + 1;
            let weekday = chrono::Datelike::weekday(&day).num_days_from_sunday() + 1;
            format!("{year}-W{week:02}-{weekday}")
        };
        format!(
            "logs/{} +09:00/{week_sunday_first}/Asia/Tokyo JST/app-logs-1-{}-",
            tokyo.format("%Y-%m-%dT%H"),
            tokyo.format("%Y-%m-%d-%H")
        )
    };
    assert!(
        key.starts_with(&expected(before)) || key.starts_with(&expected(after)),
        "{key} is not in Tokyo time (expected {} or {})",
        expected(before),
        expected(after)
    );
    drop(spillway);
}

#[tokio::test]
async fn an_api_stream_takes_custom_time_zone_and_refuses_unknown_zones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spillway = Spillway::start(dir.path(), &stream_yaml("", ""));
    let client = spillway.client().await;
    let destination = |zone: &str, prefix: &str, error_prefix: Option<&str>| {
        ExtendedS3DestinationConfiguration::builder()
            .role_arn("arn:aws:iam::000000000000:role/firehose")
            .bucket_arn("arn:aws:s3:::tz-bucket")
            .prefix(prefix)
            .set_error_output_prefix(error_prefix.map(str::to_string))
            .buffering_hints(BufferingHints::builder().size_in_mbs(1).interval_in_seconds(1).build())
            .custom_time_zone(zone)
            .build()
            .expect("destination")
    };

    let unknown = client
        .create_delivery_stream()
        .delivery_stream_name("bad-zone")
        .extended_s3_destination_configuration(destination("Mars/Olympus_Mons", "p/", None))
        .send()
        .await
        .expect_err("unknown zone");
    let unknown = unknown.into_service_error();
    assert_eq!(unknown.code(), Some("InvalidArgumentException"));
    assert!(unknown.message().unwrap_or_default().contains("Mars/Olympus_Mons"), "{unknown:?}");

    let no_error_prefix = client
        .create_delivery_stream()
        .delivery_stream_name("no-error-prefix")
        .extended_s3_destination_configuration(destination("UTC", "p/!{timestamp:yyyy}/", None))
        .send()
        .await
        .expect_err("expressions without an error prefix");
    let no_error_prefix = no_error_prefix.into_service_error();
    assert_eq!(no_error_prefix.code(), Some("InvalidArgumentException"));
    assert!(no_error_prefix.message().unwrap_or_default().contains("ErrorOutputPrefix"), "{no_error_prefix:?}");

    client
        .create_delivery_stream()
        .delivery_stream_name("tokyo")
        .extended_s3_destination_configuration(destination(
            "Asia/Tokyo",
            "p/!{timestamp:yyyy/MM/dd/HH}/",
            Some("e/!{firehose:error-output-type}/"),
        ))
        .send()
        .await
        .expect("created");
    let described = client.describe_delivery_stream().delivery_stream_name("tokyo").send().await.expect("described");
    let description = described.delivery_stream_description().expect("description");
    let extended = description.destinations()[0].extended_s3_destination_description().expect("extended s3");
    assert_eq!(extended.custom_time_zone(), Some("Asia/Tokyo"));

    let before = Utc::now();
    put(&spillway, "tokyo", &["{\"n\":1}".to_string()]).await;
    let after = Utc::now();
    let bucket = dir.path().join("buckets/tz-bucket");
    let objects =
        eventually(WAIT, "the object", || Some(local_objects(&bucket)).filter(|objects| !objects.is_empty())).await;
    let key = &objects[0].0;
    let expected = |instant: DateTime<Utc>| {
        let tokyo = in_tokyo(instant);
        format!("p/{}/tokyo-1-{}-", tokyo.format("%Y/%m/%d/%H"), tokyo.format("%Y-%m-%d-%H"))
    };
    assert!(key.starts_with(&expected(before)) || key.starts_with(&expected(after)), "{key}");
}

#[tokio::test]
async fn a_leading_slash_is_accepted_and_errors_default_under_the_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let processing = "\x20   processing:\n\
                      \x20     record_delimiter: newline\n\
                      \x20     transforms: [ { type: jq, expr: '.' } ]\n";
    let spillway = Spillway::start(dir.path(), &stream_yaml("\x20     prefix: /app/\n", processing));
    put(&spillway, "app-logs", &["{\"ok\":true}".to_string(), "not json".to_string()]).await;
    let out = dir.path().join("out");
    let objects =
        eventually(WAIT, "data and error objects", || Some(local_objects(&out)).filter(|objects| objects.len() == 2))
            .await;
    let now = Utc::now().format("%Y/%m/%d").to_string();
    let data: Vec<&(String, Vec<u8>)> = objects.iter().filter(|(key, _)| !key.contains("processing-failed")).collect();
    let errors: Vec<&(String, Vec<u8>)> = objects.iter().filter(|(key, _)| key.contains("processing-failed")).collect();
    assert_eq!(data.len(), 1, "{objects:?}");
    assert!(data[0].0.starts_with("app/2"), "the leading `/` is dropped: {}", data[0].0);
    assert_eq!(data[0].1, b"{\"ok\":true}\n");
    // Firehose developer guide: with a literal Prefix and no ErrorOutputPrefix, errors go under
    // `<prefix><error-output-type>/YYYY/MM/dd/HH/`.
    assert_eq!(errors.len(), 1, "{objects:?}");
    assert!(errors[0].0.starts_with("app/processing-failed/"), "{}", errors[0].0);
    assert!(errors[0].0.contains(&now[..4]), "{}", errors[0].0);
    let error: serde_json::Value = serde_json::from_slice(errors[0].1.trim_ascii()).expect("error json");
    assert_eq!(error["errorCode"], "Jq.NonJsonRecord");
}

#[tokio::test]
async fn records_whose_prefix_evaluates_past_512_characters_go_to_the_error_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let processing = "\x20   processing:\n\
                      \x20     record_delimiter: newline\n\
                      \x20     dynamic_partitioning: { keys: { a: .a, b: .b } }\n";
    let sink = "\x20     prefix: 'a=!{partitionKeyFromQuery:a}/b=!{partitionKeyFromQuery:b}/'\n\
                \x20     error_output_prefix: 'errors/!{firehose:error-output-type}/'\n";
    let spillway = Spillway::start(dir.path(), &stream_yaml(sink, processing));
    let long_a = "x".repeat(300);
    let long_b = "y".repeat(300);
    let short = r#"{"a":"1","b":"2"}"#.to_string();
    let long = format!(r#"{{"a":"{long_a}","b":"{long_b}"}}"#);
    put(&spillway, "app-logs", &[short.clone(), long.clone()]).await;
    let out = dir.path().join("out");
    let objects = eventually(WAIT, "the delivered and the set-aside record", || {
        Some(local_objects(&out)).filter(|objects| objects.len() == 2)
    })
    .await;
    let delivered: Vec<&(String, Vec<u8>)> = objects.iter().filter(|(key, _)| key.starts_with("a=1/b=2/")).collect();
    assert_eq!(delivered.len(), 1, "{objects:?}");
    assert_eq!(delivered[0].1, format!("{short}\n").into_bytes());
    let errors: Vec<&(String, Vec<u8>)> = objects.iter().filter(|(key, _)| key.starts_with("errors/")).collect();
    assert_eq!(errors.len(), 1, "{objects:?}");
    let error: serde_json::Value = serde_json::from_slice(errors[0].1.trim_ascii()).expect("error json");
    assert_eq!(error["errorCode"], "S3.InvalidKey");
    assert!(error["errorMessage"].as_str().unwrap_or_default().contains("512"), "{error}");
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, error["rawData"].as_str().expect("raw"))
            .expect("base64");
    assert!(raw == long.as_bytes(), "rawData is the record as it arrived");
    assert!(!objects.iter().any(|(key, _)| key.contains(&long_a)), "no object under the too-long prefix");
    assert_eq!(spillway.terminate(), 0);
}

#[test]
fn validate_names_a_bad_zone_and_a_bad_pattern_with_their_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = "\x20     custom_time_zone: Asia/Tokio\n\
                \x20     prefix: 'logs/!{timestamp:yyyy/MM/ddd}/'\n\
                \x20     error_output_prefix: 'errors/!{firehose:error-output-type}/!{timestamp:zzzz}/'\n";
    std::fs::write(dir.path().join("bad.yaml"), stream_yaml(sink, "")).expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["validate", "-c", "bad.yaml"])
        .current_dir(dir.path())
        .output()
        .expect("run validate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    for expected in [
        "streams[0].sink.custom_time_zone: unknown time zone `Asia/Tokio`",
        "streams[0].sink.prefix: bad timestamp pattern `yyyy/MM/ddd`",
        "streams[0].sink.error_output_prefix: bad timestamp pattern `zzzz`",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}
