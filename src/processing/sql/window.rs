//! A windowed `sql` transform's state: the open windows of one stream, each with its groups'
//! accumulators ([`AggregateQuery`]), and the event-time watermark that closes them.
//!
//! Records are fed in WAL order, frame by frame. Each record's time (its arrival, or a field of
//! the record) places it in one window (tumbling) or `size / slide` windows (sliding). The
//! watermark is the newest time seen minus `allowed_lateness_seconds`; a window closes when the
//! watermark reaches its end, and its rows are given out then, once. A record whose every window
//! has closed is late. While the stream is idle the reader advances the watermark by the clock
//! ([`WindowStage::advance_idle`]), so the last windows close without new records.
//!
//! What a crash must not change is kept in [`WindowPosition`], written with every output: the
//! records consumed (`consumed`), the oldest record of an open window (`hold`: the upstream WAL
//! keeps it) and the newest time (`max_time`, which decides what is closed). After a restart the
//! stage is rebuilt by feeding the records from `hold` again with `replay_until = consumed`:
//! they only refill the open windows (anything they would give out was given already), so every
//! window's rows are exactly those of an uninterrupted run.
//!
//! Must not: read the clock (the reader passes the idle time in) or do I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use datafusion_common::DataFusionError;
use datafusion_expr::Accumulator;
use spillway_sink_s3::parquet::columns::{KeyOptions, StructColumn};
use spillway_sink_s3::parquet::schema::ColumnType;

use super::aggregate::{AggregateQuery, GroupIndex, GroupKey};
use super::engine::{batch_of, one_line, read_row};
use super::{
    LateRecords, SQL_INVALID_EVENT_TIME, SQL_LATE_RECORD, SQL_QUERY_FAILED, SQL_TOO_MANY_GROUPS, SqlConfig, TimeFormat,
    WindowConfig, WindowTime,
};

/// What the stage gives out, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowOutput {
    /// A closed window's rows (JSON objects with `window_start` and `window_end` first).
    Rows { rows: Vec<Bytes> },
    /// A record that goes to the error output.
    Failed { sequence: u64, data: Bytes, code: &'static str, message: String },
    /// A late record dropped (`late_records: drop`), for the metric.
    Dropped,
}

/// Where the stage stands, saved with each output (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPosition {
    pub consumed: u64,
    pub hold: u64,
    pub max_time: i64,
}

impl WindowPosition {
    pub fn encode(&self) -> String {
        format!("window:{}:{}:{}", self.consumed, self.hold, self.max_time)
    }

    pub fn decode(text: &str) -> Option<WindowPosition> {
        let mut parts = text.strip_prefix("window:")?.split(':');
        let position = WindowPosition {
            consumed: parts.next()?.parse().ok()?,
            hold: parts.next()?.parse().ok()?,
            max_time: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(position)
    }
}

struct Window {
    /// Sequence of the first record fed into it: the WAL must keep it while the window is open.
    first_sequence: u64,
    index: GroupIndex,
    groups: Vec<(GroupKey, Vec<Box<dyn Accumulator>>)>,
}

/// A record read and placed, waiting to be fed.
struct Pending {
    sequence: u64,
    data: Bytes,
    /// Ends of its open windows.
    windows: Vec<i64>,
}

pub struct WindowStage {
    window: WindowConfig,
    query: AggregateQuery,
    columns: Vec<(String, ColumnType)>,
    options: Arc<KeyOptions>,
    renames: HashMap<String, String>,
    time_path: Option<Vec<String>>,
    /// Open windows by end.
    open: BTreeMap<i64, Window>,
    /// Newest time seen (advanced by the clock while idle); `i64::MIN` before any.
    max_time: i64,
    /// Rows read since the last feed, and what they are.
    rows: StructColumn,
    pending: Vec<Pending>,
    /// Late records (for the metric) and records refused, since the start.
    pub late_records: u64,
}

impl WindowStage {
    /// Compile a windowed transform; fails only where [`SqlConfig::validate`] reports a problem.
    pub fn build(config: &SqlConfig) -> Result<WindowStage, String> {
        let problems = config.validate();
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(|(field, message)| format!("{field}: {message}")).collect();
            return Err(text.join("; "));
        }
        let window = config.window.clone().ok_or("not a windowed transform")?;
        let table = config.table().ok().flatten().ok_or("a windowed query needs given columns")?;
        let query = AggregateQuery::plan(&config.query, table.arrow_schema())?;
        let options = Arc::new(KeyOptions {
            case_insensitive: config.case_insensitive,
            dots_to_underscores: config.convert_dots_in_json_keys_to_underscores,
        });
        let renames: HashMap<String, String> = config.column_to_json_key_mappings.clone().into_iter().collect();
        let rows = StructColumn::new(&table.columns, options.clone(), &renames);
        Ok(WindowStage {
            time_path: window.time_path(),
            window,
            query,
            columns: table.columns,
            options,
            renames,
            open: BTreeMap::new(),
            max_time: i64::MIN,
            rows,
            pending: Vec::new(),
            late_records: 0,
        })
    }

