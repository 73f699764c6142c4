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
pub mod engine;

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
        if let Err(message) = self.check_query(table) {
            problems.push(("query".into(), message));
        }
        problems
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
