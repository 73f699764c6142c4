//! PostgreSQL's binary COPY format: each JSON value converted to its column type's wire form
//! (`int2/4/8`, `float4/8`, `bool`, `text`/`varchar`/`bpchar`, `json`, `jsonb`, `timestamptz`,
//! `timestamp`, `date`, `numeric`), the tuple framing, and the splitting of a payload into rows.
//!
//! Only conversions that are exact are done here; a table with any other column type is loaded
//! with text COPY (see `schema`). A value that cannot be converted is refused with the SQLSTATE
//! and message PostgreSQL's own input function would have given (`22P02 invalid input syntax for
//! type integer: "seven"`), so the error output reads the same in both formats. Where the server
//! still checks (a `varchar(n)` length, a `numeric(p,s)` precision, NUL bytes, JSON syntax for
//! `jsonb`, constraints) it answers with its own errors, as for text.
//!
//! Narrower than PostgreSQL's text parsers, on purpose: timestamps and dates are read as
//! ISO 8601 (`2024-05-06T07:08:09.123+02:00`, `2024-05-06 07:08:09`, `2024-05-06`), `epoch`,
//! `infinity`, `-infinity`, or epoch numbers (seconds; integers of 10^11 and more are
//! milliseconds, as the OpenX JSON SerDe reads them); other forms PostgreSQL knows (`now`,
//! `May 6 2024`, DateStyle-dependent `05/06/2024`) are refused with a hint to use
//! `copy_format: text`. Zone-less timestamps for `timestamptz` are UTC: binary is only chosen for
//! such a column when the session's TimeZone is UTC.
//!
//! Must not: talk to the database.

use serde_json::value::RawValue;
use spillway_sink_api::civil::{days_from_civil, days_in_month};

/// `PGCOPY\n\377\r\n\0`, flags 0, no header extension.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// A field count of -1 ends the data.
pub const TRAILER: &[u8] = &[0xff, 0xff];
/// A field count of -2 marks a record spillway refused (then a u32 length and `code\tmessage`);
/// never sent to the server.
pub const REFUSED: [u8; 2] = [0xff, 0xfe];

/// Microseconds and days from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i64 = 10_957;

/// A column type spillway writes in binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryType {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    /// `text`, `varchar`, `bpchar`: the server applies the length limit itself.
    Text,
    Json,
    Jsonb,
    Timestamptz,
    Timestamp,
    Date,
    Numeric,
}

impl BinaryType {
    /// From the catalog's `typname` of a non-array column.
    pub fn from_type_name(name: &str) -> Option<Self> {
        Some(match name {
            "int2" => Self::Int2,
            "int4" => Self::Int4,
            "int8" => Self::Int8,
            "float4" => Self::Float4,
            "float8" => Self::Float8,
            "bool" => Self::Bool,
            "text" | "varchar" | "bpchar" => Self::Text,
            "json" => Self::Json,
            "jsonb" => Self::Jsonb,
            "timestamptz" => Self::Timestamptz,
            "timestamp" => Self::Timestamp,
            "date" => Self::Date,
            "numeric" => Self::Numeric,
            _ => return None,
        })
    }

    /// The name PostgreSQL's messages use.
    fn sql_name(self) -> &'static str {
        match self {
            Self::Int2 => "smallint",
            Self::Int4 => "integer",
            Self::Int8 => "bigint",
            Self::Float4 => "real",
            Self::Float8 => "double precision",
            Self::Bool => "boolean",
            Self::Text => "text",
            Self::Json => "json",
            Self::Jsonb => "jsonb",
            Self::Timestamptz => "timestamp with time zone",
            Self::Timestamp => "timestamp without time zone",
            Self::Date => "date",
            Self::Numeric => "numeric",
        }
    }
}

/// Why a value cannot be converted: the SQLSTATE PostgreSQL would answer and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub sqlstate: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        Self { sqlstate, message: message.into() }
    }

    fn syntax(kind: BinaryType, text: &str) -> Self {
        Self::new("22P02", format!("invalid input syntax for type {}: \"{text}\"", kind.sql_name()))
    }

    fn out_of_range(kind: BinaryType, text: &str) -> Self {
        Self::new("22003", format!("value \"{text}\" is out of range for type {}", kind.sql_name()))
    }

    fn datetime(kind: BinaryType, text: &str) -> Self {
        Self::new(
            "22007",
            format!(
                "invalid input syntax for type {}: \"{text}\" (spillway's binary COPY reads ISO 8601, epoch, infinity and epoch numbers; copy_format: text hands values to PostgreSQL's own parser)",
                kind.sql_name()
            ),
        )
    }
}

/// A JSON value as text: a string unescaped, anything else as written.
fn value_text(raw: &str) -> Result<std::borrow::Cow<'_, str>, Refusal> {
    if raw.starts_with('"') {
        return serde_json::from_str(raw).map_err(|error| Refusal::new("22P02", error.to_string()));
    }
    Ok(std::borrow::Cow::Borrowed(raw))
}

