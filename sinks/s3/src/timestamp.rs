//! Java `DateTimeFormatter` patterns, as Firehose evaluates `!{timestamp:<pattern>}`: parsed once
//! into a [`JavaPattern`], formatted for one instant in one [`Zone`] exactly as
//! `DateTimeFormatter.ofPattern(pattern, Locale.US).format(instant.atZone(zone))` prints it on
//! Java 17 (`tests/java_time.rs` compares every letter against a fixture Java printed).
//!
//! Owns: the pattern grammar (letters, `'quoted'` text, `''`, `[ ]` optional sections, `p` pad),
//! the Locale.US texts and week rules (weeks start on Sunday; week 1 holds January 1st), the
//! offset and zone letters, and the time zone lookup for `custom_time_zone` (the IANA database
//! embedded in the binary, so lookups read no disk and every host agrees).
//! Must not: read the clock or do I/O.
//!
//! Not supported, refused when the pattern is parsed: localized zone names `zzzz`, `v`, `vvvv`
//! and day periods `B` (Java 16+). `z` prints the IANA abbreviation (`JST`, `EST`, `CEST`),
//! which is what Java prints except for zones the IANA database abbreviates with digits
//! (`Asia/Kathmandu`: `+0545`, where Java prints `NPT`).

use std::fmt::Write as _;
use std::sync::LazyLock;

use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{Timestamp, Zoned};
use spillway_sink_api::civil::days_from_civil;

static DATABASE: LazyLock<TimeZoneDatabase> = LazyLock::new(TimeZoneDatabase::bundled);

/// A time zone by IANA name (`custom_time_zone`, Firehose's `CustomTimeZone`); `UTC` by default.
#[derive(Debug, Clone)]
pub struct Zone {
    name: String,
    time_zone: TimeZone,
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Zone {}

impl Default for Zone {
    fn default() -> Self {
        Self::utc()
    }
}

/// An unknown or misspelt time zone name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    #[error("unknown time zone `{0}` (expected an IANA name such as Asia/Tokyo, America/New_York or UTC)")]
    Unknown(String),
    #[error("time zone `{given}` is spelt `{canonical}` (names are case-sensitive, as in Java's ZoneId)")]
    Case { given: String, canonical: String },
}

impl Zone {
    pub fn utc() -> Self {
        Self { name: "UTC".to_string(), time_zone: TimeZone::UTC }
    }

