//! Firehose object keys and prefix expressions: parsing a `prefix` / `error_output_prefix` once
//! into a [`PrefixTemplate`], and rendering it for a batch into the full object key
//! `<prefix><stream>-1-<yyyy>-<MM>-<dd>-<HH>-<mm>-<ss>-<uuid><ext>`.
//!
//! Supported expressions (firehose.md §6): `!{timestamp:<Java DateTimeFormatter pattern>}` (see
//! [`crate::timestamp`]; one instant per object, the oldest record's arrival, in the stream's
//! `custom_time_zone`, UTC by default), `!{firehose:random-string}`, `!{firehose:error-output-type}`
//! and `!{partitionKeyFromQuery:k}` / `!{partitionKeyFromLambda:k}`.
//!
//! Firehose's rules kept here: a leading `/` is accepted (and dropped: object stores have no empty
//! path segment); a prefix without a timestamp gets `yyyy/MM/dd/HH/` appended; with no
//! `error_output_prefix`, errors go under `<literal prefix><error-output-type>/yyyy/MM/dd/HH/`;
//! neither prefix may evaluate to more than 512 characters ([`MAX_EVALUATED_PREFIX_LEN`]).
//!
//! Everything here is pure: no I/O, no clock. A key is a function of the batch (id, stream,
//! records) and the partition keys, so a replayed batch gets the same key.

use std::collections::BTreeMap;

use jiff::Zoned;
use uuid::Uuid;

use crate::timestamp::{FormatError, JavaPattern, Zone};

/// The time path Firehose uses as the default prefix and appends to a prefix without one.
pub const DEFAULT_TIME_PATH: &str = "yyyy/MM/dd/HH/";

/// Length of `!{firehose:random-string}`.
const RANDOM_STRING_LEN: usize = 11;

/// Longest prefix Firehose accepts in its API model (`Prefix`, `ErrorOutputPrefix`: 0-1024).
pub const MAX_PREFIX_LEN: usize = 1024;

/// Longest *evaluated* prefix: "Neither Prefix nor ErrorOutputPrefix can be greater than 512
/// characters after they're evaluated" (Firehose developer guide, s3-prefixes). Records whose
/// prefix evaluates longer cannot be delivered and go to the error output, as Firehose sends
/// records whose prefix expressions it cannot evaluate to the error prefix.
pub const MAX_EVALUATED_PREFIX_LEN: usize = 512;

/// The longest `!{firehose:error-output-type}` value spillway writes
/// (`AmazonOpenSearchService-failed`), for the length bound of error prefixes.
const MAX_ERROR_OUTPUT_TYPE_LEN: usize = 32;

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
    #[error("prefix must not contain `//` (object stores reject empty path segments)")]
    EmptySegment,
    #[error("prefix can evaluate to {0} characters; Firehose's limit is {MAX_EVALUATED_PREFIX_LEN} after evaluation")]
    EvaluatesTooLong(usize),
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
    #[error("the prefix evaluates to {0} characters for this batch; Firehose's limit is {MAX_EVALUATED_PREFIX_LEN}")]
    EvaluatedTooLong(usize),
    #[error("timestamp pattern cannot print this instant: {0}")]
    Timestamp(#[from] FormatError),
}

/// Where a partition key comes from (only the name matters for rendering).
pub use spillway_sink_api::PartitionKeySource;

