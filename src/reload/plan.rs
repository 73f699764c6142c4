//! What a reload would change: the running YAML streams against the new file's (added, changed,
//! removed, unchanged), and the settings that differ but only take effect at the next start.
//! Secrets count as settings (compared in memory, never shown).
//! Pure: compares configurations, starts and stops nothing.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Config, StreamConfig};
use spillway_sink_api::same_configuration;

/// A YAML stream whose configuration changed.
#[derive(Debug)]
pub struct Change {
    pub old: StreamConfig,
    pub new: StreamConfig,
    /// Its `source` changed too: its readers (and the WAL's position tracking) start afresh,
    /// which a delivery restart alone does not do.
    pub source_changed: bool,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub added: Vec<StreamConfig>,
    pub changed: Vec<Change>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Settings that differ from the running ones but are only read at start (`server.listen`,
    /// `data_dir`, …), by YAML path.
    pub needs_restart: Vec<String>,
}

/// Compare the new file with what runs: `running` is the configuration the process started with
/// (its settings outside `streams` are the ones in effect), `running_streams` the YAML streams as
/// they run now, `api_streams` the names of streams created through the API. A new YAML stream
/// that takes an API stream's name is refused (the problems are returned): a reload never
/// replaces or removes what the API created.
pub fn plan(
    running: &Config,
    running_streams: &BTreeMap<String, StreamConfig>,
    api_streams: &BTreeSet<String>,
    new: &Config,
) -> Result<Plan, Vec<String>> {
    let problems: Vec<String> = new
        .streams
        .iter()
        .enumerate()
        .filter(|(_, stream)| api_streams.contains(&stream.name))
        .map(|(index, stream)| {
            format!(
                "streams[{index}].name: {} is a stream created through the API; delete it there first or choose another name",
                stream.name
            )
        })
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut plan = Plan { needs_restart: needs_restart(running, new), ..Plan::default() };
    for stream in &new.streams {
        match running_streams.get(&stream.name) {
            None => plan.added.push(stream.clone()),
            // Secrets count: a rotated password is a change to apply.
            Some(old) if same_configuration(old, stream) => plan.unchanged.push(stream.name.clone()),
            Some(old) => plan.changed.push(Change {
                old: old.clone(),
                new: stream.clone(),
                source_changed: !same_configuration(&old.source, &stream.source),
            }),
        }
    }
    let kept: BTreeSet<&str> = new.streams.iter().map(|stream| stream.name.as_str()).collect();
    plan.removed = running_streams.keys().filter(|name| !kept.contains(name.as_str())).cloned().collect();
    Ok(plan)
}

/// The YAML paths of settings outside `streams` that differ. Each is read once at start: the
/// listener and TLS, the data folder (and its lock), the WAL and memory limits every stream is
/// built with, the API's defaults and the ARNs' region and account.
fn needs_restart(running: &Config, new: &Config) -> Vec<String> {
    let (old_server, new_server) = (&running.server, &new.server);
    let named = [
        ("server.listen", !same_configuration(&old_server.listen, &new_server.listen)),
        ("server.tls", !same_configuration(&old_server.tls, &new_server.tls)),
        ("server.auth", !same_configuration(&old_server.auth, &new_server.auth)),
        ("data_dir", !same_configuration(&running.data_dir, &new.data_dir)),
        ("wal", !same_configuration(&running.wal, &new.wal)),
        ("limits", !same_configuration(&running.limits, &new.limits)),
        ("api_defaults", !same_configuration(&running.api_defaults, &new.api_defaults)),
        ("cluster", !same_configuration(&running.cluster, &new.cluster)),
    ];
    let mut differ: Vec<String> =
        named.iter().filter(|(_, differs)| *differs).map(|(path, _)| path.to_string()).collect();
    // Any other server setting (region, timeouts, connection limits): named as the section.
    let other_server = |server: &crate::config::ServerConfig| {
        let mut rest = server.clone();
        rest.listen = running.server.listen;
        rest.tls = None;
        rest.auth = None;
        rest
    };
    if !same_configuration(&other_server(old_server), &other_server(new_server)) {
        differ.push("server (region, account_id, timeouts or connection limits)".to_string());
    }
    differ
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        crate::config::parse_str(yaml, std::path::Path::new("t.yaml")).expect("valid config")
    }

