//! Firehose object keys and prefix expressions: parsing a `prefix` / `error_output_prefix` once
//! into a [`PrefixTemplate`], and rendering it for a batch into the full object key
//! `<prefix><stream>-1-<yyyy>-<MM>-<dd>-<HH>-<mm>-<ss>-<uuid><ext>`.
//!
//! Supported expressions (firehose.md §6): `!{timestamp:<Java DateTimeFormatter pattern>}` (UTC,
//! one instant per object: the oldest record's arrival), `!{firehose:random-string}`,
//! `!{firehose:error-output-type}` and `!{partitionKeyFromQuery:k}` / `!{partitionKeyFromLambda:k}`.
//! Everything here is pure: no I/O, no clock. A key is a function of the batch (id, stream,
//! records) and the partition keys, so a replayed batch gets the same key.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Timelike, Utc};
use uuid::Uuid;

/// The time path Firehose uses as the default prefix and appends to a prefix without one.
pub const DEFAULT_TIME_PATH: &str = "yyyy/MM/dd/HH/";

/// Length of `!{firehose:random-string}`.
const RANDOM_STRING_LEN: usize = 11;

/// Longest evaluated prefix Firehose accepts in its API model.
pub const MAX_PREFIX_LEN: usize = 1024;

/// Which configuration field a template comes from; the rules differ (firehose.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixKind {
    /// `prefix`: no `error-output-type`.
    Data,
    /// `error_output_prefix`: no partition keys; `error-output-type` required when it has
    /// expressions.
    Error,
}

/// A problem in a prefix expression, found at parse time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("`!{{` at byte {0} starts an expression that is never closed with `}}`")]
    Unterminated(usize),
    #[error("`!{{` at byte {0} appears inside another expression")]
    Nested(usize),
    #[error("expression `!{{{0}}}` is not of the form `!{{namespace:value}}`")]
    MissingNamespace(String),
    #[error("unknown namespace `{0}` (expected timestamp, firehose, partitionKeyFromQuery or partitionKeyFromLambda)")]
    UnknownNamespace(String),
    #[error("unknown firehose expression `{0}` (expected random-string or error-output-type)")]
    UnknownFirehoseValue(String),
    #[error("`!{{{0}:}}` needs a partition key name")]
    EmptyPartitionKey(String),
    #[error("bad timestamp pattern `{pattern}`: {reason}")]
    BadTimestamp { pattern: String, reason: String },
    #[error("`!{{firehose:error-output-type}}` is only allowed in error_output_prefix")]
    ErrorTypeInDataPrefix,
    #[error("partition key expressions are not allowed in error_output_prefix")]
    PartitionKeyInErrorPrefix,
    #[error("an error_output_prefix with expressions must include `!{{firehose:error-output-type}}`")]
    ErrorPrefixWithoutErrorType,
    #[error("prefix is {0} characters long; the maximum is {MAX_PREFIX_LEN}")]
    TooLong(usize),
    #[error("prefix must not start with `/` or contain `//` (object stores reject empty path segments)")]
    EmptySegment,
}

/// A problem rendering a template for one batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("an empty batch has no object key")]
    EmptyBatch,
    #[error("arrival time {0} ms is out of range")]
    TimeOutOfRange(i64),
    #[error("partition key `{0}` has no value for this batch")]
    MissingPartitionKey(String),
    #[error("prefix uses `!{{firehose:error-output-type}}` but no error output type was given")]
    MissingErrorOutputType,
    #[error("error output type `{0}` is not a valid key segment")]
    BadErrorOutputType(String),
}

/// Where a partition key comes from (only the name matters for rendering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKeySource {
    Query,
    Lambda,
}

/// One piece of a parsed prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Timestamp(TimestampPattern),
    RandomString,
    ErrorOutputType,
    PartitionKey { source: PartitionKeySource, name: String },
}

/// A prefix parsed once, rendered per batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixTemplate {
    segments: Vec<Segment>,
}

/// What a template is rendered with.
pub struct RenderContext<'a> {
    /// The one instant every timestamp expression uses.
    pub instant: DateTime<Utc>,
    /// Seeds `!{firehose:random-string}`, so a replayed batch gets the same string.
    pub batch_id: Uuid,
    pub error_output_type: Option<&'a str>,
    pub partition_keys: &'a BTreeMap<String, String>,
}