/// Append one field (its length, then its bytes; -1 for NULL) of `value` converted to `kind`.
pub fn encode_field(kind: BinaryType, value: Option<&RawValue>, out: &mut Vec<u8>) -> Result<(), Refusal> {
    let raw = match value.map(RawValue::get) {
        None | Some("null") => {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            return Ok(());
        }
        Some(raw) => raw,
    };
    let length_at = out.len();
    out.extend_from_slice(&[0; 4]);
    encode_value(kind, raw, out)?;
    let length = i32::try_from(out.len() - length_at - 4)
        .map_err(|_| Refusal::new("54000", "a value over 1 GiB cannot be loaded"))?;
    out[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

fn encode_value(kind: BinaryType, raw: &str, out: &mut Vec<u8>) -> Result<(), Refusal> {
    match kind {
        BinaryType::Int2 => {
            let text = value_text(raw)?;
            let value = parse_integer(kind, &text)?;
            let value = i16::try_from(value).map_err(|_| Refusal::out_of_range(kind, &text))?;
            out.extend_from_slice(&value.to_be_bytes());
        }
        BinaryType::Int4 => {
            let text = value_text(raw)?;
            let value = parse_integer(kind, &text)?;
            let value = i32::try_from(value).map_err(|_| Refusal::out_of_range(kind, &text))?;
            out.extend_from_slice(&value.to_be_bytes());
        }
        BinaryType::Int8 => {
            let text = value_text(raw)?;
            out.extend_from_slice(&parse_integer(kind, &text)?.to_be_bytes());
        }
        BinaryType::Float4 => {
            let text = value_text(raw)?;
            let value: f32 = parse_float(kind, &text)?;
            out.extend_from_slice(&value.to_be_bytes());
        }
        BinaryType::Float8 => {
            let text = value_text(raw)?;
            let value: f64 = parse_float(kind, &text)?;
            out.extend_from_slice(&value.to_be_bytes());
        }
        BinaryType::Bool => {
            let text = value_text(raw)?;
            let value = parse_bool(&text).ok_or_else(|| Refusal::syntax(kind, &text))?;
            out.push(u8::from(value));
        }
        BinaryType::Text => out.extend_from_slice(value_text(raw)?.as_bytes()),
        BinaryType::Json => out.extend_from_slice(raw.as_bytes()),
        BinaryType::Jsonb => {
            // jsonb's binary form is a version byte and the JSON text; the server parses it.
            out.push(1);
            out.extend_from_slice(raw.as_bytes());
        }
        BinaryType::Timestamptz | BinaryType::Timestamp => {
            let micros = if raw.starts_with('"') {
                parse_timestamp(kind, &value_text(raw)?)?
            } else if !is_json_number(raw) {
                // As text COPY hands `true` or an object to the server, which refuses its syntax.
                return Err(Refusal::datetime(kind, raw));
            } else {
                let unix = epoch_micros(raw)?;
                Stamp::Finite(unix.checked_sub(PG_EPOCH_MICROS).ok_or_else(|| out_of_epoch_range(raw))?)
            };
            let value = match micros {
                Stamp::Finite(micros) => micros,
                Stamp::Infinity => i64::MAX,
                Stamp::MinusInfinity => i64::MIN,
            };
            out.extend_from_slice(&value.to_be_bytes());
        }
        BinaryType::Date => {
            let days = if raw.starts_with('"') {
                parse_date(&value_text(raw)?)?
            } else if !is_json_number(raw) {
                return Err(Refusal::datetime(kind, raw));
            } else {
                let day = epoch_micros(raw)?.div_euclid(86_400_000_000) - PG_EPOCH_DAYS;
                i32::try_from(day).map_err(|_| out_of_epoch_range(raw))?
            };
            out.extend_from_slice(&days.to_be_bytes());
        }
        BinaryType::Numeric => {
            let text = value_text(raw)?;
            encode_numeric(&text, out)?;
        }
    }
    Ok(())
}

/// PostgreSQL's integer input: surrounding whitespace, an optional sign, decimal digits.
fn parse_integer(kind: BinaryType, text: &str) -> Result<i64, Refusal> {
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(Refusal::syntax(kind, text));
    }
    trimmed.strip_prefix('+').unwrap_or(trimmed).parse::<i64>().map_err(|_| Refusal::out_of_range(kind, text))
}

/// PostgreSQL's float input: decimal or `NaN` / `Infinity`; overflow to infinity and underflow
/// to zero are out of range (denormals are kept), as `float8in` says.
fn parse_float<F>(kind: BinaryType, text: &str) -> Result<F, Refusal>
where
    F: std::str::FromStr + Into<f64> + Copy,
{
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    // Rust also reads `inf`, `infinity`, `nan` in any case, as PostgreSQL does.
    let value: F = trimmed.parse().map_err(|_| Refusal::syntax(kind, text))?;
    let wide: f64 = value.into();
    let spelled_special = trimmed.bytes().any(|byte| byte.is_ascii_alphabetic() && !matches!(byte, b'e' | b'E'));
    if !spelled_special {
        let mantissa = trimmed.split(['e', 'E']).next().unwrap_or_default();
        let nonzero = mantissa.bytes().any(|byte| matches!(byte, b'1'..=b'9'));
        if wide.is_infinite() || (wide == 0.0 && nonzero) {
            return Err(Refusal::new("22003", format!("\"{trimmed}\" is out of range for type {}", kind.sql_name())));
        }
    }
    Ok(value)
}

/// PostgreSQL's boolean input (`boolin`): true/false, yes/no, on/off, 1/0 and their unique
/// prefixes, any case, surrounding whitespace.
fn parse_bool(text: &str) -> Option<bool> {
    let word = text.trim_matches(|c: char| c.is_ascii_whitespace());
    // Compared ignoring case in place: no lowercased copy per value.
    let prefix_of = |full: &str, at_least: usize| {
        (at_least..=full.len()).contains(&word.len())
            && full.as_bytes()[..word.len()].eq_ignore_ascii_case(word.as_bytes())
    };
    match word.as_bytes().first()?.to_ascii_lowercase() {
        b't' if prefix_of("true", 1) => Some(true),
        b'y' if prefix_of("yes", 1) => Some(true),
        b'f' if prefix_of("false", 1) => Some(false),
        b'n' if prefix_of("no", 1) => Some(false),
        b'o' if prefix_of("on", 2) => Some(true),
        b'o' if prefix_of("off", 2) => Some(false),
        b'1' if word == "1" => Some(true),
        b'0' if word == "0" => Some(false),
        _ => None,
    }
}

/// A JSON number (what text COPY also reads as epoch time), not `true`, an object or an array.
fn is_json_number(raw: &str) -> bool {
    matches!(raw.as_bytes().first(), Some(b'-' | b'0'..=b'9'))
}

fn out_of_epoch_range(raw: &str) -> Refusal {
    // The text encoder refuses the same numbers (before PostgreSQL sees them) with this code.
    Refusal::new("InvalidRecord", format!("epoch time {raw} out of range"))
}

/// Epoch seconds (fractions kept to the microsecond) or, for integers of 10^11 and more,
/// milliseconds, as Unix microseconds.
pub fn epoch_micros(raw: &str) -> Result<i64, Refusal> {
    let integer = raw.bytes().all(|byte| byte.is_ascii_digit() || byte == b'-');
    if integer && let Ok(value) = raw.parse::<i64>() {
        let micros = if value.unsigned_abs() >= 100_000_000_000 {
            value.checked_mul(1_000)
        } else {
            value.checked_mul(1_000_000)
        };
        return micros.ok_or_else(|| out_of_epoch_range(raw));
    }
    let seconds: f64 = raw.parse().map_err(|_| out_of_epoch_range(raw))?;
    let micros = (seconds * 1e6).round();
    if !micros.is_finite() || micros.abs() > 9.2e18 {
        return Err(out_of_epoch_range(raw));
    }
    Ok(micros as i64)
}

enum Stamp {
    Finite(i64),
    Infinity,
    MinusInfinity,
}

/// The fields of an ISO 8601 date-time; `offset_seconds` east of UTC, if written.
#[derive(Debug, PartialEq, Eq)]
struct Written {
    year: i64,
    month: u32,
    day: u32,
    /// Microseconds after midnight (up to a whole day: `24:00:00`, a leap second rolls over).
    micros_of_day: i64,
    offset_seconds: Option<i64>,
}

/// PostgreSQL's special date-time inputs (`epoch`, `infinity`, `+infinity`, `-infinity`, any
/// case), matched without a lowercased copy of every value.
fn special_datetime(text: &str) -> Option<Stamp> {
    let is = |word: &str| text.eq_ignore_ascii_case(word);
    if is("epoch") {
        Some(Stamp::Finite(-PG_EPOCH_MICROS))
    } else if is("infinity") || is("+infinity") {
        Some(Stamp::Infinity)
    } else if is("-infinity") {
        Some(Stamp::MinusInfinity)
    } else {
        None
    }
}

fn parse_timestamp(kind: BinaryType, text: &str) -> Result<Stamp, Refusal> {
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if let Some(special) = special_datetime(trimmed) {
        return Ok(special);
    }
    let written = parse_iso(trimmed).map_err(|range| match range {
        true => Refusal::new("22008", format!("date/time field value out of range: \"{text}\"")),
        false => Refusal::datetime(kind, text),
    })?;
    let days = days_from_civil(written.year, i64::from(written.month), i64::from(written.day)) - PG_EPOCH_DAYS;
    let mut micros = days * 86_400_000_000 + written.micros_of_day;
    // timestamptz: an offset moves the instant; without one it is UTC (the session's zone, which
    // must be UTC for binary to be chosen). timestamp: the written wall time, any offset ignored
    // (as PostgreSQL's timestamp input does).
    if kind == BinaryType::Timestamptz {
        micros -= written.offset_seconds.unwrap_or(0) * 1_000_000;
    }
    Ok(Stamp::Finite(micros))
}

fn parse_date(text: &str) -> Result<i32, Refusal> {
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    match special_datetime(trimmed) {
        Some(Stamp::Finite(_)) => return Ok(-(PG_EPOCH_DAYS as i32)),
        Some(Stamp::Infinity) => return Ok(i32::MAX),
        Some(Stamp::MinusInfinity) => return Ok(i32::MIN),
        None => {}
    }
    // A date-time's written day (its time and offset ignored, as PostgreSQL's date input does).
    let written = parse_iso(trimmed).map_err(|range| match range {
        true => Refusal::new("22008", format!("date/time field value out of range: \"{text}\"")),
        false => Refusal::datetime(BinaryType::Date, text),
    })?;
    let days = days_from_civil(written.year, i64::from(written.month), i64::from(written.day)) - PG_EPOCH_DAYS;
    i32::try_from(days).map_err(|_| Refusal::new("22008", format!("date out of range: \"{text}\"")))
}

/// `YYYY-M[M]-D[D]` then optionally `T`/space `H[H]:MM[:SS[.fraction]]` then optionally
/// `Z`, `UTC`, `GMT` or `±HH[[:]MM]` (a space before the zone allowed). `Err(true)`: a field out
/// of range; `Err(false)`: not this syntax.
fn parse_iso(text: &str) -> Result<Written, bool> {
    let bytes = text.as_bytes();
    let mut at = 0;
    let number = |at: &mut usize, min: usize, max: usize| -> Result<i64, bool> {
        let start = *at;
        while *at < bytes.len() && *at - start < max && bytes[*at].is_ascii_digit() {
            *at += 1;
        }
        if *at - start < min {
            return Err(false);
        }
        text[start..*at].parse().map_err(|_| false)
    };
    let expect = |at: &mut usize, byte: u8| -> Result<(), bool> {
        if bytes.get(*at) == Some(&byte) {
            *at += 1;
            Ok(())
        } else {
            Err(false)
        }
    };
    let year = number(&mut at, 4, 4)?;
    expect(&mut at, b'-')?;
    let month = number(&mut at, 1, 2)? as u32;
    expect(&mut at, b'-')?;
    let day = number(&mut at, 1, 2)? as u32;
    let mut written = Written { year, month, day, micros_of_day: 0, offset_seconds: None };
    if at < bytes.len() {
        if !matches!(bytes[at], b'T' | b't' | b' ') {
            return Err(false);
        }
        at += 1;
        let hour = number(&mut at, 1, 2)?;
        expect(&mut at, b':')?;
        let minute = number(&mut at, 2, 2)?;
        let mut second = 0;
        let mut fraction_micros = 0;
        if bytes.get(at) == Some(&b':') {
            at += 1;
            second = number(&mut at, 2, 2)?;
            if bytes.get(at) == Some(&b'.') {
                at += 1;
                let start = at;
                while at < bytes.len() && bytes[at].is_ascii_digit() {
                    at += 1;
                }
                if at == start {
                    return Err(false);
                }
                // To the microsecond, half up (PostgreSQL rounds too).
                let digits = &text[start..at];
                let mut micros: i64 = 0;
                for digit in digits.bytes().chain(std::iter::repeat(b'0')).take(6) {
                    micros = micros * 10 + i64::from(digit - b'0');
                }
                if digits.len() > 6 && digits.as_bytes()[6] >= b'5' {
                    micros += 1;
                }
                fraction_micros = micros;
            }
        }
        if hour > 24 || minute > 59 || second > 60 || (hour == 24 && (minute, second, fraction_micros) != (0, 0, 0)) {
            return Err(true);
        }
        written.micros_of_day = ((hour * 60 + minute) * 60 + second) * 1_000_000 + fraction_micros;
        if bytes.get(at) == Some(&b' ') {
            at += 1;
        }
        if at < bytes.len() {
            written.offset_seconds = Some(parse_offset(&text[at..])?);
            at = bytes.len();
        }
    }
    if at != bytes.len() {
        return Err(false);
    }
    if year == 0 || !(1..=12).contains(&month) || day == 0 || i64::from(day) > days_in_month(year, i64::from(month)) {
        return Err(true);
    }
    Ok(written)
}

/// `Z`, `UTC`, `GMT`, `±HH`, `±HHMM`, `±HH:MM` (at most ±15:59, PostgreSQL's limit).
fn parse_offset(text: &str) -> Result<i64, bool> {
    if matches!(text, "Z" | "z") || text.eq_ignore_ascii_case("utc") || text.eq_ignore_ascii_case("gmt") {
        return Ok(0);
    }
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(false),
    };
    if rest.len() > 5 || (rest.len() == 5 && rest.as_bytes()[2] != b':') {
        return Err(false);
    }
    // The digits without colons, on the stack (no `String` per value).
    let (mut digits, mut count) = ([0i64; 4], 0);
    for byte in rest.bytes().filter(|byte| *byte != b':') {
        if count == digits.len() || !byte.is_ascii_digit() {
            return Err(false);
        }
        digits[count] = i64::from(byte - b'0');
        count += 1;
    }
    if !matches!(count, 2 | 4) {
        return Err(false);
    }
    let hours = digits[0] * 10 + digits[1];
    let minutes = if count == 4 { digits[2] * 10 + digits[3] } else { 0 };
    if hours > 15 || minutes > 59 {
        return Err(true);
    }
    Ok(sign * (hours * 3600 + minutes * 60))
}

