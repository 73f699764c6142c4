//! `spillway health` and `spillway status`: a running spillway seen from outside, over HTTP only.
//!
//! - `health` probes `/health` (or `/ready`) and exits 0 on 200: a container healthcheck that
//!   needs no curl in the runtime image.
//! - `status` reads `/metrics` and prints one row per stream: records/s and MiB/s (between two
//!   scrapes), data freshness, WAL backlog, open partitions, retries, error-output records and
//!   whether the sink's healthcheck passes. `--watch` refreshes it.
//!
//! Must not: read spillway's files; everything comes from the HTTP endpoints.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::metrics::read_metric;

/// How long one probe or scrape may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot reach {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
}

fn http_client() -> Result<reqwest::Client, StatusError> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|source| StatusError::Http { url: String::new(), source })
}

async fn get_text(client: &reqwest::Client, url: &str) -> Result<(u16, String), StatusError> {
    let http_error = |source| StatusError::Http { url: url.to_string(), source };
    let response = client.get(url).send().await.map_err(http_error)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(http_error)?;
    Ok((status, body))
}

/// GET `/health` (or `/ready` when `ready`); Ok with the body on 200, else the status and body.
pub async fn probe(endpoint: &str, ready: bool) -> Result<String, StatusError> {
    let path = if ready { "ready" } else { "health" };
    let url = format!("{}/{path}", endpoint.trim_end_matches('/'));
    let (status, body) = get_text(&http_client()?, &url).await?;
    if status != 200 {
        return Err(StatusError::Status { url, status, body: body.trim().to_string() });
    }
    Ok(body)
}

/// One stream's numbers from one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSample {
    pub incoming_records: f64,
    pub incoming_bytes: f64,
    pub delivered_records: f64,
    pub delivered_bytes: f64,
    pub freshness_seconds: f64,
    pub wal_bytes: f64,
    pub open_partitions: f64,
    pub retries: f64,
    pub error_output_records: f64,
    pub throttled_records: f64,
    /// `None` when the metric is absent (a stream stopped at start has no sink).
    pub sink_up: Option<bool>,
}

/// A scrape: every stream's sample, and when it was taken.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub at: Instant,
    pub streams: BTreeMap<String, StreamSample>,
}

/// The streams named in `spillway_incoming_records_total` samples.
fn stream_names(text: &str) -> Vec<String> {
    let prefix = "spillway_incoming_records_total{";
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix(prefix))
        .filter_map(|rest| rest.split("stream=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Read every stream's sample out of `/metrics` text.
pub fn parse_scrape(text: &str, at: Instant) -> Scrape {
    let streams = stream_names(text)
        .into_iter()
        .map(|stream| {
            let labels = format!("{{stream=\"{stream}\"}}");
            let value = |name: &str| read_metric(text, &format!("{name}{labels}")).unwrap_or(0.0);
            let sample = StreamSample {
                incoming_records: value("spillway_incoming_records_total"),
                incoming_bytes: value("spillway_incoming_bytes_total"),
                delivered_records: value("spillway_delivered_records_total"),
                delivered_bytes: value("spillway_delivered_bytes_total"),
                freshness_seconds: value("spillway_data_freshness_seconds"),
                wal_bytes: value("spillway_wal_bytes"),
                open_partitions: value("spillway_open_partitions"),
                retries: value("spillway_delivery_retries_total"),
                error_output_records: value("spillway_error_output_records_total"),
                throttled_records: value("spillway_throttled_records_total"),
                sink_up: read_metric(text, &format!("spillway_sink_up{labels}")).map(|up| up >= 1.0),
            };
            (stream, sample)
        })
        .collect();
    Scrape { at, streams }
}

pub async fn scrape(client: &reqwest::Client, endpoint: &str) -> Result<Scrape, StatusError> {
    let url = format!("{}/metrics", endpoint.trim_end_matches('/'));
    let (status, body) = get_text(client, &url).await?;
    if status != 200 {
        return Err(StatusError::Status { url, status, body });
    }
    Ok(parse_scrape(&body, Instant::now()))
}

/// The per-stream table. Rates are over the time between `previous` and `current`; without a
/// previous scrape they show `-`.
pub fn render_table(previous: Option<&Scrape>, current: &Scrape) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>9} {:>10} {:>9} {:>10} {:>10} {:>5} {:>8} {:>9} {:>5}",
        "STREAM",
        "IN REC/S",
        "IN MIB/S",
        "OUT REC/S",
        "OUT MIB/S",
        "FRESHNESS",
        "WAL MIB",
        "PARTS",
        "RETRIES",
        "ERR RECS",
        "SINK"
    );
    for (stream, sample) in &current.streams {
        let before = previous.and_then(|previous| {
            let seconds = current.at.saturating_duration_since(previous.at).as_secs_f64();
            previous.streams.get(stream).filter(|_| seconds > 0.0).map(|before| (before, seconds))
        });
        let rate = |value: fn(&StreamSample) -> f64, scale: f64| match before {
            Some((before, seconds)) => format!("{:.1}", (value(sample) - value(before)).max(0.0) / seconds / scale),
            None => "-".to_string(),
        };
        let sink = match sample.sink_up {
            Some(true) => "up",
            Some(false) => "DOWN",
            None => "-",
        };
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>9} {:>10} {:>9} {:>9.1}s {:>10.1} {:>5} {:>8} {:>9} {:>5}",
            stream,
            rate(|sample| sample.incoming_records, 1.0),
            rate(|sample| sample.incoming_bytes, 1048576.0),
            rate(|sample| sample.delivered_records, 1.0),
            rate(|sample| sample.delivered_bytes, 1048576.0),
            sample.freshness_seconds,
            sample.wal_bytes / 1048576.0,
            sample.open_partitions,
            sample.retries,
            sample.error_output_records,
            sink,
        );
    }
    out
}

