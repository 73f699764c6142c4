//! Reading a configuration file: `${ENV}` interpolation, then YAML into the typed model. The only
//! place that knows the YAML library (`serde_yaml_ng`, a maintained fork of the archived
//! `serde_yaml`), so swapping it touches one file. Errors carry the YAML path and line/column.

use std::fmt;
use std::path::{Path, PathBuf};

use super::interpolate::{MissingVariable, interpolate};
use super::{Config, Problem};

#[derive(Debug)]
pub enum ConfigError {
    Read { path: PathBuf, source: std::io::Error },
    MissingVariables { path: PathBuf, missing: Vec<MissingVariable> },
    Syntax { path: PathBuf, yaml_path: String, line: Option<usize>, column: Option<usize>, message: String },
    Invalid { path: PathBuf, problems: Vec<Problem> },
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
            ConfigError::Syntax { path, yaml_path, line, column, message } => {
                write!(f, "{}", path.display())?;
                if let (Some(line), Some(column)) = (line, column) {
                    write!(f, ":{line}:{column}")?;
                }
                if !yaml_path.is_empty() && yaml_path != "." {
                    write!(f, ": at {yaml_path}")?;
                }
                write!(f, ": {message}")
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
    let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let yaml_path = error.path().to_string();
        let inner = error.into_inner();
        let location = inner.location();
        ConfigError::Syntax {
            path: path.to_path_buf(),
            yaml_path,
            line: location.as_ref().map(|location| location.line()),
            column: location.as_ref().map(|location| location.column()),
            message: strip_location(&inner.to_string()),
        }
    })?;
    let problems = config.validate();
    if problems.is_empty() { Ok(config) } else { Err(ConfigError::Invalid { path: path.to_path_buf(), problems }) }
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
