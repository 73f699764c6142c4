//! Index names: the configured index plus Firehose's rotation suffix, computed from each record's
//! arrival time in UTC, so one batch may span two indices at a boundary.
//!
//! Must not: know about HTTP or batches.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Timelike, Utc};
use serde::Deserialize;

/// Firehose's `IndexRotationPeriod` (`NoRotation`, `OneHour`, `OneDay` (default), `OneWeek`,
/// `OneMonth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexRotation {
    None,
    Hour,
    #[default]
    Day,
    Week,
    Month,
}

impl IndexRotation {
    /// Firehose's name for the description API.
    pub fn firehose_name(self) -> &'static str {
        match self {
            IndexRotation::None => "NoRotation",
            IndexRotation::Hour => "OneHour",
            IndexRotation::Day => "OneDay",
            IndexRotation::Week => "OneWeek",
            IndexRotation::Month => "OneMonth",
        }
    }

    /// The suffix Firehose appends (with its leading `-`), for a record that arrived at
    /// `arrival_ms` (Unix ms): `-2016-02-25-13`, `-2016-02-25`, `-2016-w09`, `-2016-02`, or
    /// nothing.
    pub fn suffix(self, arrival_ms: i64) -> String {
        let time = DateTime::<Utc>::from_timestamp_millis(arrival_ms).unwrap_or_default();
        match self {
            IndexRotation::None => String::new(),
            IndexRotation::Hour => {
                format!("-{:04}-{:02}-{:02}-{:02}", time.year(), time.month(), time.day(), time.hour())
            }
            IndexRotation::Day => format!("-{:04}-{:02}-{:02}", time.year(), time.month(), time.day()),
            IndexRotation::Week => {
                let (year, week) = us_week(time.date_naive());
                format!("-{year:04}-w{week:02}")
            }
            IndexRotation::Month => format!("-{:04}-{:02}", time.year(), time.month()),
        }
    }

    /// How long one suffix lasts at most, in ms: suffixes are cached per hour, which every
    /// rotation period is a whole number of.
    pub(crate) const CACHE_SLOT_MS: i64 = 3_600_000;
}

/// Firehose's `OneWeek` numbering, "according to US conventions": a week starts on Sunday and
/// week 1 is the first week that contains a Saturday of the year, i.e. the week holding
/// January 1st. The year is the week's year, so the last days of December can belong to week 1
/// of the next year (Sunday 2018-12-30 is `2019-w01`).
pub fn us_week(date: NaiveDate) -> (i32, u32) {
    let from_sunday = i64::from(date.weekday().num_days_from_sunday());
    let saturday = date + Duration::days(6 - from_sunday);
    (saturday.year(), saturday.ordinal0() / 7 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text).unwrap().timestamp_millis()
    }

    #[test]
    fn suffixes_follow_firehose_for_its_documented_timestamp() {
        let arrival = ms("2016-02-25T13:00:00Z");
        assert_eq!(IndexRotation::None.suffix(arrival), "");
        assert_eq!(IndexRotation::Hour.suffix(arrival), "-2016-02-25-13");
        assert_eq!(IndexRotation::Day.suffix(arrival), "-2016-02-25");
        assert_eq!(IndexRotation::Month.suffix(arrival), "-2016-02");
        // Firehose's table says w08 for this date, but its note's rule (weeks from Sunday, week 1
        // holds the first Saturday of the year, 2016-01-02) gives w09, as Java's `ww` in
        // Locale.US does; the rule is what Firehose documents as its behaviour.
        assert_eq!(IndexRotation::Week.suffix(arrival), "-2016-w09");
    }

    #[test]
    fn weeks_start_on_sunday_and_week_one_holds_january_first() {
        let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(us_week(date(2016, 1, 1)), (2016, 1)); // Friday
        assert_eq!(us_week(date(2016, 1, 2)), (2016, 1)); // Saturday
        assert_eq!(us_week(date(2016, 1, 3)), (2016, 2)); // Sunday starts week 2
        assert_eq!(us_week(date(2015, 12, 27)), (2016, 1)); // Sunday of the week holding 2016-01-01
        assert_eq!(us_week(date(2016, 12, 31)), (2016, 53)); // Saturday
        assert_eq!(us_week(date(2018, 12, 30)), (2019, 1)); // Sunday, week holds 2019-01-01
        assert_eq!(us_week(date(2017, 1, 1)), (2017, 1)); // a Sunday January 1st
        assert_eq!(us_week(date(2017, 1, 7)), (2017, 1));
        assert_eq!(us_week(date(2017, 1, 8)), (2017, 2));
        assert_eq!(us_week(date(2020, 8, 12)), (2020, 33)); // Firehose's own example: 2020-w33
    }

    #[test]
    fn weeks_match_strftime_sunday_numbering_every_day_for_years() {
        // %U counts Sunday-started weeks, days before the first Sunday being week 0: the US week
        // is %U + 1 unless January 1st is a Sunday (then the two agree), within one year.
        let mut date = NaiveDate::from_ymd_opt(2010, 1, 1).unwrap();
        while date.year() < 2040 {
            let strftime_week: u32 = date.format("%U").to_string().parse().unwrap();
            let january_first = NaiveDate::from_ymd_opt(date.year(), 1, 1).unwrap();
            let expected =
                if january_first.weekday() == chrono::Weekday::Sun { strftime_week } else { strftime_week + 1 };
            let (year, week) = us_week(date);
            if year == date.year() {
                assert_eq!(week, expected, "{date}");
            } else {
                assert_eq!((year, week), (date.year() + 1, 1), "{date}");
            }
            date += Duration::days(1);
        }
    }
}