    /// Continue from a saved position: what is closed is decided by its newest time.
    pub fn restore(&mut self, position: &WindowPosition) {
        self.max_time = position.max_time;
    }

    pub fn position(&self, consumed: u64) -> WindowPosition {
        let hold = self.open.values().map(|window| window.first_sequence).min().unwrap_or(consumed);
        WindowPosition { consumed, hold: hold.min(consumed), max_time: self.max_time }
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    fn watermark(&self) -> i64 {
        self.max_time.saturating_sub(self.window.lateness_ms())
    }

    /// Feed one frame's records (`first_sequence` on). Records below `replay_until` were fed
    /// before a restart: they refill open windows only, and give nothing out.
    pub fn feed(
        &mut self,
        first_sequence: u64,
        arrival_ms: i64,
        records: &[Bytes],
        replay_until: u64,
    ) -> Vec<WindowOutput> {
        let mut out = Vec::new();
        for (offset, data) in records.iter().enumerate() {
            let sequence = first_sequence + offset as u64;
            let replayed = sequence < replay_until;
            let fail = |code: &'static str, message: String, out: &mut Vec<WindowOutput>| {
                if !replayed {
                    out.push(WindowOutput::Failed { sequence, data: data.clone(), code, message });
                }
            };
            let time = match self.event_time(data, arrival_ms) {
                Ok(time) => time,
                Err(message) => {
                    fail(SQL_INVALID_EVENT_TIME, message, &mut out);
                    continue;
                }
            };
            let watermark = self.watermark();
            let windows: Vec<i64> = self.window_ends(time).filter(|end| *end > watermark).collect();
            if windows.is_empty() {
                if !replayed {
                    self.late_records += 1;
                    match self.window.late_records {
                        LateRecords::ErrorOutput => fail(
                            SQL_LATE_RECORD,
                            format!(
                                "the record's time {} is in windows that closed (the watermark is {}, allowed lateness {} s)",
                                rfc3339(time),
                                rfc3339(watermark),
                                self.window.allowed_lateness_seconds
                            ),
                            &mut out,
                        ),
                        LateRecords::Drop => out.push(WindowOutput::Dropped),
                    }
                }
                continue;
            }
            if let Err(failure) = read_row(&mut self.rows, data) {
                fail(failure.code, failure.message, &mut out);
                continue;
            }
            self.pending.push(Pending { sequence, data: data.clone(), windows });
            if time > self.max_time {
                self.max_time = time;
                if self.open.keys().next().is_some_and(|end| *end <= self.watermark()) {
                    out.extend(self.flush(replay_until));
                    out.extend(self.close_due());
                }
            }
        }
        out.extend(self.flush(replay_until));
        out.extend(self.close_due());
        out
    }

    /// The stream has been idle for `idle_ms` since the newest record was fed: move the newest
    /// time on by as much, closing the windows that passes (a stream that goes quiet still gets
    /// its last windows).
    pub fn advance_idle(&mut self, newest_fed_time: i64, idle_ms: i64) -> Vec<WindowOutput> {
        if self.max_time == i64::MIN {
            return Vec::new();
        }
        let moved = newest_fed_time.saturating_add(idle_ms);
        if moved <= self.max_time {
            return Vec::new();
        }
        self.max_time = moved;
        self.close_due()
    }

    /// The newest time seen (for the reader's idle clock).
    pub fn max_time(&self) -> i64 {
        self.max_time
    }