    fn running_streams(config: &Config) -> BTreeMap<String, StreamConfig> {
        config.streams.iter().map(|stream| (stream.name.clone(), stream.clone())).collect()
    }

    const STREAMS: &str = "streams:\n\
        \x20 - { name: a, sink: { type: s3, url: 'file://out' } }\n\
        \x20 - { name: c, sink: { type: s3, url: 'file://out' } }\n\
        \x20 - { name: d, sink: { type: s3, url: 'file://out' } }\n";

    #[test]
    fn streams_are_sorted_into_added_changed_removed_and_unchanged() {
        let running = config(STREAMS);
        let new = config(
            "streams:\n\
             \x20 - { name: a, buffering: { size_mib: 1 }, sink: { type: s3, url: 'file://out' } }\n\
             \x20 - { name: b, sink: { type: s3, url: 'file://out' } }\n\
             \x20 - { name: d, sink: { type: s3, url: 'file://out' } }\n",
        );
        let plan = plan(&running, &running_streams(&running), &BTreeSet::new(), &new).expect("no conflict");
        let added: Vec<&str> = plan.added.iter().map(|stream| stream.name.as_str()).collect();
        let changed: Vec<&str> = plan.changed.iter().map(|change| change.new.name.as_str()).collect();
        assert_eq!(added, ["b"]);
        assert_eq!(changed, ["a"]);
        assert!(!plan.changed[0].source_changed);
        assert_eq!(plan.removed, ["c"]);
        assert_eq!(plan.unchanged, ["d"]);
        assert!(plan.needs_restart.is_empty(), "{:?}", plan.needs_restart);
    }

    #[test]
    #[cfg(feature = "source-file")]
    fn a_new_source_is_told_apart_from_a_new_destination() {
        let running = config(STREAMS);
        let new = config(
            &STREAMS.replace("name: a, sink", "name: a, source: { type: file, paths: ['/var/log/a.log'] }, sink"),
        );
        let plan = plan(&running, &running_streams(&running), &BTreeSet::new(), &new).expect("no conflict");
        assert_eq!(plan.changed.len(), 1);
        assert!(plan.changed[0].source_changed);
    }

    #[test]
    fn a_rotated_credential_is_a_change() {
        let with_key = |key: &str| {
            config(&format!(
                "streams:\n  - {{ name: a, sink: {{ type: s3, url: 's3://bucket-a', access_key_id: k, secret_access_key: {key} }} }}\n"
            ))
        };
        let running = with_key("old-secret");
        let same = plan(&running, &running_streams(&running), &BTreeSet::new(), &with_key("old-secret")).expect("plan");
        assert_eq!(same.unchanged, ["a"]);
        let rotated =
            plan(&running, &running_streams(&running), &BTreeSet::new(), &with_key("new-secret")).expect("plan");
        assert_eq!(rotated.changed.len(), 1, "{rotated:?}");
        assert!(!rotated.changed[0].source_changed);
        assert!(!format!("{rotated:?}").contains("new-secret"), "the plan never shows a secret");
    }

    #[test]
    fn settings_read_only_at_start_are_named() {
        let running = config(STREAMS);
        let new = config(&format!(
            "server: {{ listen: 127.0.0.1:9999, region: eu-west-1 }}\ndata_dir: ./elsewhere\nlimits: {{ max_wal_mib: 64 }}\n{STREAMS}"
        ));
        let plan = plan(&running, &running_streams(&running), &BTreeSet::new(), &new).expect("no conflict");
        assert_eq!(
            plan.needs_restart,
            ["server.listen", "data_dir", "limits", "server (region, account_id, timeouts or connection limits)"]
        );
        assert_eq!(plan.unchanged.len(), 3);
    }

    #[test]
    fn a_yaml_stream_may_not_take_an_api_streams_name() {
        let running = config(STREAMS);
        let api = BTreeSet::from(["b".to_string()]);
        let new = config(&format!("{STREAMS}  - {{ name: b, sink: {{ type: s3, url: 'file://out' }} }}\n"));
        let problems = plan(&running, &running_streams(&running), &api, &new).expect_err("conflict");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("streams[3].name: b is a stream created through the API"), "{problems:?}");
    }
}