    /// Look a zone up by its IANA name, case-sensitively (Java's `ZoneId.of` is).
    pub fn named(name: &str) -> Result<Self, ZoneError> {
        let time_zone = DATABASE.get(name).map_err(|_| ZoneError::Unknown(name.to_string()))?;
        if let Some(canonical) = time_zone.iana_name()
            && canonical != name
            && canonical.eq_ignore_ascii_case(name)
        {
            return Err(ZoneError::Case { given: name.to_string(), canonical: canonical.to_string() });
        }
        Ok(Self { name: name.to_string(), time_zone })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The wall-clock time in this zone at `millis` since the epoch.
    pub fn at_millis(&self, millis: i64) -> Option<Zoned> {
        let timestamp = Timestamp::from_millisecond(millis).ok()?;
        Some(timestamp.to_zoned(self.time_zone.clone()))
    }
}

/// A pattern Java would refuse, or one spillway does not print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(String);

/// A pattern that cannot print this instant (a `p` pad narrower than the value, as Java's
/// `DateTimeException`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is wider than its pad of {width} (`p` × {width})")]
pub struct FormatError {
    pub text: String,
    pub width: usize,
}

/// A parsed pattern. `[ ]` sections always print: every field is available on a zoned instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JavaPattern {
    items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Literal(String),
    Field { letter: char, count: usize, pad: usize },
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
/// Sunday first, as `Locale.US` numbers days (`e`, `c`).
const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const QUARTERS: [&str; 4] = ["1st quarter", "2nd quarter", "3rd quarter", "4th quarter"];
/// Longest IANA abbreviation (`+0545`, `ChST`, `AKST`), for the length bound.
const MAX_ABBREVIATION_LEN: usize = 6;

impl JavaPattern {
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError("the pattern is empty".to_string()));
        }
        let chars: Vec<char> = pattern.chars().collect();
        let mut items = Vec::new();
        let mut optional_depth = 0usize;
        let mut index = 0;
        while index < chars.len() {
            let current = chars[index];
            match current {
                '\'' => {
                    let (text, next) = quoted(&chars, index)?;
                    push_literal(&mut items, &text);
                    index = next;
                }
                '[' => {
                    optional_depth += 1;
                    index += 1;
                }
                ']' => {
                    if optional_depth == 0 {
                        return Err(PatternError("`]` closes an optional section that was never opened".to_string()));
                    }
                    optional_depth -= 1;
                    index += 1;
                }
                '#' | '{' | '}' => {
                    return Err(PatternError(format!("`{current}` is reserved; quote it to use it as text")));
                }
                'p' => {
                    let pad = run_length(&chars, index);
                    let letter_at = index + pad;
                    let Some(letter) = chars.get(letter_at).filter(|next| next.is_ascii_alphabetic()) else {
                        return Err(PatternError("pad letter `p` must be followed by a pattern letter".to_string()));
                    };
                    let count = run_length(&chars, letter_at);
                    check_field(*letter, count).map_err(PatternError)?;
                    items.push(Item::Field { letter: *letter, count, pad });
                    index = letter_at + count;
                }
                letter if letter.is_ascii_alphabetic() => {
                    let count = run_length(&chars, index);
                    check_field(letter, count).map_err(PatternError)?;
                    items.push(Item::Field { letter, count, pad: 0 });
                    index += count;
                }
                other => {
                    push_literal(&mut items, &other.to_string());
                    index += 1;
                }
            }
        }
        Ok(Self { items })
    }

    /// A pattern that prints `text` as it is.
    pub fn literal(text: &str) -> Self {
        Self { items: vec![Item::Literal(text.to_string())] }
    }

    /// Append the pattern printed for `time` (which carries its zone) to `out`.
    pub fn format_into(&self, time: &Zoned, zone: &Zone, out: &mut String) -> Result<(), FormatError> {
        for item in &self.items {
            match item {
                Item::Literal(text) => out.push_str(text),
                Item::Field { letter, count, pad: 0 } => format_field(*letter, *count, time, zone, out),
                Item::Field { letter, count, pad } => {
                    let mut text = String::new();
                    format_field(*letter, *count, time, zone, &mut text);
                    let width = text.chars().count();
                    if width > *pad {
                        return Err(FormatError { text, width: *pad });
                    }
                    out.extend(std::iter::repeat_n(' ', pad - width));
                    out.push_str(&text);
                }
            }
        }
        Ok(())
    }

    pub fn format(&self, time: &Zoned, zone: &Zone) -> Result<String, FormatError> {
        let mut out = String::new();
        self.format_into(time, zone, &mut out)?;
        Ok(out)
    }

    /// The most characters this pattern can print in `zone` (years up to 9999).
    pub fn max_len(&self, zone: &Zone) -> usize {
        self.items
            .iter()
            .map(|item| match item {
                Item::Literal(text) => text.chars().count(),
                Item::Field { letter, count, pad } => field_max_len(*letter, *count, zone).max(*pad),
            })
            .sum()
    }
}

fn run_length(chars: &[char], start: usize) -> usize {
    chars[start..].iter().take_while(|next| **next == chars[start]).count()
}

/// The text of a quote starting at `start` (`''` is one `'`), and the index after it.
fn quoted(chars: &[char], start: usize) -> Result<(String, usize), PatternError> {
    if chars.get(start + 1) == Some(&'\'') {
        return Ok(("'".to_string(), start + 2));
    }
    let mut text = String::new();
    let mut cursor = start + 1;
    loop {
        match chars.get(cursor) {
            None => return Err(PatternError("the pattern ends inside a quoted text (a `'` is missing)".to_string())),
            Some('\'') if chars.get(cursor + 1) == Some(&'\'') => {
                text.push('\'');
                cursor += 2;
            }
            Some('\'') => return Ok((text, cursor + 1)),
            Some(other) => {
                text.push(*other);
                cursor += 1;
            }
        }
    }
}

