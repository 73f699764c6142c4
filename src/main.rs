//! The `spillway` command line: `run`, `validate`, `put`, `bench`, `health`, `status`,
//! `wal inspect|quarantine`, `cluster status`. The only place that uses
//! `anyhow`; everything below it returns typed errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use spillway::app::App;
use spillway::client::{bench, codec_bench, put, status};
use spillway::config;
use spillway::operate::wal_inspect as inspect;
use spillway::reload::{Reloader, watch::ConfigWatch};

/// jemalloc returns freed memory to the system; glibc's per-thread arenas keep large freed
/// buffers (batches, compressed objects), which more than doubled peak RSS with 64 MiB buffers.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options read at start-up (the `_rjem_` prefix is tikv-jemallocator's): few arenas,
/// since a few threads do all the large allocations, and freed pages returned within a second.
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: &u8 = &b"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

/// `spillway --version`: the version, the commit and the day it was built (see `build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SPILLWAY_GIT_COMMIT"),
    ", built ",
    env!("SPILLWAY_BUILD_DATE"),
    ")"
);

#[derive(Parser)]
#[command(name = "spillway", version = VERSION, about = "Firehose-compatible delivery: streams in, buffered durable objects out")]
struct Cli {
    /// Log format on stderr: `text` (human-readable) or `json` (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SPILLWAY_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log level of spillway's own messages (libraries stay at `info` at most). Without it, the
    /// filter is `SPILLWAY_LOG` (e.g. `info,spillway=debug`), else `info`; this flag wins over
    /// `SPILLWAY_LOG`.
    #[arg(long, global = true, value_enum)]
    log_level: Option<LogLevel>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The filter directives: debug and trace only for spillway's own targets (the sink crates'
    /// `spillway_sink_*` included), so the AWS SDK and hyper do not drown them.
    fn directives(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "info,spillway=debug",
            LogLevel::Trace => "info,spillway=trace",
        }
    }
}

