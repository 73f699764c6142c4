//! The sink conformance suite (`spillway_sink_api::testkit`) against a real SQL catalog (a fresh
//! database on the PostgreSQL of `scripts/services.sh`) and a `file://` warehouse, and against a
//! REST catalog (Apache Iceberg's REST server of `tests/services/iceberg-rest`, warehouse in
//! MinIO), the table created and read back with iceberg-rust itself; and a re-sent batch: the
//! same misfits reported, nothing appended twice.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use iceberg::io::LocalFsStorageFactory;
use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::{SqlCatalog, SqlCatalogBuilder};
use spillway_sink_api::testkit::{ReadBack, check_conformance, encode_batch};
use spillway_sink_api::{Batch, ErrorClass, PartitionKeys, Record, Sink};
use spillway_sink_iceberg::IcebergSinkConfig;
use spillway_sink_iceberg::catalog::rest_client;
use spillway_sink_iceberg::encode::LengthPrefixedEncoderFactory;
use spillway_sink_iceberg::sink::SUMMARY_BATCH_ID;
use spillway_sink_iceberg::storage::BucketStorageFactory;
use spillway_sink_s3::S3Connection;
use uuid::Uuid;

fn pg_url() -> String {
    std::env::var("SPILLWAY_TEST_PG_URL")
        .expect("SPILLWAY_TEST_PG_URL is not set: run scripts/test.sh (it starts the services)")
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/test.sh (it starts the services)"))
}

/// A fresh database on the services' PostgreSQL; its url.
async fn fresh_database(name: &str) -> String {
    let database = format!("iceberg_{name}_{}", &Uuid::new_v4().simple().to_string()[..10]);
    let (admin, connection) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    admin.batch_execute(&format!("CREATE DATABASE {database}")).await.expect("create database");
    format!("{}/{database}", pg_url().rsplit_once('/').expect("a database url").0)
}

/// The table `db.<name>` (sequence long, message string) in `catalog`.
async fn create_table(catalog: &dyn Catalog, name: &str) {
    let namespace = NamespaceIdent::new("db".to_string());
    catalog.create_namespace(&namespace, HashMap::new()).await.expect("namespace");
    let schema = Schema::builder()
        .with_fields(vec![
            NestedField::optional(1, "sequence", Type::Primitive(PrimitiveType::Long)).into(),
            NestedField::optional(2, "message", Type::Primitive(PrimitiveType::String)).into(),
        ])
        .build()
        .expect("schema");
    let creation = TableCreation::builder().name(name.to_string()).schema(schema).build();
    catalog.create_table(&namespace, creation).await.expect("create table");
}

/// A fresh catalog database, a warehouse folder, and the table `db.<name>` (sequence long,
/// message string) in them; the sink's configuration for it.
async fn setup(name: &str, errors: &std::path::Path, warehouse: &std::path::Path) -> (SqlCatalog, IcebergSinkConfig) {
    let uri = fresh_database(name).await;
    let warehouse = format!("file://{}", warehouse.display());
    let catalog = SqlCatalogBuilder::default()
        .with_storage_factory(Arc::new(LocalFsStorageFactory))
        .load(
            "default",
            HashMap::from([("uri".to_string(), uri.clone()), ("warehouse".to_string(), warehouse.clone())]),
        )
        .await
        .expect("catalog");
    create_table(&catalog, name).await;
    let config = serde_json::from_value(serde_json::json!({
        "catalog": { "type": "sql", "uri": uri, "warehouse": warehouse },
        "table": format!("db.{name}"),
        "backup": { "sink": { "url": format!("file://{}", errors.display()) } },
    }))
    .expect("sink block");
    (catalog, config)
}

/// Apache Iceberg's REST catalog server (`tests/services/iceberg-rest`) on a free 127.0.0.1
/// port, its catalog in a fresh database, tables under `warehouse` in MinIO; killed on drop.
struct RestServer {
    child: Child,
    url: String,
    _home: tempfile::TempDir,
}

