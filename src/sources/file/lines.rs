//! Cutting the bytes read from a file into records: one per line (without its newline and a
//! trailing `\r`), or, with a multi-line start pattern, one per group of lines that begins with a
//! line matching it (a stack trace under its log line). A record longer than the limit is cut
//! into pieces of the limit, so memory stays bounded whatever the file holds.
//!
//! The splitter only ever emits a prefix of its buffer, so the bytes it consumed say exactly
//! where the next record starts in the file: the position saved with the records.
//!
//! Must not: read files, know about the WAL or about time (the caller decides when a pending
//! multi-line record has waited long enough).

use bytes::{Bytes, BytesMut};
use regex::bytes::Regex;

/// Cuts records out of the bytes that follow the last emitted record.
pub struct Splitter {
    max_record_bytes: usize,
    /// Multi-line grouping: a line matching this starts a record.
    start_pattern: Option<Regex>,
    /// Multi-line only: `buffer[..pending]` holds complete lines of the record being grouped.
    pending: usize,
}

impl Splitter {
    pub fn new(max_record_bytes: usize, start_pattern: Option<Regex>) -> Self {
        Self { max_record_bytes: max_record_bytes.max(1), start_pattern, pending: 0 }
    }

    /// Forget a grouped record (the buffer was cleared: the file was truncated).
    pub fn reset(&mut self) {
        self.pending = 0;
    }

    /// Whether complete lines wait for the next start line (multi-line only).
    pub fn has_pending(&self) -> bool {
        self.pending > 0
    }

    /// Take every record complete in `buffer` into `out`; returns the bytes consumed from its
    /// front (the records, their newlines and skipped blank lines).
    pub fn split(&mut self, buffer: &mut BytesMut, out: &mut Vec<Bytes>) -> usize {
        match self.start_pattern.clone() {
            None => self.split_lines(buffer, out),
            Some(pattern) => self.split_groups(buffer, &pattern, out),
        }
    }

    /// Emit everything held as complete: the grouped lines and, when `partial_too` (the file was
    /// rotated away, so its last line will never get a newline), an unterminated last line.
    pub fn flush(&mut self, buffer: &mut BytesMut, partial_too: bool, out: &mut Vec<Bytes>) -> usize {
        let mut consumed = 0;
        if self.pending > 0 {
            let group = buffer.split_to(self.pending).freeze();
            consumed += group.len();
            self.pending = 0;
            self.push(group.slice(..group.len() - 1), out);
        }
        if partial_too && !buffer.is_empty() {
            let line = buffer.split().freeze();
            consumed += line.len();
            self.push(line, out);
        }
        consumed
    }

    /// One record per line; a line with no newline yet stays unless it outgrew the limit.
    fn split_lines(&mut self, buffer: &mut BytesMut, out: &mut Vec<Bytes>) -> usize {
        let mut consumed = 0;
        if let Some(last_newline) = memchr::memrchr(b'\n', buffer) {
            let lines = buffer.split_to(last_newline + 1).freeze();
            consumed = lines.len();
            let mut start = 0;
            for newline in memchr::memchr_iter(b'\n', &lines) {
                self.push(lines.slice(start..newline), out);
                start = newline + 1;
            }
        }
        consumed + self.cut_overlong(buffer, 0, out)
    }

    /// One record per group of lines starting with a line that matches `pattern`.
    fn split_groups(&mut self, buffer: &mut BytesMut, pattern: &Regex, out: &mut Vec<Bytes>) -> usize {
        let mut consumed = 0;
        while let Some(newline) = memchr::memchr(b'\n', &buffer[self.pending..]) {
            let line_start = self.pending;
            let line_end = line_start + newline;
            let line = strip_cr(&buffer[line_start..line_end]);
            if self.pending > 0 && pattern.is_match(line) {
                // A start line: the lines before it are a whole record.
                let group = buffer.split_to(line_start).freeze();
                consumed += group.len();
                self.push(group.slice(..group.len() - 1), out);
                self.pending = newline + 1;
            } else {
                self.pending = line_end + 1;
            }
            if self.pending >= self.max_record_bytes {
                consumed += self.flush(buffer, false, out);
            }
        }
        consumed + self.cut_overlong(buffer, self.pending, out)
    }

