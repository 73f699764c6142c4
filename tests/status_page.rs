//! The status page in headless Chromium at 1,280 × 800 while records flow: it renders every
//! configured stream with its source, sink and where the sink writes (and the HTTP endpoint's
//! requests by outcome), non-zero records/s and
//! bytes/s for the loaded stream, totals that match `/metrics` read before and after, and a
//! failing stream's long last error wrapped inside the window (nothing reaches past 1,280 px,
//! nothing is clipped). A screenshot is kept as `status-page.png` in cargo's
//! `CARGO_TARGET_TMPDIR` for a look.
//!
//! Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`), so the
//! test reads the live page and its layout as a script in it would, with no driver to install
//! beside Debian's `chromium` (which `scripts/services.sh install` adds). The server has no
//! `server.auth` here; with it, the page needs `open_routes: [status, metrics]`, as a browser
//! cannot sign requests.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use base64::Engine as _;
use common::Spillway;
use serde_json::{Value, json};

const WINDOW_WIDTH: u32 = 1280;
const WINDOW_HEIGHT: u32 = 800;

/// A long URL without a break opportunity: the failing stream's destination and its error
/// (`cannot reach <url>`) must wrap anywhere to fit.
fn unreachable_url() -> String {
    format!("http://127.0.0.1:1/{}", "an-opensearch-behind-a-proxy-path-".repeat(10))
}