/// One piece of a parsed prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Timestamp(JavaPattern),
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
    /// The one instant every timestamp expression uses, in `zone`.
    pub time: &'a Zoned,
    pub zone: &'a Zone,
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
        if prefix.chars().count() > MAX_PREFIX_LEN {
            return Err(PrefixError::TooLong(prefix.chars().count()));
        }
        // Firehose accepts a leading `/` (S3 shows an empty-named folder); object stores have no
        // empty path segment, so it is dropped.
        let prefix = prefix.trim_start_matches('/');
        let mut segments = parse_segments(prefix)?;
        check_rules(&segments, kind)?;
        if prefix.contains("//") {
            return Err(PrefixError::EmptySegment);
        }
        let has_timestamp = segments.iter().any(|segment| matches!(segment, Segment::Timestamp(_)));
        let has_partition_key = segments.iter().any(|segment| matches!(segment, Segment::PartitionKey { .. }));
        if !has_timestamp && !has_partition_key {
            segments.push(Segment::Timestamp(default_time_path()));
        }
        Ok(Self { segments })
    }

    /// The error prefix used when none is configured, as the Firehose developer guide gives it:
    /// with a literal `prefix` (no expressions), `<prefix><error-output-type>/yyyy/MM/dd/HH/`
    /// (`myFirehosePrefix/` → `myFirehosePrefix/processing-failed/2018/08/27/…`). Firehose
    /// refuses a prefix with expressions and no error prefix; spillway then writes errors under
    /// `<error-output-type>/yyyy/MM/dd/HH/` at the root.
    pub fn default_error_for(data_prefix: Option<&str>) -> Self {
        let mut template = Self::default_for(PrefixKind::Error);
        let literal = data_prefix.map(|prefix| prefix.trim_start_matches('/')).filter(|prefix| !prefix.is_empty());
        if let Some(literal) = literal
            && !literal.contains("!{")
            && !literal.contains("//")
        {
            template.segments.insert(0, Segment::Literal(literal.to_string()));
        }
        template
    }

    /// The parsed error prefix: `error_output_prefix` when set, else [`Self::default_error_for`].
    pub fn parse_error_prefix(error_prefix: Option<&str>, data_prefix: Option<&str>) -> Result<Self, PrefixError> {
        match error_prefix {
            Some(_) => Self::parse(error_prefix, PrefixKind::Error),
            None => Ok(Self::default_error_for(data_prefix)),
        }
    }

    /// The most characters this template can evaluate to in `zone`, or `None` when partition
    /// keys make it depend on the records.
    pub fn max_evaluated_len(&self, zone: &Zone) -> Option<usize> {
        let mut total = 0;
        for segment in &self.segments {
            total += match segment {
                Segment::Literal(text) => text.chars().count(),
                Segment::Timestamp(pattern) => pattern.max_len(zone),
                Segment::RandomString => RANDOM_STRING_LEN,
                Segment::ErrorOutputType => MAX_ERROR_OUTPUT_TYPE_LEN,
                Segment::PartitionKey { .. } => return None,
            };
        }
        Some(total)
    }

    /// Refuse a template that can evaluate past Firehose's 512 characters whatever the records.
    pub fn check_evaluated_len(&self, zone: &Zone) -> Result<(), PrefixError> {
        match self.max_evaluated_len(zone) {
            Some(longest) if longest > MAX_EVALUATED_PREFIX_LEN => Err(PrefixError::EvaluatesTooLong(longest)),
            _ => Ok(()),
        }
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
                Segment::Timestamp(pattern) => pattern.format_into(context.time, context.zone, &mut out)?,
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
        let length = out.chars().count();
        if length > MAX_EVALUATED_PREFIX_LEN {
            return Err(RenderError::EvaluatedTooLong(length));
        }
        Ok(out)
    }
}

