//! A DynamoDB stream record as one JSON record, in the shape AWS Lambda delivers a DynamoDB
//! stream record (the `GetRecords` record plus `eventSourceARN`):
//!
//! ```json
//! {"eventID":"…","eventName":"MODIFY","eventVersion":"1.1","eventSource":"aws:dynamodb","awsRegion":"us-east-1",
//!  "dynamodb":{"ApproximateCreationDateTime":1764115200,"Keys":{…},"NewImage":{…},"OldImage":{…},
//!              "SequenceNumber":"…","SizeBytes":26,"StreamViewType":"NEW_AND_OLD_IMAGES"},
//!  "eventSourceARN":"arn:aws:dynamodb:…:table/T/stream/…","userIdentity":{"type":"Service","principalId":"dynamodb.amazonaws.com"}}
//! ```
//!
//! Absent fields are left out (`OldImage` of an INSERT, `userIdentity` unless a TTL deleted the
//! item). `ApproximateCreationDateTime` is epoch seconds (a fraction only when the service gives
//! one). Attribute values keep DynamoDB's typed form (`{"S":"x"}`), or with `unmarshal` become
//! plain JSON: `S` → string, `N` → number where the JSON number is exactly the same decimal
//! (else the string), `B` → base64 string, `BOOL`, `NULL` → null, `SS`/`NS`/`BS` → arrays, `M`
//! and `L` recursively. Map keys are written in sorted order, so output is deterministic.
//!
//! Must not: allocate an intermediate JSON tree (the record is written straight into its bytes).

use std::collections::HashMap;

use aws_sdk_dynamodbstreams::types::{AttributeValue, Record};
use base64::Engine as _;

/// The record's JSON bytes.
pub fn render(record: &Record, stream_arn: &str, unmarshal: bool) -> Vec<u8> {
    let mut out = String::with_capacity(512);
    out.push('{');
    let mut first = true;
    let mut field = |out: &mut String, name: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        push_str(out, name);
        out.push(':');
    };
    if let Some(id) = record.event_id() {
        field(&mut out, "eventID");
        push_str(&mut out, id);
    }
    if let Some(name) = record.event_name() {
        field(&mut out, "eventName");
        push_str(&mut out, name.as_str());
    }
    if let Some(version) = record.event_version() {
        field(&mut out, "eventVersion");
        push_str(&mut out, version);
    }
    if let Some(source) = record.event_source() {
        field(&mut out, "eventSource");
        push_str(&mut out, source);
    }
    if let Some(region) = record.aws_region() {
        field(&mut out, "awsRegion");
        push_str(&mut out, region);
    }
    if let Some(dynamodb) = record.dynamodb() {
        field(&mut out, "dynamodb");
        out.push('{');
        let mut inner_first = true;
        let mut inner = |out: &mut String, name: &str| {
            if !inner_first {
                out.push(',');
            }
            inner_first = false;
            push_str(out, name);
            out.push(':');
        };
        if let Some(time) = dynamodb.approximate_creation_date_time() {
            inner(&mut out, "ApproximateCreationDateTime");
            push_epoch_seconds(&mut out, time.secs(), time.subsec_nanos());
        }
        for (name, image) in
            [("Keys", dynamodb.keys()), ("NewImage", dynamodb.new_image()), ("OldImage", dynamodb.old_image())]
        {
            if let Some(image) = image {
                inner(&mut out, name);
                push_map(&mut out, image, unmarshal);
            }
        }
        if let Some(sequence) = dynamodb.sequence_number() {
            inner(&mut out, "SequenceNumber");
            push_str(&mut out, sequence);
        }
        if let Some(size) = dynamodb.size_bytes() {
            inner(&mut out, "SizeBytes");
            out.push_str(&size.to_string());
        }
        if let Some(view) = dynamodb.stream_view_type() {
            inner(&mut out, "StreamViewType");
            push_str(&mut out, view.as_str());
        }
        out.push('}');
    }
    field(&mut out, "eventSourceARN");
    push_str(&mut out, stream_arn);
    if let Some(identity) = record.user_identity() {
        field(&mut out, "userIdentity");
        out.push('{');
        let mut parts = Vec::new();
        if let Some(kind) = identity.r#type() {
            parts.push(("type", kind));
        }
        if let Some(principal) = identity.principal_id() {
            parts.push(("principalId", principal));
        }
        for (index, (name, value)) in parts.into_iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            push_str(&mut out, name);
            out.push(':');
            push_str(&mut out, value);
        }
        out.push('}');
    }
    out.push('}');
    out.into_bytes()
}

