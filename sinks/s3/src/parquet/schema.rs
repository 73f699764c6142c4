//! The table a Parquet sink writes: columns with Hive / Glue type names, as Firehose takes them
//! from a Glue table (`string`, `int`, `bigint`, `double`, `decimal(10,2)`, `timestamp`,
//! `array<string>`, `map<string,int>`, `struct<a:int,b:string>`…), parsed into [`ColumnType`]
//! and turned into an Arrow schema; or read from an existing Parquet file's schema
//! ([`Table::from_schema_file`], the only I/O here).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use serde::Deserialize;

/// One column of `format.schema.columns`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    pub name: String,
    /// A Hive type name, e.g. `bigint`, `decimal(12,2)`, `array<struct<k:string,v:double>>`.
    #[serde(rename = "type")]
    pub type_name: String,
}

/// A column's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Boolean,
    TinyInt,
    SmallInt,
    Int,
    BigInt,
    Float,
    Double,
    /// `decimal(precision, scale)`, precision 1-38.
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// Days since 1970-01-01.
    Date,
    /// UTC instants; `timestamp` is microseconds, `timestamp(ms|us|ns)` chooses.
    Timestamp(TimeUnit),
    Struct(Vec<(String, ColumnType)>),
    Array(Box<ColumnType>),
    /// Keys are strings (JSON object keys).
    Map(Box<ColumnType>),
}

impl ColumnType {
    /// Parse a Hive type name (case-insensitive, spaces allowed between tokens).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parser = Parser { text, at: 0 };
        let parsed = parser.column_type()?;
        parser.skip_spaces();
        if parser.at != text.len() {
            return Err(format!("unexpected `{}` at byte {} of `{text}`", &text[parser.at..], parser.at));
        }
        Ok(parsed)
    }

    pub fn data_type(&self) -> DataType {
        match self {
            ColumnType::String => DataType::Utf8,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::TinyInt => DataType::Int8,
            ColumnType::SmallInt => DataType::Int16,
            ColumnType::Int => DataType::Int32,
            ColumnType::BigInt => DataType::Int64,
            ColumnType::Float => DataType::Float32,
            ColumnType::Double => DataType::Float64,
            ColumnType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp(unit) => DataType::Timestamp(*unit, Some("UTC".into())),
            ColumnType::Struct(fields) => DataType::Struct(struct_fields(fields)),
            ColumnType::Array(element) => DataType::List(Arc::new(Field::new("element", element.data_type(), true))),
            ColumnType::Map(value) => DataType::Map(map_entries(value), false),
        }
    }
}

pub fn struct_fields(fields: &[(String, ColumnType)]) -> Fields {
    fields.iter().map(|(name, column_type)| Field::new(name, column_type.data_type(), true)).collect()
}

/// The `entries` field of a map (`key` not null, `value` nullable), as Parquet's MAP wants it.
pub fn map_entries(value: &ColumnType) -> Arc<Field> {
    let entries =
        Fields::from(vec![Field::new("key", DataType::Utf8, false), Field::new("value", value.data_type(), true)]);
    Arc::new(Field::new("key_value", DataType::Struct(entries), false))
}

/// The table: top-level columns in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<(String, ColumnType)>,
}

impl Table {
    /// Parse every column; problems as `(index, message)`.
    pub fn from_config(columns: &[ColumnConfig]) -> Result<Self, Vec<(usize, String)>> {
        let mut parsed = Vec::with_capacity(columns.len());
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (index, column) in columns.iter().enumerate() {
            if column.name.is_empty() {
                problems.push((index, "a column name must not be empty".to_string()));
            } else if !seen.insert(column.name.to_lowercase()) {
                problems.push((index, format!("column `{}` is defined twice", column.name)));
            }
            match ColumnType::parse(&column.type_name) {
                Ok(column_type) => parsed.push((column.name.clone(), column_type)),
                Err(message) => problems.push((index, message)),
            }
        }
        if columns.is_empty() {
            problems.push((0, "at least one column is required".to_string()));
        }
        if problems.is_empty() { Ok(Self { columns: parsed }) } else { Err(problems) }
    }