impl PrefixTemplate {
    /// Parse a configured prefix (or the default when `None`) and apply Firehose's rules for its
    /// kind. A prefix without a timestamp expression gets `!{timestamp:yyyy/MM/dd/HH/}` appended,
    /// except with dynamic partitioning (partition key expressions), where Firehose appends nothing.
    pub fn parse(prefix: Option<&str>, kind: PrefixKind) -> Result<Self, PrefixError> {
        let Some(prefix) = prefix else {
            return Ok(Self::default_for(kind));
        };
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(PrefixError::TooLong(prefix.len()));
        }
        let mut segments = parse_segments(prefix)?;
        check_rules(&segments, kind)?;
        if prefix.starts_with('/') || prefix.contains("//") {
            return Err(PrefixError::EmptySegment);
        }
        let has_timestamp = segments.iter().any(|segment| matches!(segment, Segment::Timestamp(_)));
        let has_partition_key = segments.iter().any(|segment| matches!(segment, Segment::PartitionKey { .. }));
        if !has_timestamp && !has_partition_key {
            segments.push(Segment::Timestamp(default_time_path()));
        }
        Ok(Self { segments })
    }

    /// `yyyy/MM/dd/HH/` for data; `<error-output-type>/yyyy/MM/dd/HH/` for errors.
    fn default_for(kind: PrefixKind) -> Self {
        let mut segments = Vec::new();
        if kind == PrefixKind::Error {
            segments.push(Segment::ErrorOutputType);
            segments.push(Segment::Literal("/".to_string()));
        }
        segments.push(Segment::Timestamp(default_time_path()));
        Self { segments }
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn has_error_output_type(&self) -> bool {
        self.segments.iter().any(|segment| matches!(segment, Segment::ErrorOutputType))
    }

    pub fn has_partition_keys(&self) -> bool {
        self.segments.iter().any(|segment| matches!(segment, Segment::PartitionKey { .. }))
    }

    /// The partition keys the template names, in order of appearance (repeats included), so
    /// configuration validation can check each is defined.
    pub fn partition_keys(&self) -> impl Iterator<Item = (PartitionKeySource, &str)> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::PartitionKey { source, name } => Some((*source, name.as_str())),
            _ => None,
        })
    }

    /// The literal text before the first expression, cut back to its last `/`: the part of the
    /// key space every object of this template lives under (used by the healthcheck).
    pub fn literal_root(&self) -> &str {
        let Some(Segment::Literal(text)) = self.segments.first() else {
            return "";
        };
        match text.rfind('/') {
            Some(end) => &text[..end],
            None => "",
        }
    }

    pub fn render(&self, context: &RenderContext<'_>) -> Result<String, RenderError> {
        let mut out = String::new();
        let mut random_index = 0u32;
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Timestamp(pattern) => pattern.format_into(&context.instant, &mut out),
                Segment::RandomString => {
                    out.push_str(&random_string(context.batch_id, random_index));
                    random_index += 1;
                }
                Segment::ErrorOutputType => {
                    let error_output_type = context.error_output_type.ok_or(RenderError::MissingErrorOutputType)?;
                    if !is_valid_key_segment(error_output_type) {
                        return Err(RenderError::BadErrorOutputType(error_output_type.to_string()));
                    }
                    out.push_str(error_output_type);
                }
                Segment::PartitionKey { source, name } => {
                    let entry = match source {
                        PartitionKeySource::Query => std::borrow::Cow::Borrowed(name.as_str()),
                        PartitionKeySource::Lambda => {
                            std::borrow::Cow::Owned(spillway_sink_api::lambda_partition_key(name))
                        }
                    };
                    let value = context
                        .partition_keys
                        .get(entry.as_ref())
                        .ok_or_else(|| RenderError::MissingPartitionKey(name.clone()))?;
                    out.push_str(value);
                }
            }
        }
        Ok(out)
    }
}

fn default_time_path() -> TimestampPattern {
    // The constant pattern is known to parse; fall back to an empty pattern rather than panic.
    TimestampPattern::parse(DEFAULT_TIME_PATH).unwrap_or(TimestampPattern { items: Vec::new() })
}

fn is_valid_key_segment(text: &str) -> bool {
    !text.is_empty() && text != "." && text != ".." && !text.contains('/') && !text.chars().any(char::is_control)
}

