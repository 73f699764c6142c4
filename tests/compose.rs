//! `docker-compose.yml` checked without Docker (no engine runs here or in CI): every image is
//! pinned to a tag, every `depends_on` names a service whose condition it can meet, every
//! healthcheck runs a tool its image has, spillway's config file exists where the Dockerfile puts
//! it and validates with the service's environment, every `${VAR}` it reads is set or defaulted,
//! and the MinIO credentials, bucket and endpoint agree across services and with
//! `scripts/services.sh`; the image ships the stripped `dist` build. Needs the sinks the compose
//! profiles use (`required-features` in Cargo.toml): the image builds every default feature.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).expect("read docker-compose.yml");
    serde_yaml_ng::from_str(&text).expect("docker-compose.yml parses")
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    let services = compose.get("services").and_then(Value::as_mapping).expect("a services mapping");
    services.iter().map(|(name, service)| (name.as_str().expect("service name").to_string(), service.clone())).collect()
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Sequence(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(text)) => text.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    let Some(Value::Mapping(environment)) = service.get("environment") else { return BTreeMap::new() };
    environment
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Value::String(text) => text.clone(),
                other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
            };
            (name.as_str().unwrap().to_string(), value)
        })
        .collect()
}

#[test]
fn every_image_is_pinned_and_every_dependency_can_be_met() {
    let compose = compose();
    let services = services(&compose);
    for (name, service) in &services {
        match (service.get("image").and_then(Value::as_str), service.get("build")) {
            (Some(image), _) => {
                let (_, tag) = image.rsplit_once(':').unwrap_or_else(|| panic!("{name}: image {image} has no tag"));
                assert!(!tag.is_empty() && tag != "latest", "{name}: image {image} is not pinned");
            }
            (None, Some(_)) => {}
            (None, None) => panic!("{name}: neither image nor build"),
        }
        let Some(Value::Mapping(depends_on)) = service.get("depends_on") else { continue };
        for (dependency, condition) in depends_on {
            let dependency = dependency.as_str().unwrap();
            let target =
                services.get(dependency).unwrap_or_else(|| panic!("{name} depends on unknown service {dependency}"));
            let condition = condition.get("condition").and_then(Value::as_str).unwrap_or("service_started");
            match condition {
                "service_healthy" => {
                    assert!(
                        target.get("healthcheck").is_some(),
                        "{name} waits for {dependency} to be healthy: no healthcheck"
                    )
                }
                "service_completed_successfully" => assert!(
                    target.get("entrypoint").is_some() || target.get("command").is_some(),
                    "{name} waits for {dependency} to complete: it runs nothing"
                ),
                "service_started" => {}
                other => panic!("{name}: unknown depends_on condition {other}"),
            }
        }
    }
}

#[test]
fn healthchecks_use_tools_their_images_have() {
    let compose = compose();
    let services = services(&compose);
    for (name, service) in &services {
        let Some(healthcheck) = service.get("healthcheck") else { continue };
        let test = strings(healthcheck.get("test"));
        assert!(matches!(test.first().map(String::as_str), Some("CMD" | "CMD-SHELL")), "{name}: {test:?}");
        // Neither the MinIO image (since late 2023) nor spillway's runtime image has curl or wget.
        assert!(!test.iter().any(|word| word.contains("curl") || word.contains("wget")), "{name}: {test:?}");
    }
    let minio = strings(services["minio"].get("healthcheck").and_then(|check| check.get("test")));
    assert_eq!(minio, ["CMD", "mc", "ready", "local"]);

    // Every spillway's healthcheck is its own subcommand on its own port: it must exist and take
    // these arguments (a closed port makes it fail after parsing, with exit code 1 rather than
    // clap's 2).
    for (name, service) in spillway_services(&services) {
        let check = strings(service.get("healthcheck").and_then(|check| check.get("test")));
        assert_eq!(check.get(1).map(String::as_str), Some("spillway"), "{name}: {check:?}");
        let mut args: Vec<String> = check[2..].to_vec();
        let position = args.iter().position(|arg| arg == "--endpoint").unwrap_or_else(|| panic!("{name}: {check:?}"));
        let listen_port = environment(&service)["SPILLWAY_LISTEN"].rsplit(':').next().unwrap().to_string();
        assert!(args[position + 1].ends_with(&format!(":{listen_port}")), "{name} probes another port: {check:?}");
        args[position + 1] = "http://127.0.0.1:9".to_string();
        let output = Command::new(env!("CARGO_BIN_EXE_spillway")).args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{name}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stderr).contains("/ready"));
    }
    // The Dockerfile's own HEALTHCHECK uses the same subcommand.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains(r#"["spillway", "health", "--ready"]"#));
}

