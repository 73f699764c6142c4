//! Firehose's other compression formats end to end (YAML in, objects out, local sink): `zip`,
//! `snappy` (framing format) and `hadoop_snappy` objects are read back by the readers users have
//! — Python's `zipfile`, and python-snappy's stream and Hadoop decompressors from the test venv —
//! and hold exactly the records sent, in order; `DescribeDeliveryStream` names each format as the
//! API model's enum does, which the SDK parses.

mod common;

use std::path::Path;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::{CompressionFormat, Record};
use common::{Spillway, files_under};

/// Decode every object under `dir` with the Python reader for `format`; returns the objects'
/// contents in key order (keys sort by time, and one run's records fit in few objects).
fn decode_with_python(dir: &Path, format: &str) -> Vec<Vec<u8>> {
    let script = r#"
import io, sys, zipfile, snappy
fmt = sys.argv[1]
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert archive.testzip() is None, "bad CRC"
            names = archive.namelist()
            assert names == ["records"], names
            out = archive.read("records")
    elif fmt == "snappy":
        out = snappy.StreamDecompressor().decompress(data)
    else:
        out = snappy.HadoopStreamDecompressor().decompress(data)
    open(path + ".decoded", "wb").write(out)
"#;
    let mut objects: Vec<_> =
        files_under(dir).into_iter().filter(|path| !path.to_string_lossy().contains('#')).collect();
    objects.sort();
    let output = std::process::Command::new(common::s3::env("SPILLWAY_TEST_PYTHON"))
        .arg("-c")
        .arg(script)
        .arg(format)
        .args(&objects)
        .output()
        .unwrap();
    assert!(output.status.success(), "{format}: {}", String::from_utf8_lossy(&output.stderr));
    objects.iter().map(|path| std::fs::read(format!("{}.decoded", path.display())).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_snappy_and_hadoop_snappy_objects_read_back_with_their_own_readers() {
    let expected_format = [
        ("zip", CompressionFormat::Zip),
        ("snappy", CompressionFormat::Snappy),
        ("hadoop_snappy", CompressionFormat::HadoopSnappy),
    ];
    for (compression, sdk_format) in expected_format {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
             data_dir: ./data\n\
             streams:\n\
             \x20 - name: logs\n\
             \x20   buffering: {{ size_mib: 8, interval_seconds: 60 }}\n\
             \x20   sink: {{ type: s3, url: file://./out, compression: {compression} }}\n"
        );
        let spillway = Spillway::start(dir.path(), &yaml);
        let client = spillway.client().await;
        // Several MiB in several calls: an object spans many compressed chunks.
        let mut sent = Vec::new();
        for call in 0..12 {
            let records: Vec<Record> = (0..500)
                .map(|n| {
                    let line = format!("{{\"call\":{call},\"n\":{n},\"pad\":\"{}\"}}\n", "abc".repeat(n % 300));
                    sent.extend_from_slice(line.as_bytes());
                    Record::builder().data(Blob::new(line)).build().unwrap()
                })
                .collect();
            let out = client.put_record_batch().delivery_stream_name("logs").set_records(Some(records)).send().await;
            assert_eq!(out.unwrap().failed_put_count(), 0);
        }
        let described = client.describe_delivery_stream().delivery_stream_name("logs").send().await.unwrap();
        let destination = &described.delivery_stream_description().unwrap().destinations()[0];
        let s3 = destination.extended_s3_destination_description().unwrap();
        assert_eq!(s3.compression_format(), &sdk_format, "{compression}");
        assert_eq!(spillway.terminate(), 0, "a stop flushes the open batch");

        let out = dir.path().join("out");
        let names: Vec<String> = files_under(&out).iter().map(|path| path.to_string_lossy().into_owned()).collect();
        let extension = if compression == "zip" { ".zip" } else { ".snappy" };
        assert!(!names.is_empty() && names.iter().all(|name| name.ends_with(extension)), "{compression}: {names:?}");
        let objects = decode_with_python(&out, compression);
        let delivered: Vec<u8> = common::concat_in_sent_order(
            objects.into_iter().enumerate().map(|(index, body)| (index.to_string(), body)).collect(),
            &sent,
        );
        assert_eq!(delivered.len(), sent.len(), "{compression}");
        assert!(delivered == sent, "{compression}: the decoded objects are the records sent, in order");
    }
}
