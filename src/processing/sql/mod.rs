//! The `sql` transform (`processing.transforms[] {type: sql, query: …}`): a SQL query over the
//! table `records`, run on micro-batches of records with Apache DataFusion's planner and
//! expression kernels. Records become Arrow rows with the Parquet format's JSON reader (a given
//! table, a schema file, or each record's own inferred types); every row the query keeps becomes
//! one JSON record.
//!
//! The query is stateless: `SELECT <expressions> FROM records [WHERE <condition>]`, with
//! immutable functions only, so each record's outputs depend on that record alone — whatever
//! micro-batch it is read in, and however often a batch is rebuilt from the WAL after a crash.
//! Aggregates, ORDER BY, LIMIT, DISTINCT, joins and clock or random functions are refused when
//! the config is validated.
//!
//! This file holds the configuration (parsed by every build); [`engine`] the query itself
//! (feature `transform-sql`). Must not: do I/O past reading a schema file when built, read the
//! clock, or know about batches, partitions or sinks.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use spillway_sink_s3::parquet::schema::{ColumnConfig, Table};

#[cfg(feature = "transform-sql")]
pub mod aggregate;
#[cfg(feature = "transform-sql")]
pub mod engine;
#[cfg(feature = "transform-sql")]
pub mod window;

/// `errorCode` of a record an `sql` transform cannot read as JSON.
pub const SQL_NON_JSON_RECORD: &str = "Sql.NonJsonRecord";
/// `errorCode` of a record whose values do not fit the transform's table (a string where the
/// table has a number, an array for a struct, a JSON value that is not an object).
pub const SQL_MALFORMED_DATA: &str = "Sql.MalformedData";
/// `errorCode` of a record on which the query fails: its evaluation raised an error (a cast
/// that fails, a division by zero), or, with inferred types, the query does not type-check for
/// the record's own types.
pub const SQL_QUERY_FAILED: &str = "Sql.QueryFailed";

/// The one table a query reads.
pub const TABLE_NAME: &str = "records";

/// `{type: sql, …}` of `processing.transforms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// `SELECT … FROM records [WHERE …]`.
    pub query: String,
    /// The table records are read into (the Parquet format's `schema` block); without it, each
    /// record's own inferred types.
    #[serde(default)]
    pub schema: Option<SqlSchemaConfig>,
    /// OpenX `CaseInsensitive` (default true): JSON keys match column names ignoring case.
    #[serde(default = "default_true")]
    pub case_insensitive: bool,
    /// OpenX `ColumnToJsonKeyMappings`: column name → the JSON key it is read from (given
    /// columns only).
    #[serde(default)]
    pub column_to_json_key_mappings: BTreeMap<String, String>,
    /// OpenX `ConvertDotsInJsonKeysToUnderscores` (default false).
    #[serde(default)]
    pub convert_dots_in_json_keys_to_underscores: bool,
    /// Run the (aggregating) query once per window instead of once per record (see `window`).
    #[serde(default)]
    pub window: Option<WindowConfig>,
}

/// `errorCode` of a record whose every window had closed when it was read (later than
/// `allowed_lateness_seconds`).
pub const SQL_LATE_RECORD: &str = "Sql.LateRecord";
/// `errorCode` of a record whose event time is missing or cannot be read.
pub const SQL_INVALID_EVENT_TIME: &str = "Sql.InvalidEventTime";
/// `errorCode` of a record that would open a group past `window.max_groups` in a window.
pub const SQL_TOO_MANY_GROUPS: &str = "Sql.TooManyGroups";

/// `window:` of a windowed `sql` transform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    #[serde(rename = "type")]
    pub kind: WindowKind,
    /// Window length, 1 s to 7 days. Windows are aligned to the Unix epoch (a 60 s window starts
    /// on the minute).
    pub size_seconds: u64,
    /// Sliding windows: a new window starts every `slide_seconds` (a divisor of `size_seconds`).
    #[serde(default)]
    pub slide_seconds: Option<u64>,
    /// Which time places a record in windows: `arrival` (default: when spillway took it in) or
    /// `{ field: .path.to.time, format }`.
    #[serde(default)]
    pub time: WindowTime,
    /// How far event time may run behind the newest time seen before a record is late: a
    /// window closes when the newest time seen minus this passes its end.
    #[serde(default)]
    pub allowed_lateness_seconds: u64,
    /// What happens to a late record: `error_output` (default, `Sql.LateRecord`) or `drop`
    /// (counted only).
    #[serde(default)]
    pub late_records: LateRecords,
    /// Most groups one window holds; a record that would open another goes to the error
    /// output (`Sql.TooManyGroups`). Bounds the memory of open windows.
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
}