fn parse_segments(prefix: &str) -> Result<Vec<Segment>, PrefixError> {
    let mut segments = Vec::new();
    let mut rest = prefix;
    let mut offset = 0;
    while let Some(start) = rest.find("!{") {
        if start > 0 {
            segments.push(Segment::Literal(rest[..start].to_string()));
        }
        let body_start = start + 2;
        let Some(body_len) = rest[body_start..].find('}') else {
            return Err(PrefixError::Unterminated(offset + start));
        };
        let body = &rest[body_start..body_start + body_len];
        if let Some(nested) = body.find("!{") {
            return Err(PrefixError::Nested(offset + body_start + nested));
        }
        segments.push(parse_expression(body)?);
        let consumed = body_start + body_len + 1;
        rest = &rest[consumed..];
        offset += consumed;
    }
    if !rest.is_empty() {
        segments.push(Segment::Literal(rest.to_string()));
    }
    Ok(segments)
}

fn parse_expression(body: &str) -> Result<Segment, PrefixError> {
    let Some((namespace, value)) = body.split_once(':') else {
        return Err(PrefixError::MissingNamespace(body.to_string()));
    };
    match namespace {
        "timestamp" => Ok(Segment::Timestamp(TimestampPattern::parse(value)?)),
        "firehose" => match value {
            "random-string" => Ok(Segment::RandomString),
            "error-output-type" => Ok(Segment::ErrorOutputType),
            other => Err(PrefixError::UnknownFirehoseValue(other.to_string())),
        },
        "partitionKeyFromQuery" | "partitionKeyFromLambda" => {
            if value.is_empty() {
                return Err(PrefixError::EmptyPartitionKey(namespace.to_string()));
            }
            let source = if namespace == "partitionKeyFromQuery" {
                PartitionKeySource::Query
            } else {
                PartitionKeySource::Lambda
            };
            Ok(Segment::PartitionKey { source, name: value.to_string() })
        }
        other => Err(PrefixError::UnknownNamespace(other.to_string())),
    }
}

fn check_rules(segments: &[Segment], kind: PrefixKind) -> Result<(), PrefixError> {
    let has_expression = segments.iter().any(|segment| !matches!(segment, Segment::Literal(_)));
    let has_error_type = segments.iter().any(|segment| matches!(segment, Segment::ErrorOutputType));
    let has_partition_key = segments.iter().any(|segment| matches!(segment, Segment::PartitionKey { .. }));
    match kind {
        PrefixKind::Data if has_error_type => Err(PrefixError::ErrorTypeInDataPrefix),
        PrefixKind::Data => Ok(()),
        PrefixKind::Error if has_partition_key => Err(PrefixError::PartitionKeyInErrorPrefix),
        PrefixKind::Error if has_expression && !has_error_type => Err(PrefixError::ErrorPrefixWithoutErrorType),
        PrefixKind::Error => Ok(()),
    }
}

/// `!{firehose:random-string}`: 11 lowercase alphanumerics derived from the batch id and the
/// occurrence index, so a replayed batch renders the same key (Firehose draws a fresh one).
fn random_string(batch_id: Uuid, occurrence: u32) -> String {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let seed = Uuid::new_v5(&batch_id, format!("random-string-{occurrence}").as_bytes());
    let mut value = seed.as_u128();
    let mut out = String::with_capacity(RANDOM_STRING_LEN);
    for _ in 0..RANDOM_STRING_LEN {
        let digit = (value % 36) as usize;
        out.push(char::from(ALPHABET[digit]));
        value /= 36;
    }
    out
}

/// The object name after the prefix:
/// `<stream>-<VersionId>-<yyyy>-<MM>-<dd>-<HH>-<mm>-<ss>-<uuid><ext>`; `version_id` is the stream's
/// Firehose `VersionId` (1 until its destination changes).
pub fn object_name(stream: &str, version_id: u64, instant: &DateTime<Utc>, id: Uuid, extension: &str) -> String {
    format!(
        "{stream}-{version_id}-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}-{}{extension}",
        instant.year(),
        instant.month(),
        instant.day(),
        instant.hour(),
        instant.minute(),
        instant.second(),
        id.hyphenated(),
    )
}

