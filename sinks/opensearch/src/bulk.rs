//! The `_bulk` body an open batch is held in. Each record becomes an action line
//! (`{"index":{"_index":…,"_id":…}}`) and its document line as it arrives; the body is cut into
//! requests of at most `bulk_max_mib` at record boundaries. A record that cannot be a `_bulk`
//! document (empty, several lines that are not JSON, no id field) is not sent: the payload's
//! first chunk lists it with the reason, and the sink reports it as a permanent failure, so it
//! reaches the S3 backup with its raw bytes (read back from the WAL) and the rest of the batch is
//! delivered.
//!
//! Payload layout: chunk 0 is [`Manifest`] (JSON), chunks 1.. are the `_bulk` request bodies.
//!
//! Must not: talk HTTP, or decide retries.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spillway_sink_api::{EncodeError, Encoder, EncoderFactory, Payload, RecordPosition};

use crate::config::DocumentId;
use crate::index::IndexRotation;

/// What the encoder needs to name documents; shared by every encoder of a stream.
#[derive(Debug, Clone)]
pub struct BulkSettings {
    pub stream: String,
    pub index: String,
    pub rotation: IndexRotation,
    pub type_name: Option<String>,
    pub document_id: DocumentId,
    pub bulk_max_bytes: usize,
}

impl BulkSettings {
    /// Firehose-default document id: the stream and the record's WAL sequence, so a replay after
    /// a crash overwrites the same document.
    /// `<stream>-<sequence>`, and `-<output>` for a transform's second and later outputs of one
    /// WAL record (the first keeps the plain id, so data indexed before transforms split records
    /// keeps its ids).
    pub fn default_document_id(&self, sequence: u64, output: u32) -> String {
        match output {
            0 => format!("{}-{sequence}", self.stream),
            _ => format!("{}-{sequence}-{output}", self.stream),
        }
    }

    pub fn index_name(&self, arrival_ms: i64) -> String {
        format!("{}{}", self.index, self.rotation.suffix(arrival_ms))
    }
}

/// A record the encoder refused, by its position in the batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub index: usize,
    pub code: String,
    pub message: String,
}

/// Chunk 0 of a payload: how many records each request body holds, and the refused records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub records: usize,
    pub per_request: Vec<usize>,
    pub refused: Vec<Refused>,
}

impl Manifest {
    /// The batch positions of the records each request body holds, in order.
    pub fn request_positions(&self) -> Vec<Vec<usize>> {
        let mut refused = self.refused.iter().map(|refused| refused.index).peekable();
        let mut sent = (0..self.records).filter(move |index| {
            if refused.peek() == Some(index) {
                refused.next();
                return false;
            }
            true
        });
        self.per_request.iter().map(|&count| sent.by_ref().take(count).collect()).collect()
    }
}

/// Split a payload made by [`BulkEncoder`] back into its manifest and request bodies.
pub fn split_payload(payload: &Payload) -> Result<(Manifest, Vec<Bytes>), serde_json::Error> {
    let Some((first, bodies)) = payload.chunks().split_first() else {
        return Ok((Manifest::default(), Vec::new()));
    };
    let manifest: Manifest = serde_json::from_slice(first)?;
    Ok((manifest, bodies.to_vec()))
}

pub struct BulkEncoderFactory {
    pub settings: Arc<BulkSettings>,
}

impl EncoderFactory for BulkEncoderFactory {
    fn new_encoder(&self, _chunk_bytes: usize) -> Box<dyn Encoder> {
        Box::new(BulkEncoder::new(self.settings.clone()))
    }
}

pub struct BulkEncoder {
    settings: Arc<BulkSettings>,
    manifest: Manifest,
    bodies: Vec<Bytes>,
    current: Vec<u8>,
    current_records: usize,
    held: usize,
    /// The last index name and the hour it is valid for (names change at most hourly).
    cached_index: Option<(i64, String)>,
    line: Vec<u8>,
    action: Vec<u8>,
    /// `"<stream>-` as JSON (the start of every `firehose_default` id).
    id_prefix: Vec<u8>,
}

impl BulkEncoder {
    pub fn new(settings: Arc<BulkSettings>) -> Self {
        let mut id_prefix = serde_json::to_vec(&format!("{}-", settings.stream)).unwrap_or_default();
        id_prefix.pop(); // the closing quote: the sequence follows
        Self {
            settings,
            manifest: Manifest::default(),
            bodies: Vec::new(),
            current: Vec::new(),
            current_records: 0,
            held: 0,
            cached_index: None,
            line: Vec::new(),
            action: Vec::with_capacity(128),
            id_prefix,
        }
    }