    /// Feed the pending rows into their windows' accumulators.
    fn flush(&mut self, replay_until: u64) -> Vec<WindowOutput> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let pending = std::mem::take(&mut self.pending);
        let rows =
            std::mem::replace(&mut self.rows, StructColumn::new(&self.columns, self.options.clone(), &self.renames));
        match self.feed_rows(rows, &pending, replay_until) {
            Ok(out) => out,
            // The batch failed as a whole (an evaluation error, found before any accumulator
            // moved): feed each record on its own, so the error lands on the records that raise it.
            Err(_) if pending.len() > 1 => {
                let mut out = Vec::new();
                for record in pending {
                    let mut rows = StructColumn::new(&self.columns, self.options.clone(), &self.renames);
                    if read_row(&mut rows, &record.data).is_ok() {
                        match self.feed_rows(rows, std::slice::from_ref(&record), replay_until) {
                            Ok(more) => out.extend(more),
                            Err(error) => out.extend(query_failed(&record, &error, replay_until)),
                        }
                    }
                }
                out
            }
            Err(error) => {
                pending.first().and_then(|record| query_failed(record, &error, replay_until)).into_iter().collect()
            }
        }
    }

    fn feed_rows(
        &mut self,
        mut rows: StructColumn,
        pending: &[Pending],
        replay_until: u64,
    ) -> Result<Vec<WindowOutput>, DataFusionError> {
        let mut out = Vec::new();
        let batch: RecordBatch = batch_of(rows.finish()?, &[])?;
        let (input_rows, input) = self.query.input_rows(batch)?;
        let (keys, arguments) = self.query.keys_and_arguments(&input)?;
        // (window end, group) → the input rows it gets, in order.
        let mut fed: BTreeMap<(i64, usize), Vec<u32>> = BTreeMap::new();
        let mut refused: Vec<usize> = Vec::new();
        for (input_row, (pending_row, key)) in input_rows.iter().zip(keys).enumerate() {
            let record = &pending[*pending_row];
            for end in &record.windows {
                let window = self.open.entry(*end).or_insert_with(|| Window {
                    first_sequence: record.sequence,
                    index: GroupIndex::new(),
                    groups: Vec::new(),
                });
                let group = match window.index.get(&key) {
                    Some(group) => *group,
                    None if window.groups.len() >= self.window.max_groups => {
                        if record.sequence >= replay_until && refused.last() != Some(pending_row) {
                            refused.push(*pending_row);
                        }
                        continue;
                    }
                    None => {
                        let group = window.groups.len();
                        window.groups.push((key.clone(), self.query.accumulators()?));
                        window.index.insert(key.clone(), group);
                        group
                    }
                };
                fed.entry((*end, group)).or_default().push(input_row as u32);
            }
        }
        for ((end, group), rows) in fed {
            if let Some(window) = self.open.get_mut(&end) {
                AggregateQuery::update(&mut window.groups[group].1, &arguments, &rows)?;
            }
        }
        for row in refused {
            out.push(WindowOutput::Failed {
                sequence: pending[row].sequence,
                data: pending[row].data.clone(),
                code: SQL_TOO_MANY_GROUPS,
                message: format!("a window already holds window.max_groups = {} groups", self.window.max_groups),
            });
        }
        Ok(out)
    }

    /// Close, in order, the windows the watermark has passed.
    fn close_due(&mut self) -> Vec<WindowOutput> {
        let watermark = self.watermark();
        let mut out = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() > watermark {
                break;
            }
            let (end, window) = entry.remove_entry();
            let start = end - self.window.size_ms();
            match self.query.finish(window.groups) {
                Ok(rows) => {
                    let prefix =
                        format!("{{\"window_start\":\"{}\",\"window_end\":\"{}\"", rfc3339(start), rfc3339(end));
                    let rows = rows.into_iter().map(|row| with_window(&prefix, &row)).collect();
                    out.push(WindowOutput::Rows { rows });
                }
                Err(error) => {
                    tracing::error!(window_start = %rfc3339(start), error = %one_line(&error), "a window's query failed; the window gives no rows");
                }
            }
        }
        out
    }

    /// The ends of the windows `time` is in, oldest first.
    fn window_ends(&self, time: i64) -> impl Iterator<Item = i64> + use<> {
        let (size, slide) = (self.window.size_ms(), self.window.slide_ms());
        let last_start = time.div_euclid(slide) * slide;
        let count = size / slide;
        (0..count).rev().map(move |back| last_start - back * slide + size).filter(move |end| *end > time)
    }

    fn event_time(&self, data: &[u8], arrival_ms: i64) -> Result<i64, String> {
        let Some(path) = &self.time_path else { return Ok(arrival_ms) };
        let WindowTime::Field { field, format } = &self.window.time else { return Ok(arrival_ms) };
        let value = sonic_rs::get(data, path.iter().map(String::as_str))
            .map_err(|error| format!("the record has no time at `{field}`: {error}"))?;
        let text = value.as_raw_str();
        parse_time(text, *format).ok_or_else(|| format!("`{field}` is {text}, not a time ({format:?})"))
    }
}