fn push_literal(items: &mut Vec<Item>, text: &str) {
    if let Some(Item::Literal(existing)) = items.last_mut() {
        existing.push_str(text);
        return;
    }
    items.push(Item::Literal(text.to_string()));
}

/// Java 17's rules for how many times each letter may repeat (`DateTimeFormatterBuilder`).
fn check_field(letter: char, count: usize) -> Result<(), String> {
    let too_many = || Err(format!("too many pattern letters `{letter}` ({count})"));
    let allowed = match letter {
        'y' | 'u' | 'Y' | 'g' | 'A' | 'n' | 'N' => count <= 19,
        'G' | 'M' | 'L' | 'Q' | 'q' | 'E' | 'e' => count <= 5,
        'c' if count == 2 => return Err("`cc` is not a valid pattern (use c, ccc, cccc or ccccc)".to_string()),
        'c' => count <= 5,
        'a' | 'F' | 'W' => count == 1,
        'S' => count <= 9,
        'd' | 'h' | 'H' | 'k' | 'K' | 'm' | 's' | 'w' => count <= 2,
        'D' => count <= 3,
        'V' if count != 2 => return Err("the zone id letter `V` must be written `VV`".to_string()),
        'V' => true,
        'O' if count != 1 && count != 4 => {
            return Err("the offset letter `O` must be written `O` or `OOOO`".to_string());
        }
        'O' => true,
        'X' | 'x' | 'Z' => count <= 5,
        'z' if count == 4 => {
            return Err("`zzzz` (full localized zone names) is not supported; use z, VV, O, X, x or Z".to_string());
        }
        'z' => count <= 3,
        'v' => {
            return Err("`v` (generic localized zone names) is not supported; use z, VV, O, X, x or Z".to_string());
        }
        'B' => return Err("`B` (day periods, Java 16+) is not supported".to_string()),
        other => return Err(format!("unknown pattern letter `{other}`; quote it to use it as text")),
    };
    if allowed { Ok(()) } else { too_many() }
}

/// Java's `NumberPrinterParser`: at least `min_width` digits; with `exceeds_pad` a `+` when the
/// value is wider than `min_width` (`SignStyle.EXCEEDS_PAD`), `-` for negatives.
fn push_number(out: &mut String, value: i64, min_width: usize, exceeds_pad: bool) {
    let digits = value.unsigned_abs().to_string();
    if value < 0 {
        out.push('-');
    } else if exceeds_pad && digits.len() > min_width {
        out.push('+');
    }
    out.extend(std::iter::repeat_n('0', min_width.saturating_sub(digits.len())));
    out.push_str(&digits);
}

/// `y`, `u`, `Y`: two letters print the last two digits; four or more sign a wider value.
fn push_year(out: &mut String, value: i64, count: usize) {
    if count == 2 {
        let _ = write!(out, "{:02}", value.rem_euclid(100));
    } else {
        push_number(out, value, count, count >= 4);
    }
}

fn push_text(out: &mut String, full: &str, count: usize) {
    match count {
        1..=3 => out.push_str(&full[..3]),
        4 => out.push_str(full),
        _ => out.push_str(&full[..1]),
    }
}

/// Sunday = 0 … Saturday = 6 of a day number from [`days_from_civil`] (1970-01-01 was a Thursday).
fn sunday_zero_weekday(days: i64) -> i64 {
    (days + 4).rem_euclid(7)
}