/// `spillway status`: print the table once (rates over `interval`), or every `interval` with
/// `watch` until interrupted.
pub async fn run(endpoint: &str, interval: Duration, watch: bool) -> Result<(), StatusError> {
    let client = http_client()?;
    let mut previous = scrape(&client, endpoint).await?;
    loop {
        tokio::time::sleep(interval).await;
        let current = scrape(&client, endpoint).await?;
        let table = render_table(Some(&previous), &current);
        if watch {
            // Clear the screen and home the cursor, like `watch`.
            print!("\x1b[2J\x1b[H{endpoint} every {:.0?}\n\n{table}", interval);
        } else {
            print!("{table}");
            return Ok(());
        }
        previous = current;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE_1: &str = "spillway_incoming_records_total{stream=\"logs\"} 100\n\
        spillway_incoming_bytes_total{stream=\"logs\"} 1048576\n\
        spillway_delivered_records_total{stream=\"logs\",sink=\"s3\"} 50\n\
        spillway_delivered_bytes_total{stream=\"logs\",sink=\"s3\"} 0\n\
        spillway_data_freshness_seconds{stream=\"logs\",sink=\"s3\"} 2.5\n\
        spillway_wal_bytes{stream=\"logs\"} 2097152\n\
        spillway_open_partitions{stream=\"logs\"} 3\n\
        spillway_delivery_retries_total{stream=\"logs\",sink=\"s3\"} 4\n\
        spillway_error_output_records_total{stream=\"logs\",sink=\"s3\"} 5\n\
        spillway_sink_up{stream=\"logs\",sink=\"s3\"} 1\n\
        spillway_incoming_records_total{stream=\"other\"} 0\n\
        # EOF\n";

    #[test]
    fn a_scrape_reads_every_stream_and_rates_come_from_two() {
        let start = Instant::now();
        let first = parse_scrape(SCRAPE_1, start);
        assert_eq!(first.streams.keys().collect::<Vec<_>>(), ["logs", "other"]);
        let logs = &first.streams["logs"];
        assert_eq!(logs.open_partitions, 3.0);
        assert_eq!(logs.freshness_seconds, 2.5);
        assert_eq!(logs.sink_up, Some(true));
        assert_eq!(first.streams["other"].sink_up, None);

        let later = SCRAPE_1
            .replace("incoming_records_total{stream=\"logs\"} 100", "incoming_records_total{stream=\"logs\"} 300")
            .replace("incoming_bytes_total{stream=\"logs\"} 1048576", "incoming_bytes_total{stream=\"logs\"} 5242880");
        let second = parse_scrape(&later, start + Duration::from_secs(2));
        let table = render_table(Some(&first), &second);
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row, ["logs", "100.0", "2.0", "0.0", "0.0", "2.5s", "2.0", "3", "4", "5", "up"], "{table}");
        assert!(render_table(None, &second).lines().nth(1).unwrap().contains(" - "));
    }
}