/// The image ships the stripped build: the Dockerfile builds the `dist` profile from the lock
/// file and copies that binary, and `dist` in Cargo.toml strips symbols and debug info.
#[test]
fn the_image_ships_the_stripped_dist_build() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let build = dockerfile.lines().find(|line| line.starts_with("RUN cargo build")).expect("a cargo build step");
    assert!(build.contains("--profile dist") && build.contains("--locked"), "{build}");
    assert!(dockerfile.contains("COPY --from=build /src/target/dist/spillway /usr/local/bin/spillway"));
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let dist = manifest.split("[profile.dist]").nth(1).expect("a dist profile").split("\n[").next().unwrap_or_default();
    for setting in ["inherits = \"release\"", "strip = true", "debug = false"] {
        assert!(dist.lines().any(|line| line.trim() == setting), "[profile.dist] lacks {setting}: {dist}");
    }
}

/// `${NAME}` and `${NAME:-default}` references in a config file: (name, has a default).
fn env_references(text: &str) -> Vec<(String, bool)> {
    text.split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once('}'))
        .map(|(inside, _)| match inside.split_once(":-") {
            Some((name, _)) => (name.to_string(), true),
            None => (inside.to_string(), false),
        })
        .collect()
}

/// The config file spillway's `--config` names, found where the Dockerfile copies `config/`.
fn mounted_config(command: &[String]) -> PathBuf {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let copy = dockerfile
        .lines()
        .find_map(|line| line.strip_prefix("COPY config "))
        .expect("the Dockerfile copies config/ into the image")
        .trim()
        .to_string();
    let position = command.iter().position(|arg| arg == "--config").expect("spillway's command names --config");
    let in_image = Path::new(&command[position + 1]);
    let relative = in_image.strip_prefix(&copy).unwrap_or_else(|_| panic!("{in_image:?} is not under {copy}"));
    root().join("config").join(relative)
}

/// The services built from this repository (spillway with one config each).
fn spillway_services(services: &BTreeMap<String, Value>) -> Vec<(String, Value)> {
    let built: Vec<(String, Value)> = services
        .iter()
        .filter(|(_, service)| service.get("build").is_some())
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    assert!(built.len() >= 3, "spillway, spillway-postgres and spillway-opensearch: {:?}", services.keys());
    built
}

#[test]
fn every_spillways_config_exists_validates_and_listens_where_published() {
    let compose = compose();
    let services = services(&compose);
    for (name, spillway) in spillway_services(&services) {
        let command = strings(spillway.get("command"));
        let config_path = mounted_config(&command);
        let config_text =
            std::fs::read_to_string(&config_path).unwrap_or_else(|_| panic!("{name}: {config_path:?} missing"));
        let env = environment(&spillway);
        for (variable, has_default) in env_references(&config_text) {
            assert!(
                has_default || env.contains_key(&variable),
                "{name}: {config_path:?} reads ${{{variable}}}: not set"
            );
        }
        // It validates with exactly the compose environment, nothing from this machine.
        let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(["validate", "--config"])
            .arg(&config_path)
            .env_clear()
            .envs(&env)
            .output()
            .unwrap();
        assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
        // Every server setting the container needs comes from the environment.
        for variable in ["SPILLWAY_LISTEN", "SPILLWAY_DATA_DIR"] {
            assert!(config_text.contains(&format!("${{{variable}")), "{name}: {config_path:?} ignores {variable}");
        }
        // The listen address is reachable from outside the container and matches the published port.
        let listen = &env["SPILLWAY_LISTEN"];
        assert!(listen.starts_with("0.0.0.0:"), "{name}: {listen}");
        let port = listen.rsplit(':').next().unwrap();
        let ports = strings(spillway.get("ports"));
        assert!(ports.iter().any(|mapping| mapping.ends_with(&format!(":{port}"))), "{name}: {ports:?}");
    }
}