/// Locale.US week rules (`WeekFields.of(Locale.US)`: weeks start on Sunday, week 1 is the week
/// holding January 1st): the week-based year and the week of that year.
fn us_week_of_year(year: i64, days: i64) -> (i64, i64) {
    let week_one_start = |candidate: i64| {
        let new_year = days_from_civil(candidate, 1, 1);
        new_year - sunday_zero_weekday(new_year)
    };
    for candidate in [year + 1, year, year - 1] {
        let start = week_one_start(candidate);
        if days >= start {
            return (candidate, (days - start) / 7 + 1);
        }
    }
    (year - 1, 1)
}

fn format_field(letter: char, count: usize, time: &Zoned, zone: &Zone, out: &mut String) {
    let year = i64::from(time.year());
    let month = i64::from(time.month());
    let day = i64::from(time.day());
    let hour = i64::from(time.hour());
    let days = days_from_civil(year, month, day);
    let weekday = sunday_zero_weekday(days);
    let month_name = MONTHS[(month - 1) as usize];
    let weekday_name = WEEKDAYS[weekday as usize];
    let number = |out: &mut String, value: i64| push_number(out, value, count, false);
    match letter {
        'G' => match (year > 0, count) {
            (true, 1..=3) => out.push_str("AD"),
            (true, 4) => out.push_str("Anno Domini"),
            (true, _) => out.push('A'),
            (false, 1..=3) => out.push_str("BC"),
            (false, 4) => out.push_str("Before Christ"),
            (false, _) => out.push('B'),
        },
        'y' => push_year(out, if year > 0 { year } else { 1 - year }, count),
        'u' => push_year(out, year, count),
        'Y' => push_year(out, us_week_of_year(year, days).0, count),
        'w' => number(out, us_week_of_year(year, days).1),
        'W' => {
            let first_of_month = days - (day - 1);
            number(out, (day - 1 + sunday_zero_weekday(first_of_month)) / 7 + 1);
        }
        'Q' | 'q' => {
            let quarter = (month - 1) / 3 + 1;
            match count {
                1 | 5 => push_number(out, quarter, 1, false),
                2 => push_number(out, quarter, 2, false),
                3 => {
                    let _ = write!(out, "Q{quarter}");
                }
                _ => out.push_str(QUARTERS[(quarter - 1) as usize]),
            }
        }
        'M' | 'L' => match count {
            1 | 2 => number(out, month),
            _ => push_text(out, month_name, count),
        },
        'E' => push_text(out, weekday_name, count),
        'e' | 'c' => match count {
            1 | 2 => number(out, weekday + 1),
            _ => push_text(out, weekday_name, count),
        },
        'd' => number(out, day),
        'D' => number(out, i64::from(time.day_of_year())),
        // Java 17 maps `F` to ALIGNED_DAY_OF_WEEK_IN_MONTH.
        'F' => number(out, (day - 1) % 7 + 1),
        'a' => out.push_str(if hour < 12 { "AM" } else { "PM" }),
        'h' => number(out, if hour % 12 == 0 { 12 } else { hour % 12 }),
        'K' => number(out, hour % 12),
        'k' => number(out, if hour == 0 { 24 } else { hour }),
        'H' => number(out, hour),
        'm' => number(out, i64::from(time.minute())),
        's' => number(out, i64::from(time.second())),
        'S' => {
            let nanos = format!("{:09}", time.subsec_nanosecond());
            out.push_str(&nanos[..count.min(9)]);
        }
        'A' | 'n' | 'N' => {
            let second_of_day = (hour * 60 + i64::from(time.minute())) * 60 + i64::from(time.second());
            let nanos = i64::from(time.subsec_nanosecond());
            let value = match letter {
                'A' => second_of_day * 1_000 + nanos / 1_000_000,
                'n' => nanos,
                _ => second_of_day * 1_000_000_000 + nanos,
            };
            number(out, value);
        }
        // Modified Julian Day: days since 1858-11-17.
        'g' => number(out, days - days_from_civil(1858, 11, 17)),
        'V' => out.push_str(zone.name()),
        'z' => out.push_str(time.time_zone().to_offset_info(time.timestamp()).abbreviation()),
        'O' => push_localized_offset(out, time.offset().seconds(), count == 4),
        'X' => push_offset(out, time.offset().seconds(), offset_style(count), "Z"),
        'x' => {
            let zero = match count {
                1 => "+00",
                2 | 4 => "+0000",
                _ => "+00:00",
            };
            push_offset(out, time.offset().seconds(), offset_style(count), zero);
        }
        'Z' => match count {
            1..=3 => push_offset(out, time.offset().seconds(), OffsetStyle::Minutes, "+0000"),
            4 => push_localized_offset(out, time.offset().seconds(), true),
            _ => push_offset(out, time.offset().seconds(), OffsetStyle::ColonMinutesMaybeSeconds, "Z"),
        },
        _ => {}
    }
}