fn query_failed(record: &Pending, error: &DataFusionError, replay_until: u64) -> Option<WindowOutput> {
    (record.sequence >= replay_until).then(|| WindowOutput::Failed {
        sequence: record.sequence,
        data: record.data.clone(),
        code: SQL_QUERY_FAILED,
        message: one_line(error),
    })
}

/// A time as JSON text (a string or a number) in milliseconds since the epoch.
fn parse_time(json: &str, format: TimeFormat) -> Option<i64> {
    let number = |text: &str| text.parse::<f64>().ok().filter(|number| number.is_finite());
    if let Some(text) = json.strip_prefix('"').and_then(|text| text.strip_suffix('"')) {
        return match format {
            TimeFormat::Auto | TimeFormat::Iso8601 => {
                chrono::DateTime::parse_from_rfc3339(text).map(|time| time.timestamp_millis()).ok().or_else(|| {
                    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                        .ok()
                        .map(|time| time.and_utc().timestamp_millis())
                })
            }
            TimeFormat::EpochSeconds => number(text).map(|seconds| (seconds * 1000.0) as i64),
            TimeFormat::EpochMilliseconds => number(text).map(|millis| millis as i64),
        };
    }
    let value = number(json)?;
    match format {
        TimeFormat::Iso8601 => None,
        TimeFormat::EpochSeconds => Some((value * 1000.0) as i64),
        TimeFormat::EpochMilliseconds => Some(value as i64),
        TimeFormat::Auto if value.abs() < 1e11 => Some((value * 1000.0) as i64),
        TimeFormat::Auto => Some(value as i64),
    }
}

fn rfc3339(millis: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(millis) {
        Some(time) if millis % 1000 == 0 => time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(time) => time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => millis.to_string(),
    }
}

