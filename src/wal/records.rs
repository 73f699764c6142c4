//! The records of one append. A source that builds its records anyway (a decoded request body)
//! can lay them out as a frame holds them (`len: u32 LE | bytes`, see `frame`) with
//! [`FramedRecords`]: the writer then writes that buffer as it is, after a small header, instead
//! of copying every record into its group buffer.

use bytes::Bytes;

/// Records for [`super::Wal::append`]: separate buffers (`From<Vec<Bytes>>`), or laid out as a
/// frame holds them by [`FramedRecords`].
#[derive(Debug, Default)]
pub struct Records {
    pub(super) records: Vec<Bytes>,
    /// Set by [`FramedRecords`]: exactly the bytes `frame::encode` writes for `records`, which are
    /// slices of it.
    pub(super) framed: Option<Bytes>,
}

impl Records {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of the records themselves.
    pub fn byte_len(&self) -> usize {
        self.records.iter().map(Bytes::len).sum()
    }
}

impl From<Vec<Bytes>> for Records {
    fn from(records: Vec<Bytes>) -> Self {
        Records { records, framed: None }
    }
}

/// Builds [`Records`] laid out as a frame holds them, each record written in place.
#[derive(Debug, Default)]
pub struct FramedRecords {
    buffer: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

/// The length prefix of a record in a frame.
const LEN_PREFIX: usize = 4;

impl FramedRecords {
    /// Room for `records` records of `record_bytes` in all.
    pub fn with_capacity(record_bytes: usize, records: usize) -> Self {
        FramedRecords {
            buffer: Vec::with_capacity(record_bytes + records * LEN_PREFIX),
            spans: Vec::with_capacity(records),
        }
    }

    /// Add one record: `write` gets `max_len` bytes to write it into and returns its length (at
    /// most `max_len`, and under 4 GiB: the caller's limits keep records far smaller). On an
    /// error nothing is added.
    pub fn push_with<E>(
        &mut self,
        max_len: usize,
        write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let start = self.buffer.len();
        self.buffer.resize(start + LEN_PREFIX + max_len, 0);
        let len = match write(&mut self.buffer[start + LEN_PREFIX..]) {
            Ok(len) => {
                debug_assert!(len <= max_len && u32::try_from(len).is_ok(), "record of {len} bytes in {max_len}");
                len.min(max_len)
            }
            Err(error) => {
                self.buffer.truncate(start);
                return Err(error);
            }
        };
        self.buffer.truncate(start + LEN_PREFIX + len);
        self.buffer[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_le_bytes());
        self.spans.push((start + LEN_PREFIX, start + LEN_PREFIX + len));
        Ok(len)
    }

    pub fn finish(self) -> Records {
        let framed = Bytes::from(self.buffer);
        let records = self.spans.into_iter().map(|(start, end)| framed.slice(start..end)).collect();
        Records { records, framed: Some(framed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_records_are_the_bytes_a_frame_holds_for_them() {
        let mut framed = FramedRecords::with_capacity(16, 3);
        for record in [b"one".as_slice(), b"", b"three"] {
            let written = framed.push_with(record.len() + 8, |out| -> Result<usize, ()> {
                out[..record.len()].copy_from_slice(record);
                Ok(record.len())
            });
            assert_eq!(written, Ok(record.len()));
        }
        assert_eq!(framed.push_with(10, |_| Err("refused")), Err("refused"), "a refused record adds nothing");
        let records = framed.finish();
        let expected = vec![Bytes::from_static(b"one"), Bytes::new(), Bytes::from_static(b"three")];
        assert_eq!(records.records, expected);
        let mut encoded = Vec::new();
        super::super::frame::encode(0, 0, &expected, None, &[], &mut encoded);
        let fixed = super::super::frame::HEADER_LEN + super::super::frame::PAYLOAD_FIXED_LEN;
        assert_eq!(records.framed.as_deref(), Some(&encoded[fixed..]));
    }
}