/// Epoch seconds: an integer when whole, else with milliseconds.
fn push_epoch_seconds(out: &mut String, secs: i64, nanos: u32) {
    if nanos == 0 {
        out.push_str(&secs.to_string());
    } else {
        out.push_str(&format!("{secs}.{:03}", nanos / 1_000_000));
    }
}

fn push_map(out: &mut String, map: &HashMap<String, AttributeValue>, unmarshal: bool) {
    let mut names: Vec<&String> = map.keys().collect();
    names.sort_unstable();
    out.push('{');
    for (index, name) in names.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        push_str(out, name);
        out.push(':');
        if let Some(value) = map.get(name) {
            push_value(out, value, unmarshal);
        }
    }
    out.push('}');
}

fn push_value(out: &mut String, value: &AttributeValue, unmarshal: bool) {
    if unmarshal {
        push_plain(out, value);
    } else {
        push_typed(out, value);
    }
}

/// DynamoDB's typed form: `{"S":"x"}`, `{"N":"1"}`, `{"B":"<base64>"}`, ….
fn push_typed(out: &mut String, value: &AttributeValue) {
    out.push('{');
    match value {
        AttributeValue::S(text) => {
            out.push_str("\"S\":");
            push_str(out, text);
        }
        AttributeValue::N(number) => {
            out.push_str("\"N\":");
            push_str(out, number);
        }
        AttributeValue::B(blob) => {
            out.push_str("\"B\":");
            push_str(out, &base64(blob.as_ref()));
        }
        AttributeValue::Bool(flag) => out.push_str(if *flag { "\"BOOL\":true" } else { "\"BOOL\":false" }),
        AttributeValue::Null(flag) => out.push_str(if *flag { "\"NULL\":true" } else { "\"NULL\":false" }),
        AttributeValue::Ss(items) => {
            out.push_str("\"SS\":");
            push_array(out, items, |out, item| push_str(out, item));
        }
        AttributeValue::Ns(items) => {
            out.push_str("\"NS\":");
            push_array(out, items, |out, item| push_str(out, item));
        }
        AttributeValue::Bs(items) => {
            out.push_str("\"BS\":");
            push_array(out, items, |out, item| push_str(out, &base64(item.as_ref())));
        }
        AttributeValue::M(map) => {
            out.push_str("\"M\":");
            push_map(out, map, false);
        }
        AttributeValue::L(items) => {
            out.push_str("\"L\":");
            push_array(out, items, push_typed);
        }
        // A type newer than this SDK: nothing is known of it to write; `{}` keeps the key.
        _ => {}
    }
    out.push('}');
}

/// Plain JSON (`unmarshal: true`).
fn push_plain(out: &mut String, value: &AttributeValue) {
    match value {
        AttributeValue::S(text) => push_str(out, text),
        AttributeValue::N(number) => push_number(out, number),
        AttributeValue::B(blob) => push_str(out, &base64(blob.as_ref())),
        AttributeValue::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        AttributeValue::Null(_) => out.push_str("null"),
        AttributeValue::Ss(items) => push_array(out, items, |out, item| push_str(out, item)),
        AttributeValue::Ns(items) => push_array(out, items, |out, item| push_number(out, item)),
        AttributeValue::Bs(items) => push_array(out, items, |out, item| push_str(out, &base64(item.as_ref()))),
        AttributeValue::M(map) => push_map(out, map, true),
        AttributeValue::L(items) => push_array(out, items, push_plain),
        // A type newer than this SDK: nothing is known of it to write.
        _ => out.push_str("null"),
    }
}

