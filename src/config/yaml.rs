//! Reading a configuration file: `${ENV}` interpolation, then YAML into the typed model. The only
//! place that knows the YAML library (`serde_yaml_ng`, a maintained fork of the archived
//! `serde_yaml`), so swapping it touches one file. Errors carry the YAML path and line/column.

use std::fmt;
use std::path::{Path, PathBuf};

use super::interpolate::{MissingVariable, interpolate};
use super::{Config, Problem};

#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    MissingVariables {
        path: PathBuf,
        missing: Vec<MissingVariable>,
    },
    /// Every part of the file that does not fit the model (the first one in the file, then one
    /// per other top-level section and per other stream).
    Syntax {
        path: PathBuf,
        errors: Vec<SyntaxError>,
    },
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            ConfigError::MissingVariables { path, missing } => {
                write!(f, "{}: environment variables not set:", path.display())?;
                for variable in missing {
                    write!(
                        f,
                        "\n  line {} column {}: ${{{}}} (set it, or give a default with ${{{}:-value}})",
                        variable.line, variable.column, variable.name, variable.name
                    )?;
                }
                Ok(())
            }
            ConfigError::Syntax { path, errors } => {
                for (index, error) in errors.iter().enumerate() {
                    if index > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{}", path.display())?;
                    if let (Some(line), Some(column)) = (error.line, error.column) {
                        write!(f, ":{line}:{column}")?;
                    }
                    if !error.yaml_path.is_empty() && error.yaml_path != "." {
                        write!(f, ": at {}", error.yaml_path)?;
                    }
                    write!(f, ": {}", error.message)?;
                }
                Ok(())
            }
            ConfigError::Invalid { path, problems } => {
                write!(f, "{}: {} problem(s):", path.display(), problems.len())?;
                for problem in problems {
                    write!(f, "\n  {problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// Every problem on a line of its own, each naming the file (for logs, where one event per
    /// problem reads better than one multi-line message); the same texts `validate` prints.
    pub fn messages(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => {
                self.to_string().lines().map(str::to_string).collect()
            }
            ConfigError::MissingVariables { path, missing } => missing
                .iter()
                .map(|variable| {
                    format!(
                        "{}: line {} column {}: environment variable ${{{}}} not set",
                        path.display(),
                        variable.line,
                        variable.column,
                        variable.name
                    )
                })
                .collect(),
            ConfigError::Invalid { path, problems } => {
                problems.iter().map(|problem| format!("{}: {problem}", path.display())).collect()
            }
        }
    }
}

/// Read, interpolate, parse and validate a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_str(&text, path)
}

/// Parse and validate configuration text; `path` only names the source in errors.
pub fn parse_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let text = interpolate(text, |name| std::env::var(name).ok())
        .map_err(|missing| ConfigError::MissingVariables { path: path.to_path_buf(), missing })?;
    let deserializer = serde_yaml_ng::Deserializer::from_str(&text);
    let config: Config = match serde_path_to_error::deserialize(deserializer) {
        Ok(config) => config,
        Err(error) => {
            let yaml_path = error.path().to_string();
            let inner = error.into_inner();
            let location = inner.location();
            let first = SyntaxError::new(
                &text,
                yaml_path,
                location.as_ref().map(|location| (location.line(), location.column())),
                strip_location(&inner.to_string()),
            );
            return Err(ConfigError::Syntax { path: path.to_path_buf(), errors: every_syntax_error(&text, first) });
        }
    };
    let problems = config.validate();
    if problems.is_empty() { Ok(config) } else { Err(ConfigError::Invalid { path: path.to_path_buf(), problems }) }
}

/// One part of the file that does not fit the model: where (YAML path, line and column when
/// known) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub yaml_path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl SyntaxError {
    /// `at` is where the parser stopped, or `None`; the position reported is that of the key the
    /// error is about when it can be found at or after `at` (the parser points at the enclosing
    /// mapping for an unknown field of a tagged block such as `sink:`).
    fn new(text: &str, yaml_path: String, at: Option<(usize, usize)>, message: String) -> SyntaxError {
        let key = unknown_field(&message).or_else(|| last_key(&yaml_path));
        let found = match (at, key) {
            (Some((line, _)), Some(key)) => key_position(text, line, &key),
            _ => None,
        };
        let (line, column) = found.or(at).map_or((None, None), |(line, column)| (Some(line), Some(column)));
        SyntaxError { yaml_path, line, column, message }
    }
}