/// PostgreSQL's numeric wire form from a decimal text (`-12.5e3`, `NaN`, `Infinity`), exactly:
/// base-10000 digits, weight, sign and display scale as `numeric_in` would store them.
fn encode_numeric(text: &str, out: &mut Vec<u8>) -> Result<(), Refusal> {
    const POSITIVE: u16 = 0x0000;
    const NEGATIVE: u16 = 0x4000;
    const NAN: u16 = 0xC000;
    const PLUS_INFINITY: u16 = 0xD000;
    const MINUS_INFINITY: u16 = 0xF000;
    let kind = BinaryType::Numeric;
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let special = |sign: u16, out: &mut Vec<u8>| {
        for half in [0u16, 0, sign, 0] {
            out.extend_from_slice(&half.to_be_bytes());
        }
    };
    let is = |word: &str| trimmed.eq_ignore_ascii_case(word);
    let sign = if is("nan") {
        Some(NAN)
    } else if is("infinity") || is("+infinity") {
        Some(PLUS_INFINITY)
    } else if is("-infinity") {
        Some(MINUS_INFINITY)
    } else {
        None
    };
    if let Some(sign) = sign {
        special(sign, out);
        return Ok(());
    }
    let (negative, unsigned) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => {
            let exponent: i64 = unsigned[at + 1..].parse().map_err(|_| Refusal::syntax(kind, text))?;
            (&unsigned[..at], exponent)
        }
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole.bytes().all(|byte| byte.is_ascii_digit())
        || !fraction.bytes().all(|byte| byte.is_ascii_digit())
    {
        return Err(Refusal::syntax(kind, text));
    }
    let overflow = || Refusal::new("22003", "value overflows numeric format");
    if exponent.abs() > 100_000 {
        return Err(overflow());
    }
    let display_scale = (fraction.len() as i64 - exponent).max(0);
    // All decimal digits, and how many of them stand before the decimal point.
    let mut digits: Vec<u8> = whole.bytes().chain(fraction.bytes()).map(|byte| byte - b'0').collect();
    let mut point = whole.len() as i64 + exponent;
    let leading = digits.iter().take_while(|&&digit| digit == 0).count();
    digits.drain(..leading);
    point -= leading as i64;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let mut groups: Vec<i16> = Vec::new();
    let mut weight: i64 = 0;
    if !digits.is_empty() {
        // Align on the decimal point: pad left so `point` is a multiple of 4, right to a group.
        let pad = (4 - point.rem_euclid(4)) % 4;
        let mut padded = vec![0u8; pad as usize];
        padded.extend_from_slice(&digits);
        while !padded.len().is_multiple_of(4) {
            padded.push(0);
        }
        weight = (point + pad) / 4 - 1;
        groups = padded
            .chunks(4)
            .map(|chunk| chunk.iter().fold(0i16, |group, &digit| group * 10 + i16::from(digit)))
            .collect();
        while groups.last() == Some(&0) {
            groups.pop();
        }
    }
    let weight = i16::try_from(weight).map_err(|_| overflow())?;
    let display_scale = u16::try_from(display_scale).ok().filter(|&scale| scale <= 0x3FFF).ok_or_else(overflow)?;
    let count = i16::try_from(groups.len()).map_err(|_| overflow())?;
    let sign = if negative && !groups.is_empty() { NEGATIVE } else { POSITIVE };
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&display_scale.to_be_bytes());
    for group in groups {
        out.extend_from_slice(&group.to_be_bytes());
    }
    Ok(())
}

