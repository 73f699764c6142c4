//! The `cluster:` block: where the coordinator (PostgreSQL) is, who this node is, how long a lease
//! lasts and how others reach this node. Pure validation with `cluster.<field>` paths, and the
//! resolution of the defaults that need the machine (host name, canonical `data_dir`, the bound
//! listen address) at start.
//!
//! Must not: connect to anything (that is [`super::Coordinator`]).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::Deserialize;
use sha2::Digest;
use spillway_sink_api::Secret;

/// Lease lengths allowed: 2 s (tests) to 5 min.
pub const LEASE_SECONDS: std::ops::RangeInclusive<u64> = 2..=300;

/// `cluster:`: present = cluster mode.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `postgres://user:${PASSWORD}@host:5432/db[?sslmode=require]`: the database holding nodes
    /// and leases (spillway creates and migrates its tables there).
    pub coordinator: Secret,
    /// This node's name in the cluster; by default `<host name>-<8 hex of the canonical
    /// data_dir's hash>`, stable across restarts.
    #[serde(default)]
    pub node_id: Option<String>,
    /// How long a lease (and a node's heartbeat) lasts without renewal; renewals run every third.
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    /// `host:port` other nodes and operators use to reach this node; by default `server.listen`
    /// (which must then not be a wildcard address).
    #[serde(default)]
    pub advertise: Option<String>,
    /// PEM file of the CA that signed the coordinator's certificate (with `sslmode=require`);
    /// by default the system's trust store.
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_lease_seconds() -> u64 {
    10
}

/// The `cluster:` block with every default resolved for this machine.
#[derive(Debug, Clone)]
pub struct ResolvedCluster {
    pub coordinator: tokio_postgres::Config,
    pub ca_file: Option<String>,
    pub node_id: String,
    pub advertise: String,
    pub lease_seconds: u64,
}

impl ClusterConfig {
    /// Every problem, as `(field, message)`; the caller prefixes `cluster.`. `listen` is
    /// `server.listen`, the default advertised address.
    pub fn validate(&self, listen: SocketAddr) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Err(message) = parse_coordinator(&self.coordinator) {
            problems.push(("coordinator", message));
        }
        if let Some(node_id) = &self.node_id
            && !is_valid_node_id(node_id)
        {
            problems.push(("node_id", format!("{node_id:?} must be 1-128 characters of [a-zA-Z0-9_.-]")));
        }
        if !LEASE_SECONDS.contains(&self.lease_seconds) {
            problems.push((
                "lease_seconds",
                format!(
                    "must be between {} and {} (got {})",
                    LEASE_SECONDS.start(),
                    LEASE_SECONDS.end(),
                    self.lease_seconds
                ),
            ));
        }
        if let Err(message) = self.advertised(listen) {
            problems.push(("advertise", message));
        }
        if let Some(ca_file) = &self.ca_file
            && ca_file.is_empty()
        {
            problems.push(("ca_file", "must name a PEM file".into()));
        }
        problems
    }

    /// The advertised `host:port`: `advertise`, else `listen` unless it is a wildcard.
    pub fn advertised(&self, listen: SocketAddr) -> Result<String, String> {
        match &self.advertise {
            Some(advertise) => {
                let (host, port) = split_host_port(advertise)
                    .ok_or_else(|| format!("{advertise:?} must be host:port (e.g. node-1.internal:4573)"))?;
                if is_wildcard(host) {
                    return Err(format!(
                        "{advertise:?} is a wildcard address other nodes cannot reach; give this node's own host name or ip"
                    ));
                }
                if port == 0 {
                    return Err(format!("{advertise:?} needs the port this node listens on, not 0"));
                }
                Ok(advertise.clone())
            }
            None if listen.ip().is_unspecified() => Err(format!(
                "server.listen is {listen}, a wildcard address other nodes cannot reach; set cluster.advertise to this node's host:port"
            )),
            None => Ok(listen.to_string()),
        }
    }

    /// The defaults resolved: `data_dir` must exist (it is canonicalized for the node id),
    /// `listen` is the address actually bound.
    pub fn resolve(&self, data_dir: &Path, listen: SocketAddr) -> Result<ResolvedCluster, String> {
        let coordinator = parse_coordinator(&self.coordinator)?;
        let node_id = match &self.node_id {
            Some(node_id) => node_id.clone(),
            None => default_node_id(data_dir)?,
        };
        let advertise = self.advertised(listen).map_err(|message| format!("cluster.advertise: {message}"))?;
        Ok(ResolvedCluster {
            coordinator,
            ca_file: self.ca_file.clone(),
            node_id,
            advertise,
            lease_seconds: self.lease_seconds,
        })
    }

    /// The coordinator's connection settings alone (`spillway cluster status`).
    pub fn coordinator_config(&self) -> Result<tokio_postgres::Config, String> {
        parse_coordinator(&self.coordinator)
    }
}