    fn index_name(&mut self, arrival_ms: i64) -> &str {
        let slot = arrival_ms.div_euclid(IndexRotation::CACHE_SLOT_MS);
        if self.cached_index.as_ref().is_none_or(|(cached, _)| *cached != slot) {
            self.cached_index = Some((slot, self.settings.index_name(arrival_ms)));
        }
        self.cached_index.as_ref().map_or("", |(_, name)| name.as_str())
    }

    fn refuse(&mut self, index: usize, code: &str, message: String) {
        self.manifest.refused.push(Refused { index, code: code.to_string(), message });
    }

    /// Append one record's action and document lines (or list it as refused).
    fn push_document(
        &mut self,
        position: RecordPosition,
        data: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let record_index = self.manifest.records;
        self.manifest.records += 1;
        // The stream's delimiter is not part of a document: `_bulk` lines end with `\n` anyway.
        let document = match single_line_document(data, scratch) {
            Ok(document) => document,
            Err(reason) => {
                self.refuse(record_index, "OpenSearch.InvalidRecord", reason.to_string());
                return Ok(());
            }
        };
        // Before the document id is read from it (serde_json) and before OpenSearch parses it.
        if let Err(too_deep) = spillway_sink_api::check_json_depth(document) {
            self.refuse(record_index, "OpenSearch.InvalidRecord", format!("the record cannot be indexed: {too_deep}"));
            return Ok(());
        }
        let field_id = match &self.settings.document_id {
            DocumentId::FromField(path) => match id_from_field(document, path) {
                Ok(id) => Some(id),
                Err(message) => {
                    self.refuse(record_index, "OpenSearch.DocumentIdMissing", message);
                    return Ok(());
                }
            },
            DocumentId::FirehoseDefault | DocumentId::None => None,
        };
        // The action line is built in a buffer kept across records (no allocation per record).
        let mut action = std::mem::take(&mut self.action);
        action.clear();
        action.extend_from_slice(b"{\"index\":{\"_index\":\"");
        action.extend_from_slice(self.index_name(position.arrival_ms).as_bytes());
        action.push(b'"');
        if let Some(type_name) = self.settings.type_name.as_deref().filter(|name| !name.is_empty()) {
            action.extend_from_slice(b",\"_type\":");
            serde_json::to_writer(&mut action, type_name).map_err(|error| EncodeError::Record(error.to_string()))?;
        }
        match (&self.settings.document_id, field_id) {
            (DocumentId::FirehoseDefault, _) => {
                // `"<stream>-<sequence>"`: the stream's part is escaped once per encoder.
                action.extend_from_slice(b",\"_id\":");
                action.extend_from_slice(&self.id_prefix);
                match position.output {
                    0 => write!(action, "{}\"", position.sequence)?,
                    output => write!(action, "{}-{output}\"", position.sequence)?,
                }
            }
            (_, Some(id)) => {
                action.extend_from_slice(b",\"_id\":");
                serde_json::to_writer(&mut action, &id).map_err(|error| EncodeError::Record(error.to_string()))?;
            }
            (_, None) => {}
        }
        action.extend_from_slice(b"}}\n");
        let record_bytes = action.len() + document.len() + 1;
        if self.current_records > 0 && self.current.len() + record_bytes > self.settings.bulk_max_bytes {
            self.close_request();
        }
        if self.current.capacity() == 0 {
            // The whole request at once: growing by doubling would copy the body three or four
            // times. Pages are only backed as they are written, and `held_bytes` counts what is
            // written.
            self.current.reserve(self.settings.bulk_max_bytes.max(record_bytes));
        }
        self.current.extend_from_slice(&action);
        self.current.extend_from_slice(document);
        self.current.push(b'\n');
        self.current_records += 1;
        self.action = action;
        Ok(())
    }

    fn close_request(&mut self) {
        if self.current_records == 0 {
            return;
        }
        let body = std::mem::take(&mut self.current);
        self.held += body.len();
        self.bodies.push(Bytes::from(body));
        self.manifest.per_request.push(self.current_records);
        self.current_records = 0;
    }
}

impl Encoder for BulkEncoder {
    fn push(&mut self, data: &[u8], delimiter: &[u8]) -> Result<(), EncodeError> {
        // Without a position no id or index can be named: only the pipeline's `push_at` is valid.
        let _ = (data, delimiter);
        Err(EncodeError::Record("the _bulk encoder needs each record's position (push_at)".into()))
    }