/// A refused record in the tuple stream: [`REFUSED`], a u32 length, `code\tmessage`.
pub fn push_refused(code: &str, message: &str, out: &mut Vec<u8>) {
    let text = format!("{code}\t{message}");
    out.extend_from_slice(&REFUSED);
    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// One row of a binary payload: where its tuple is, or why spillway refused the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tuple {
    Row { offset: usize, length: usize },
    Refused { code: String, message: String },
}

/// The tuples of `body` (after the payload's format byte), in record order.
pub fn tuples(body: &[u8], start: usize) -> Result<Vec<Tuple>, String> {
    let mut found = Vec::new();
    let mut at = start;
    let read = |at: usize, width: usize| -> Result<&[u8], String> {
        body.get(at..at + width).ok_or_else(|| format!("binary payload truncated at byte {at}"))
    };
    while at < body.len() {
        let count = read(at, 2)?;
        if count == REFUSED {
            let length = read(at + 2, 4)?;
            let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
            let text = String::from_utf8_lossy(read(at + 6, length)?).into_owned();
            let (code, message) = text.split_once('\t').unwrap_or(("InvalidRecord", &text));
            found.push(Tuple::Refused { code: code.to_string(), message: message.to_string() });
            at += 6 + length;
            continue;
        }
        let fields = i16::from_be_bytes([count[0], count[1]]);
        if fields < 0 {
            return Err(format!("binary payload has a field count of {fields} at byte {at}"));
        }
        let row_start = at;
        at += 2;
        for _ in 0..fields {
            let length = read(at, 4)?;
            let length = i32::from_be_bytes([length[0], length[1], length[2], length[3]]);
            at += 4 + usize::try_from(length).unwrap_or(0);
        }
        if at > body.len() {
            return Err(format!("binary payload truncated in the row at byte {row_start}"));
        }
        found.push(Tuple::Row { offset: row_start, length: at - row_start });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(kind: BinaryType, json: &str) -> Result<Vec<u8>, Refusal> {
        let value: Box<RawValue> = serde_json::from_str(json).unwrap();
        let mut out = Vec::new();
        encode_field(kind, Some(&value), &mut out)?;
        let length = i32::from_be_bytes([out[0], out[1], out[2], out[3]]);
        if length >= 0 {
            assert_eq!(length as usize, out.len() - 4, "length prefix of {json}");
        }
        Ok(out[4..].to_vec())
    }

    fn code(kind: BinaryType, json: &str) -> &'static str {
        field(kind, json).unwrap_err().sqlstate
    }

    fn micros(kind: BinaryType, json: &str) -> i64 {
        i64::from_be_bytes(field(kind, json).unwrap().try_into().unwrap())
    }

    /// `2000-01-01` based microseconds of a Unix time in seconds.
    fn pg_micros(unix_seconds: i64) -> i64 {
        unix_seconds * 1_000_000 - PG_EPOCH_MICROS
    }

    #[test]
    fn null_and_missing_are_minus_one() {
        let mut out = Vec::new();
        encode_field(BinaryType::Int4, None, &mut out).unwrap();
        let null: Box<RawValue> = serde_json::from_str("null").unwrap();
        encode_field(BinaryType::Text, Some(&null), &mut out).unwrap();
        assert_eq!(out, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn integers_in_range_from_numbers_and_strings() {
        assert_eq!(field(BinaryType::Int2, "-32768").unwrap(), (-32768i16).to_be_bytes());
        assert_eq!(field(BinaryType::Int4, "42").unwrap(), 42i32.to_be_bytes());
        assert_eq!(field(BinaryType::Int4, r#"" +7 ""#).unwrap(), 7i32.to_be_bytes());
        assert_eq!(field(BinaryType::Int8, "9007199254740993").unwrap(), 9_007_199_254_740_993i64.to_be_bytes());
        assert_eq!(field(BinaryType::Int8, "-9223372036854775808").unwrap(), i64::MIN.to_be_bytes());
        assert_eq!(code(BinaryType::Int2, "32768"), "22003");
        assert_eq!(code(BinaryType::Int4, "99999999999"), "22003");
        assert_eq!(code(BinaryType::Int8, "9223372036854775808"), "22003");
        let refused = field(BinaryType::Int4, r#""seven thousand""#).unwrap_err();
        assert_eq!(refused.sqlstate, "22P02");
        assert_eq!(refused.message, r#"invalid input syntax for type integer: "seven thousand""#);
        for bad in ["4.0", "1e3", "true", r#"{"a":1}"#, "[1]", r#""""#, r#""-""#] {
            assert_eq!(code(BinaryType::Int4, bad), "22P02", "{bad}");
        }
    }

    #[test]
    fn floats_round_as_postgres_does_and_overflow_is_refused() {
        assert_eq!(field(BinaryType::Float8, "0.1").unwrap(), 0.1f64.to_be_bytes());
        assert_eq!(field(BinaryType::Float8, "-1.5e300").unwrap(), (-1.5e300f64).to_be_bytes());
        assert_eq!(field(BinaryType::Float4, "0.1").unwrap(), 0.1f32.to_be_bytes());
        assert_eq!(field(BinaryType::Float8, r#""-Infinity""#).unwrap(), f64::NEG_INFINITY.to_be_bytes());
        assert!(f64::from_be_bytes(field(BinaryType::Float8, r#""NaN""#).unwrap().try_into().unwrap()).is_nan());
        assert_eq!(field(BinaryType::Float8, "4.9e-324").unwrap(), 4.9e-324f64.to_be_bytes(), "denormal kept");
        assert_eq!(field(BinaryType::Float8, "-0.0").unwrap(), (-0.0f64).to_be_bytes());
        assert_eq!(code(BinaryType::Float8, "1e400"), "22003");
        assert_eq!(code(BinaryType::Float8, "1e-400"), "22003");
        assert_eq!(code(BinaryType::Float4, "1e39"), "22003");
        assert_eq!(code(BinaryType::Float8, r#""abc""#), "22P02");
    }

    #[test]
    fn booleans_as_boolin_reads_them() {
        for (json, expected) in [
            ("true", 1u8),
            ("false", 0),
            (r#""t""#, 1),
            (r#"" YES ""#, 1),
            (r#""of""#, 0),
            (r#""on""#, 1),
            ("1", 1),
            ("0", 0),
        ] {
            assert_eq!(field(BinaryType::Bool, json).unwrap(), [expected], "{json}");
        }
        for bad in ["2", r#""o""#, r#""maybe""#, r#""""#] {
            assert_eq!(code(BinaryType::Bool, bad), "22P02", "{bad}");
        }
    }

    #[test]
    fn text_unescapes_strings_and_keeps_other_json_as_written() {
        assert_eq!(field(BinaryType::Text, r#""日本語 🚀 \u00e9\ttab\n""#).unwrap(), "日本語 🚀 é\ttab\n".as_bytes());
        assert_eq!(field(BinaryType::Text, r#"{"k":[1,2]}"#).unwrap(), br#"{"k":[1,2]}"#);
        assert_eq!(field(BinaryType::Text, "12.50").unwrap(), b"12.50");
        assert_eq!(field(BinaryType::Json, r#""just a string""#).unwrap(), br#""just a string""#);
        assert_eq!(field(BinaryType::Jsonb, r#"{"s":"é"}"#).unwrap(), [&[1u8][..], r#"{"s":"é"}"#.as_bytes()].concat());
    }

    #[test]
    fn timestamps_with_offsets_zones_and_fractions() {
        let tz = BinaryType::Timestamptz;
        // 2024-05-06T05:08:09.123Z is Unix 1714972089.123.
        let expected = pg_micros(1_714_972_089) + 123_000;
        assert_eq!(micros(tz, r#""2024-05-06T07:08:09.123+02:00""#), expected);
        assert_eq!(micros(tz, r#""2024-05-06 05:08:09.123Z""#), expected);
        assert_eq!(micros(tz, r#""2024-05-06T05:08:09.123""#), expected, "zone-less is UTC");
        assert_eq!(micros(tz, r#""2024-05-06 00:38:09.123 -0430""#), expected);
        assert_eq!(micros(tz, r#""2024-05-06T03:08:09.123-02""#), expected);
        assert_eq!(micros(tz, r#""2024-05-06T05:08:09.1234565Z""#), expected + 457, "rounded to the microsecond");
        assert_eq!(micros(tz, r#""2024-5-6 5:08:09.123 UTC""#), expected);
        assert_eq!(micros(tz, r#""2024-05-06""#), pg_micros(1_714_953_600));
        assert_eq!(micros(tz, r#""2024-02-28T24:00:00Z""#), pg_micros(1_709_164_800), "24:00 is the next day");
        assert_eq!(micros(tz, r#""1969-12-31T23:59:59.5Z""#), -PG_EPOCH_MICROS - 500_000);
        assert_eq!(micros(tz, r#""0001-01-01T00:00:00Z""#), -63_082_281_600_000_000);
        assert_eq!(micros(tz, r#""epoch""#), -PG_EPOCH_MICROS);
        assert_eq!(micros(tz, r#""Infinity""#), i64::MAX);
        assert_eq!(micros(tz, r#""-infinity""#), i64::MIN);
        // timestamp without time zone keeps the written wall time.
        assert_eq!(micros(BinaryType::Timestamp, r#""2024-05-06T07:08:09.123+02:00""#), expected + 7_200_000_000);
        assert_eq!(code(tz, r#""not a time""#), "22007");
        assert!(field(tz, r#""now""#).unwrap_err().message.contains("copy_format: text"));
        assert_eq!(micros(tz, r#""2024-05-06T05:08Z""#), pg_micros(1_714_972_080), "seconds are optional");
        assert_eq!(code(tz, r#""2024-05-06T07""#), "22007", "minutes are not");
        assert_eq!(code(tz, r#""2024-13-01""#), "22008");
        assert_eq!(code(tz, r#""2023-02-29""#), "22008");
        assert_eq!(code(tz, r#""2024-01-01T10:00:00+16:00""#), "22008");
        assert_eq!(code(tz, r#""0000-01-01""#), "22008");
        assert_eq!(code(tz, r#""2024-01-01T10:00:00Zjunk""#), "22007");
        // Neither a string nor a number: the syntax error text COPY gets from the server.
        assert_eq!(code(tz, "true"), "22007");
        assert_eq!(code(tz, r#"{"at":1}"#), "22007");
        assert_eq!(code(BinaryType::Date, "[1]"), "22007");
    }

    #[test]
    fn epoch_numbers_are_seconds_or_milliseconds_as_openx_reads_them() {
        let tz = BinaryType::Timestamptz;
        assert_eq!(micros(tz, "1700000000"), pg_micros(1_700_000_000));
        assert_eq!(micros(tz, "1700000000.25"), pg_micros(1_700_000_000) + 250_000);
        assert_eq!(micros(tz, "1700000000123"), pg_micros(1_700_000_000) + 123_000, "10^11 and more: milliseconds");
        assert_eq!(micros(tz, "-86400"), pg_micros(-86_400));
        assert_eq!(micros(tz, "0"), -PG_EPOCH_MICROS);
        let refused = field(tz, "1e300").unwrap_err();
        assert_eq!(refused.sqlstate, "InvalidRecord");
        assert!(refused.message.contains("out of range"));
    }

    #[test]
    fn dates_from_iso_strings_and_epoch_numbers() {
        let day = |json: &str| i32::from_be_bytes(field(BinaryType::Date, json).unwrap().try_into().unwrap());
        assert_eq!(day(r#""2000-01-01""#), 0);
        assert_eq!(day(r#""2024-02-29""#), 8_825);
        assert_eq!(day(r#""2024-02-29T23:30:00-05:00""#), 8_825, "the written day");
        assert_eq!(day("0"), -10_957);
        assert_eq!(day("86400"), -10_956);
        assert_eq!(day("-1"), -10_958, "before the epoch rounds down to the day");
        assert_eq!(day("1700000000123"), 19_675 - 10_957);
        assert_eq!(day(r#""epoch""#), -10_957);
        assert_eq!(day(r#""infinity""#), i32::MAX);
        assert_eq!(code(BinaryType::Date, r#""2024-02-30""#), "22008");
        assert_eq!(code(BinaryType::Date, r#""05/06/2024""#), "22007");
    }

    fn numeric(text: &str) -> (i16, i16, u16, u16, Vec<i16>) {
        let bytes = field(BinaryType::Numeric, text).unwrap();
        let half = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let count = half(0) as usize;
        (half(0) as i16, half(2) as i16, half(4), half(6), (0..count).map(|index| half(8 + 2 * index) as i16).collect())
    }

    #[test]
    fn numerics_are_exact_base_10000_digits() {
        assert_eq!(
            numeric("12345678901234567890.123456789"),
            (8, 4, 0, 9, vec![1234, 5678, 9012, 3456, 7890, 1234, 5678, 9000])
        );
        assert_eq!(numeric(r#""1e-3""#), (1, -1, 0, 3, vec![10]));
        assert_eq!(numeric("-12.50"), (2, 0, 0x4000, 2, vec![12, 5000]));
        assert_eq!(numeric("0"), (0, 0, 0, 0, vec![]));
        assert_eq!(numeric("-0.00"), (0, 0, 0, 2, vec![]), "negative zero is zero");
        assert_eq!(numeric("1e4"), (1, 1, 0, 0, vec![1]));
        assert_eq!(numeric("123.4e1"), (1, 0, 0, 0, vec![1234]));
        assert_eq!(numeric("0.00001"), (1, -2, 0, 5, vec![1000]));
        assert_eq!(numeric(r#"" 10000 ""#), (1, 1, 0, 0, vec![1]));
        assert_eq!(numeric(r#""NaN""#), (0, 0, 0xC000, 0, vec![]));
        assert_eq!(numeric(r#""-Infinity""#), (0, 0, 0xF000, 0, vec![]));
        assert_eq!(code(BinaryType::Numeric, r#""12abc""#), "22P02");
        assert_eq!(code(BinaryType::Numeric, "true"), "22P02");
        assert_eq!(code(BinaryType::Numeric, "1e999999"), "22003");
    }

    #[test]
    fn tuples_are_found_and_refused_records_keep_their_place() {
        let mut body = vec![0x03];
        body.extend_from_slice(&1i16.to_be_bytes());
        encode_field(BinaryType::Int4, None, &mut body).unwrap();
        push_refused("Postgres.22P02", "invalid input syntax for type integer: \"x\"", &mut body);
        body.extend_from_slice(&1i16.to_be_bytes());
        let value: Box<RawValue> = serde_json::from_str("7").unwrap();
        encode_field(BinaryType::Int4, Some(&value), &mut body).unwrap();
        let found = tuples(&body, 1).unwrap();
        assert_eq!(
            found,
            [
                Tuple::Row { offset: 1, length: 6 },
                Tuple::Refused {
                    code: "Postgres.22P02".into(),
                    message: "invalid input syntax for type integer: \"x\"".into()
                },
                Tuple::Row { offset: body.len() - 10, length: 10 },
            ]
        );
        assert!(tuples(&body[..body.len() - 1], 1).is_err());
    }
}