/// Logs go to stderr (stdout carries command output and the `listening` line).
fn init_logs(format: LogFormat, level: Option<LogLevel>) {
    let filter = match level {
        Some(level) => tracing_subscriber::EnvFilter::new(level.directives()),
        None => tracing_subscriber::EnvFilter::try_from_env("SPILLWAY_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        // Fields at the top level next to `timestamp`, `level`, `target` and `message`.
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Firehose API and deliver every configured stream until SIGTERM / Ctrl-C.
    /// SIGHUP re-reads the configuration file and applies its streams (a file with problems is
    /// refused and the running configuration kept).
    Run {
        /// Configuration file (YAML).
        #[arg(short, long, default_value = "config/local.yaml")]
        config: PathBuf,
        /// Address to listen on, instead of the file's `server.listen`.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Data folder (WAL, checkpoints, created streams), instead of the file's `data_dir`.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Reload the configuration when the file's contents change, as on SIGHUP.
        #[arg(long)]
        watch_config: bool,
        /// How often `--watch-config` looks at the file.
        #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
        watch_interval_seconds: f64,
    },
    /// Check a configuration file and list every problem; exits non-zero if there is one.
    Validate {
        #[arg(short, long, default_value = "config/local.yaml")]
        config: PathBuf,
        /// Also reach every stream's destination: a PostgreSQL table and its columns must exist,
        /// an S3 bucket or folder must be writable.
        #[arg(long)]
        connect: bool,
    },
    /// Send the lines of files (or `-` for stdin) to a delivery stream with PutRecordBatch.
    Put {
        /// Delivery stream name.
        #[arg(short, long)]
        stream: String,
        /// Firehose endpoint (spillway's `server.listen`, or a real Firehose endpoint).
        #[arg(short, long, default_value = "http://127.0.0.1:4573", env = "SPILLWAY_ENDPOINT")]
        endpoint: String,
        #[arg(long, default_value = "us-east-1", env = "AWS_REGION")]
        region: String,
        /// Send each line with its trailing newline (by default the newline is dropped; set
        /// `processing.record_delimiter: newline` on the stream to get one record per line).
        #[arg(long)]
        keep_newlines: bool,
        /// Attempts per batch before giving up (only failed entries are resent).
        #[arg(long, default_value_t = 10)]
        max_attempts: u32,
        /// Files to send, one record per line.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Load-test a running spillway and report accepted/drained throughput, CPU and peak RSS.
    Bench {
        #[arg(short, long, default_value = "http://127.0.0.1:4573")]
        endpoint: String,
        #[arg(short, long, default_value = "bench")]
        stream: String,
        /// Total record bytes to send.
        #[arg(long, default_value_t = 256)]
        total_mib: u64,
        /// Concurrent keep-alive clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// ~350-byte access-log lines per record (6 makes a 500-record batch about 1 MiB).
        #[arg(long, default_value_t = 6)]
        lines_per_record: usize,
        /// Give every line a `"service"` field spread over this many values (0: none).
        #[arg(long, default_value_t = 0)]
        partitions: usize,
        /// Give up waiting for delivery after this many seconds.
        #[arg(long, default_value_t = 600)]
        drain_timeout_seconds: u64,
        /// Before sending, measure gzip -6 and zstd -3 alone on the same bytes and report
        /// spillway's figures as ratios to this codec's (gzip or zstd).
        #[arg(long, value_parser = parse_codec)]
        codec_baseline: Option<codec_bench::Codec>,
        /// Bytes (MiB, at most --total-mib) the codec measurement compresses.
        #[arg(long, default_value_t = 256)]
        codec_mib: u64,
        /// Only measure the codecs on the bytes a run would send; no server needed.
        #[arg(long, hide = true)]
        codec_only: bool,
    },
    /// Probe a running spillway's `/health` (or `/ready`): prints the answer, exits 0 on 200 and
    /// 1 otherwise. For container healthchecks; the runtime image needs no curl.
    Health {
        #[arg(short, long, default_value = "http://127.0.0.1:4573", env = "SPILLWAY_ENDPOINT")]
        endpoint: String,
        /// Probe readiness (sinks healthy, no stream stopped, not shutting down) instead of liveness.
        #[arg(long)]
        ready: bool,
    },
    /// Per-stream table from a running spillway's `/metrics`: records/s, MiB/s, data freshness,
    /// WAL backlog, open partitions, retries, error-output records, sink health.
    Status {
        #[arg(short, long, default_value = "http://127.0.0.1:4573", env = "SPILLWAY_ENDPOINT")]
        endpoint: String,
        /// Refresh the table until interrupted.
        #[arg(short, long)]
        watch: bool,
        /// Seconds between the two scrapes rates are computed from (and between refreshes).
        #[arg(long, default_value_t = 2.0)]
        interval_seconds: f64,
    },
    /// Look at or repair a stream's write-ahead log. Run these with spillway stopped: they read
    /// and rewrite the files under data_dir directly.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
    /// Cluster mode (`cluster:` in the configuration): look at the cluster through its
    /// coordinator.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Print every node (alive, dead or stopped, with its last heartbeat's age by the database
    /// clock) and every lease with its owner, epoch and expiry. Reads the file's `cluster:`
    /// block; writes nothing.
    Status {
        #[arg(short, long, default_value = "config/local.yaml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum WalCommand {
    /// Print a stream's data_dir paths, checkpoint, every segment (sequences, frames, records,
    /// ok / torn tail / damaged at offset), set-aside ranges and pending intents. Read-only;
    /// run it with spillway stopped, since it checksums every segment.
    Inspect {
        #[arg(short, long, default_value = "config/local.yaml")]
        config: PathBuf,
        /// Delivery stream name.
        #[arg(short, long)]
        stream: String,
    },
    /// Set a damaged segment aside so the stream can start again: moves it into
    /// `<stream dir>/wal-quarantine/` (never deletes), keeps the good frames before the damage,
    /// and prints the sequence range whose records will not be delivered. Run it with spillway
    /// stopped. Exits 1 when there is nothing to do.
    Quarantine {
        #[arg(short, long, default_value = "config/local.yaml")]
        config: PathBuf,
        #[arg(short, long)]
        stream: String,
        /// The segment to set aside (file name or path); by default the first damaged one.
        #[arg(long)]
        segment: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format, cli.log_level);
    let result = match cli.command {
        Command::Validate { config, connect: false } => validate(&config),
        Command::Wal { command } => wal_command(command),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|runtime| runtime.block_on(run_async(command))),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", spillway::client::error_text(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn validate(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    match config::load_file(path) {
        Ok(config) => {
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            // What `run` would refuse on this machine: TLS files, data_dir, output folders.
            let problems = config::preflight(&config);
            if !problems.is_empty() {
                eprintln!("{}: {} problem(s) on this machine:", path.display(), problems.len());
                for problem in problems {
                    eprintln!("  {problem}");
                }
                return Ok(ExitCode::FAILURE);
            }
            println!("{}: ok ({} stream(s))", path.display(), config.streams.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `validate --connect`: the pure checks, then each stream's destination, every problem listed.
async fn validate_connect(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = match config::load_file(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut failed = false;
    for stream in &config.streams {
        match stream.sink.descriptor().check_connection(&stream.name).await {
            Ok(what) => println!("stream {}: {} sink: {what}", stream.name, stream.sink.descriptor().type_name()),
            Err(error) => {
                failed = true;
                eprintln!("stream {}: {} sink: {error}", stream.name, stream.sink.descriptor().type_name());
            }
        }
    }
    if failed {
        return Ok(ExitCode::FAILURE);
    }
    println!("{}: ok ({} stream(s), destinations reachable)", path.display(), config.streams.len());
    Ok(ExitCode::SUCCESS)
}

fn wal_command(command: WalCommand) -> anyhow::Result<ExitCode> {
    let (config_path, stream) = match &command {
        WalCommand::Inspect { config, stream } | WalCommand::Quarantine { config, stream, .. } => (config, stream),
    };
    let config = config::load_file(config_path).map_err(|error| anyhow::anyhow!("{error}"))?;
    if !config.streams.iter().any(|configured| &configured.name == stream) {
        let known: Vec<&str> = config.streams.iter().map(|configured| configured.name.as_str()).collect();
        eprintln!("unknown stream {stream:?} in {}; streams: {}", config_path.display(), known.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    match command {
        WalCommand::Inspect { stream, .. } => {
            let inspection = inspect::inspect(&config.data_dir, &stream)?;
            print!("{inspection}");
            Ok(ExitCode::SUCCESS)
        }
        WalCommand::Quarantine { stream, segment, .. } => {
            match inspect::quarantine(&config.data_dir, &stream, segment.as_deref())? {
                inspect::QuarantineOutcome::NothingToDo(why) => {
                    println!("nothing to do: {why}");
                    Ok(ExitCode::FAILURE)
                }
                inspect::QuarantineOutcome::SetAside(set_aside) => {
                    println!(
                        "set aside sequences {}..{} (end exclusive) of stream {stream}: segment {} is damaged at offset {} ({})",
                        set_aside.start,
                        set_aside.end,
                        set_aside.original_segment.display(),
                        set_aside.damaged_offset,
                        set_aside.reason
                    );
                    println!(
                        "kept the {} bytes of good frames before the damage in {}; the original is in {}",
                        set_aside.kept_bytes,
                        set_aside.original_segment.display(),
                        set_aside.quarantined_segment.display()
                    );
                    println!("records in that range will not be delivered; start spillway to deliver the rest");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}

async fn run_async(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate { config, connect: true } => validate_connect(&config).await,
        Command::Validate { .. } | Command::Wal { .. } => unreachable!("runs without a runtime"),
        Command::Cluster { command: ClusterCommand::Status { config: path } } => {
            let config = config::load_file(&path).map_err(|error| anyhow::anyhow!("{error}"))?;
            let Some(cluster) = &config.cluster else {
                eprintln!("{} has no cluster: block (spillway runs as a single node)", path.display());
                return Ok(ExitCode::FAILURE);
            };
            let status = spillway::cluster::status::read(cluster).await?;
            print!("{}", status.render());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config: path, listen, data_dir, watch_config, watch_interval_seconds } => {
            let mut config = config::load_file(&path).map_err(|error| anyhow::anyhow!("{error}"))?;
            let overrides = config::Overrides { listen, data_dir };
            overrides.apply(&mut config);
            tracing::debug!(
                listen = %config.server.listen,
                data_dir = %config.data_dir.display(),
                streams = config.streams.len(),
                "configuration loaded"
            );
            for warning in config.warnings() {
                tracing::warn!(path = %warning.path, "{}", warning.message);
            }
            let watch_interval = Duration::try_from_secs_f64(watch_interval_seconds)
                .ok()
                .filter(|interval| !interval.is_zero())
                .context("--watch-interval-seconds must be a positive number")?;
            let signals = ShutdownSignals::install().context("cannot install signal handlers")?;
            // Before the server announces itself: a SIGHUP sent right after start reloads
            // instead of ending the process (its default action).
            let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot install the SIGHUP handler")?;
            tracing::info!(version = VERSION, config = %path.display(), "starting");
            let mut app = App::start(config).await?;
            let reloader = app.reloader(path.clone(), overrides);
            let watch = if watch_config { Some(ConfigWatch::new(&path, watch_interval).await) } else { None };
            tokio::spawn(reload_on_triggers(reloader, hangups, watch));
            println!("spillway listening on {}", app.endpoint());
            app.run_until(signals.first_then_exit_on_second()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Put { stream, endpoint, region, keep_newlines, max_attempts, files } => {
            let options = put::PutOptions { stream, endpoint, region, files, keep_newlines, max_attempts };
            let summary = put::put(options).await?;
            println!(
                "sent {} records ({} bytes) in {} PutRecordBatch calls in {:.2} s; {} entries resent",
                summary.records,
                summary.bytes,
                summary.calls,
                summary.elapsed.as_secs_f64(),
                summary.resent_records
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { endpoint, ready } => match status::probe(&endpoint, ready).await {
            Ok(body) => {
                print!("{body}");
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                eprintln!("{error}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Status { endpoint, watch, interval_seconds } => {
            let interval = Duration::try_from_secs_f64(interval_seconds)
                .ok()
                .filter(|interval| !interval.is_zero())
                .context("--interval-seconds must be a positive number")?;
            status::run(&endpoint, interval, watch).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            endpoint,
            stream,
            total_mib,
            clients,
            lines_per_record,
            partitions,
            drain_timeout_seconds,
            codec_baseline,
            codec_mib,
            codec_only,
        } => {
            let options = bench::BenchOptions {
                endpoint,
                stream,
                total_mib,
                clients,
                lines_per_record,
                partitions,
                drain_timeout: Duration::from_secs(drain_timeout_seconds),
                codec_baseline,
                codec_mib,
            };
            if codec_only {
                println!("machine: {}", codec_bench::machine_description());
                let report = tokio::task::spawn_blocking(move || bench::codec_only(&options)).await??;
                println!("{}", report.render());
                return Ok(ExitCode::SUCCESS);
            }
            let report = bench::run(options).await?;
            println!("{}", report.render());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_codec(name: &str) -> Result<codec_bench::Codec, String> {
    codec_bench::Codec::parse(name).ok_or_else(|| format!("`{name}` is not gzip or zstd"))
}

/// Reload on every SIGHUP and, with `--watch-config`, on every change of the file's contents.
/// Signals that arrive during a reload are merged into one more reload after it.
async fn reload_on_triggers(
    reloader: Arc<Reloader>,
    mut hangups: tokio::signal::unix::Signal,
    mut watch: Option<ConfigWatch>,
) {
    loop {
        let trigger = tokio::select! {
            received = hangups.recv() => match received {
                Some(()) => "SIGHUP",
                None => return,
            },
            () = next_change(&mut watch) => "file changed",
        };
        if let spillway::reload::ReloadOutcome::ShuttingDown = reloader.reload(trigger).await {
            return;
        }
    }
}

/// The next change of the watched file; never, without `--watch-config`.
async fn next_change(watch: &mut Option<ConfigWatch>) {
    match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    }
}

/// SIGTERM and SIGINT (Ctrl-C) handlers, installed before the server announces itself so a
/// signal sent right after start is never lost to the default action.
struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { terminate: signal(SignalKind::terminate())?, interrupt: signal(SignalKind::interrupt())? })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }

    /// Resolves on the first signal; a second one exits at once (acknowledged records are in
    /// the WAL and are delivered on the next start).
    async fn first_then_exit_on_second(mut self) {
        self.next().await;
        tracing::info!("shutting down; send the signal again to exit at once");
        tokio::spawn(async move {
            self.next().await;
            tracing::warn!("second signal: exiting now; undelivered records stay in the wal");
            std::process::exit(130);
        });
    }
}
