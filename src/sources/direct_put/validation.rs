//! Model-constraint checks with AWS's wording. AWS JSON services answer a request that breaks
//! the service model (length, pattern, range, enum, required member) with `ValidationException`:
//! "1 validation error detected: Value 'x' at 'deliveryStreamName' failed to satisfy constraint:
//! Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"; several violations are
//! joined with "; " under "N validation errors detected:". Member paths are camelCase.
//!
//! Must not: check business rules (those are `InvalidArgumentException` and friends).

use super::wire::ApiError;

/// Collects violations; [`Violations::finish`] turns them into one `ValidationException`.
#[derive(Default)]
pub struct Violations {
    found: Vec<String>,
}

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, value: &str, member: &str, constraint: &str) {
        self.found.push(format!("Value {value} at '{member}' failed to satisfy constraint: {constraint}"));
    }

    /// A required member that is absent.
    pub fn required<T: ?Sized>(&mut self, value: Option<&T>, member: &str) {
        if value.is_none() {
            self.push("null", member, "Member must not be null");
        }
    }

    /// String length within `min..=max` (in characters, as the model counts).
    pub fn length(&mut self, value: &str, member: &str, min: usize, max: usize) {
        let length = value.chars().count();
        if length < min {
            self.push(&quoted(value), member, &format!("Member must have length greater than or equal to {min}"));
        } else if length > max {
            self.push(&quoted(value), member, &format!("Member must have length less than or equal to {max}"));
        }
    }

    /// A list's length within `min..=max`; the value is not echoed (AWS prints the list).
    pub fn list_length(&mut self, count: usize, member: &str, min: usize, max: usize) {
        if count < min {
            self.push("'[...]'", member, &format!("Member must have length greater than or equal to {min}"));
        } else if count > max {
            self.push("'[...]'", member, &format!("Member must have length less than or equal to {max}"));
        }
    }

    /// A number within `min..=max`.
    pub fn range(&mut self, value: i64, member: &str, min: i64, max: i64) {
        if value < min {
            self.push(&format!("'{value}'"), member, &format!("Member must have value greater than or equal to {min}"));
        } else if value > max {
            self.push(&format!("'{value}'"), member, &format!("Member must have value less than or equal to {max}"));
        }
    }

    /// One of the model's enum values.
    pub fn one_of(&mut self, value: &str, member: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            let set = allowed.join(", ");
            self.push(&quoted(value), member, &format!("Member must satisfy enum value set: [{set}]"));
        }
    }

    /// A pattern, checked by `matches` (the model's regular expression is named in the message).
    pub fn pattern(&mut self, value: &str, member: &str, pattern: &str, matches: bool) {
        if !matches {
            self.push(&quoted(value), member, &format!("Member must satisfy regular expression pattern: {pattern}"));
        }
    }

    /// A delivery stream name: 1-64 characters of `[a-zA-Z0-9_.-]`.
    pub fn stream_name(&mut self, value: &str, member: &str) {
        self.length(value, member, 1, 64);
        let valid = value.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        self.pattern(value, member, "[a-zA-Z0-9_.-]+", valid || value.is_empty());
        // Firehose's pattern allows `..`; spillway keeps a folder per stream, so a name made only
        // of dots would name the folder of every stream (or `data_dir`).
        if crate::config::is_only_dots(value) {
            self.push(&quoted(value), member, "Member must not be made only of dots");
        }
    }

    pub fn finish(self) -> Result<(), ApiError> {
        match self.found.len() {
            0 => Ok(()),
            1 => Err(ApiError::validation(format!("1 validation error detected: {}", self.found[0]))),
            count => {
                Err(ApiError::validation(format!("{count} validation errors detected: {}", self.found.join("; "))))
            }
        }
    }
}

fn quoted(value: &str) -> String {
    format!("'{value}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_like_aws() {
        let mut violations = Violations::new();
        violations.list_length(501, "records", 1, 500);
        let error = violations.finish().expect_err("invalid");
        assert_eq!(error.code(), "ValidationException");
        assert_eq!(
            error.message(),
            "1 validation error detected: Value '[...]' at 'records' failed to satisfy constraint: \
             Member must have length less than or equal to 500"
        );

        let mut violations = Violations::new();
        violations.stream_name("bad name!", "deliveryStreamName");
        violations.range(0, "limit", 1, 10_000);
        let error = violations.finish().expect_err("invalid");
        assert!(
            error.message().starts_with("2 validation errors detected: Value 'bad name!' at 'deliveryStreamName'"),
            "{}",
            error.message()
        );
        assert!(error.message().contains("Member must have value greater than or equal to 1"));
    }

    #[test]
    fn names_made_only_of_dots_are_refused() {
        for name in [".", "..", "..."] {
            let mut violations = Violations::new();
            violations.stream_name(name, "deliveryStreamName");
            let error = violations.finish().expect_err(name);
            assert!(error.message().contains("Member must not be made only of dots"), "{}", error.message());
        }
        let mut violations = Violations::new();
        violations.stream_name("a.b-c_d", "deliveryStreamName");
        assert!(violations.finish().is_ok());
    }
}