/// Java's `OffsetIdPrinterParser` patterns after the sign and hours (`+HH`) used by `X`, `x` and `Z`
/// (lowercase = only when non-zero).
#[derive(Clone, Copy, PartialEq, Eq)]
enum OffsetStyle {
    /// `+HHmm`: minutes only when not zero.
    MaybeMinutes,
    /// `+HHMM`
    Minutes,
    /// `+HH:MM`
    ColonMinutes,
    /// `+HHMMss`: seconds only when not zero.
    MinutesMaybeSeconds,
    /// `+HH:MM:ss`
    ColonMinutesMaybeSeconds,
}

fn offset_style(count: usize) -> OffsetStyle {
    match count {
        1 => OffsetStyle::MaybeMinutes,
        2 => OffsetStyle::Minutes,
        3 => OffsetStyle::ColonMinutes,
        4 => OffsetStyle::MinutesMaybeSeconds,
        _ => OffsetStyle::ColonMinutesMaybeSeconds,
    }
}

fn push_offset(out: &mut String, total_seconds: i32, style: OffsetStyle, zero: &str) {
    if total_seconds == 0 {
        out.push_str(zero);
        return;
    }
    let (hours, minutes, seconds) = offset_parts(total_seconds);
    let colon = matches!(style, OffsetStyle::ColonMinutes | OffsetStyle::ColonMinutesMaybeSeconds);
    let separator = if colon { ":" } else { "" };
    out.push(if total_seconds < 0 { '-' } else { '+' });
    let _ = write!(out, "{hours:02}");
    let with_minutes = style != OffsetStyle::MaybeMinutes || minutes > 0;
    if with_minutes {
        let _ = write!(out, "{separator}{minutes:02}");
        let with_seconds =
            matches!(style, OffsetStyle::MinutesMaybeSeconds | OffsetStyle::ColonMinutesMaybeSeconds) && seconds > 0;
        if with_seconds {
            let _ = write!(out, "{separator}{seconds:02}");
        }
    }
}

/// `O` / `OOOO` / `ZZZZ`: `GMT`, then the offset (`GMT+9`, `GMT-3:30`; full: `GMT+09:00`).
fn push_localized_offset(out: &mut String, total_seconds: i32, full: bool) {
    out.push_str("GMT");
    if total_seconds == 0 {
        return;
    }
    let (hours, minutes, seconds) = offset_parts(total_seconds);
    out.push(if total_seconds < 0 { '-' } else { '+' });
    if full {
        let _ = write!(out, "{hours:02}:{minutes:02}");
        if seconds != 0 {
            let _ = write!(out, ":{seconds:02}");
        }
        return;
    }
    let _ = write!(out, "{hours}");
    if minutes != 0 || seconds != 0 {
        let _ = write!(out, ":{minutes:02}");
        if seconds != 0 {
            let _ = write!(out, ":{seconds:02}");
        }
    }
}

fn offset_parts(total_seconds: i32) -> (u32, u32, u32) {
    let absolute = total_seconds.unsigned_abs();
    ((absolute / 3600) % 100, (absolute / 60) % 60, absolute % 60)
}

