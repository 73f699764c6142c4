//! PostgreSQL helpers for service-backed tests: a client for the shared server of
//! `scripts/services.sh`, unique table names, bounded waits for rows, and a throwaway server of
//! our own (same binaries, another loopback port) for tests that stop and restart PostgreSQL
//! without disturbing the shared one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::s3::env;

/// A client on `url`; its connection runs on a spawned task.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect to postgres");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The shared test server's url.
pub fn shared_url() -> String {
    env("SPILLWAY_TEST_PG_URL")
}

/// A table name no other test uses.
/// A new database on the shared server, named from `prefix`; its url.
pub async fn fresh_database(prefix: &str) -> String {
    let shared = shared_url();
    let admin = connect(&shared).await;
    let name = unique_table(prefix);
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
    let (server, _) = shared.rsplit_once('/').expect("a url ending in /database");
    format!("{server}/{name}")
}

pub fn unique_table(prefix: &str) -> String {
    format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// `SELECT count(*)` of a table.
pub async fn count(client: &Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.expect("count rows").get(0)
}

/// Wait (bounded) until `table` holds at least `rows` rows; returns the count.
pub async fn wait_rows(client: &Client, table: &str, rows: i64, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let found = count(client, table).await;
        if found >= rows {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?}: {table} holds {found} of {rows} rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Debian server binaries (not on PATH).
fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries.flatten().map(|entry| entry.path().join("bin")).filter(|bin| bin.join("initdb").exists()).collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/services.sh installs them)")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|out| out.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Run a server binary, as the `postgres` user when we are root (the server refuses root).
fn run_pg(program: &Path, args: &[&str]) -> std::process::Output {
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    command.args(args).output().expect("run a postgres binary")
}

/// A PostgreSQL server of the test's own, stopped on drop.
pub struct OwnPostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    /// Extra server options (`-c ssl=on …`).
    options: String,
}

impl OwnPostgres {
    /// initdb + start on a free loopback port (about 4 s).
    pub fn start() -> OwnPostgres {
        Self::start_with(None)
    }

    /// With TLS on (`ssl=on`), serving this PEM certificate and key.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> OwnPostgres {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> OwnPostgres {
        let dir = tempfile::Builder::new().prefix("spillway-own-pg").tempdir_in("/tmp").expect("temp dir");
        if is_root() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
            assert!(status.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = dir.path().join("data");
        let out = run_pg(
            &pg_bin().join("initdb"),
            &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
        );
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let mut options = String::new();
        if let Some((cert_pem, key_pem)) = tls {
            let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&cert, cert_pem).unwrap();
            std::fs::write(&key, key_pem).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            if is_root() {
                let status = Command::new("chown").args(["postgres:postgres"]).arg(&cert).arg(&key).status().unwrap();
                assert!(status.success());
            }
            options = format!(" -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", cert.display(), key.display());
        }
        let server = OwnPostgres { port, dir, options };
        server.start_again();
        server
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn start_again(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("postgres.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off{}",
            self.port,
            self.dir.path().display(),
            self.options
        );
        let out = run_pg(
            &pg_bin().join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60", "-o", &options, "start"],
        );
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `pg_ctl stop -m fast`: sessions get `57P01 terminating connection due to administrator
    /// command`, new connections are refused until [`OwnPostgres::start_again`].
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        let out = run_pg(&pg_bin().join("pg_ctl"), &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = run_pg(&pg_bin().join("pg_ctl"), &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"]);
    }
}