    /// A line with no newline yet that already outgrew a record is cut, so memory stays bounded:
    /// first the grouped lines before it, then pieces of the limit.
    fn cut_overlong(&mut self, buffer: &mut BytesMut, line_start: usize, out: &mut Vec<Bytes>) -> usize {
        if buffer.len() - line_start < self.max_record_bytes {
            return 0;
        }
        let mut consumed = self.flush(buffer, false, out);
        while buffer.len() >= self.max_record_bytes {
            let piece = buffer.split_to(self.max_record_bytes).freeze();
            consumed += piece.len();
            out.push(piece);
        }
        consumed
    }

    /// A record without its trailing `\r`, in pieces of the limit; a blank one gives none.
    fn push(&self, record: Bytes, out: &mut Vec<Bytes>) {
        let record = if record.ends_with(b"\r") { record.slice(..record.len() - 1) } else { record };
        if record.len() <= self.max_record_bytes {
            if !record.is_empty() {
                out.push(record);
            }
            return;
        }
        for piece in record.chunks(self.max_record_bytes) {
            out.push(record.slice_ref(piece));
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(splitter: &mut Splitter, buffer: &mut BytesMut, input: &[u8]) -> (Vec<String>, usize) {
        buffer.extend_from_slice(input);
        let mut out = Vec::new();
        let consumed = splitter.split(buffer, &mut out);
        (out.iter().map(|record| String::from_utf8_lossy(record).into_owned()).collect(), consumed)
    }

    #[test]
    fn lines_become_records_and_a_partial_line_waits_for_its_newline() {
        let mut splitter = Splitter::new(1000, None);
        let mut buffer = BytesMut::new();
        let (records, consumed) = run(&mut splitter, &mut buffer, b"one\r\ntwo\n\nthr");
        assert_eq!(records, ["one", "two"]);
        assert_eq!(consumed, 10);
        assert_eq!(&buffer[..], b"thr");
        let (records, consumed) = run(&mut splitter, &mut buffer, b"ee\n");
        assert_eq!((records, consumed), (vec!["three".to_string()], 6));
    }

    #[test]
    fn an_overlong_line_is_cut_into_records_of_the_limit_even_before_its_newline() {
        let mut splitter = Splitter::new(4, None);
        let mut buffer = BytesMut::new();
        let (records, consumed) = run(&mut splitter, &mut buffer, b"abcdefghij");
        assert_eq!((records, consumed), (vec!["abcd".to_string(), "efgh".to_string()], 8));
        let (records, _) = run(&mut splitter, &mut buffer, b"k\nlmnopq\n");
        assert_eq!(records, ["ijk", "lmno", "pq"]);
    }

    #[test]
    fn continuation_lines_join_the_record_their_start_line_began() {
        let mut splitter = Splitter::new(1000, Regex::new(r"^\d{4}-").ok());
        let mut buffer = BytesMut::new();
        let input = b"2026-01-01 boom\n  at a()\n  at b()\n2026-01-01 ok\n2026-01-01 next\n  at c()\n";
        let (records, consumed) = run(&mut splitter, &mut buffer, input);
        assert_eq!(records, ["2026-01-01 boom\n  at a()\n  at b()", "2026-01-01 ok"]);
        assert_eq!(consumed, 48);
        assert!(splitter.has_pending(), "the last group waits for the next start line or the timeout");
        let mut out = Vec::new();
        assert_eq!(splitter.flush(&mut buffer, false, &mut out), input.len() - 48);
        assert_eq!(out, [Bytes::from_static(b"2026-01-01 next\n  at c()")]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_group_outgrowing_the_limit_is_emitted_and_a_rotated_files_last_line_is_flushed() {
        let mut splitter = Splitter::new(12, Regex::new(r"^S").ok());
        let mut buffer = BytesMut::new();
        let (records, _) = run(&mut splitter, &mut buffer, b"S1\n a\n b\n c\n d\nS2\n");
        assert_eq!(records, ["S1\n a\n b\n c", " d"]);
        let (records, _) = run(&mut splitter, &mut buffer, b" e\nS3 tail");
        assert!(records.is_empty(), "S2's group is complete only once S3's line is: {records:?}");
        let mut out = Vec::new();
        splitter.flush(&mut buffer, true, &mut out);
        assert_eq!(out, [Bytes::from_static(b"S2\n e"), Bytes::from_static(b"S3 tail")]);
    }
}