/// A `postgres://` url (or key=value string) as tokio-postgres reads it; the message never
/// repeats the url (it holds the password).
fn parse_coordinator(url: &Secret) -> Result<tokio_postgres::Config, String> {
    let text = url.expose();
    if text.trim().is_empty() {
        return Err("must be a postgres:// url (is its ${VAR} set?)".into());
    }
    let mut config: tokio_postgres::Config =
        text.parse().map_err(|error| format!("is not a PostgreSQL connection url: {error}"))?;
    if config.get_hosts().is_empty() {
        return Err("names no host".into());
    }
    // A coordinator that does not answer must fail a start quickly, not hang it.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    config.application_name("spillway-cluster");
    Ok(config)
}

pub fn is_valid_node_id(node_id: &str) -> bool {
    (1..=128).contains(&node_id.len())
        && node_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `<host name>-<first 8 hex of sha256(canonical data_dir)>`: two data_dirs on one machine are
/// two nodes; a restart on the same folder is the same node.
fn default_node_id(data_dir: &Path) -> Result<String, String> {
    let canonical = data_dir
        .canonicalize()
        .map_err(|error| format!("cannot resolve data_dir {} for the node id: {error}", data_dir.display()))?;
    let host = nix::unistd::gethostname()
        .map_err(|error| format!("cannot read the host name for the node id (set cluster.node_id): {error}"))?;
    Ok(node_id_from(&host.to_string_lossy(), &canonical))
}

fn node_id_from(host: &str, canonical_data_dir: &Path) -> String {
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '-' })
        .take(100)
        .collect();
    let host = if host.is_empty() { "node".to_string() } else { host };
    let digest = sha2::Sha256::digest(canonical_data_dir.as_os_str().as_encoded_bytes());
    format!("{host}-{}", &hex::encode(digest)[..8])
}

fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    Some((host, port.parse().ok()?))
}

fn is_wildcard(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(yaml: &str) -> ClusterConfig {
        serde_yaml_ng::from_str(yaml).expect("a cluster block")
    }

    fn listen(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn defaults_and_a_valid_block() {
        let cluster = block("coordinator: postgres://spillway@db:5432/spillway\n");
        assert_eq!(cluster.lease_seconds, 10);
        assert!(cluster.validate(listen("10.0.0.5:4573")).is_empty());
        assert_eq!(cluster.advertised(listen("10.0.0.5:4573")).unwrap(), "10.0.0.5:4573");
    }

    #[test]
    fn every_problem_is_named_by_field() {
        let cluster = block(
            "coordinator: 'mysql://x'\nnode_id: 'a b'\nlease_seconds: 1\nadvertise: '0.0.0.0:4573'\nca_file: ''\n",
        );
        let fields: Vec<&str> =
            cluster.validate(listen("127.0.0.1:4573")).into_iter().map(|(field, _)| field).collect();
        assert_eq!(fields, ["coordinator", "node_id", "lease_seconds", "advertise", "ca_file"]);
    }

    #[test]
    fn a_wildcard_listen_needs_an_advertised_address() {
        let cluster = block("coordinator: postgres://db/spillway\n");
        let problems = cluster.validate(listen("0.0.0.0:4573"));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "advertise");
        assert!(problems[0].1.contains("wildcard"), "{}", problems[0].1);
        let cluster = block("coordinator: postgres://db/spillway\nadvertise: 'node-1.internal:4573'\n");
        assert!(cluster.validate(listen("0.0.0.0:4573")).is_empty());
        for bad in ["[::]:4573", "node-1", "node-1:0", ":4573"] {
            let cluster = block(&format!("coordinator: postgres://db/x\nadvertise: '{bad}'\n"));
            assert!(cluster.advertised(listen("127.0.0.1:1")).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_coordinator_url_never_appears_in_a_message() {
        let cluster = block("coordinator: 'postgres://u:hunter2@/db?sslmode=bogus'\n");
        let problems = cluster.validate(listen("127.0.0.1:1"));
        assert_eq!(problems[0].0, "coordinator");
        assert!(!problems[0].1.contains("hunter2"), "{}", problems[0].1);
        assert!(format!("{cluster:?}").contains("Secret(***)"));
    }

    #[test]
    fn the_default_node_id_is_stable_and_differs_per_data_dir() {
        let a = node_id_from("web 1", Path::new("/srv/spillway/a"));
        assert_eq!(a, node_id_from("web 1", Path::new("/srv/spillway/a")));
        assert_ne!(a, node_id_from("web 1", Path::new("/srv/spillway/b")));
        assert!(a.starts_with("web-1-") && a.len() == "web-1-".len() + 8, "{a}");
        assert!(is_valid_node_id(&a));
    }

    #[test]
    fn resolve_fills_every_default() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = block("coordinator: postgres://spillway@127.0.0.1:5432/spillway\nlease_seconds: 3\n");
        let resolved = cluster.resolve(dir.path(), listen("127.0.0.1:4999")).unwrap();
        assert_eq!(resolved.advertise, "127.0.0.1:4999");
        assert_eq!(resolved.lease_seconds, 3);
        assert!(is_valid_node_id(&resolved.node_id), "{}", resolved.node_id);
        assert_eq!(resolved.coordinator.get_connect_timeout(), Some(&std::time::Duration::from_secs(5)));
    }
}