fn field_max_len(letter: char, count: usize, zone: &Zone) -> usize {
    let digits = |widest: usize| count.max(widest);
    match letter {
        // Years up to 9999, plus a sign.
        'y' | 'u' | 'Y' => {
            if count == 2 {
                2
            } else {
                digits(4) + 1
            }
        }
        'G' | 'Q' | 'q' if count == 4 => 11,
        'G' | 'Q' | 'q' => digits(2),
        'M' | 'L' | 'E' | 'e' | 'c' if count >= 3 => 9,
        'M' | 'L' | 'e' | 'c' | 'd' | 'h' | 'H' | 'k' | 'K' | 'm' | 's' | 'w' | 'a' | 'F' | 'W' => digits(2),
        'E' => 3,
        'D' => 3,
        'S' => count,
        'A' => digits(8),
        'n' => digits(9),
        'N' => digits(14),
        'g' => digits(7),
        'V' => zone.name().chars().count(),
        'z' => MAX_ABBREVIATION_LEN,
        'O' | 'Z' if count == 4 || letter == 'O' => 12,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(zone: &str, millis: i64, pattern: &str) -> String {
        let zone = Zone::named(zone).expect("zone");
        let time = zone.at_millis(millis).expect("instant");
        JavaPattern::parse(pattern).expect("pattern").format(&time, &zone).expect("formats")
    }

    #[test]
    fn weekday_of_a_known_day() {
        // `days_from_civil` itself is tested in spillway_sink_api::civil.
        assert_eq!(sunday_zero_weekday(days_from_civil(2026, 11, 25)), 3, "a Wednesday");
    }

    #[test]
    fn zones_are_looked_up_case_sensitively() {
        assert_eq!(Zone::named("Asia/Tokyo").expect("tokyo").name(), "Asia/Tokyo");
        assert!(matches!(Zone::named("asia/tokyo"), Err(ZoneError::Case { .. })));
        assert!(matches!(Zone::named("Mars/Olympus"), Err(ZoneError::Unknown(_))));
        assert_eq!(Zone::named("UTC").expect("utc"), Zone::utc());
    }

    #[test]
    fn the_zone_moves_the_wall_clock() {
        // 2026-11-25T17:04:09.123Z
        assert_eq!(at("UTC", 1_795_626_249_123, "yyyy/MM/dd/HH"), "2026/11/25/17");
        assert_eq!(at("Asia/Tokyo", 1_795_626_249_123, "yyyy/MM/dd/HH z"), "2026/11/26/02 JST");
    }

    #[test]
    fn pad_wider_than_its_width_is_a_format_error() {
        let zone = Zone::utc();
        let time = zone.at_millis(1_795_626_249_123).expect("instant");
        let pattern = JavaPattern::parse("pH").expect("parses");
        assert_eq!(pattern.format(&time, &zone), Err(FormatError { text: "17".to_string(), width: 1 }));
        assert_eq!(JavaPattern::parse("pppH").expect("parses").format(&time, &zone).as_deref(), Ok(" 17"));
    }

    #[test]
    fn unsupported_letters_say_why() {
        for pattern in ["zzzz", "v", "vvvv", "B", "#", "yyyy{", "'open", "yyyy]", "p", "p-"] {
            let error = JavaPattern::parse(pattern).expect_err(pattern);
            assert!(!error.0.is_empty(), "{pattern}");
        }
    }

    #[test]
    fn max_len_bounds_what_is_printed() {
        let zone = Zone::named("America/St_Johns").expect("zone");
        let time = zone.at_millis(1_795_626_249_123).expect("instant");
        for pattern in ["yyyy/MM/dd/HH/", "EEEE MMMM GGGG QQQQ", "VV z O X xxxxx ZZZZ", "A n N g SSSSSSSSS", "pppppd"] {
            let parsed = JavaPattern::parse(pattern).expect("parses");
            let printed = parsed.format(&time, &zone).expect("formats");
            assert!(printed.chars().count() <= parsed.max_len(&zone), "{pattern}: {printed}");
        }
    }
}
