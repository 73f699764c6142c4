//! HTTPS front (`server.tls`) end to end: a CA and a server certificate for `127.0.0.1` /
//! `localhost` made at test time (rcgen), the real binary serving with them, and the real
//! `aws-sdk-firehose` client trusting that CA (aws-smithy-http-client's rustls client with a
//! custom trust store). Plain HTTP to the TLS port and a bad certificate path must fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aws_sdk_firehose::Client;
use aws_sdk_firehose::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore};
use common::{Spillway, local_objects};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// PEM files written into `dir`: the CA certificate, and the server's certificate and key.
struct TestPki {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path) -> TestPki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "spillway test ca");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca certificate");

    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("server params");
    server_params.distinguished_name.push(DnType::CommonName, "spillway test server");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().expect("server key");
    let server_cert = server_params.signed_by(&server_key, &ca).expect("server certificate");

    let cert = dir.join("server.pem");
    let key = dir.join("server-key.pem");
    std::fs::write(&cert, server_cert.pem()).expect("write certificate");
    std::fs::write(&key, server_key.serialize_pem()).expect("write key");
    TestPki { ca_pem: ca.pem(), cert, key }
}

fn tls_yaml(cert: &Path, key: &Path) -> String {
    tls_yaml_with(cert, key, "")
}

fn tls_yaml_with(cert: &Path, key: &Path, server_extra: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n{server_extra}  tls:\n    cert: {}\n    key: {}\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   buffering: {{ size_mib: 128, interval_seconds: 900 }}\n\
         \x20   sink:\n\
         \x20     type: s3\n\
         \x20     url: file://./out\n\
         \x20     compression: gzip\n",
        cert.display(),
        key.display()
    )
}

/// The SDK client, over HTTPS, trusting only `ca_pem`.
async fn client_trusting(endpoint: &str, ca_pem: &str) -> Client {
    let trust_store = TrustStore::empty().with_native_roots(false).with_pem_certificate(ca_pem.as_bytes());
    let tls_context = TlsContext::builder().with_trust_store(trust_store).build().expect("tls context");
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(tls_context)
        .build_https();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .http_client(http_client)
        .load()
        .await;
    Client::new(&config)
}

fn record(index: usize) -> Record {
    let line = format!("{{\"index\":{index},\"via\":\"tls\"}}\n");
    Record::builder().data(Blob::new(line)).build().expect("record")
}

#[tokio::test]
async fn sdk_puts_over_https_and_records_land_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let spillway = Spillway::start(dir.path(), &tls_yaml(&pki.cert, &pki.key));
    assert!(spillway.endpoint.starts_with("https://127.0.0.1:"), "startup line: {}", spillway.endpoint);

    // `localhost` is in the certificate too; the SDK talks to it by that name.
    let endpoint = spillway.endpoint.replace("127.0.0.1", "localhost");
    let client = client_trusting(&endpoint, &pki.ca_pem).await;
    let output = client
        .put_record_batch()
        .delivery_stream_name("app-logs")
        .set_records(Some((0..100).map(record).collect()))
        .send()
        .await
        .expect("batch accepted over https");
    assert_eq!(output.failed_put_count(), 0);
    assert_eq!(output.request_responses().len(), 100);

    // A client that does not trust the test CA is refused by its own TLS check.
    let untrusting = common::firehose_client(&spillway.endpoint).await;
    let refused = untrusting.put_record_batch().delivery_stream_name("app-logs").records(record(100)).send().await;
    assert!(refused.is_err(), "a client without the CA must not connect");

    // Plain HTTP to the TLS port is not served.
    let plain = spillway.endpoint.replace("https://", "http://");
    let plain_answer = reqwest::Client::new()
        .post(format!("{plain}/"))
        .header("X-Amz-Target", "Firehose_20150804.ListDeliveryStreams")
        .header("Content-Type", "application/x-amz-json-1.1")
        .body("{}")
        .send()
        .await;
    assert!(plain_answer.is_err(), "plain http must fail: {plain_answer:?}");

    // `spillway health` reaches it over HTTPS when the CA is in SSL_CERT_FILE.
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).expect("write ca");
    let probe = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["health", "--endpoint", &endpoint])
        .env("SSL_CERT_FILE", &ca_file)
        .output()
        .expect("run spillway health");
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    // So does `spillway put` (the SDK's default client, system trust store).
    let lines = dir.path().join("lines.txt");
    std::fs::write(&lines, "{\"index\":100,\"via\":\"tls\"}\n{\"index\":101,\"via\":\"tls\"}\n").expect("write lines");
    let put = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["put", "--stream", "app-logs", "--keep-newlines", "--endpoint", &endpoint])
        .arg(&lines)
        .env("SSL_CERT_FILE", &ca_file)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .output()
        .expect("run spillway put");
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));

    // SIGTERM flushes the buffer; the 102 records are in the sink folder, each once.
    // A client that connects and never starts its handshake does not hold up the shutdown.
    let address = spillway.endpoint.trim_start_matches("https://").to_string();
    let _stalled = std::net::TcpStream::connect(&address).expect("connect");
    let out = spillway.dir.join("out");
    let stopping = std::time::Instant::now();
    assert_eq!(spillway.terminate(), 0);
    assert!(stopping.elapsed() < std::time::Duration::from_secs(10), "shutdown took {:?}", stopping.elapsed());
    let delivered: Vec<u8> = local_objects(&out).into_iter().flat_map(|(_, body)| body).collect();
    let expected: Vec<u8> =
        (0..102).flat_map(|index| format!("{{\"index\":{index},\"via\":\"tls\"}}\n").into_bytes()).collect();
    assert_eq!(String::from_utf8_lossy(&delivered), String::from_utf8_lossy(&expected));
}

