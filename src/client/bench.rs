//! `spillway bench`: a load generator for a running spillway. Several keep-alive clients send
//! `PutRecordBatch` calls of about 1 MiB (500 records, each a few ~350-byte JSON access-log lines)
//! until the total is sent, then it waits until the server reports everything delivered. Figures
//! come from the server's `/metrics`: accepted and drained throughput, server CPU seconds per GiB,
//! and server peak RSS. Bodies are pre-encoded so the generator spends little CPU of its own.
//!
//! With a codec baseline ([`BenchOptions::codec_baseline`]) it first measures the codec alone on
//! exactly the bytes it is about to send (see [`super::codec_bench`]), while the server is idle,
//! and reports spillway's figures also as ratios to the codec's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::codec_bench::{self, Codec, CodecReport, Feed};

pub struct BenchOptions {
    pub endpoint: String,
    pub stream: String,
    pub total_mib: u64,
    pub clients: usize,
    pub lines_per_record: usize,
    /// Give every line a `"service"` field with one of this many values (0: no such field).
    pub partitions: usize,
    pub drain_timeout: Duration,
    /// Measure the codecs first and report ratios against this one (`None`: no codec figures).
    pub codec_baseline: Option<Codec>,
    /// Input for the codec measurement (at most the total sent).
    pub codec_mib: u64,
}

#[derive(Debug)]
pub struct BenchReport {
    pub records: u64,
    pub bytes: u64,
    pub accept_seconds: f64,
    pub drain_seconds: f64,
    pub server_cpu_seconds: f64,
    pub server_peak_rss_bytes: u64,
    pub throttled_calls: u64,
    /// The codec alone on the same bytes, and which codec the ratios are against.
    pub codec: Option<(Codec, CodecReport)>,
}