#[test]
fn spillways_minio_config_agrees_with_minio() {
    let compose = compose();
    let services = services(&compose);
    let spillway = &services["spillway"];
    let env = environment(spillway);

    // MinIO: credentials, endpoint and bucket agree across the three services.
    let minio = &services["minio"];
    let minio_env = environment(minio);
    assert_eq!(env["AWS_ACCESS_KEY_ID"], minio_env["MINIO_ROOT_USER"]);
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], minio_env["MINIO_ROOT_PASSWORD"]);
    let minio_command = minio.get("command").and_then(Value::as_str).unwrap();
    let minio_port = minio_command.split("--address :").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap();
    assert_eq!(env["S3_ENDPOINT"], format!("http://minio:{minio_port}"));
    let create_bucket = strings(services["create-bucket"].get("entrypoint")).join(" ");
    assert!(create_bucket.contains(&format!("http://minio:{minio_port}")), "{create_bucket}");
    assert!(
        create_bucket.contains(&format!("{} {}", minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"])),
        "{create_bucket}"
    );
    assert!(create_bucket.contains(&format!("local/{}", env["SPILLWAY_BUCKET"])), "{create_bucket}");

    // scripts/services.sh starts the same MinIO natively, configured through the same variables.
    let services_sh = std::fs::read_to_string(root().join("scripts/services.sh")).unwrap();
    for name in minio_env.keys() {
        assert!(services_sh.contains(name.as_str()), "scripts/services.sh does not set {name}");
    }
}

/// Every bind mount (`./host/path:/in/container[:ro]`) in the compose file.
fn bind_mounts(services: &BTreeMap<String, Value>) -> Vec<(String, String, String)> {
    let mut mounts = Vec::new();
    for (name, service) in services {
        for volume in strings(service.get("volumes")) {
            let mut parts = volume.split(':');
            let (Some(host), Some(container)) = (parts.next(), parts.next()) else { continue };
            if host.starts_with("./") || host.starts_with('/') {
                mounts.push((name.clone(), host.to_string(), container.to_string()));
            }
        }
    }
    mounts
}

#[test]
fn the_monitoring_profile_mounts_files_that_exist_and_agree() {
    let compose = compose();
    let services = services(&compose);
    let mounts = bind_mounts(&services);
    for (service, host, _) in &mounts {
        assert!(root().join(host).is_file(), "{service} mounts {host}, which does not exist");
    }
    let mounted = |container: &str| {
        mounts.iter().find(|(_, _, inside)| inside == container).map(|(_, host, _)| root().join(host))
    };

    // Prometheus scrapes spillway at the port spillway listens on, under the service's name.
    let prometheus_command = strings(services["prometheus"].get("command")).join(" ");
    let config_in_container = prometheus_command.split("--config.file=").nth(1).unwrap().split(' ').next().unwrap();
    let scrape: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(mounted(config_in_container).unwrap()).unwrap()).unwrap();
    let targets = strings(scrape["scrape_configs"][0]["static_configs"][0].get("targets"));
    let listen_port = environment(&services["spillway"])["SPILLWAY_LISTEN"].rsplit(':').next().unwrap().to_string();
    assert_eq!(targets, [format!("spillway:{listen_port}")]);
    assert_eq!(scrape["scrape_configs"][0]["metrics_path"], "/metrics");

    // Grafana's datasource is that Prometheus; the provisioned dashboard folder holds the JSON.
    let datasource: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(mounted("/etc/grafana/provisioning/datasources/spillway.yml").unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(datasource["datasources"][0]["url"], "http://prometheus:9090");
    let datasource_uid = datasource["datasources"][0]["uid"].as_str().unwrap().to_string();
    let providers: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(mounted("/etc/grafana/provisioning/dashboards/spillway.yml").unwrap()).unwrap(),
    )
    .unwrap();
    let folder = providers["providers"][0]["options"]["path"].as_str().unwrap();
    let dashboard_path = mounted(&format!("{folder}/spillway.json")).expect("the dashboard is mounted in the folder");
    assert!(dashboard_path.ends_with("docs/grafana-dashboard.json"));

    // Every metric the dashboard queries is one spillway exports, and every panel uses the datasource.
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dashboard_path).unwrap()).unwrap();
    let registry = spillway::metrics::Metrics::default();
    registry.register("s", "s3", Box::new(spillway::metrics::WalSize::default));
    registry.register_open_batch_budget(spillway::pipeline::MemoryBudget::new(1));
    let exported = registry.render();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        assert_eq!(panel["datasource"]["uid"], datasource_uid.as_str(), "{}", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("spillway_") || word.starts_with("process_"));
            for name in names {
                let found = exported.lines().any(|line| line.starts_with(name) && !line.starts_with('#'));
                assert!(found, "panel {} queries {name}, which /metrics does not export", panel["title"]);
            }
        }
    }
}