    fn push_at(&mut self, position: RecordPosition, data: &[u8], _delimiter: &[u8]) -> Result<(), EncodeError> {
        // The scratch line is taken out so the document can be read while `self` changes.
        let mut scratch = std::mem::take(&mut self.line);
        let result = self.push_document(position, data, &mut scratch);
        self.line = scratch;
        result
    }

    fn held_bytes(&self) -> usize {
        self.held + self.current.len() + self.line.capacity()
    }

    fn finish(mut self: Box<Self>) -> Result<Payload, EncodeError> {
        self.close_request();
        if self.manifest.records == 0 {
            return Ok(Payload::default());
        }
        let manifest = serde_json::to_vec(&self.manifest).map_err(|error| EncodeError::Record(error.to_string()))?;
        let mut chunks = Vec::with_capacity(self.bodies.len() + 1);
        chunks.push(Bytes::from(manifest));
        chunks.append(&mut self.bodies);
        Ok(Payload::from_chunks(chunks))
    }
}

/// Why a record cannot be a `_bulk` document line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    Empty,
    RawLineBreakInString,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::Empty => f.write_str("the record is empty; OpenSearch needs one JSON document per record"),
            LineError::RawLineBreakInString => f.write_str(
                "the record spans several lines and is not JSON (a raw line break inside a string); \
                 OpenSearch needs single-line JSON",
            ),
        }
    }
}

/// The record as one line: trimmed of surrounding whitespace; a record with line breaks between
/// JSON tokens (pretty-printed JSON) has that whitespace removed (into `scratch`), which changes
/// no value. A line break inside a string is invalid JSON and would split the `_bulk` body.
pub fn single_line_document<'a>(data: &'a [u8], scratch: &'a mut Vec<u8>) -> Result<&'a [u8], LineError> {
    let trimmed = data.trim_ascii();
    if trimmed.is_empty() {
        return Err(LineError::Empty);
    }
    if memchr::memchr2(b'\n', b'\r', trimmed).is_none() {
        return Ok(trimmed);
    }
    scratch.clear();
    let (mut in_string, mut escaped) = (false, false);
    for &byte in trimmed {
        if in_string {
            if byte == b'\n' || byte == b'\r' {
                return Err(LineError::RawLineBreakInString);
            }
            scratch.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'\n' | b'\r' | b' ' | b'\t' => {}
            b'"' => {
                in_string = true;
                scratch.push(byte);
            }
            _ => scratch.push(byte),
        }
    }
    Ok(scratch.as_slice())
}