/// The first error, then the first error of every other top-level section and of every other
/// stream: each stream and the rest of the file are deserialized apart, so one mistake does not
/// hide the others. Errors found this way are placed by searching the text for their key.
fn every_syntax_error(text: &str, first: SyntaxError) -> Vec<SyntaxError> {
    let mut errors = vec![first];
    let Ok(mut document) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
        return errors; // not even YAML: the parser's one error is all there is
    };
    let streams = match document.get_mut("streams") {
        Some(streams) => std::mem::replace(streams, serde_yaml_ng::Value::Sequence(Vec::new())),
        None => serde_yaml_ng::Value::Null,
    };
    let mut found = Vec::new();
    if let Err(error) = serde_path_to_error::deserialize::<_, Config>(document) {
        let yaml_path = error.path().to_string();
        found.push((yaml_path, None, strip_location(&error.into_inner().to_string())));
    }
    let item_lines = stream_item_lines(text);
    for (index, stream) in streams.as_sequence().into_iter().flatten().enumerate() {
        if let Err(error) = serde_path_to_error::deserialize::<_, super::StreamConfig>(stream.clone()) {
            let inner_path = error.path().to_string();
            let yaml_path =
                if inner_path == "." { format!("streams[{index}]") } else { format!("streams[{index}].{inner_path}") };
            let start = item_lines.get(index).map(|line| (*line, 1));
            found.push((yaml_path, start, strip_location(&error.into_inner().to_string())));
        }
    }
    for (yaml_path, start, message) in found {
        if errors.iter().any(|known| known.yaml_path == yaml_path) {
            continue;
        }
        let start = start.or(Some((1, 1)));
        errors.push(SyntaxError::new(text, yaml_path, start, message));
    }
    errors
}

/// The field an "unknown field `x`, expected …" message is about.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// The last key of a YAML path (`streams[1].buffering.size_mib` → `size_mib`).
fn last_key(yaml_path: &str) -> Option<String> {
    let last = yaml_path.rsplit('.').next()?;
    let key = last.split('[').next().unwrap_or_default();
    (!key.is_empty()).then(|| key.to_string())
}

/// Line and column (1-based) of the first `key:` at or after line `from`.
fn key_position(text: &str, from: usize, key: &str) -> Option<(usize, usize)> {
    for (index, line) in text.lines().enumerate().skip(from.saturating_sub(1)) {
        let mut search = 0;
        while let Some(offset) = line[search..].find(key) {
            let start = search + offset;
            let before = line[..start].chars().next_back();
            let after = line[start + key.len()..].trim_start();
            let starts_key = before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',' || c == '-');
            if starts_key && after.starts_with(':') {
                return Some((index + 1, start + 1));
            }
            search = start + key.len();
        }
    }
    None
}

/// The line (1-based) where each item of a block-style top-level `streams:` list starts.
fn stream_item_lines(text: &str) -> Vec<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(header) = lines.iter().position(|line| line.trim_end() == "streams:") else {
        return Vec::new();
    };
    let mut items = Vec::new();
    let mut indent = None;
    for (index, line) in lines.iter().enumerate().skip(header + 1) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let this_indent = line.len() - trimmed.len();
        if this_indent == 0 {
            break; // the next top-level key
        }
        if trimmed.starts_with("- ") || trimmed == "-" {
            let item_indent = *indent.get_or_insert(this_indent);
            if this_indent == item_indent {
                items.push(index + 1);
            }
        }
    }
    items
}

/// serde_yaml prefixes its own path and adds " at line L column C"; we print both ourselves.
fn strip_location(message: &str) -> String {
    let mut message = message.to_string();
    if let Some(start) = message.find(" at line ")
        && let Some(column) = message[start..].find(" column ")
    {
        let digits_start = start + column + " column ".len();
        let digits_len = message[digits_start..].chars().take_while(char::is_ascii_digit).count();
        message.replace_range(start..digits_start + digits_len, "");
    }
    match message.split_once(": ") {
        Some((head, rest)) if !head.contains(char::is_whitespace) => rest.to_string(),
        _ => message,
    }
}