impl BenchReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some((_, codec)) = &self.codec {
            out.push_str(&codec.render());
            out.push('\n');
        }
        out.push_str(&self.render_server());
        if let Some(ratios) = self.render_ratios() {
            out.push('\n');
            out.push_str(&ratios);
        }
        out
    }

    /// spillway against the codec alone: drain speed against the codec's two-core speed, server
    /// CPU per GiB against the codec's single-thread large-write CPU per GiB, and the server CPU
    /// per record left after taking away the codec's own per-byte cost. Against gzip, one line
    /// for the reference (zlib-rs) and one for the codec the sinks run (libdeflate): the first
    /// says how spillway compares with compressing alone as most tools do, the second what
    /// spillway adds around its own codec.
    fn render_ratios(&self) -> Option<String> {
        let (baseline, codec) = self.codec.as_ref()?;
        let mut lines = vec![self.ratio_line(*baseline, codec)?];
        if *baseline == Codec::Gzip {
            lines.extend(self.ratio_line(Codec::GzipLibdeflate, codec));
        }
        Some(lines.join("\n"))
    }

    fn ratio_line(&self, baseline: Codec, codec: &CodecReport) -> Option<String> {
        let large = codec.get(baseline, Feed::Large)?;
        let two = codec.get(baseline, Feed::LargeTwoThreads)?;
        let mib = self.bytes as f64 / (1 << 20) as f64;
        let gib = self.bytes as f64 / (1 << 30) as f64;
        let drained_mibs = mib / self.drain_seconds;
        let cpu_per_gib = self.server_cpu_seconds / gib;
        let beyond_codec = self.server_cpu_seconds - large.cpu_seconds_per_byte() * self.bytes as f64;
        Some(format!(
            "vs {baseline}: drained / codec 2-core = {drain_ratio:.2} ({drained_mibs:.1} / {two_mibs:.1} MiB/s); \
             server CPU-s/GiB / codec 1-thread = {cpu_ratio:.2} ({cpu_per_gib:.2} / {codec_cpu:.2}); \
             server CPU per record beyond the codec's per-byte cost: {per_record:.2} µs ({records} records, {bytes_per_record:.0} B each)",
            drain_ratio = drained_mibs / two.mib_per_second(),
            two_mibs = two.mib_per_second(),
            cpu_ratio = cpu_per_gib / large.cpu_seconds_per_gib(),
            codec_cpu = large.cpu_seconds_per_gib(),
            per_record = beyond_codec / self.records as f64 * 1e6,
            records = self.records,
            bytes_per_record = self.bytes as f64 / self.records as f64,
        ))
    }

    fn render_server(&self) -> String {
        let mib = self.bytes as f64 / (1 << 20) as f64;
        let gib = self.bytes as f64 / (1 << 30) as f64;
        format!(
            "sent {records} records, {mib:.1} MiB in {clients_note}\n\
             accepted: {accept:.2} s, {accept_mibs:.1} MiB/s, {accept_rps:.0} records/s\n\
             drained:  {drain:.2} s, {drain_mibs:.1} MiB/s, {drain_rps:.0} records/s\n\
             server CPU: {cpu:.2} s ({cpu_per_gib:.1} CPU-s/GiB); server peak RSS: {rss:.0} MiB; throttled calls: {throttled}",
            records = self.records,
            clients_note = "PutRecordBatch calls",
            accept = self.accept_seconds,
            accept_mibs = mib / self.accept_seconds,
            accept_rps = self.records as f64 / self.accept_seconds,
            drain = self.drain_seconds,
            drain_mibs = mib / self.drain_seconds,
            drain_rps = self.records as f64 / self.drain_seconds,
            cpu = self.server_cpu_seconds,
            cpu_per_gib = self.server_cpu_seconds / gib,
            rss = self.server_peak_rss_bytes as f64 / (1 << 20) as f64,
            throttled = self.throttled_calls,
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("http error: {0}")]
    Http(#[from] reqwest::Error),
    #[error("server answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("metric {0} missing from /metrics")]
    MissingMetric(String),
    #[error("codec measurement failed: {0}")]
    Codec(#[from] std::io::Error),
    #[error("not drained after {0:?}: {1} of {2} bytes delivered")]
    NotDrained(Duration, u64, u64),
}

/// One access-log line of about 350 bytes, varied enough that compression has real work; with
/// `partitions` > 0 it starts with a `"service"` field of that many values.
fn access_log_line(rng: &mut StdRng, sequence: u64, partitions: usize) -> String {
    const PATHS: [&str; 6] =
        ["/api/v1/orders", "/api/v1/users/profile", "/static/app.js", "/health", "/api/v2/search", "/login"];
    const AGENTS: [&str; 3] = [
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
        "curl/8.5.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    ];
    let service = match partitions {
        0 => String::new(),
        n => format!("\"service\":\"svc-{:03}\",", rng.random_range(0..n)),
    };
    format!(
        "{{{service}\"ts\":\"2026-11-25T17:{:02}:{:02}.{:03}Z\",\"seq\":{sequence},\"client\":\"10.{}.{}.{}\",\"method\":\"GET\",\"path\":\"{}?id={}\",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3},\"user_agent\":\"{}\",\"request_id\":\"{:016x}\"}}\n",
        rng.random_range(0..60),
        rng.random_range(0..60),
        rng.random_range(0..1000),
        rng.random_range(0..256),
        rng.random_range(0..256),
        rng.random_range(0..256),
        PATHS[rng.random_range(0..PATHS.len())],
        rng.random_range(0..100_000),
        [200, 200, 200, 201, 304, 404, 500][rng.random_range(0..7)],
        rng.random_range(100..90_000),
        rng.random_range(0.1..900.0),
        AGENTS[rng.random_range(0..AGENTS.len())],
        rng.random::<u64>(),
    )
}

/// Distinct bodies the generator cycles through: about 16 MiB of distinct records whatever the
/// record size (16 bodies of 6-line records, 96 of one-line records).
fn body_count(lines_per_record: usize) -> usize {
    (96 / lines_per_record.max(1)).max(16)
}

/// Pre-encoded `PutRecordBatch` bodies (body, records, raw record bytes), and the raw record
/// bytes of all of them concatenated in order: one cycle of what the sink receives.
fn bodies(
    stream: &str,
    lines_per_record: usize,
    partitions: usize,
    count: usize,
) -> (Vec<(String, u64, u64)>, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut sequence = 0;
    let mut cycle = Vec::new();
    let bodies = (0..count)
        .map(|_| {
            let mut raw = 0;
            let records: Vec<serde_json::Value> = (0..500)
                .map(|_| {
                    let record: String = (0..lines_per_record)
                        .map(|_| {
                            sequence += 1;
                            access_log_line(&mut rng, sequence, partitions)
                        })
                        .collect();
                    raw += record.len() as u64;
                    cycle.extend_from_slice(record.as_bytes());
                    serde_json::json!({ "Data": base64::engine::general_purpose::STANDARD.encode(record) })
                })
                .collect();
            let body = serde_json::json!({ "DeliveryStreamName": stream, "Records": records }).to_string();
            (body, 500, raw)
        })
        .collect();
    (bodies, cycle)
}

/// `spillway bench --codec-only`: the codecs alone on the bytes a load run with these options
/// would send, no server needed.
pub fn codec_only(options: &BenchOptions) -> std::io::Result<CodecReport> {
    let (_, cycle) =
        bodies(&options.stream, options.lines_per_record, options.partitions, body_count(options.lines_per_record));
    codec_bench::measure(&cycle, codec_input_bytes(options))
}

fn codec_input_bytes(options: &BenchOptions) -> usize {
    (options.codec_mib.min(options.total_mib) << 20) as usize
}

pub async fn run(options: BenchOptions) -> Result<BenchReport, BenchError> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(options.clients).build()?;
    let (bodies, cycle) =
        bodies(&options.stream, options.lines_per_record, options.partitions, body_count(options.lines_per_record));
    let codec = match options.codec_baseline {
        Some(baseline) => {
            let total = codec_input_bytes(&options);
            let report = tokio::task::spawn_blocking(move || codec_bench::measure(&cycle, total))
                .await
                .map_err(|error| BenchError::Refused { status: 0, body: error.to_string() })??;
            Some((baseline, report))
        }
        None => None,
    };
    let bodies = Arc::new(bodies);
    let batch_bytes = bodies[0].2;
    let total_calls = (options.total_mib << 20).div_ceil(batch_bytes);
    let before = scrape(&client, &options).await?;

    let next_call = Arc::new(AtomicU64::new(0));
    let sent_records = Arc::new(AtomicU64::new(0));
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..options.clients {
        let (client, bodies, endpoint) = (client.clone(), bodies.clone(), options.endpoint.clone());
        let (next_call, sent_records, sent_bytes, throttled) =
            (next_call.clone(), sent_records.clone(), sent_bytes.clone(), throttled.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let call = next_call.fetch_add(1, Ordering::Relaxed);
                if call >= total_calls {
                    return Ok::<(), BenchError>(());
                }
                let (body, records, raw) = &bodies[(call % bodies.len() as u64) as usize];
                loop {
                    let response = client
                        .post(&endpoint)
                        .header("content-type", "application/x-amz-json-1.1")
                        .header("x-amz-target", "Firehose_20150804.PutRecordBatch")
                        .body(body.clone())
                        .send()
                        .await?;
                    let status = response.status().as_u16();
                    if status == 200 {
                        break;
                    }
                    if status == 503 {
                        throttled.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    return Err(BenchError::Refused { status, body: response.text().await.unwrap_or_default() });
                }
                sent_records.fetch_add(*records, Ordering::Relaxed);
                sent_bytes.fetch_add(*raw, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|error| BenchError::Refused { status: 0, body: error.to_string() })??;
    }
    let accept_seconds = started.elapsed().as_secs_f64();
    let bytes = sent_bytes.load(Ordering::Relaxed);
    let target = before.delivered + bytes;
    let drain_deadline = Instant::now() + options.drain_timeout;
    let after = loop {
        let now = scrape(&client, &options).await?;
        if now.delivered >= target {
            break now;
        }
        if Instant::now() > drain_deadline {
            return Err(BenchError::NotDrained(options.drain_timeout, now.delivered - before.delivered, bytes));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(BenchReport {
        records: sent_records.load(Ordering::Relaxed),
        bytes,
        accept_seconds,
        drain_seconds: started.elapsed().as_secs_f64(),
        server_cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        server_peak_rss_bytes: after.peak_rss,
        throttled_calls: throttled.load(Ordering::Relaxed),
        codec,
    })
}

struct Scrape {
    delivered: u64,
    cpu_seconds: f64,
    peak_rss: u64,
}

async fn scrape(client: &reqwest::Client, options: &BenchOptions) -> Result<Scrape, BenchError> {
    let url = format!("{}/metrics", options.endpoint.trim_end_matches('/'));
    let text = client.get(url).send().await?.text().await?;
    let value = |name: &str| -> Result<f64, BenchError> {
        crate::metrics::read_metric(&text, name).ok_or_else(|| BenchError::MissingMetric(name.to_string()))
    };
    let delivered_name = format!("spillway_delivered_bytes_total{{stream=\"{}\"}}", options.stream);
    Ok(Scrape {
        delivered: value(&delivered_name)? as u64,
        cpu_seconds: value("process_cpu_seconds_total")?,
        peak_rss: value("process_peak_rss_bytes")? as u64,
    })
}