fn default_max_groups() -> usize {
    100_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    Tumbling,
    Sliding,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum WindowTime {
    Named(NamedTime),
    Field {
        /// A jq path of object keys (`.ts`, `.event.time`).
        field: String,
        #[serde(default)]
        format: TimeFormat,
    },
}

impl Default for WindowTime {
    fn default() -> Self {
        WindowTime::Named(NamedTime::Arrival)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedTime {
    Arrival,
}

/// How an event time field is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// A string is ISO 8601 / RFC 3339; a number is epoch seconds below 10^11, else milliseconds.
    #[default]
    Auto,
    Iso8601,
    EpochSeconds,
    EpochMilliseconds,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateRecords {
    #[default]
    ErrorOutput,
    Drop,
}

/// Longest window.
pub const MAX_WINDOW_SECONDS: u64 = 7 * 24 * 3600;
/// Most groups all open windows of one stream may hold together (≈ 1 KiB of accumulator state
/// each at most for the usual aggregates: ≤ ~10 GiB is refused well before; see docs).
pub const MAX_OPEN_GROUPS: u64 = 10_000_000;

impl WindowConfig {
    pub fn size_ms(&self) -> i64 {
        (self.size_seconds * 1000) as i64
    }

    pub fn slide_ms(&self) -> i64 {
        (self.slide_seconds.unwrap_or(self.size_seconds) * 1000) as i64
    }

    pub fn lateness_ms(&self) -> i64 {
        (self.allowed_lateness_seconds * 1000) as i64
    }

    /// Windows open at once at most: those a record belongs to, plus those the lateness keeps.
    pub fn max_open_windows(&self) -> u64 {
        let slide = self.slide_seconds.unwrap_or(self.size_seconds).max(1);
        self.size_seconds.div_ceil(slide) + self.allowed_lateness_seconds.div_ceil(slide) + 1
    }

    /// The object keys of `time.field`.
    pub fn time_path(&self) -> Option<Vec<String>> {
        match &self.time {
            WindowTime::Named(NamedTime::Arrival) => None,
            WindowTime::Field { field, .. } => {
                Some(field.trim_start_matches('.').split('.').map(str::to_string).collect())
            }
        }
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !(1..=MAX_WINDOW_SECONDS).contains(&self.size_seconds) {
            problems.push(("window.size_seconds".into(), format!("must be between 1 and {MAX_WINDOW_SECONDS}")));
        }
        match (self.kind, self.slide_seconds) {
            (WindowKind::Tumbling, Some(_)) => problems.push((
                "window.slide_seconds".into(),
                "only sliding windows slide (a tumbling window's slide is its size)".into(),
            )),
            (WindowKind::Sliding, None) => {
                problems.push(("window.slide_seconds".into(), "a sliding window needs it".into()))
            }
            (WindowKind::Sliding, Some(slide)) => {
                if slide == 0 || !self.size_seconds.is_multiple_of(slide) || slide > self.size_seconds {
                    problems.push(("window.slide_seconds".into(), "must divide size_seconds".into()));
                }
            }
            (WindowKind::Tumbling, None) => {}
        }
        if self.allowed_lateness_seconds > MAX_WINDOW_SECONDS {
            problems.push(("window.allowed_lateness_seconds".into(), format!("at most {MAX_WINDOW_SECONDS}")));
        }
        if let WindowTime::Field { field, .. } = &self.time {
            let valid = field.starts_with('.')
                && field[1..].split('.').all(|key| {
                    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                });
            if !valid {
                problems.push((
                    "window.time.field".into(),
                    format!("{field:?} is not a path of object keys such as `.ts` or `.event.time`"),
                ));
            }
        }
        if self.max_groups == 0 {
            problems.push(("window.max_groups".into(), "must be at least 1".into()));
        }
        let open = self.max_open_windows().saturating_mul(self.max_groups as u64);
        if open > MAX_OPEN_GROUPS {
            problems.push((
                "window.max_groups".into(),
                format!(
                    "{} windows open at once × {} groups = {open} groups could be open, over the bound of {MAX_OPEN_GROUPS}: lower max_groups, the lateness or the number of windows a record is in",
                    self.max_open_windows(),
                    self.max_groups
                ),
            ));
        }
        problems
    }
}

fn default_true() -> bool {
    true
}

/// `schema`: exactly one of `columns`, `file` or `infer`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSchemaConfig {
    /// Columns as the Parquet format takes them (`name`, Hive `type`).
    #[serde(default)]
    pub columns: Vec<ColumnConfig>,
    /// A Parquet file (its footer) or Arrow IPC file or stream (its schema) naming the columns.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Each record's own types (the default when `schema` is left out).
    #[serde(default)]
    pub infer: Option<InferPerRecord>,
}

/// `schema.infer`: no options (types are inferred record by record, so a rebuilt batch reads
/// every record exactly as the first time).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferPerRecord {}

impl SqlConfig {
    /// The given table (`None`: inferred per record), or problems as (field, message) with
    /// fields relative to the transform.
    pub fn table(&self) -> Result<Option<Table>, Vec<(String, String)>> {
        let Some(schema) = &self.schema else { return Ok(None) };
        let given = usize::from(schema.file.is_some())
            + usize::from(!schema.columns.is_empty())
            + usize::from(schema.infer.is_some());
        if given != 1 {
            return Err(vec![("schema".into(), "give one of `columns`, `file` or `infer`".into())]);
        }
        if schema.infer.is_some() {
            return Ok(None);
        }
        match &schema.file {
            Some(file) => {
                Table::from_schema_file(file).map(Some).map_err(|message| vec![("schema.file".into(), message)])
            }
            None => Table::from_config(&schema.columns).map(Some).map_err(|bad| {
                bad.into_iter().map(|(index, message)| (format!("schema.columns[{index}]"), message)).collect()
            }),
        }
    }

    /// Every problem of the block, as (field relative to the transform, message): the schema,
    /// the key mappings, and the query planned against the table (DataFusion's message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let table = match self.table() {
            Ok(table) => table,
            Err(problems) => return problems,
        };
        let mut problems = Vec::new();
        match &table {
            None if !self.column_to_json_key_mappings.is_empty() => problems.push((
                "column_to_json_key_mappings".into(),
                "needs given columns: inferred types name their columns after the JSON keys".into(),
            )),
            None => {}
            Some(table) => {
                for column in self.column_to_json_key_mappings.keys() {
                    if !table.columns.iter().any(|(name, _)| name == column) {
                        problems.push((
                            format!("column_to_json_key_mappings.{column}"),
                            "names no column of the schema".into(),
                        ));
                    }
                }
            }
        }
        match &self.window {
            None => {
                if let Err(message) = self.check_query(table) {
                    problems.push(("query".into(), message));
                }
            }
            Some(window) => {
                problems.extend(window.validate());
                match table {
                    None => problems.push((
                        "schema".into(),
                        "a windowed query needs given columns (`schema.columns` or `schema.file`): its groups keep one type per column".into(),
                    )),
                    Some(table) => {
                        if let Err(message) = self.check_windowed_query(&table) {
                            problems.push(("query".into(), message));
                        }
                    }
                }
            }
        }
        problems
    }

    #[cfg(feature = "transform-sql")]
    fn check_windowed_query(&self, table: &Table) -> Result<(), String> {
        aggregate::check(&self.query, table.arrow_schema())
    }

    #[cfg(not(feature = "transform-sql"))]
    fn check_windowed_query(&self, _table: &Table) -> Result<(), String> {
        Err(FEATURE_MISSING.into())
    }

    #[cfg(feature = "transform-sql")]
    fn check_query(&self, table: Option<Table>) -> Result<(), String> {
        engine::check(&self.query, table.as_ref())
    }

    #[cfg(not(feature = "transform-sql"))]
    fn check_query(&self, _table: Option<Table>) -> Result<(), String> {
        Err(FEATURE_MISSING.into())
    }
}

/// Why a build without the feature refuses `type: sql`.
#[cfg(not(feature = "transform-sql"))]
pub const FEATURE_MISSING: &str = "transform type `sql` is not built into this binary (cargo feature `transform-sql`)";