#[test]
fn the_sink_profiles_agree_with_their_servers() {
    let compose = compose();
    let services = services(&compose);
    let profile = |name: &str| strings(services[name].get("profiles"));

    // PostgreSQL: the role, password and database the image creates are the ones spillway uses,
    // and the bootstrap SQL is the one in config/ (checked against a real server below).
    let (postgres, spillway) = (environment(&services["postgres"]), environment(&services["spillway-postgres"]));
    assert_eq!(profile("postgres"), ["postgres"]);
    assert_eq!(profile("spillway-postgres"), ["postgres"]);
    assert_eq!(spillway["PGUSER"], postgres["POSTGRES_USER"]);
    assert_eq!(spillway["PGPASSWORD"], postgres["POSTGRES_PASSWORD"]);
    assert_eq!(spillway["PGDATABASE"], postgres["POSTGRES_DB"]);
    assert_eq!(spillway["PGHOST"], "postgres");
    assert!(
        strings(services["postgres"].get("ports"))
            .iter()
            .any(|port| port.ends_with(&format!(":{}", spillway["PGPORT"])))
    );
    let mounts = bind_mounts(&services);
    assert!(
        mounts.iter().any(|(service, host, inside)| service == "postgres"
            && host == "./config/postgres-bootstrap.sql"
            && inside.starts_with("/docker-entrypoint-initdb.d/")),
        "{mounts:?}"
    );

    // OpenSearch: spillway's url names the service and its port; the image is the version the
    // tests run (scripts/services.sh).
    let (opensearch, spillway) = (&services["opensearch"], environment(&services["spillway-opensearch"]));
    assert_eq!(profile("opensearch"), ["opensearch"]);
    assert_eq!(profile("spillway-opensearch"), ["opensearch"]);
    assert_eq!(spillway["OPENSEARCH_URL"], "http://opensearch:9200");
    assert!(strings(opensearch.get("ports")).iter().any(|port| port.ends_with(":9200")));
    let image = opensearch.get("image").and_then(Value::as_str).unwrap();
    let services_sh = std::fs::read_to_string(root().join("scripts/services.sh")).unwrap();
    let version = services_sh.split("OPENSEARCH_VERSION=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap();
    assert_eq!(image, format!("opensearchproject/opensearch:{version}"));
}

/// The PostgreSQL profile's bootstrap SQL, run on a fresh database of the test server, makes
/// `config/postgres.yaml` pass `spillway validate --connect` (every table and column it names).
#[tokio::test]
async fn the_postgres_bootstrap_sql_makes_the_example_config_connect() {
    let admin = common::pg::connect(&common::pg::shared_url()).await;
    let database = common::pg::unique_table("compose_bootstrap");
    admin.batch_execute(&format!("CREATE DATABASE {database}")).await.unwrap();
    let config: tokio_postgres::Config = common::pg::shared_url().parse().unwrap();
    let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[0] else { panic!("a TCP host") };
    let port = config.get_ports()[0].to_string();
    let user = config.get_user().unwrap().to_string();
    let url = format!("postgres://{user}@{host}:{port}/{database}");
    let client = common::pg::connect(&url).await;
    client
        .batch_execute(&std::fs::read_to_string(root().join("config/postgres-bootstrap.sql")).unwrap())
        .await
        .unwrap();
    drop(client);

    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["validate", "--connect", "--config"])
        .arg(root().join("config/postgres.yaml"))
        .current_dir(dir.path())
        .env_clear()
        .envs([
            ("PGHOST", host.as_str()),
            ("PGPORT", &port),
            ("PGUSER", &user),
            ("PGDATABASE", &database),
            ("PGSSLMODE", "disable"),
        ])
        .output()
        .unwrap();
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await;
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