    /// The columns of an existing Parquet file (its footer only is read) or Arrow IPC file or
    /// stream (its schema message only), for a sink that writes the same table. Arrow types map
    /// to the column types above; a type with no such column type (unsigned 64-bit, binary,
    /// intervals, …) is refused with the column's path.
    pub fn from_schema_file(path: &std::path::Path) -> Result<Self, String> {
        use std::io::{Read, Seek};
        let mut file = std::fs::File::open(path).map_err(|error| format!("cannot open {}: {error}", path.display()))?;
        let mut magic = [0u8; 6];
        let read = file.read(&mut magic).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        file.rewind().map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let schema = match &magic[..read] {
            [b'P', b'A', b'R', b'1', ..] => {
                parquet::arrow::arrow_reader::ArrowReaderMetadata::load(&file, Default::default())
                    .map(|metadata| metadata.schema().clone())
                    .map_err(|error| format!("{} is not a readable Parquet file: {error}", path.display()))?
            }
            b"ARROW1" => arrow::ipc::reader::FileReader::try_new(file, None)
                .map(|reader| reader.schema())
                .map_err(|error| format!("{} is not a readable Arrow IPC file: {error}", path.display()))?,
            // An IPC stream starts with its schema message (after a continuation marker).
            [0xff, 0xff, 0xff, 0xff, ..] => arrow::ipc::reader::StreamReader::try_new(file, None)
                .map(|reader| reader.schema())
                .map_err(|error| format!("{} is not a readable Arrow IPC stream: {error}", path.display()))?,
            _ => {
                return Err(format!(
                    "{} is neither a Parquet file nor an Arrow IPC file or stream (Feather v2)",
                    path.display()
                ));
            }
        };
        let mut columns = Vec::new();
        let mut problems = Vec::new();
        for field in schema.fields() {
            match column_type_of(field.name(), field.data_type()) {
                Ok(column_type) => columns.push((field.name().clone(), column_type)),
                Err(problem) => problems.push(problem),
            }
        }
        if columns.is_empty() && problems.is_empty() {
            problems.push(format!("{} has no columns", path.display()));
        }
        if problems.is_empty() { Ok(Self { columns }) } else { Err(problems.join("; ")) }
    }

    pub fn arrow_schema(&self) -> Arc<Schema> {
        Arc::new(Schema::new(struct_fields(&self.columns)))
    }
}

