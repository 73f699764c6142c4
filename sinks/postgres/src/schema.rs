//! The target table as the encoder needs it: which columns are loaded, in which order, and what
//! kind of value each holds (so a JSON array becomes an array literal for `int[]` but JSON text
//! for `jsonb`, and an epoch number becomes a timestamp). Read from the catalog at start-up; a
//! missing table or column is reported by name. Also the batches table, created if missing.
//!
//! Must not: load data.

use tokio_postgres::Client;

use crate::binary::BinaryType;
use crate::error::PgError;
use crate::pool::Pool;

/// How a JSON value is written for a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `json` / `jsonb`: the JSON text itself (a string keeps its quotes).
    Json,
    /// An array type (`int[]`, `text[]`, …): a JSON array becomes an array literal.
    Array,
    /// `timestamptz` / `timestamp`: an ISO string as is, a number as epoch seconds.
    Timestamp,
    /// `date`: an ISO string as is, a number as epoch seconds (its UTC day).
    Date,
    /// Everything else: strings unquoted, numbers and booleans as written, objects and arrays
    /// as JSON text. PostgreSQL parses the text with the column type's input function.
    Scalar,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The record field (and column) name.
    pub name: String,
    pub type_name: String,
    pub kind: ColumnKind,
    /// How the column is written in binary COPY, if spillway converts its type exactly.
    pub binary: Option<BinaryType>,
}

/// The COPY format a table's batches are encoded in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CopyFormat {
    /// COPY text: PostgreSQL parses every value with the column type's input function.
    #[default]
    Text,
    /// COPY binary: spillway converts each value (see `binary`); the server parses less.
    Binary,
}

impl CopyFormat {
    pub fn name(self) -> &'static str {
        match self {
            CopyFormat::Text => "text",
            CopyFormat::Binary => "binary",
        }
    }
}

/// What the sink loads into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    /// The table name as PostgreSQL prints it (quoted where needed, schema if not on the path).
    pub table: String,
    pub columns: Vec<Column>,
    /// The whole record goes into the single column.
    pub whole_record: bool,
    pub format: CopyFormat,
}

impl TableShape {
    /// `COPY <table> (<columns>) FROM STDIN` with the format and the user's extra options.
    pub fn copy_statement(&self, copy_options: Option<&str>) -> String {
        let columns: Vec<String> = self.columns.iter().map(|column| quote_identifier(&column.name)).collect();
        let mut statement = format!("COPY {} ({}) FROM STDIN", self.table, columns.join(", "));
        let mut options: Vec<&str> = Vec::new();
        if self.format == CopyFormat::Binary {
            options.push("FORMAT binary");
        }
        if let Some(extra) = copy_options.map(str::trim).filter(|options| !options.is_empty()) {
            options.push(extra);
        }
        if !options.is_empty() {
            statement.push_str(&format!(" WITH ({})", options.join(", ")));
        }
        statement
    }

    /// The columns spillway cannot write in binary (with their types), given the session's
    /// TimeZone: a zone-less timestamp string means the session's zone, which the binary
    /// encoder can only follow when it is UTC.
    pub fn not_binary(&self, session_is_utc: bool) -> Vec<String> {
        self.columns
            .iter()
            .filter(|column| match column.binary {
                None => true,
                Some(BinaryType::Timestamptz) => !session_is_utc,
                Some(_) => false,
            })
            .map(|column| format!("{} {}", column.name, column.type_name))
            .collect()
    }
}

/// Whether a session TimeZone name is UTC.
pub fn is_utc(zone: &str) -> bool {
    let zone = zone.strip_prefix("Etc/").unwrap_or(zone);
    ["UTC", "UCT", "GMT", "GMT0", "GMT+0", "GMT-0", "Greenwich", "Universal", "Zulu", "Z"]
        .iter()
        .any(|name| zone.eq_ignore_ascii_case(name))
}

/// `"name"`, quotes doubled.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

struct CatalogColumn {
    name: String,
    type_name: String,
    category: String,
    base_type: String,
    has_default: bool,
    generated: bool,
}