/// `row` (a JSON object) with the window's columns first.
fn with_window(prefix: &str, row: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(prefix.len() + row.len() + 1);
    out.extend_from_slice(prefix.as_bytes());
    match row.strip_prefix(b"{").filter(|rest| *rest != b"}") {
        Some(rest) => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
        None => out.push(b'}'),
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(window: &str, query: &str) -> WindowStage {
        let yaml = format!(
            "query: \"{query}\"\nschema: {{ columns: [ {{ name: ts, type: string }}, {{ name: service, type: string }}, {{ name: ms, type: double }} ] }}\nwindow: {window}\n"
        );
        let config: SqlConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        WindowStage::build(&config).unwrap()
    }

    fn record(second: i64, service: &str, ms: f64) -> Bytes {
        Bytes::from(format!(r#"{{"ts":{second},"service":"{service}","ms":{ms}}}"#))
    }

    fn rows(out: &[WindowOutput]) -> Vec<String> {
        out.iter()
            .flat_map(|output| match output {
                WindowOutput::Rows { rows, .. } => {
                    rows.iter().map(|row| String::from_utf8(row.to_vec()).unwrap()).collect()
                }
                _ => Vec::new(),
            })
            .collect()
    }

    const COUNTS: &str = "SELECT service, count(*) AS n, sum(ms) AS total FROM records GROUP BY service";

    #[test]
    fn tumbling_windows_close_when_the_watermark_passes_and_late_records_are_failed() {
        let mut stage =
            stage("{ type: tumbling, size_seconds: 60, time: { field: .ts }, allowed_lateness_seconds: 10 }", COUNTS);
        let out = stage.feed(
            0,
            0,
            &[record(5, "a", 1.0), record(30, "b", 2.0), record(59, "a", 3.0), record(65, "a", 4.0)],
            0,
        );
        assert!(rows(&out).is_empty(), "the watermark (65 - 10) has not passed 60");
        let out = stage.feed(4, 0, &[record(55, "b", 5.0), record(71, "b", 6.0)], 0);
        assert_eq!(
            rows(&out),
            [
                r#"{"window_start":"1970-01-01T00:00:00Z","window_end":"1970-01-01T00:01:00Z","service":"a","n":2,"total":4.0}"#,
                r#"{"window_start":"1970-01-01T00:00:00Z","window_end":"1970-01-01T00:01:00Z","service":"b","n":2,"total":7.0}"#,
            ]
        );
        let out = stage.feed(6, 0, &[record(20, "a", 1.0)], 0);
        assert!(matches!(&out[..], [WindowOutput::Failed { sequence: 6, code: SQL_LATE_RECORD, .. }]), "{out:?}");
        // Idle: the clock moves the newest time on and the last window closes.
        let out = stage.advance_idle(71_000, 60_000);
        assert_eq!(rows(&out).len(), 2);
        assert_eq!(stage.open_windows(), 0);
    }

    #[test]
    fn sliding_windows_hold_each_record_in_size_over_slide_windows() {
        let mut stage = stage(
            "{ type: sliding, size_seconds: 60, slide_seconds: 30, time: { field: .ts } }",
            "SELECT count(*) AS n FROM records",
        );
        let out = stage.feed(
            0,
            0,
            &[record(10, "a", 1.0), record(40, "a", 1.0), record(70, "a", 1.0), record(100, "a", 1.0)],
            0,
        );
        assert_eq!(
            rows(&out),
            [
                r#"{"window_start":"1969-12-31T23:59:30Z","window_end":"1970-01-01T00:00:30Z","n":1}"#,
                r#"{"window_start":"1970-01-01T00:00:00Z","window_end":"1970-01-01T00:01:00Z","n":2}"#,
                r#"{"window_start":"1970-01-01T00:00:30Z","window_end":"1970-01-01T00:01:30Z","n":2}"#,
            ]
        );
    }

    #[test]
    fn a_restored_stage_fed_again_from_the_hold_gives_what_an_uninterrupted_one_gives() {
        let window = "{ type: tumbling, size_seconds: 10, time: { field: .ts }, allowed_lateness_seconds: 5 }";
        let records: Vec<Bytes> = (0..400)
            .map(|i| record((i * 7919 % 300) as i64 / 3 + i as i64 / 4, ["a", "b", "c"][i % 3], i as f64 * 0.1))
            .collect();
        let frames: Vec<(u64, &[Bytes])> =
            records.chunks(17).enumerate().map(|(n, chunk)| ((n * 17) as u64, chunk)).collect();
        let mut whole = stage(window, COUNTS);
        let mut expected = Vec::new();
        for (first, frame) in &frames {
            expected.extend(whole.feed(*first, 0, frame, 0));
        }
        // Crash after any frame that gave something out: restart from the saved position.
        let mut first_run = stage(window, COUNTS);
        let mut got = Vec::new();
        let mut saved = None;
        for (index, (first, frame)) in frames.iter().enumerate() {
            let out = first_run.feed(*first, 0, frame, 0);
            if !out.is_empty() {
                got.extend(out);
                saved = Some(first_run.position(first + frame.len() as u64));
            }
            if index == frames.len() / 2 {
                break;
            }
        }
        let saved = saved.expect("something was given out");
        let mut second_run = stage(window, COUNTS);
        second_run.restore(&saved);
        for (first, frame) in &frames {
            let end = first + frame.len() as u64;
            if end <= saved.hold {
                continue;
            }
            let skip = saved.hold.saturating_sub(*first) as usize;
            got.extend(second_run.feed(first + skip as u64, 0, &frame[skip..], saved.consumed));
        }
        assert_eq!(got, expected);
        assert!(expected.iter().any(|output| matches!(output, WindowOutput::Failed { .. })), "some records were late");
    }

    #[test]
    fn positions_round_trip_and_times_parse() {
        let position = WindowPosition { consumed: 10, hold: 3, max_time: -5 };
        assert_eq!(WindowPosition::decode(&position.encode()), Some(position));
        assert_eq!(parse_time("\"2026-12-06T12:00:00Z\"", TimeFormat::Auto), Some(1_796_558_400_000));
        assert_eq!(parse_time("1796558400", TimeFormat::Auto), Some(1_796_558_400_000));
        assert_eq!(parse_time("1796558400123", TimeFormat::Auto), Some(1_796_558_400_123));
        assert_eq!(parse_time("\"soon\"", TimeFormat::Auto), None);
    }
}