impl RestServer {
    fn start(pg_uri: &str, warehouse: &str) -> RestServer {
        let home = tempfile::tempdir().unwrap();
        let (user, address) = pg_uri.trim_start_matches("postgres://").split_once('@').expect("user@host");
        let stdout = home.path().join("stdout.log");
        let stderr = home.path().join("server.log");
        let mut child = Command::new("java")
            .args(["-Xmx384m", "-XX:TieredStopAtLevel=1", "-cp", &env("SPILLWAY_TEST_ICEBERG_REST_CLASSPATH")])
            .arg("dev.spillway.testsvc.IcebergRestLauncher")
            .arg(format!("uri=jdbc:postgresql://{address}"))
            .arg(format!("jdbc.user={user}"))
            .arg(format!("warehouse={warehouse}"))
            .arg("io-impl=org.apache.iceberg.aws.s3.S3FileIO")
            .arg(format!("s3.endpoint={}", env("SPILLWAY_TEST_S3_ENDPOINT")))
            .arg("s3.path-style-access=true")
            .arg(format!("s3.access-key-id={}", env("SPILLWAY_TEST_S3_ACCESS_KEY")))
            .arg(format!("s3.secret-access-key={}", env("SPILLWAY_TEST_S3_SECRET_KEY")))
            .arg(format!("client.region={}", env("SPILLWAY_TEST_S3_REGION")))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start the iceberg rest server");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let text = std::fs::read_to_string(&stdout).unwrap_or_default();
            if let Some(address) = text.lines().find_map(|line| line.strip_prefix("listening on ")) {
                return RestServer { child, url: format!("http://{address}"), _home: home };
            }
            let exited = child.try_wait().ok().flatten();
            let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
            assert!(exited.is_none() && Instant::now() < deadline, "rest server not serving:\n{}", log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The services' MinIO as the sink's `s3:` options name it.
fn minio() -> serde_json::Value {
    serde_json::json!({
        "endpoint": env("SPILLWAY_TEST_S3_ENDPOINT"),
        "region": env("SPILLWAY_TEST_S3_REGION"),
        "access_key_id": env("SPILLWAY_TEST_S3_ACCESS_KEY"),
        "secret_access_key": env("SPILLWAY_TEST_S3_SECRET_KEY"),
    })
}

struct TableReadBack {
    catalog: Arc<dyn Catalog>,
    table: TableIdent,
    errors: std::path::PathBuf,
}

#[async_trait]
impl ReadBack for TableReadBack {
    /// The table's rows as the sample records were sent, once per snapshot carrying the batch id.
    async fn read_back(&self, batch: &Batch) -> Vec<Vec<u8>> {
        let table = self.catalog.load_table(&self.table).await.expect("load table");
        let id = batch.id.to_string();
        let commits = table
            .metadata()
            .snapshots()
            .filter(|snapshot| snapshot.summary().additional_properties.get(SUMMARY_BATCH_ID) == Some(&id))
            .count();
        if commits == 0 {
            return Vec::new();
        }
        let batches: Vec<_> =
            table.scan().select_all().build().unwrap().to_arrow().await.unwrap().try_collect().await.unwrap();
        let mut rows = Vec::new();
        for rows_batch in &batches {
            let sequences =
                rows_batch.column(0).as_any().downcast_ref::<arrow_array_58::Int64Array>().expect("sequence");
            let messages =
                rows_batch.column(1).as_any().downcast_ref::<arrow_array_58::StringArray>().expect("message");
            for row in 0..rows_batch.num_rows() {
                rows.push((sequences.value(row), messages.value(row).to_string()));
            }
        }
        rows.sort();
        let body: Vec<u8> = rows
            .iter()
            .flat_map(|(sequence, message)| {
                format!("{{\"sequence\":{sequence},\"message\":\"{message}\"}}\n").into_bytes()
            })
            .collect();
        vec![body; commits]
    }

    async fn read_error_output(&self, batch: &Batch, error_output_type: &str) -> Vec<Vec<u8>> {
        let mut found = Vec::new();
        let mut pending = vec![self.errors.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                let name = path.to_string_lossy().to_string();
                if path.is_dir() {
                    pending.push(path);
                } else if name.contains(error_output_type) && name.contains(&batch.id.to_string()) {
                    found.push(std::fs::read(&path).unwrap());
                }
            }
        }
        found
    }
}

/// The sink API's conformance suite on table `db.conformance` of `catalog`, read back from it.
async fn run_conformance(config: &IcebergSinkConfig, catalog: impl Catalog + 'static, errors: &std::path::Path) {
    let sink = config.build("conformance", 1).expect("build");
    let error_output = sink.error_output();
    let reader = TableReadBack {
        catalog: Arc::new(catalog),
        table: TableIdent::from_strs(["db", "conformance"]).unwrap(),
        errors: errors.to_path_buf(),
    };
    check_conformance(
        &sink,
        error_output.as_ref(),
        &LengthPrefixedEncoderFactory,
        &reader,
        "conformance",
        PartitionKeys::new(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn iceberg_sink_passes_conformance() {
    let (errors, warehouse) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (catalog, config) = setup("conformance", errors.path(), warehouse.path()).await;
    run_conformance(&config, catalog, errors.path()).await;
}

/// The same suite through a REST catalog: the warehouse a prefix of the services' bucket, read
/// back through the REST catalog with the sink's own S3 storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn iceberg_sink_passes_conformance_through_a_rest_catalog() {
    let errors = tempfile::tempdir().unwrap();
    let pg_uri = fresh_database("rest_conformance").await;
    let warehouse = format!("s3://{}/conformance-rest-{}", env("SPILLWAY_TEST_S3_BUCKET"), Uuid::new_v4().simple());
    let server_warehouse = warehouse.clone();
    let server = tokio::task::spawn_blocking(move || RestServer::start(&pg_uri, &server_warehouse)).await.unwrap();
    let config: IcebergSinkConfig = serde_json::from_value(serde_json::json!({
        "catalog": { "type": "rest", "uri": server.url, "warehouse": warehouse },
        "table": "db.conformance",
        "s3": minio(),
        "backup": { "sink": { "url": format!("file://{}", errors.path().display()) } },
    }))
    .expect("sink block");
    let connection: S3Connection = serde_json::from_value(minio()).expect("s3 options");
    let catalog = RestCatalogBuilder::default()
        .with_client(rest_client(Duration::from_secs(60)).expect("http client"))
        .with_storage_factory(Arc::new(BucketStorageFactory::any_bucket(connection)))
        .load("rest", HashMap::from([("uri".to_string(), server.url.clone())]))
        .await
        .expect("rest catalog");
    create_table(&catalog, "conformance").await;
    run_conformance(&config, catalog, errors.path()).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_resent_batch_reports_the_same_misfits_without_appending_again() {
    let (errors, warehouse) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (catalog, config) = setup("resend", errors.path(), warehouse.path()).await;
    let sink = config.build("resend", 1).expect("build");
    let data = [r#"{"sequence":1}"#, r#"{"sequence":"two"}"#, "not json", r#"{"sequence":4,"message":"ok"}"#];
    let records: Vec<Record> = data
        .iter()
        .enumerate()
        .map(|(index, data)| Record {
            data: Bytes::from(data.to_string()),
            arrival_ms: 1_765_000_000_000,
            sequence: index as u64,
            output: 0,
        })
        .collect();
    let batch = encode_batch(&LengthPrefixedEncoderFactory, "resend", Uuid::new_v4(), PartitionKeys::new(), &records);
    let outcome = |error: spillway_sink_api::SinkError| {
        assert_eq!(error.class, ErrorClass::Partial);
        error
            .failures
            .iter()
            .map(|failure| (failure.index, failure.retriable, failure.code.clone()))
            .collect::<Vec<_>>()
    };
    let first = outcome(sink.write(&batch).await.expect_err("misfits are reported"));
    assert_eq!(
        first,
        vec![
            (1, false, "DataFormatConversion.MalformedData".to_string()),
            (2, false, "DataFormatConversion.ParseError".to_string())
        ]
    );
    let again = outcome(sink.write(&batch).await.expect_err("the same misfits again"));
    assert_eq!(again, first);
    let table = catalog.load_table(&TableIdent::from_strs(["db", "resend"]).unwrap()).await.unwrap();
    assert_eq!(table.metadata().snapshots().count(), 1, "one append");
    let rows: usize = table
        .scan()
        .select_all()
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .iter()
        .map(|rows| rows.num_rows())
        .sum();
    assert_eq!(rows, 2);
    let counts = sink.request_counts().expect("counts");
    assert!(
        counts.by_outcome.contains(&("commit", 1)) && counts.by_outcome.contains(&("already_committed", 1)),
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_batch_past_the_target_file_size_rolls_into_several_files() {
    let (errors, warehouse) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (catalog, mut config) = setup("rolling", errors.path(), warehouse.path()).await;
    config.target_file_size_mib = Some(1);
    let sink = config.build("rolling", 1).expect("build");
    // ~6 MiB of messages that barely compress.
    let records: Vec<Record> = (0..60_000u64)
        .map(|sequence| {
            let noise: String =
                (0..6).map(|n| format!("{:016x}", (sequence * 7 + n).wrapping_mul(0x9E37_79B9_7F4A_7C15))).collect();
            Record {
                data: Bytes::from(format!(r#"{{"sequence":{sequence},"message":"{noise}"}}"#)),
                arrival_ms: 1_765_000_000_000,
                sequence,
                output: 0,
            }
        })
        .collect();
    let batch = encode_batch(&LengthPrefixedEncoderFactory, "rolling", Uuid::new_v4(), PartitionKeys::new(), &records);
    sink.write(&batch).await.expect("write");
    let table = catalog.load_table(&TableIdent::from_strs(["db", "rolling"]).unwrap()).await.unwrap();
    let snapshot = table.metadata().current_snapshot().expect("a snapshot");
    let summary = &snapshot.summary().additional_properties;
    let files: u64 = summary.get("added-data-files").and_then(|files| files.parse().ok()).expect("added-data-files");
    let rows: u64 = summary.get("added-records").and_then(|rows| rows.parse().ok()).expect("added-records");
    assert_eq!(rows, 60_000);
    assert!((3..=12).contains(&files), "{files} files of about 1 MiB for ~5 MiB of Parquet");
}