fn yaml() -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 2\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: busy\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: file://./out-busy, prefix: 'logs/' }}\n\
         \x20 - name: quiet\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: file://./out-quiet }}\n\
         \x20 - name: failing\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink:\n\
         \x20     type: opensearch\n\
         \x20     url: {}\n\
         \x20     index: events\n\
         \x20     backup: {{ sink: {{ url: file://./backup }} }}\n\
         \x20 - name: intake\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink:\n\
         \x20     type: http_endpoint\n\
         \x20     url: http://127.0.0.1:1/intake\n\
         \x20     backup: {{ sink: {{ url: file://./intake-backup }} }}\n\
         \x20 - name: per-second\n\
         \x20   source: {{ type: stream, stream: busy }}\n\
         \x20   processing:\n\
         \x20     transforms:\n\
         \x20       - {{ type: sql, query: 'SELECT count(*) AS n FROM records', schema: {{ columns: [ {{ name: put, type: bigint }} ] }}, window: {{ type: tumbling, size_seconds: 1 }} }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: file://./out-windows }}\n",
        unreachable_url()
    )
}

fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let found = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().ok()?;
            let path = String::from_utf8(found.stdout).ok()?.trim().to_string();
            (!path.is_empty()).then(|| PathBuf::from(path))
        })
        .expect("chromium not found: `scripts/services.sh install` installs Debian's chromium")
}

/// How long one browser session may take before the watchdog kills Chromium (a blocked read of
/// its pipe then ends).
const BROWSER_DEADLINE: Duration = Duration::from_secs(120);

/// Headless Chromium with one page, spoken to over `--remote-debugging-pipe`: DevTools JSON
/// messages ended by a NUL byte, read by Chromium from fd 3 and written to fd 4.
struct Browser {
    child: Child,
    to_browser: std::io::PipeWriter,
    from_browser: BufReader<std::io::PipeReader>,
    next_id: u64,
    session: Option<String>,
    watchdog: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Browser {
    fn launch(profile: &Path) -> Browser {
        let (browser_reads, to_browser) = std::io::pipe().unwrap();
        let (from_browser, browser_writes) = std::io::pipe().unwrap();
        let (read_fd, write_fd) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        let mut command = Command::new(chromium());
        command
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--window-size={WINDOW_WIDTH},{WINDOW_HEIGHT}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2). Both ends are
        // first copied above fd 4 so that placing one on 3 cannot overwrite the other; the
        // copies made by F_DUPFD and dup2 are not close-on-exec, so Chromium inherits fds 3, 4.
        unsafe {
            command.pre_exec(move || {
                let read_copy = libc::fcntl(read_fd, libc::F_DUPFD, 10);
                let write_copy = libc::fcntl(write_fd, libc::F_DUPFD, 10);
                if read_copy < 0 || write_copy < 0 || libc::dup2(read_copy, 3) < 0 || libc::dup2(write_copy, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        // Our copies of Chromium's ends go, so a Chromium that exits ends our reads.
        drop((browser_reads, browser_writes));
        let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
        let pid = child.id() as libc::pid_t;
        let watchdog = std::thread::spawn(move || {
            if cancelled.recv_timeout(BROWSER_DEADLINE).is_err() {
                // SAFETY: the child is reaped only after this thread is joined (Drop), so the
                // pid is still Chromium's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        Browser {
            child,
            to_browser,
            from_browser: BufReader::new(from_browser),
            next_id: 0,
            session: None,
            watchdog: Some((cancel, watchdog)),
        }
    }

    /// Send one command (to the page once attached) and wait for its answer, skipping events.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let mut message = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).expect("write to chromium");
        loop {
            let answer = self.read_message(method);
            if answer["id"] != json!(self.next_id) {
                continue;
            }
            assert!(answer.get("error").is_none(), "{method} failed: {answer}");
            return answer["result"].clone();
        }
    }

    /// Open `url` in a new page of the window's size and attach to it.
    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached =
            self.call("Target.attachToTarget", json!({ "targetId": target["targetId"].clone(), "flatten": true }));
        self.session = attached["sessionId"].as_str().map(str::to_string);
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": WINDOW_WIDTH, "height": WINDOW_HEIGHT, "deviceScaleFactor": 1, "mobile": false }),
        );
        self.call("Page.enable", json!({}));
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_for_event("Page.loadEventFired");
    }

    /// Read messages until the page sends the event `method`.
    fn wait_for_event(&mut self, method: &str) {
        loop {
            let message = self.read_message(method);
            if message["method"] == method && message["sessionId"].as_str() == self.session.as_deref() {
                return;
            }
        }
    }

    fn read_message(&mut self, during: &str) -> Value {
        let mut message = Vec::new();
        let read = self.from_browser.read_until(0, &mut message).expect("read from chromium");
        assert!(read > 0 && message.pop() == Some(0), "chromium closed its pipe during {during}");
        serde_json::from_slice(&message).expect("a DevTools message")
    }

    /// The value of `expression` (a promise is awaited); its exception fails the test.
    fn evaluate(&mut self, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }));
        assert!(result.get("exceptionDetails").is_none(), "the page's script failed: {result}");
        result["result"]["value"].clone()
    }

    fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some((cancel, watchdog)) = self.watchdog.take() {
            let _ = cancel.send(());
            let _ = watchdog.join();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs in the page: waits (30 s at most) until the page shows non-zero rates in and out for
/// `busy` and the failing stream's error, then returns what it shows and how it is laid out.
const READ_PAGE: &str = r##"(async () => {
  const read = () => {
    const streams = {};
    for (const row of document.querySelectorAll("tr[data-stream]")) {
      const fields = {};
      for (const node of row.querySelectorAll("[data-field]")) fields[node.dataset.field] = node.textContent;
      const chart = row.querySelector("polyline.in");
      streams[row.dataset.stream] = { fields, incomingRecords: Number(row.dataset.incomingRecords),
        chartIn: chart ? chart.getAttribute("points") : null };
    }
    const errors = {};
    for (const row of document.querySelectorAll("tr[data-error-for]")) {
      const cell = row.firstElementChild;
      errors[row.dataset.errorFor] = { text: cell.textContent, clipped: cell.scrollWidth > cell.clientWidth,
        right: cell.getBoundingClientRect().right };
    }
    const beyond = [...document.querySelectorAll("body *")]
      .filter(node => node.getBoundingClientRect().right > window.innerWidth + 0.5)
      .map(node => `${node.tagName.toLowerCase()}.${node.getAttribute("class") || ""}`);
    return { refreshes: Number(document.body.dataset.refreshes || 0), ready: document.getElementById("ready").textContent,
      reasons: [...document.querySelectorAll("#reasons li")].map(item => item.textContent),
      innerWidth: window.innerWidth, scrollWidth: document.documentElement.scrollWidth, beyond, streams, errors };
  };
  const positive = text => parseFloat(text) > 0;
  const shown = page => {
    const busy = page.streams.busy;
    return busy && positive(busy.fields.in_records_per_second) && positive(busy.fields.in_bytes_per_second)
      && positive(busy.fields.out_records_per_second) && positive(busy.fields.out_bytes_per_second)
      && page.errors.failing !== undefined && page.streams.intake !== undefined
      && (page.streams.intake.fields.requests || "").includes("connection")
      && page.streams["per-second"] !== undefined && /· [1-9][0-9]* rows/.test(page.streams["per-second"].fields.windows || "");
  };
  const deadline = Date.now() + 30000;
  let page = read();
  while (!shown(page) && Date.now() < deadline) {
    await new Promise(resolve => setTimeout(resolve, 200));
    page = read();
  }
  return page;
})()"##;

/// The chart's y coordinate of a zero rate (the page draws 36 px high charts with 2 px margins).
const CHART_BASELINE: f64 = 34.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn the_status_page_fits_1280_px_and_shows_destinations_live_rates_and_the_last_error() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &yaml());
    let client = spillway.client().await;
    let loading = Arc::new(AtomicBool::new(true));
    let load = {
        let (client, loading) = (client.clone(), loading.clone());
        tokio::spawn(async move {
            let mut puts = 0u64;
            // Bounded: the test stops the load when the browser is done, or this does after 3 minutes.
            let until = std::time::Instant::now() + Duration::from_secs(180);
            while loading.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                let records = (0..20).map(|index| {
                    Record::builder()
                        .data(Blob::new(format!("{{\"put\":{puts},\"index\":{index}}}\n")))
                        .build()
                        .unwrap()
                });
                let batch = Some(records.collect());
                client.put_record_batch().delivery_stream_name("busy").set_records(batch).send().await.unwrap();
                if puts.is_multiple_of(10) {
                    let record = Record::builder().data(Blob::new(format!("{{\"put\":{puts}}}"))).build().unwrap();
                    client.put_record().delivery_stream_name("failing").record(record.clone()).send().await.unwrap();
                    client.put_record().delivery_stream_name("intake").record(record).send().await.unwrap();
                }
                puts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            puts
        })
    };
    let incoming = "spillway_incoming_records_total{stream=\"busy\"}";
    let deadline = std::time::Instant::now() + common::WAIT;
    let before = loop {
        match spillway.metric(incoming).await {
            Some(records) if records > 0.0 => break records,
            _ => assert!(std::time::Instant::now() < deadline, "the load never started"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let profile = tempfile::tempdir().unwrap();
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let page = tokio::task::spawn_blocking({
        let (profile, url, screenshot) =
            (profile.path().to_path_buf(), format!("{}/", spillway.endpoint), screenshot.clone());
        move || {
            let mut browser = Browser::launch(&profile);
            browser.open(&url);
            let page = browser.evaluate(READ_PAGE);
            browser.screenshot(&screenshot);
            page
        }
    })
    .await
    .unwrap();
    let after = spillway.metric(incoming).await.unwrap();
    loading.store(false, Ordering::Relaxed);
    assert!(load.await.unwrap() > 0);

    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(png.len() > 10_000 && png.starts_with(b"\x89PNG"), "screenshot of {} bytes", png.len());
    let stream = |name: &str| page["streams"][name].clone();
    let field = |name: &str, field: &str| stream(name)["fields"][field].as_str().unwrap_or_default().to_string();
    let destinations = [
        ("busy", "direct_put", "s3", "file://./out-busy (prefix logs/)".to_string()),
        ("quiet", "direct_put", "s3", "file://./out-quiet".to_string()),
        ("failing", "direct_put", "opensearch", format!("{} index events", unreachable_url())),
        ("intake", "direct_put", "http_endpoint", "http://127.0.0.1:1/intake".to_string()),
    ];
    for (name, source, sink, destination) in destinations {
        assert_eq!(
            (field(name, "name"), field(name, "source"), field(name, "sink"), field(name, "destination")),
            (name.to_string(), source.to_string(), sink.to_string(), destination),
            "{page:#}"
        );
    }

    // A windowed sql transform shows its windows; other streams show none.
    let windows = field("per-second", "windows");
    assert!(
        windows.starts_with("windows: ") && windows.ends_with(" · 0 late") && !windows.contains(" · 0 rows"),
        "{page:#}"
    );
    assert!(page["streams"]["busy"]["fields"].get("windows").is_none(), "{page:#}");

    // A sink that counts its requests (the HTTP endpoint) shows them by outcome.
    let requests = field("intake", "requests");
    assert!(requests.starts_with("requests: connection ") && requests.ends_with(" sent"), "{page:#}");

    // Live rates: the page derives them from two scrapes; under load both are above zero.
    let leading_number = |text: &str| text.split(' ').next().and_then(|number| number.parse::<f64>().ok());
    for rate in ["in_records_per_second", "in_bytes_per_second", "out_records_per_second", "out_bytes_per_second"] {
        let shown = field("busy", rate);
        assert!(leading_number(&shown).is_some_and(|value| value > 0.0), "busy shows {rate} {shown:?}: {page:#}");
    }
    assert!(field("busy", "in_bytes_per_second").ends_with("B/s"), "{page:#}");
    assert_eq!(field("quiet", "in_records_per_second"), "0.0", "{page:#}");
    assert_eq!(field("quiet", "in_bytes_per_second"), "0 B/s", "{page:#}");
    let chart = stream("busy")["chartIn"].as_str().unwrap_or_default().to_string();
    let heights: Vec<f64> = chart.split(' ').filter_map(|point| point.split(',').nth(1)?.parse().ok()).collect();
    assert!(heights.iter().any(|y| *y < CHART_BASELINE), "busy's chart shows its rate: {page:#}");
    // The page's totals come from a /metrics scrape taken while Chromium ran.
    let shown = stream("busy")["incomingRecords"].as_f64().unwrap();
    assert!(before <= shown && shown <= after, "page shows {shown}, /metrics read {before} then {after}");

    // The failing stream's last error is shown whole, wrapped inside the window.
    let error = &page["errors"]["failing"];
    let text = error["text"].as_str().unwrap_or_default();
    assert!(text.contains("cannot reach") && text.contains(&unreachable_url()), "the whole error is shown: {page:#}");
    assert_eq!(error["clipped"], false, "{page:#}");
    assert!(error["right"].as_f64().unwrap() <= f64::from(WINDOW_WIDTH), "{page:#}");
    assert!(page["errors"].get("busy").is_none(), "busy has no error: {page:#}");
    assert_eq!(page["ready"], "not ready", "{page:#}");
    assert!(page["reasons"].as_array().is_some_and(|reasons| !reasons.is_empty()), "{page:#}");

    // It fits the window: no horizontal scroll, nothing drawn past its right edge.
    assert_eq!(page["innerWidth"], WINDOW_WIDTH, "{page:#}");
    assert!(page["scrollWidth"].as_u64().unwrap() <= u64::from(WINDOW_WIDTH), "{page:#}");
    assert_eq!(page["beyond"], json!([]), "{page:#}");
    assert_eq!(spillway.terminate(), 0);
}