/// The instant Firehose names an object by: the oldest record's arrival time, UTC.
pub fn batch_instant(oldest_arrival_ms: Option<i64>) -> Result<DateTime<Utc>, RenderError> {
    let millis = oldest_arrival_ms.ok_or(RenderError::EmptyBatch)?;
    DateTime::<Utc>::from_timestamp_millis(millis).ok_or(RenderError::TimeOutOfRange(millis))
}

/// A Java `DateTimeFormatter` pattern, parsed. Supported letters: `y`/`u` (year), `M`/`L`
/// (month), `d` (day of month), `D` (day of year), `H` (hour 0–23), `h` (hour 1–12), `a`
/// (AM/PM), `m`, `s`, `S` (fraction), `E` (day of week). `'quoted'` text and `''` are literal;
/// other non-letters are literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampPattern {
    items: Vec<PatternItem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternItem {
    Literal(String),
    Field { letter: char, count: usize },
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

impl TimestampPattern {
    pub fn parse(pattern: &str) -> Result<Self, PrefixError> {
        let bad = |reason: String| PrefixError::BadTimestamp { pattern: pattern.to_string(), reason };
        if pattern.is_empty() {
            return Err(bad("the pattern is empty".to_string()));
        }
        let chars: Vec<char> = pattern.chars().collect();
        let mut items = Vec::new();
        let mut index = 0;
        while index < chars.len() {
            let current = chars[index];
            if current == '\'' {
                // `''` is a literal quote, otherwise text up to the closing quote.
                if chars.get(index + 1) == Some(&'\'') {
                    push_literal(&mut items, "'");
                    index += 2;
                    continue;
                }
                let mut text = String::new();
                let mut cursor = index + 1;
                loop {
                    match chars.get(cursor) {
                        None => return Err(bad("unterminated quoted text".to_string())),
                        Some('\'') if chars.get(cursor + 1) == Some(&'\'') => {
                            text.push('\'');
                            cursor += 2;
                        }
                        Some('\'') => break,
                        Some(other) => {
                            text.push(*other);
                            cursor += 1;
                        }
                    }
                }
                push_literal(&mut items, &text);
                index = cursor + 1;
                continue;
            }
            if current.is_ascii_alphabetic() {
                let count = chars[index..].iter().take_while(|next| **next == current).count();
                check_field(current, count).map_err(bad)?;
                items.push(PatternItem::Field { letter: current, count });
                index += count;
                continue;
            }
            if matches!(current, '[' | ']' | '#' | '{' | '}') {
                return Err(bad(format!("`{current}` is reserved; quote it to use it as text")));
            }
            push_literal(&mut items, &current.to_string());
            index += 1;
        }
        Ok(Self { items })
    }

    pub fn format(&self, instant: &DateTime<Utc>) -> String {
        let mut out = String::new();
        self.format_into(instant, &mut out);
        out
    }

    fn format_into(&self, instant: &DateTime<Utc>, out: &mut String) {
        for item in &self.items {
            match item {
                PatternItem::Literal(text) => out.push_str(text),
                PatternItem::Field { letter, count } => format_field(*letter, *count, instant, out),
            }
        }
    }
}

fn push_literal(items: &mut Vec<PatternItem>, text: &str) {
    if let Some(PatternItem::Literal(existing)) = items.last_mut() {
        existing.push_str(text);
        return;
    }
    items.push(PatternItem::Literal(text.to_string()));
}

fn check_field(letter: char, count: usize) -> Result<(), String> {
    let max = match letter {
        'y' | 'u' => 19,
        'M' | 'L' | 'E' => 5,
        'D' => 3,
        'd' | 'H' | 'h' | 'm' | 's' => 2,
        'S' => 9,
        'a' => 1,
        other => {
            return Err(format!("pattern letter `{other}` is not supported; quote it to use it as text"));
        }
    };
    if count > max {
        return Err(format!("too many pattern letters `{letter}` ({count}, at most {max})"));
    }
    Ok(())
}

fn format_field(letter: char, count: usize, instant: &DateTime<Utc>, out: &mut String) {
    // Writing to a String cannot fail; the results are ignored deliberately.
    match letter {
        'y' | 'u' => {
            let year = instant.year();
            if count == 2 {
                let _ = write!(out, "{:02}", year.rem_euclid(100));
            } else {
                let _ = write!(out, "{year:0count$}");
            }
        }
        'M' | 'L' => {
            let month = instant.month();
            let name = MONTHS[instant.month0() as usize];
            match count {
                1 | 2 => {
                    let _ = write!(out, "{month:0count$}");
                }
                3 => out.push_str(&name[..3]),
                4 => out.push_str(name),
                _ => out.push_str(&name[..1]),
            }
        }
        'E' => {
            let name = WEEKDAYS[instant.weekday().num_days_from_monday() as usize];
            match count {
                1..=3 => out.push_str(&name[..3]),
                4 => out.push_str(name),
                _ => out.push_str(&name[..1]),
            }
        }
        'd' => {
            let _ = write!(out, "{:0count$}", instant.day());
        }
        'D' => {
            let _ = write!(out, "{:0count$}", instant.ordinal());
        }
        'H' => {
            let _ = write!(out, "{:0count$}", instant.hour());
        }
        'h' => {
            let _ = write!(out, "{:0count$}", instant.hour12().1);
        }
        'a' => out.push_str(if instant.hour12().0 { "PM" } else { "AM" }),
        'm' => {
            let _ = write!(out, "{:0count$}", instant.minute());
        }
        's' => {
            let _ = write!(out, "{:0count$}", instant.second());
        }
        'S' => {
            let nanos = format!("{:09}", instant.nanosecond() % 1_000_000_000);
            out.push_str(&nanos[..count.min(9)]);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instant() -> DateTime<Utc> {
        // 2026-11-25T17:04:09.123Z, a Wednesday.
        DateTime::<Utc>::from_timestamp_millis(1_795_626_249_123).expect("valid instant")
    }

    fn render(prefix: Option<&str>, kind: PrefixKind, error_output_type: Option<&str>) -> String {
        let keys = BTreeMap::new();
        let template = PrefixTemplate::parse(prefix, kind).expect("prefix parses");
        template
            .render(&RenderContext {
                instant: instant(),
                batch_id: Uuid::nil(),
                error_output_type,
                partition_keys: &keys,
            })
            .expect("prefix renders")
    }

    #[test]
    fn the_test_instant_is_what_the_tests_assume() {
        assert_eq!(instant().to_rfc3339(), "2026-11-25T17:04:09.123+00:00");
    }

    #[test]
    fn default_prefix_is_the_hourly_time_path() {
        assert_eq!(render(None, PrefixKind::Data, None), "2026/11/25/17/");
    }

    #[test]
    fn literal_prefix_gets_the_time_path_appended_without_a_slash() {
        assert_eq!(render(Some("logs/"), PrefixKind::Data, None), "logs/2026/11/25/17/");
        assert_eq!(render(Some("legacy"), PrefixKind::Data, None), "legacy2026/11/25/17/");
    }

    #[test]
    fn a_prefix_with_a_timestamp_gets_nothing_appended() {
        let rendered = render(Some("logs/!{timestamp:yyyy-MM-dd}/"), PrefixKind::Data, None);
        assert_eq!(rendered, "logs/2026-11-25/");
    }

    #[test]
    fn a_prefix_with_only_random_string_still_gets_the_time_path() {
        let rendered = render(Some("logs/!{firehose:random-string}/"), PrefixKind::Data, None);
        assert!(rendered.starts_with("logs/"), "{rendered}");
        assert!(rendered.ends_with("/2026/11/25/17/"), "{rendered}");
    }

    #[test]
    fn timestamp_fields() {
        let pattern = |text: &str| TimestampPattern::parse(text).expect("pattern parses").format(&instant());
        assert_eq!(pattern("yyyy/MM/dd/HH/mm/ss.SSS"), "2026/11/25/17/04/09.123");
        assert_eq!(pattern("yy"), "26");
        assert_eq!(pattern("y M d H m s"), "2026 11 25 17 4 9");
        assert_eq!(pattern("S"), "1");
        assert_eq!(pattern("SSSSSS"), "123000");
        assert_eq!(pattern("MMM MMMM EEE EEEE"), "Nov November Wed Wednesday");
        assert_eq!(pattern("D hh a"), "329 05 PM");
        assert_eq!(pattern("uuuu-MM"), "2026-11");
    }

    #[test]
    fn timestamp_quoting() {
        let pattern = |text: &str| TimestampPattern::parse(text).expect("pattern parses").format(&instant());
        assert_eq!(pattern("'year='yyyy'/month='MM"), "year=2026/month=11");
        assert_eq!(pattern("yyyy''MM"), "2026'11");
        assert_eq!(pattern("'it''s' HH"), "it's 17");
        assert_eq!(pattern("yyyy_MM-dd=HH"), "2026_11-25=17");
    }

    #[test]
    fn hive_style_prefix() {
        let rendered =
            render(Some("year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/"), PrefixKind::Data, None);
        assert_eq!(rendered, "year=2026/month=11/day=25/");
    }

    #[test]
    fn bad_timestamp_patterns_are_rejected() {
        for pattern in ["", "yyyy/ZZ", "'open", "yyyy[MM]", "ddd", "SSSSSSSSSS", "HHH"] {
            let error = TimestampPattern::parse(pattern).expect_err(pattern);
            assert!(matches!(error, PrefixError::BadTimestamp { .. }), "{pattern}: {error}");
        }
    }

    #[test]
    fn random_string_is_eleven_lowercase_alphanumerics_and_stable_per_batch() {
        let keys = BTreeMap::new();
        let template =
            PrefixTemplate::parse(Some("a/!{firehose:random-string}/!{firehose:random-string}/"), PrefixKind::Data)
                .expect("prefix parses");
        let batch_id = Uuid::new_v4();
        let context = RenderContext { instant: instant(), batch_id, error_output_type: None, partition_keys: &keys };
        let first = template.render(&context).expect("renders");
        let second = template.render(&context).expect("renders");
        assert_eq!(first, second, "a replayed batch gets the same key");

        let parts: Vec<&str> = first.split('/').collect();
        for random in [parts[1], parts[2]] {
            assert_eq!(random.len(), 11, "{first}");
            assert!(random.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{first}");
        }
        assert_ne!(parts[1], parts[2], "each occurrence differs");

        let other = RenderContext {
            instant: instant(),
            batch_id: Uuid::new_v4(),
            error_output_type: None,
            partition_keys: &keys,
        };
        assert_ne!(template.render(&other).expect("renders"), first, "another batch gets another string");
    }

    #[test]
    fn error_output_type_renders_in_the_error_prefix() {
        let rendered = render(
            Some("errors/!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd}/"),
            PrefixKind::Error,
            Some("processing-failed"),
        );
        assert_eq!(rendered, "errors/processing-failed/2026/11/25/");
    }

    #[test]
    fn default_error_prefix_is_type_then_time_path() {
        assert_eq!(
            render(None, PrefixKind::Error, Some("format-conversion-failed")),
            "format-conversion-failed/2026/11/25/17/"
        );
    }

    #[test]
    fn literal_error_prefix_gets_the_time_path() {
        assert_eq!(render(Some("errors/"), PrefixKind::Error, Some("processing-failed")), "errors/2026/11/25/17/");
    }

    #[test]
    fn error_output_type_must_be_given_and_be_one_segment() {
        let keys = BTreeMap::new();
        let template = PrefixTemplate::parse(None, PrefixKind::Error).expect("default parses");
        let context = |error_output_type| RenderContext {
            instant: instant(),
            batch_id: Uuid::nil(),
            error_output_type,
            partition_keys: &keys,
        };
        assert_eq!(template.render(&context(None)), Err(RenderError::MissingErrorOutputType));
        assert_eq!(template.render(&context(Some("a/b"))), Err(RenderError::BadErrorOutputType("a/b".to_string())));
    }

    #[test]
    fn partition_keys_lists_the_named_keys_in_order() {
        let template = PrefixTemplate::parse(
            Some("a=!{partitionKeyFromQuery:a}/!{timestamp:yyyy}/b=!{partitionKeyFromLambda:b}/!{partitionKeyFromQuery:a}/"),
            PrefixKind::Data,
        )
        .unwrap();
        let keys: Vec<_> = template.partition_keys().collect();
        assert_eq!(
            keys,
            [(PartitionKeySource::Query, "a"), (PartitionKeySource::Lambda, "b"), (PartitionKeySource::Query, "a")]
        );
        assert_eq!(PrefixTemplate::parse(None, PrefixKind::Data).unwrap().partition_keys().count(), 0);
    }

    #[test]
    fn partition_keys_render_from_the_map_and_suppress_the_time_path() {
        let template = PrefixTemplate::parse(
            Some("service=!{partitionKeyFromQuery:service}/team=!{partitionKeyFromLambda:team}/"),
            PrefixKind::Data,
        )
        .expect("prefix parses");
        assert!(template.has_partition_keys());
        let mut keys = BTreeMap::new();
        keys.insert("service".to_string(), "api".to_string());
        let context =
            RenderContext { instant: instant(), batch_id: Uuid::nil(), error_output_type: None, partition_keys: &keys };
        assert_eq!(template.render(&context), Err(RenderError::MissingPartitionKey("team".to_string())));

        // A jq key of the same name is not the Lambda's key.
        keys.insert("team".to_string(), "from-query".to_string());
        let context =
            RenderContext { instant: instant(), batch_id: Uuid::nil(), error_output_type: None, partition_keys: &keys };
        assert_eq!(template.render(&context), Err(RenderError::MissingPartitionKey("team".to_string())));

        keys.insert(spillway_sink_api::lambda_partition_key("team"), "core".to_string());
        let context =
            RenderContext { instant: instant(), batch_id: Uuid::nil(), error_output_type: None, partition_keys: &keys };
        assert_eq!(template.render(&context).expect("renders"), "service=api/team=core/");
    }

    #[test]
    fn invalid_expressions_are_rejected() {
        let cases: &[(&str, PrefixError)] = &[
            ("logs/!{timestamp:yyyy", PrefixError::Unterminated(5)),
            ("logs/!{timestamp:!{x}", PrefixError::Nested(17)),
            ("!{yyyy}", PrefixError::MissingNamespace("yyyy".to_string())),
            ("!{time:yyyy}", PrefixError::UnknownNamespace("time".to_string())),
            ("!{firehose:random}", PrefixError::UnknownFirehoseValue("random".to_string())),
            ("!{partitionKeyFromQuery:}", PrefixError::EmptyPartitionKey("partitionKeyFromQuery".to_string())),
            ("!{firehose:error-output-type}/", PrefixError::ErrorTypeInDataPrefix),
            ("/logs/", PrefixError::EmptySegment),
            ("logs//x/", PrefixError::EmptySegment),
        ];
        for (prefix, expected) in cases {
            assert_eq!(PrefixTemplate::parse(Some(prefix), PrefixKind::Data).as_ref(), Err(expected), "{prefix}");
        }
        let too_long = "a".repeat(MAX_PREFIX_LEN + 1);
        assert_eq!(
            PrefixTemplate::parse(Some(&too_long), PrefixKind::Data),
            Err(PrefixError::TooLong(MAX_PREFIX_LEN + 1))
        );
    }

    #[test]
    fn error_prefix_rules() {
        assert_eq!(
            PrefixTemplate::parse(Some("errors/!{timestamp:yyyy}/"), PrefixKind::Error),
            Err(PrefixError::ErrorPrefixWithoutErrorType)
        );
        assert_eq!(
            PrefixTemplate::parse(
                Some("errors/!{firehose:error-output-type}/!{partitionKeyFromQuery:a}/"),
                PrefixKind::Error
            ),
            Err(PrefixError::PartitionKeyInErrorPrefix)
        );
    }

    #[test]
    fn literal_root_is_the_fixed_part_of_the_key_space() {
        let root = |prefix: Option<&str>| {
            PrefixTemplate::parse(prefix, PrefixKind::Data).expect("parses").literal_root().to_string()
        };
        assert_eq!(root(None), "");
        assert_eq!(root(Some("logs/app/")), "logs/app");
        assert_eq!(root(Some("logs/app=!{partitionKeyFromQuery:app}/")), "logs");
        assert_eq!(root(Some("legacy")), "");
    }

    #[test]
    fn object_name_shape() {
        let id = Uuid::parse_str("6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f").expect("uuid");
        assert_eq!(
            object_name("app-logs", 1, &instant(), id, ".gz"),
            "app-logs-1-2026-11-25-17-04-09-6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f.gz"
        );
        assert_eq!(
            object_name("s", 12, &instant(), id, ""),
            "s-12-2026-11-25-17-04-09-6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
        );
    }

    #[test]
    fn batch_instant_is_the_oldest_arrival() {
        assert_eq!(batch_instant(Some(1_795_626_249_123)), Ok(instant()));
        assert_eq!(batch_instant(None), Err(RenderError::EmptyBatch));
    }
}