/// `[a,b,…]`, each item written by `write`.
fn push_array<T>(out: &mut String, items: &[T], write: impl Fn(&mut String, &T)) {
    out.push('[');
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        write(out, item);
    }
    out.push(']');
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A DynamoDB number as a JSON number when that is the same decimal, else as its string (up to 38
/// significant digits do not fit an `f64`, and JSON readers parse numbers as `f64` or `i64`).
fn push_number(out: &mut String, number: &str) {
    match lossless_json_number(number) {
        Some(json) => out.push_str(&json),
        None => push_str(out, number),
    }
}

/// The JSON text of `number` if an `i64`, `u64` or `f64` holds exactly its decimal value.
pub(crate) fn lossless_json_number(number: &str) -> Option<String> {
    let wanted = decimal(number)?;
    if let Ok(integer) = number.parse::<i64>() {
        return Some(integer.to_string());
    }
    if let Ok(integer) = number.parse::<u64>() {
        return Some(integer.to_string());
    }
    let float: f64 = number.parse().ok()?;
    // A whole number written with an exponent (`1E+2`) as an integer, not `100.0`.
    let json = if float.fract() == 0.0 && float.abs() < 9.0e15 {
        (float as i64).to_string()
    } else {
        serde_json::Number::from_f64(float)?.to_string()
    };
    (decimal(&json)? == wanted).then_some(json)
}

/// A decimal number as (negative, significant digits without leading or trailing zeros, power
/// of ten of the last digit); zero is `(false, "", 0)`. `None` when it is not a decimal number.
fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], rest[at + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if integer.is_empty() && fraction.is_empty() {
        return None;
    }
    if !integer.bytes().chain(fraction.bytes()).all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = integer.chars().chain(fraction.chars()).collect();
    let mut power = exponent.checked_sub(fraction.len() as i64)?;
    let trimmed = digits.trim_start_matches('0').len();
    digits.drain(..digits.len() - trimmed);
    while digits.ends_with('0') {
        digits.pop();
        power += 1;
    }
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((negative, digits, power))
}

