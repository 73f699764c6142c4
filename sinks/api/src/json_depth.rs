//! The nesting bound every JSON parse in spillway honours: a record or a request body nested
//! deeper than [`MAX_JSON_DEPTH`] arrays and objects is refused *before* it reaches a parser,
//! because several of them recurse once per level without a bound of their own (jaq's JSON
//! reader and its filters, sonic-rs when it skips an ignored value) and a deep enough value
//! overflows the thread's stack, which aborts the whole process: no `catch_unwind` can stop that.
//!
//! [`check_json_depth`] is a byte scan, not a parser: it counts `[` and `{` outside strings and
//! `#` comments (jaq reads `#` to the end of the line as a comment; every other parser here
//! refuses `#` outside a string, so it stops there anyway). Whatever it says about well-formed
//! JSON, it never reports less depth than a parser of that text reaches before it stops, so a
//! text it accepts cannot take any of them deeper than the bound. It does not validate: what is
//! not JSON is left for the parser to refuse with its own message.
//!
//! Why 100: it is below every parser's own limit in the process (serde_json stops at 127 levels,
//! sonic-rs at 254), so this one rule with one message decides everywhere instead of whichever
//! parser a record meets first; it is far above real records (DynamoDB items nest at most 32
//! levels, OpenSearch maps at most 20 object levels by default); and it is well below where jaq
//! overflows a 2 MiB thread stack (Tokio's and rayon's) in a debug build: reading, filtering,
//! printing and dropping a record costs jaq up to ~3.7 KiB of stack per level there, so about
//! 540 levels overflow (`processing::transform`'s tests run jq's recursive filters at this depth
//! on a quarter of that stack). A bound of 512 would not be safe.
//!
//! Must not: allocate, parse values, or know which stage asks.

/// Most arrays and objects a JSON text may have open at once (a flat object is depth 1).
pub const MAX_JSON_DEPTH: usize = 100;

/// A JSON text nested deeper than the bound: a permanent fault of the record (or request) itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("JSON nested deeper than {limit} levels (the bracket at byte {offset} opens level {})", limit + 1)]
pub struct TooDeep {
    /// The bound that was passed.
    pub limit: usize,
    /// Byte offset of the `[` or `{` that opens the first level past it.
    pub offset: usize,
}

/// Refuse `text` when it has more than [`MAX_JSON_DEPTH`] arrays and objects open at once.
pub fn check_json_depth(text: &[u8]) -> Result<(), TooDeep> {
    check_json_depth_within(text, MAX_JSON_DEPTH)
}

/// [`check_json_depth`] with another bound.
pub fn check_json_depth_within(text: &[u8], limit: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut at = 0usize;
    while let Some(&byte) = text.get(at) {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(TooDeep { limit, offset: at });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => match string_end(text, at + 1) {
                Some(closing) => at = closing,
                // An unterminated string: a parser reads everything after it as the string, so
                // nothing after it opens a level.
                None => return Ok(()),
            },
            b'#' => match memchr::memchr(b'\n', &text[at..]) {
                Some(line_end) => at += line_end,
                None => return Ok(()),
            },
            _ => {}
        }
        at += 1;
    }
    Ok(())
}

/// The offset of the quote that closes the string whose text starts at `from` (escapes skipped:
/// a backslash always takes the next byte with it, `\uXXXX` included, as its hex digits are no
/// quote or backslash).
fn string_end(text: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let found = from + memchr::memchr2(b'"', b'\\', text.get(from..)?)?;
        if text[found] == b'"' {
            return Some(found);
        }
        from = found + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn the_bound_is_inclusive_and_the_offset_names_the_bracket_past_it() {
        assert_eq!(check_json_depth(nested(MAX_JSON_DEPTH).as_bytes()), Ok(()));
        let refused = check_json_depth(nested(MAX_JSON_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(refused, TooDeep { limit: MAX_JSON_DEPTH, offset: MAX_JSON_DEPTH });
        assert_eq!(
            refused.to_string(),
            format!("JSON nested deeper than 100 levels (the bracket at byte 100 opens level 101)")
        );
        // Objects count as arrays do; siblings do not add up.
        let objects = format!("{}{}", r#"{"a":"#.repeat(3), "}".repeat(3));
        assert_eq!(check_json_depth_within(objects.as_bytes(), 3), Ok(()));
        assert!(check_json_depth_within(objects.as_bytes(), 2).is_err());
        let wide = format!("[{}1]", "[1],".repeat(10_000));
        assert_eq!(check_json_depth_within(wide.as_bytes(), 2), Ok(()));
    }

    #[test]
    fn brackets_in_strings_do_not_count_and_escapes_cannot_end_a_string() {
        let in_string = format!(r#"{{"log":"{}"}}"#, "[{".repeat(10_000));
        assert_eq!(check_json_depth(in_string.as_bytes()), Ok(()));
        // `\"` does not close the string, `\\` before the quote does.
        let escaped = format!(r#"["a\"{}", "b\\"]"#, "[".repeat(500));
        assert_eq!(check_json_depth(escaped.as_bytes()), Ok(()));
        let closed = format!(r#"["b\\", {}"#, "[".repeat(500));
        assert!(check_json_depth(closed.as_bytes()).is_err());
        // A string ending the text in a backslash, or not at all, ends the scan.
        assert_eq!(check_json_depth(br#"["abc\"#), Ok(()));
        assert_eq!(check_json_depth(br#"["abc"#), Ok(()));
    }

    #[test]
    fn a_comment_cannot_hide_levels_behind_a_quote() {
        // jaq reads `# "` as a comment: the brackets on the next line are real to it.
        let text = format!("# \"\n{}", nested(500));
        assert!(check_json_depth(text.as_bytes()).is_err());
        // Brackets inside the comment do not count.
        let commented = format!("# {}\n[1]", "[".repeat(500));
        assert_eq!(check_json_depth(commented.as_bytes()), Ok(()));
        // A strict parser stops at the `#`, so counting past it only ever over-counts for it.
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
    }

    #[test]
    fn it_never_reports_less_depth_than_serde_json_reaches() {
        // What serde_json accepts at its own limit (127), the scan measures at 127 too.
        let at_serde_limit = nested(127);
        assert!(serde_json::from_str::<serde_json::Value>(&at_serde_limit).is_ok());
        assert!(check_json_depth_within(at_serde_limit.as_bytes(), 126).is_err());
        assert_eq!(check_json_depth_within(at_serde_limit.as_bytes(), 127), Ok(()));
    }
}
