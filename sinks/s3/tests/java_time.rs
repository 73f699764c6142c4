//! `!{timestamp:…}` patterns against Java itself: `fixtures/java_time/expected.tsv` holds what
//! `DateTimeFormatter.ofPattern(pattern, Locale.US).format(instant.atZone(zone))` printed on
//! Java 17 for every pattern of `patterns.txt` at five instants in ten zones (the command that
//! made it is in `JavaTimePatterns.java`). spillway must print the same, and refuse (at parse or
//! format time) what Java refuses.

use std::collections::BTreeSet;

use spillway_sink_s3::timestamp::{JavaPattern, Zone};

const EXPECTED: &str = include_str!("fixtures/java_time/expected.tsv");

/// Where spillway knowingly differs: `z` prints the IANA abbreviation, which is digits for
/// Asia/Kathmandu (`+0545`) where Java prints `NPT` (documented in docs/sinks.md, "Object keys").
fn known_difference(zone: &str, pattern: &str) -> bool {
    zone == "Asia/Kathmandu" && matches!(pattern, "z" | "zz" | "zzz")
}

#[test]
fn every_pattern_prints_what_java_prints() {
    let mut checked = 0;
    let mut mismatches = Vec::new();
    let mut letters = BTreeSet::new();
    for line in EXPECTED.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [zone_name, millis, pattern, expected] = fields[..] else {
            panic!("malformed fixture line {line:?}");
        };
        let zone = Zone::named(zone_name).unwrap_or_else(|error| panic!("{zone_name}: {error}"));
        let millis: i64 = millis.parse().expect("millis");
        let time = zone.at_millis(millis).expect("instant in range");
        let printed = match JavaPattern::parse(pattern) {
            Ok(parsed) => parsed.format(&time, &zone).unwrap_or_else(|_| "!ERROR".to_string()),
            Err(_) => "!ERROR".to_string(),
        };
        letters.extend(pattern.chars().filter(char::is_ascii_alphabetic));
        checked += 1;
        if known_difference(zone_name, pattern) {
            assert_ne!(printed, "!ERROR", "{zone_name} {pattern}");
            continue;
        }
        if printed != expected {
            mismatches.push(format!("{zone_name} {millis} {pattern:?}: java {expected:?}, spillway {printed:?}"));
        }
    }
    assert!(checked > 7_000, "the fixture has {checked} lines");
    assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));
    let all: BTreeSet<char> = "GuyDMLdgQqYwWEecFaBhKkHmsSAnNVvzOXxZp".chars().collect();
    let untested: Vec<&char> = all.difference(&letters).collect();
    // `B` (Java 16+ day periods) and `v` (generic zone names) are refused; the unit tests cover it.
    assert_eq!(untested, [&'B', &'v'], "every other Java pattern letter is in the fixture");
}

#[test]
fn letters_spillway_refuses_though_java_prints_them_say_so() {
    for pattern in ["zzzz", "v", "vvvv", "B", "BBBB"] {
        let error = JavaPattern::parse(pattern).expect_err(pattern);
        assert!(error.to_string().contains("not supported"), "{pattern}: {error}");
    }
}