fn default_time_path() -> JavaPattern {
    // The constant pattern is known to parse; fall back to a literal rather than panic.
    JavaPattern::parse(DEFAULT_TIME_PATH).unwrap_or_else(|_| JavaPattern::literal(DEFAULT_TIME_PATH))
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
        "timestamp" => match JavaPattern::parse(value) {
            Ok(pattern) => Ok(Segment::Timestamp(pattern)),
            Err(error) => Err(PrefixError::BadTimestamp { pattern: value.to_string(), reason: error.to_string() }),
        },
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
/// `<stream>-<VersionId>-<yyyy>-<MM>-<dd>-<HH>-<mm>-<ss>-<uuid><ext>`, the time in the stream's
/// zone (Firehose's `CustomTimeZone` applies to the name too); `version_id` is the stream's
/// Firehose `VersionId` (1 until its destination changes).
pub fn object_name(stream: &str, version_id: u64, time: &Zoned, id: Uuid, extension: &str) -> String {
    format!(
        "{stream}-{version_id}-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}-{}{extension}",
        time.year(),
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        id.hyphenated(),
    )
}

/// The instant Firehose names an object by: the oldest record's arrival time, in `zone`.
pub fn batch_time(oldest_arrival_ms: Option<i64>, zone: &Zone) -> Result<Zoned, RenderError> {
    let millis = oldest_arrival_ms.ok_or(RenderError::EmptyBatch)?;
    zone.at_millis(millis).ok_or(RenderError::TimeOutOfRange(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MILLIS: i64 = 1_795_626_249_123;

    fn utc() -> &'static Zone {
        static UTC: std::sync::LazyLock<Zone> = std::sync::LazyLock::new(Zone::utc);
        &UTC
    }

    fn instant() -> Zoned {
        // 2026-11-25T17:04:09.123Z, a Wednesday.
        utc().at_millis(MILLIS).expect("valid instant")
    }

    fn render(prefix: Option<&str>, kind: PrefixKind, error_output_type: Option<&str>) -> String {
        let keys = BTreeMap::new();
        let now = instant();
        let template = PrefixTemplate::parse(prefix, kind).expect("prefix parses");
        template
            .render(&RenderContext {
                time: &now,
                zone: utc(),
                batch_id: Uuid::nil(),
                error_output_type,
                partition_keys: &keys,
            })
            .expect("prefix renders")
    }

    #[test]
    fn the_test_instant_is_what_the_tests_assume() {
        assert_eq!(instant().timestamp().to_string(), "2026-11-25T17:04:09.123Z");
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
        let pattern =
            |text: &str| JavaPattern::parse(text).expect("pattern parses").format(&instant(), utc()).expect("formats");
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
        let pattern =
            |text: &str| JavaPattern::parse(text).expect("pattern parses").format(&instant(), utc()).expect("formats");
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
        for pattern in ["", "'open", "yyyy]", "ddd", "SSSSSSSSSS", "HHH", "zzzz", "B", "t"] {
            let prefix = format!("!{{timestamp:{pattern}}}");
            let error = PrefixTemplate::parse(Some(&prefix), PrefixKind::Data).expect_err(pattern);
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
        let now = instant();
        let context =
            RenderContext { time: &now, zone: utc(), batch_id, error_output_type: None, partition_keys: &keys };
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
            time: &now,
            zone: utc(),
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
    fn a_leading_slash_is_accepted_and_dropped() {
        assert_eq!(render(Some("/logs/"), PrefixKind::Data, None), "logs/2026/11/25/17/");
        assert_eq!(render(Some("/"), PrefixKind::Data, None), "2026/11/25/17/");
        assert_eq!(
            render(Some("/errors/!{firehose:error-output-type}/"), PrefixKind::Error, Some("processing-failed")),
            "errors/processing-failed/2026/11/25/17/"
        );
    }

    #[test]
    fn without_an_error_prefix_errors_go_under_the_literal_prefix() {
        let render_default = |data_prefix: Option<&str>| {
            let keys = BTreeMap::new();
            let now = instant();
            PrefixTemplate::parse_error_prefix(None, data_prefix)
                .expect("default")
                .render(&RenderContext {
                    time: &now,
                    zone: utc(),
                    batch_id: Uuid::nil(),
                    error_output_type: Some("processing-failed"),
                    partition_keys: &keys,
                })
                .expect("renders")
        };
        // The developer guide's example: `myFirehosePrefix` → `myFirehosePrefix/processing-failed/…`.
        assert_eq!(render_default(Some("myFirehosePrefix/")), "myFirehosePrefix/processing-failed/2026/11/25/17/");
        assert_eq!(render_default(Some("/logs/")), "logs/processing-failed/2026/11/25/17/");
        assert_eq!(render_default(None), "processing-failed/2026/11/25/17/");
        assert_eq!(render_default(Some("logs/!{timestamp:yyyy}/")), "processing-failed/2026/11/25/17/");
    }

    #[test]
    fn the_evaluated_prefix_is_at_most_512_characters() {
        let long = "a".repeat(500);
        let fits =
            PrefixTemplate::parse(Some(&format!("{long}/!{{timestamp:yyyy/MM}}/")), PrefixKind::Data).expect("parses");
        assert_eq!(fits.check_evaluated_len(utc()), Ok(()));
        let too_long = PrefixTemplate::parse(Some(&format!("{long}/!{{timestamp:MMMM/EEEE}}/")), PrefixKind::Data)
            .expect("parses");
        assert_eq!(too_long.check_evaluated_len(utc()), Err(PrefixError::EvaluatesTooLong(521)));

        let partitioned =
            PrefixTemplate::parse(Some("a=!{partitionKeyFromQuery:a}/b=!{partitionKeyFromQuery:b}/"), PrefixKind::Data)
                .expect("parses");
        assert_eq!(partitioned.check_evaluated_len(utc()), Ok(()), "unknown until the records come");
        let now = instant();
        let keys: BTreeMap<String, String> =
            [("a".to_string(), "x".repeat(300)), ("b".to_string(), "y".repeat(300))].into_iter().collect();
        let context = RenderContext {
            time: &now,
            zone: utc(),
            batch_id: Uuid::nil(),
            error_output_type: None,
            partition_keys: &keys,
        };
        assert_eq!(partitioned.render(&context), Err(RenderError::EvaluatedTooLong(606)));
    }

    #[test]
    fn literal_error_prefix_gets_the_time_path() {
        assert_eq!(render(Some("errors/"), PrefixKind::Error, Some("processing-failed")), "errors/2026/11/25/17/");
    }

    #[test]
    fn error_output_type_must_be_given_and_be_one_segment() {
        let keys = BTreeMap::new();
        let template = PrefixTemplate::parse(None, PrefixKind::Error).expect("default parses");
        let now = instant();
        let context = |error_output_type| RenderContext {
            time: &now,
            zone: utc(),
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
        let now = instant();
        let mut keys = BTreeMap::new();
        keys.insert("service".to_string(), "api".to_string());
        let context = RenderContext {
            time: &now,
            zone: utc(),
            batch_id: Uuid::nil(),
            error_output_type: None,
            partition_keys: &keys,
        };
        assert_eq!(template.render(&context), Err(RenderError::MissingPartitionKey("team".to_string())));

        // A jq key of the same name is not the Lambda's key.
        keys.insert("team".to_string(), "from-query".to_string());
        let context = RenderContext {
            time: &now,
            zone: utc(),
            batch_id: Uuid::nil(),
            error_output_type: None,
            partition_keys: &keys,
        };
        assert_eq!(template.render(&context), Err(RenderError::MissingPartitionKey("team".to_string())));

        keys.insert(spillway_sink_api::lambda_partition_key("team"), "core".to_string());
        let context = RenderContext {
            time: &now,
            zone: utc(),
            batch_id: Uuid::nil(),
            error_output_type: None,
            partition_keys: &keys,
        };
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
    fn batch_time_is_the_oldest_arrival_in_the_zone() {
        assert_eq!(batch_time(Some(MILLIS), utc()), Ok(instant()));
        assert_eq!(batch_time(None, utc()), Err(RenderError::EmptyBatch));
        let tokyo = Zone::named("Asia/Tokyo").expect("zone");
        let id = Uuid::nil();
        let name = object_name("s", 1, &batch_time(Some(MILLIS), &tokyo).expect("time"), id, "");
        assert_eq!(name, format!("s-1-2026-11-26-02-04-09-{id}"), "the object name is in the zone too");
    }
}