/// The document id from a field (`.a.b` or `a.b`): a string, or a number as written.
pub fn id_from_field(document: &[u8], path: &str) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_slice(document)
        .map_err(|error| format!("the record is not JSON ({error}), so it has no document id field {path}"))?;
    let mut current = &value;
    for part in path.trim_start_matches('.').split('.') {
        current = current.get(part).ok_or_else(|| format!("the record has no document id field {path}"))?;
    }
    match current {
        serde_json::Value::String(id) if !id.is_empty() && id.len() <= 512 => Ok(id.clone()),
        serde_json::Value::Number(number) => Ok(number.to_string()),
        other => Err(format!("the document id field {path} must be a string of 1-512 bytes or a number (got {other})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(document_id: DocumentId, bulk_max_bytes: usize) -> Arc<BulkSettings> {
        Arc::new(BulkSettings {
            stream: "logs".into(),
            index: "app".into(),
            rotation: IndexRotation::Hour,
            type_name: None,
            document_id,
            bulk_max_bytes,
        })
    }

    fn lines(body: &Bytes) -> Vec<String> {
        String::from_utf8(body.to_vec()).unwrap().lines().map(str::to_string).collect()
    }

    #[test]
    fn records_become_action_and_document_lines_with_rotated_indices_and_stable_ids() {
        let mut encoder = BulkEncoder::new(settings(DocumentId::FirehoseDefault, 1 << 20));
        // 2016-02-25T13:59:59.999Z and the next millisecond: one batch, two indices; the second
        // record is a transform's third output of WAL record 8.
        encoder
            .push_at(RecordPosition { sequence: 7, output: 0, arrival_ms: 1_456_408_799_999 }, b"{\"a\":1}\n", b"\n")
            .unwrap();
        encoder
            .push_at(RecordPosition { sequence: 8, output: 2, arrival_ms: 1_456_408_800_000 }, b" {\"a\":2}", b"")
            .unwrap();
        let payload = Box::new(encoder).finish().unwrap();
        let (manifest, bodies) = split_payload(&payload).unwrap();
        assert_eq!(manifest, Manifest { records: 2, per_request: vec![2], refused: vec![] });
        assert_eq!(
            lines(&bodies[0]),
            [
                r#"{"index":{"_index":"app-2016-02-25-13","_id":"logs-7"}}"#,
                r#"{"a":1}"#,
                r#"{"index":{"_index":"app-2016-02-25-14","_id":"logs-8-2"}}"#,
                r#"{"a":2}"#,
            ]
        );
    }

    #[test]
    fn bodies_split_at_record_boundaries_and_refused_records_are_listed() {
        let mut encoder = BulkEncoder::new(settings(DocumentId::FromField(".id".into()), 150));
        let records: [&[u8]; 5] =
            [b"{\"id\":\"a\"}", b"", b"{\"id\":\"b\",\n \"x\": \"y z\"}", b"{\"no\":1}", b"{\"id\":3}"];
        for (sequence, data) in records.iter().enumerate() {
            encoder.push_at(RecordPosition { sequence: sequence as u64, output: 0, arrival_ms: 0 }, data, b"").unwrap();
        }
        let (manifest, bodies) = split_payload(&Box::new(encoder).finish().unwrap()).unwrap();
        let refused: Vec<(usize, &str)> =
            manifest.refused.iter().map(|refused| (refused.index, refused.code.as_str())).collect();
        assert_eq!(refused, [(1, "OpenSearch.InvalidRecord"), (3, "OpenSearch.DocumentIdMissing")]);
        assert_eq!(manifest.request_positions(), vec![vec![0, 2], vec![4]]);
        assert_eq!(bodies.len(), 2);
        assert_eq!(lines(&bodies[0])[3], r#"{"id":"b","x":"y z"}"#, "pretty JSON joined onto one line");
        assert_eq!(lines(&bodies[1])[0], r#"{"index":{"_index":"app-1970-01-01-00","_id":"3"}}"#);
    }

    #[test]
    fn a_document_nested_past_the_bound_is_refused_not_sent() {
        let mut encoder = BulkEncoder::new(settings(DocumentId::FromField(".id".into()), 1 << 20));
        let deep = format!(r#"{{"id":"d","x":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        let records: [&[u8]; 3] = [br#"{"id":"a"}"#, deep.as_bytes(), br#"{"id":"b"}"#];
        for (sequence, data) in records.iter().enumerate() {
            encoder.push_at(RecordPosition { sequence: sequence as u64, output: 0, arrival_ms: 0 }, data, b"").unwrap();
        }
        let (manifest, bodies) = split_payload(&Box::new(encoder).finish().unwrap()).unwrap();
        assert_eq!(
            manifest.refused,
            [Refused {
                index: 1,
                code: "OpenSearch.InvalidRecord".into(),
                message: "the record cannot be indexed: JSON nested deeper than 100 levels (the bracket at byte 113 opens level 101)".into(),
            }]
        );
        assert_eq!(manifest.request_positions(), vec![vec![0, 2]]);
        assert!(!lines(&bodies[0]).iter().any(|line| line.contains("[[[")), "never sent to OpenSearch");
    }

    #[test]
    fn line_breaks_inside_strings_are_refused_not_sent() {
        let mut scratch = Vec::new();
        assert_eq!(single_line_document(b"{\"a\":\"x\ny\"}", &mut scratch), Err(LineError::RawLineBreakInString));
        assert_eq!(single_line_document(b"  \n ", &mut scratch), Err(LineError::Empty));
        assert_eq!(
            single_line_document(b"{\"a\":\"q\\\"\"\r\n,\"b\":1}", &mut scratch).unwrap(),
            b"{\"a\":\"q\\\"\",\"b\":1}"
        );
        assert_eq!(single_line_document(b"not json\n", &mut scratch).unwrap(), b"not json", "OpenSearch refuses it");
    }

    #[test]
    fn no_document_id_leaves_ids_to_opensearch() {
        let mut encoder = BulkEncoder::new(settings(DocumentId::None, 1 << 20));
        encoder.push_at(RecordPosition { sequence: 1, output: 0, arrival_ms: 0 }, b"{}", b"").unwrap();
        let (_, bodies) = split_payload(&Box::new(encoder).finish().unwrap()).unwrap();
        assert_eq!(lines(&bodies[0])[0], r#"{"index":{"_index":"app-1970-01-01-00"}}"#);
    }
}