/// A JSON string literal.
fn push_str(out: &mut String, text: &str) {
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            control if (control as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", control as u32)),
            other => out.push(other),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodbstreams::primitives::{Blob, DateTime};
    use aws_sdk_dynamodbstreams::types::{Identity, OperationType, StreamRecord, StreamViewType};
    use serde_json::{Value, json};

    #[test]
    fn numbers_are_numbers_only_where_lossless() {
        for (input, output) in [
            ("0", Some("0")),
            ("-17", Some("-17")),
            ("18446744073709551615", Some("18446744073709551615")),
            ("3.14", Some("3.14")),
            ("0.1", Some("0.1")),
            ("1E+2", Some("100")),
            ("-0.000125", Some("-0.000125")),
            ("1e300", Some("1e+300")),
            // Beyond u64 and not an exact double: the string.
            ("123456789012345678901234567890", None),
            ("0.12345678901234567890123456789", None),
            ("9007199254740993.5", None),
            ("NaN", None),
            ("", None),
        ] {
            assert_eq!(lossless_json_number(input).as_deref(), output, "{input}");
        }
    }

    fn item(pairs: &[(&str, AttributeValue)]) -> HashMap<String, AttributeValue> {
        pairs.iter().map(|(name, value)| (name.to_string(), value.clone())).collect()
    }

    fn sample() -> Record {
        let nested = AttributeValue::M(item(&[
            ("inner", AttributeValue::L(vec![AttributeValue::N("1".into()), AttributeValue::S("two".into())])),
            ("flag", AttributeValue::Bool(true)),
        ]));
        let image = item(&[
            ("id", AttributeValue::S("a\"b".into())),
            ("n", AttributeValue::N("12.5".into())),
            ("big", AttributeValue::N("123456789012345678901234567890".into())),
            ("bin", AttributeValue::B(Blob::new(vec![0, 1, 2, 255]))),
            ("ss", AttributeValue::Ss(vec!["x".into(), "y".into()])),
            ("ns", AttributeValue::Ns(vec!["1".into(), "2.5".into()])),
            ("bs", AttributeValue::Bs(vec![Blob::new(b"hi".to_vec())])),
            ("nothing", AttributeValue::Null(true)),
            ("nested", nested),
        ]);
        Record::builder()
            .event_id("e1")
            .event_name(OperationType::Modify)
            .event_version("1.1")
            .event_source("aws:dynamodb")
            .aws_region("eu-west-1")
            .dynamodb(
                StreamRecord::builder()
                    .approximate_creation_date_time(DateTime::from_secs(1_764_115_200))
                    .set_keys(Some(item(&[("id", AttributeValue::S("a\"b".into()))])))
                    .set_new_image(Some(image))
                    .set_old_image(Some(item(&[("id", AttributeValue::S("a\"b".into()))])))
                    .sequence_number("4421")
                    .size_bytes(99)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build(),
            )
            .user_identity(Identity::builder().r#type("Service").principal_id("dynamodb.amazonaws.com").build())
            .build()
    }

    #[test]
    fn typed_form_follows_the_lambda_event_record() {
        let text = render(&sample(), "arn:aws:dynamodb:eu-west-1:1:table/t/stream/x", false);
        let value: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["eventID"], "e1");
        assert_eq!(value["eventName"], "MODIFY");
        assert_eq!(value["eventSource"], "aws:dynamodb");
        assert_eq!(value["awsRegion"], "eu-west-1");
        assert_eq!(value["eventSourceARN"], "arn:aws:dynamodb:eu-west-1:1:table/t/stream/x");
        assert_eq!(value["userIdentity"], json!({"type": "Service", "principalId": "dynamodb.amazonaws.com"}));
        let dynamodb = &value["dynamodb"];
        assert_eq!(dynamodb["ApproximateCreationDateTime"], 1_764_115_200);
        assert_eq!(dynamodb["Keys"], json!({"id": {"S": "a\"b"}}));
        assert_eq!(dynamodb["SequenceNumber"], "4421");
        assert_eq!(dynamodb["SizeBytes"], 99);
        assert_eq!(dynamodb["StreamViewType"], "NEW_AND_OLD_IMAGES");
        let image = &dynamodb["NewImage"];
        assert_eq!(image["n"], json!({"N": "12.5"}));
        assert_eq!(image["bin"], json!({"B": "AAEC/w=="}));
        assert_eq!(image["ss"], json!({"SS": ["x", "y"]}));
        assert_eq!(image["ns"], json!({"NS": ["1", "2.5"]}));
        assert_eq!(image["bs"], json!({"BS": ["aGk="]}));
        assert_eq!(image["nothing"], json!({"NULL": true}));
        assert_eq!(image["nested"], json!({"M": {"flag": {"BOOL": true}, "inner": {"L": [{"N": "1"}, {"S": "two"}]}}}));
        // Sorted keys: the same record renders the same bytes.
        assert_eq!(text, render(&sample(), "arn:aws:dynamodb:eu-west-1:1:table/t/stream/x", false));
    }

    #[test]
    fn unmarshal_gives_plain_json() {
        let value: Value = serde_json::from_slice(&render(&sample(), "arn", true)).unwrap();
        let image = &value["dynamodb"]["NewImage"];
        assert_eq!(
            *image,
            json!({
                "id": "a\"b",
                "n": 12.5,
                "big": "123456789012345678901234567890",
                "bin": "AAEC/w==",
                "ss": ["x", "y"],
                "ns": [1, 2.5],
                "bs": ["aGk="],
                "nothing": null,
                "nested": {"flag": true, "inner": [1, "two"]},
            })
        );
        assert_eq!(value["dynamodb"]["Keys"], json!({"id": "a\"b"}));
        assert_eq!(value["dynamodb"]["SequenceNumber"], "4421", "only attribute values change");
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        push_str(&mut out, "a\u{1}\n\"\\é");
        assert_eq!(out, "\"a\\u0001\\n\\\"\\\\é\"");
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), "a\u{1}\n\"\\é");
    }
}