/// Start the binary expecting it to fail; its stderr.
fn failed_start(dir: &Path, yaml: &str) -> String {
    let config = dir.join("spillway.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run spillway");
    assert!(!output.status.success(), "spillway must not start: {}", String::from_utf8_lossy(&output.stdout));
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening on"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[test]
fn a_missing_or_broken_certificate_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());

    let missing = dir.path().join("no-such-cert.pem");
    let stderr = failed_start(dir.path(), &tls_yaml(&missing, &pki.key));
    assert!(stderr.contains("cannot read certificate file"), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");

    // A key file given as the certificate: readable, but holds no certificate.
    let stderr = failed_start(dir.path(), &tls_yaml(&pki.key, &pki.key));
    assert!(stderr.contains("holds no certificate"), "{stderr}");
    assert!(stderr.contains(&pki.key.display().to_string()), "{stderr}");

    // The certificate given as the key.
    let stderr = failed_start(dir.path(), &tls_yaml(&pki.cert, &pki.cert));
    assert!(stderr.contains("holds no private key"), "{stderr}");
    assert!(stderr.contains(&pki.cert.display().to_string()), "{stderr}");
}

/// The connection timers and the cap hold for HTTPS too: a client that never starts its handshake
/// is closed after the header timeout, an idle keep-alive TLS connection after the idle timeout,
/// and TLS connections count toward `server.max_connections`.
#[tokio::test]
async fn https_connections_have_the_same_timers_and_cap() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let extra = "  header_read_timeout_seconds: 1\n  idle_timeout_seconds: 3\n  max_connections: 2\n";
    let spillway = Spillway::start(dir.path(), &tls_yaml_with(&pki.cert, &pki.key, extra));
    let address = spillway.endpoint.trim_start_matches("https://").to_string();

    async fn closed_within(socket: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, socket.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    // No handshake at all.
    let mut stalled = tokio::net::TcpStream::connect(&address).await.expect("connect");
    assert!(closed_within(&mut stalled, Duration::from_secs(15)).await, "a stalled handshake is still open");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).expect("ca pem")).expect("ca added");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(&address).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("server name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        tls.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n").await.expect("request");
        let mut answer = vec![0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut answer))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        (tls, String::from_utf8_lossy(&answer[..read]).into_owned())
    };
    let (mut first, answer) = connect().await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_second, answer) = connect().await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The cap (2) is reached: a third TLS connection gets the over-the-cap answer for a put.
    let (_third, answer) = {
        let tcp = tokio::net::TcpStream::connect(&address).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("server name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        let request = "POST /streams/app-logs/records HTTP/1.1\r\nhost: localhost\r\ncontent-length: 3\r\n\r\n{}\n";
        tls.write_all(request.as_bytes()).await.expect("request");
        let mut answer = vec![0u8; 2048];
        let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut answer))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        (tls, String::from_utf8_lossy(&answer[..read]).into_owned())
    };
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("ServiceUnavailableException"), "{answer}");

    // Idle: open past the header timeout (1 s), closed after the idle one (3 s).
    let idle_since = Instant::now();
    assert!(!closed_within(&mut first, Duration::from_millis(1500)).await, "closed before the idle timeout");
    assert!(closed_within(&mut first, Duration::from_secs(15)).await, "an idle TLS connection is still open");
    assert!(idle_since.elapsed() >= Duration::from_secs(2), "closed after {:?}", idle_since.elapsed());
}