/// The column type of an Arrow type read from a Parquet file; `path` names the column in errors.
fn column_type_of(path: &str, data_type: &DataType) -> Result<ColumnType, String> {
    let decimal = |precision: u8, scale: i8| {
        if (1..=38).contains(&precision) {
            Ok(ColumnType::Decimal { precision, scale })
        } else {
            Err(format!("column `{path}`: decimal precision {precision} is not 1-38"))
        }
    };
    Ok(match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::String,
        DataType::Boolean => ColumnType::Boolean,
        DataType::Int8 => ColumnType::TinyInt,
        DataType::Int16 | DataType::UInt8 => ColumnType::SmallInt,
        DataType::Int32 | DataType::UInt16 => ColumnType::Int,
        DataType::Int64 | DataType::UInt32 => ColumnType::BigInt,
        DataType::Float32 => ColumnType::Float,
        DataType::Float64 => ColumnType::Double,
        DataType::Decimal32(precision, scale)
        | DataType::Decimal64(precision, scale)
        | DataType::Decimal128(precision, scale) => decimal(*precision, *scale)?,
        DataType::Date32 | DataType::Date64 => ColumnType::Date,
        // Hive has no second-precision timestamp: milliseconds hold every such value.
        DataType::Timestamp(TimeUnit::Second, _) => ColumnType::Timestamp(TimeUnit::Millisecond),
        DataType::Timestamp(unit, _) => ColumnType::Timestamp(*unit),
        DataType::Struct(fields) => ColumnType::Struct(
            fields
                .iter()
                .map(|field| {
                    let nested = format!("{path}.{}", field.name());
                    Ok((field.name().clone(), column_type_of(&nested, field.data_type())?))
                })
                .collect::<Result<_, String>>()?,
        ),
        DataType::List(element) | DataType::LargeList(element) => {
            ColumnType::Array(Box::new(column_type_of(&format!("{path}[]"), element.data_type())?))
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(pair) if pair.len() == 2 && matches!(pair[0].data_type(), DataType::Utf8) => {
                ColumnType::Map(Box::new(column_type_of(&format!("{path}{{}}"), pair[1].data_type())?))
            }
            _ => return Err(format!("column `{path}`: only maps with string keys can be written from JSON")),
        },
        other => return Err(format!("column `{path}`: the Parquet type {other} has no Hive column type here")),
    })
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn skip_spaces(&mut self) {
        while self.text[self.at..].starts_with(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn word(&mut self) -> String {
        self.skip_spaces();
        let rest = &self.text[self.at..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        self.at += end;
        rest[..end].to_string()
    }

    fn eat(&mut self, expected: char) -> Result<(), String> {
        self.skip_spaces();
        if self.text[self.at..].starts_with(expected) {
            self.at += expected.len_utf8();
            Ok(())
        } else {
            Err(format!("expected `{expected}` at byte {} of `{}`", self.at, self.text))
        }
    }

    fn peek(&mut self, expected: char) -> bool {
        self.skip_spaces();
        self.text[self.at..].starts_with(expected)
    }

    fn number(&mut self) -> Result<u32, String> {
        let word = self.word();
        word.parse().map_err(|_| format!("expected a number, got `{word}` in `{}`", self.text))
    }

    fn column_type(&mut self) -> Result<ColumnType, String> {
        let name = self.word().to_ascii_lowercase();
        Ok(match name.as_str() {
            "string" => ColumnType::String,
            "varchar" | "char" => {
                // Length limits are Hive's business; the values are strings.
                if self.peek('(') {
                    self.eat('(')?;
                    self.number()?;
                    self.eat(')')?;
                }
                ColumnType::String
            }
            "boolean" => ColumnType::Boolean,
            "tinyint" => ColumnType::TinyInt,
            "smallint" => ColumnType::SmallInt,
            "int" | "integer" => ColumnType::Int,
            "bigint" => ColumnType::BigInt,
            "float" => ColumnType::Float,
            "double" => ColumnType::Double,
            "date" => ColumnType::Date,
            "decimal" => {
                let (mut precision, mut scale) = (10, 0);
                if self.peek('(') {
                    self.eat('(')?;
                    precision = self.number()?;
                    if self.peek(',') {
                        self.eat(',')?;
                        scale = self.number()?;
                    }
                    self.eat(')')?;
                }
                if !(1..=38).contains(&precision) || scale > precision {
                    return Err(format!(
                        "decimal({precision},{scale}): precision must be 1-38 and scale at most the precision"
                    ));
                }
                ColumnType::Decimal { precision: precision as u8, scale: scale as i8 }
            }
            "timestamp" => {
                let mut unit = TimeUnit::Microsecond;
                if self.peek('(') {
                    self.eat('(')?;
                    unit = match self.word().as_str() {
                        "s" => TimeUnit::Second,
                        "ms" => TimeUnit::Millisecond,
                        "us" => TimeUnit::Microsecond,
                        "ns" => TimeUnit::Nanosecond,
                        other => return Err(format!("timestamp unit `{other}`: use s, ms, us or ns")),
                    };
                    self.eat(')')?;
                }
                ColumnType::Timestamp(unit)
            }
            "array" => {
                self.eat('<')?;
                let element = self.column_type()?;
                self.eat('>')?;
                ColumnType::Array(Box::new(element))
            }
            "map" => {
                self.eat('<')?;
                let key = self.column_type()?;
                if key != ColumnType::String {
                    return Err(format!("map keys must be string (JSON object keys), got {key:?}"));
                }
                self.eat(',')?;
                let value = self.column_type()?;
                self.eat('>')?;
                ColumnType::Map(Box::new(value))
            }
            "struct" => {
                self.eat('<')?;
                let mut fields = Vec::new();
                loop {
                    let field = self.word();
                    if field.is_empty() {
                        return Err(format!("expected a field name at byte {} of `{}`", self.at, self.text));
                    }
                    self.eat(':')?;
                    fields.push((field, self.column_type()?));
                    if self.peek(',') {
                        self.eat(',')?;
                    } else {
                        break;
                    }
                }
                self.eat('>')?;
                ColumnType::Struct(fields)
            }
            "" => return Err(format!("expected a type at byte {} of `{}`", self.at, self.text)),
            other => {
                return Err(format!(
                    "unknown type `{other}` (string, boolean, tinyint, smallint, int, bigint, float, double, decimal(p,s), date, timestamp, array<..>, map<string,..>, struct<..>)"
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hive_type_names_parse_into_column_types() {
        assert_eq!(ColumnType::parse("BIGINT").unwrap(), ColumnType::BigInt);
        assert_eq!(ColumnType::parse("decimal(12, 2)").unwrap(), ColumnType::Decimal { precision: 12, scale: 2 });
        assert_eq!(ColumnType::parse("timestamp(ms)").unwrap(), ColumnType::Timestamp(TimeUnit::Millisecond));
        assert_eq!(
            ColumnType::parse("array<struct<k:string, v:map<string,double>>>").unwrap(),
            ColumnType::Array(Box::new(ColumnType::Struct(vec![
                ("k".into(), ColumnType::String),
                ("v".into(), ColumnType::Map(Box::new(ColumnType::Double))),
            ])))
        );
        assert_eq!(ColumnType::parse("varchar(20)").unwrap(), ColumnType::String);
    }

    #[test]
    fn bad_type_names_say_what_is_wrong() {
        assert!(ColumnType::parse("strin").unwrap_err().contains("unknown type `strin`"));
        assert!(ColumnType::parse("array<int").unwrap_err().contains("expected `>`"));
        assert!(ColumnType::parse("map<int,string>").unwrap_err().contains("map keys must be string"));
        assert!(ColumnType::parse("decimal(40,2)").unwrap_err().contains("precision must be 1-38"));
        assert!(ColumnType::parse("int extra").unwrap_err().contains("unexpected"));
    }

    #[test]
    fn arrow_ipc_files_and_streams_and_parquet_files_give_the_same_table() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("n", DataType::UInt32, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Second, Some("UTC".into())), true),
            Field::new("tags", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), true),
        ]));
        let ipc_file = dir.path().join("t.arrow");
        let mut writer =
            arrow::ipc::writer::FileWriter::try_new(std::fs::File::create(&ipc_file).unwrap(), &schema).unwrap();
        writer.finish().unwrap();
        let ipc_stream = dir.path().join("t.arrows");
        let mut writer =
            arrow::ipc::writer::StreamWriter::try_new(std::fs::File::create(&ipc_stream).unwrap(), &schema).unwrap();
        writer.finish().unwrap();
        let parquet_file = dir.path().join("t.parquet");
        let writer =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&parquet_file).unwrap(), schema, None).unwrap();
        writer.close().unwrap();
        let from_parquet = Table::from_schema_file(&parquet_file).unwrap();
        assert_eq!(from_parquet.columns.len(), 4);
        assert_eq!(from_parquet.columns[1].1, ColumnType::BigInt, "uint32 widened");
        assert_eq!(Table::from_schema_file(&ipc_file).unwrap(), from_parquet);
        assert_eq!(Table::from_schema_file(&ipc_stream).unwrap(), from_parquet);

        let other = dir.path().join("t.csv");
        std::fs::write(&other, "id,n\n1,2\n").unwrap();
        let refused = Table::from_schema_file(&other).unwrap_err();
        assert!(refused.contains("neither a Parquet file nor an Arrow IPC file or stream"), "{refused}");
        std::fs::write(&other, "").unwrap();
        assert!(Table::from_schema_file(&other).unwrap_err().contains("neither"));
    }
}