/// Read `table`'s columns; check `columns` (or `record_column`) exist.
pub async fn describe(
    client: &mut Client,
    table: &str,
    columns: Option<&[String]>,
    record_column: Option<&str>,
) -> Result<TableShape, PgError> {
    let row = client.query_one("SELECT to_regclass($1)::oid::int8, to_regclass($1)::text", &[&table]).await?;
    let (Some(oid), Some(printed)) = (row.get::<_, Option<i64>>(0), row.get::<_, Option<String>>(1)) else {
        return Err(PgError::MissingTable(table.to_string()));
    };
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typcategory::text,
                    CASE WHEN t.typcategory = 'A' THEN e.typname::text ELSE t.typname::text END,
                    a.atthasdef, (a.attgenerated <> '' OR a.attidentity <> '')
               FROM pg_attribute a
               JOIN pg_type t ON t.oid = a.atttypid
               LEFT JOIN pg_type e ON e.oid = t.typelem
              WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&oid],
        )
        .await?;
    let catalog: Vec<CatalogColumn> = rows
        .iter()
        .map(|row| CatalogColumn {
            name: row.get(0),
            type_name: row.get(1),
            category: row.get(2),
            base_type: row.get(3),
            has_default: row.get(4),
            generated: row.get(5),
        })
        .collect();
    let find = |name: &str| -> Result<&CatalogColumn, PgError> {
        catalog
            .iter()
            .find(|column| column.name == name)
            .ok_or_else(|| PgError::MissingColumn { table: printed.clone(), column: name.to_string() })
    };
    let shape_of = |column: &CatalogColumn| Column {
        name: column.name.clone(),
        type_name: column.type_name.clone(),
        kind: kind_of(&column.category, &column.base_type),
        // Arrays stay text: PostgreSQL's array input takes literals spillway does not parse.
        binary: match column.category.as_str() {
            "A" => None,
            _ => BinaryType::from_type_name(&column.base_type),
        },
    };

    if let Some(record_column) = record_column {
        let column = find(record_column)?;
        let kind = kind_of(&column.category, &column.base_type);
        if !(kind == ColumnKind::Json || column.category == "S") {
            return Err(PgError::RecordColumnType {
                table: printed,
                column: column.name.clone(),
                type_name: column.type_name.clone(),
            });
        }
        return Ok(TableShape {
            table: printed,
            columns: vec![shape_of(column)],
            whole_record: true,
            format: CopyFormat::Text,
        });
    }
    let selected: Vec<Column> = match columns {
        Some(names) => names.iter().map(|name| find(name).map(shape_of)).collect::<Result<_, _>>()?,
        None => catalog.iter().filter(|column| !column.has_default && !column.generated).map(shape_of).collect(),
    };
    if selected.is_empty() {
        return Err(PgError::Config(format!(
            "table {printed} has no column without a default to load into; list them in columns"
        )));
    }
    Ok(TableShape { table: printed, columns: selected, whole_record: false, format: CopyFormat::Text })
}

fn kind_of(category: &str, base_type: &str) -> ColumnKind {
    match (category, base_type) {
        ("A", _) => ColumnKind::Array,
        (_, "json" | "jsonb") => ColumnKind::Json,
        (_, "timestamptz" | "timestamp") => ColumnKind::Timestamp,
        (_, "date") => ColumnKind::Date,
        _ => ColumnKind::Scalar,
    }
}

/// Create the batches table if missing; returns its quoted name. Its rows are (stream, batch id)
/// with the batch's row count and the row failures sent to the error output, so a re-sent batch
/// is acknowledged with the same outcome without loading again.
pub async fn ensure_batches_table(pool: &Pool, name: &str) -> Result<String, PgError> {
    let quoted = name.split('.').map(quote_identifier).collect::<Vec<_>>().join(".");
    let statement = format!(
        "CREATE TABLE IF NOT EXISTS {quoted} (
            stream text NOT NULL,
            batch_id uuid NOT NULL,
            target text NOT NULL,
            row_count bigint NOT NULL,
            failures jsonb NOT NULL DEFAULT '[]',
            committed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (stream, batch_id))"
    );
    let mut client = pool.get().await?;
    let result = client.client().batch_execute(&statement).await;
    client.release(result.is_ok());
    match result {
        Ok(()) => Ok(quoted),
        // Two streams creating it at the same moment: the other one won.
        Err(error) if error.as_db_error().is_some_and(|db| matches!(db.code().code(), "23505" | "42P07")) => Ok(quoted),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_statements_quote_columns_and_append_options() {
        let shape = TableShape {
            table: "public.events".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_name: "bigint".into(),
                    kind: ColumnKind::Scalar,
                    binary: Some(BinaryType::Int8),
                },
                Column {
                    name: "Odd \"name\"".into(),
                    type_name: "text".into(),
                    kind: ColumnKind::Scalar,
                    binary: Some(BinaryType::Text),
                },
            ],
            whole_record: false,
            format: CopyFormat::Text,
        };
        assert_eq!(shape.copy_statement(None), r#"COPY public.events ("id", "Odd ""name""") FROM STDIN"#);
        assert_eq!(
            shape.copy_statement(Some("FREEZE false")),
            r#"COPY public.events ("id", "Odd ""name""") FROM STDIN WITH (FREEZE false)"#
        );
        let mut binary = shape.clone();
        binary.format = CopyFormat::Binary;
        assert_eq!(
            binary.copy_statement(Some("FREEZE false")),
            r#"COPY public.events ("id", "Odd ""name""") FROM STDIN WITH (FORMAT binary, FREEZE false)"#
        );
        assert!(shape.not_binary(false).is_empty());
        let mut with_time = shape;
        with_time.columns[0].binary = Some(BinaryType::Timestamptz);
        with_time.columns[1].binary = None;
        assert_eq!(with_time.not_binary(true), ["Odd \"name\" text"]);
        assert_eq!(with_time.not_binary(false).len(), 2);
        assert!(is_utc("Etc/UTC") && is_utc("UTC") && is_utc("GMT") && !is_utc("Europe/Berlin"));
    }

    #[test]
    fn kinds_follow_the_catalog() {
        assert_eq!(kind_of("A", "int4"), ColumnKind::Array);
        assert_eq!(kind_of("U", "jsonb"), ColumnKind::Json);
        assert_eq!(kind_of("D", "timestamptz"), ColumnKind::Timestamp);
        assert_eq!(kind_of("D", "date"), ColumnKind::Date);
        assert_eq!(kind_of("N", "numeric"), ColumnKind::Scalar);
    }
}
