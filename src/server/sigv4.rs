//! AWS Signature Version 4 verification for the Firehose API (`server.auth`): rebuilds the
//! canonical request from what arrived (method, path, query, the headers the client listed in
//! `SignedHeaders`, the SHA-256 of the body), derives the signing key with the AWS SDK's own
//! `aws-sigv4` functions, and compares signatures in constant time. Errors carry AWS's error
//! types and wording, so SDKs report them as they would against Firehose.
//!
//! The clock is injected (`now`), so the ±5 minute skew rule is testable without waiting.
//! Must not: read the body (the caller hands it over, inside its body budget), log secrets or
//! signatures, or accept a scope for another service.

use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, Uri};
use chrono::{DateTime, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "firehose";
/// AWS refuses a request whose `X-Amz-Date` is further than this from its clock.
const MAX_SKEW: Duration = Duration::from_secs(5 * 60);
const AMZ_DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// Why a request is refused; each maps to the AWS error type of the same name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header at all.
    #[error("Missing Authentication Token")]
    MissingAuthenticationToken,
    /// An `Authorization` header that is not a well-formed SigV4 one.
    #[error("{0}")]
    IncompleteSignature(String),
    /// The access key is not configured.
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    /// Wrong signature, wrong scope, or a clock skew over five minutes.
    #[error("{0}")]
    InvalidSignature(String),
}

impl AuthError {
    /// The `__type` AWS answers with.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            AuthError::IncompleteSignature(_) => "IncompleteSignatureException",
            AuthError::UnrecognizedClient => "UnrecognizedClientException",
            AuthError::InvalidSignature(_) => "InvalidSignatureException",
        }
    }

    fn mismatch() -> AuthError {
        AuthError::InvalidSignature(
            "The request signature we calculated does not match the signature you provided. Check your AWS \
             Secret Access Key and signing method. Consult the service documentation for details."
                .to_string(),
        )
    }
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: Vec<&'a str>,
    signed_headers_text: &'a str,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, AuthError> {
    let incomplete = |what: &str| AuthError::IncompleteSignature(format!("Authorization header {what}"));
    let Some(rest) = value.strip_prefix(ALGORITHM) else {
        return Err(incomplete("must use the AWS4-HMAC-SHA256 algorithm"));
    };
    let (mut credential, mut signed_headers_text, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(value) = part.strip_prefix("Credential=") {
            credential = Some(value);
        } else if let Some(value) = part.strip_prefix("SignedHeaders=") {
            signed_headers_text = Some(value);
        } else if let Some(value) = part.strip_prefix("Signature=") {
            signature = Some(value);
        }
    }
    let (Some(credential), Some(signed_headers_text), Some(signature)) = (credential, signed_headers_text, signature)
    else {
        return Err(incomplete("requires Credential, SignedHeaders and Signature"));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(incomplete("Credential must be <key>/<date>/<region>/<service>/aws4_request"));
    };
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        terminator,
        signed_headers: signed_headers_text.split(';').collect(),
        signed_headers_text,
        signature,
    })
}

/// Check one request's signature; `Ok` when it was signed by a configured key within the skew.
pub fn verify(
    auth: &AuthConfig,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<(), AuthError> {
    let Some(header_value) = headers.get("authorization") else {
        return Err(AuthError::MissingAuthenticationToken);
    };
    let header_text = header_value
        .to_str()
        .map_err(|_| AuthError::IncompleteSignature("Authorization header is not ASCII".to_string()))?;
    let authorization = parse_authorization(header_text)?;
    let Some(key) = auth.access_keys.iter().find(|key| key.access_key_id == authorization.access_key_id) else {
        return Err(AuthError::UnrecognizedClient);
    };
    if authorization.service != SERVICE || authorization.terminator != "aws4_request" {
        return Err(AuthError::InvalidSignature(format!(
            "Credential should be scoped to correct service: '{SERVICE}'."
        )));
    }
    let amz_date = headers.get("x-amz-date").and_then(|value| value.to_str().ok()).ok_or_else(|| {
        AuthError::IncompleteSignature("Authorization header requires existence of the X-Amz-Date header".to_string())
    })?;
    let signed_at = NaiveDateTime::parse_from_str(amz_date, AMZ_DATE_FORMAT)
        .map_err(|_| AuthError::IncompleteSignature(format!("X-Amz-Date {amz_date:?} is not yyyyMMddTHHmmssZ")))?
        .and_utc();
    check_skew(amz_date, signed_at, now)?;
    if !amz_date.starts_with(authorization.date) || authorization.date.len() != 8 {
        return Err(AuthError::InvalidSignature(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
            authorization.date,
            &amz_date[..8.min(amz_date.len())]
        )));
    }
    if !authorization.signed_headers.contains(&"host") {
        return Err(AuthError::mismatch());
    }

    let canonical_request = canonical_request(method, uri, headers, &authorization, body)?;
    let scope = format!("{}/{}/{SERVICE}/aws4_request", authorization.date, authorization.region);
    let string_to_sign = format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", sha256_hex(canonical_request.as_bytes()));
    let signing_key = aws_sigv4::sign::v4::generate_signing_key(
        &key.secret_access_key,
        SystemTime::from(signed_at),
        authorization.region,
        SERVICE,
    );
    let expected = aws_sigv4::sign::v4::calculate_signature(signing_key, string_to_sign.as_bytes());
    if bool::from(expected.as_bytes().ct_eq(authorization.signature.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::mismatch())
    }
}

fn check_skew(amz_date: &str, signed_at: DateTime<Utc>, now: SystemTime) -> Result<(), AuthError> {
    let now = DateTime::<Utc>::from(now);
    let skew = chrono::Duration::from_std(MAX_SKEW).unwrap_or_else(|_| chrono::Duration::minutes(5));
    let format = |time: DateTime<Utc>| time.format(AMZ_DATE_FORMAT).to_string();
    if signed_at < now - skew {
        return Err(AuthError::InvalidSignature(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 5 min.)",
            format(now - skew),
            format(now)
        )));
    }
    if signed_at > now + skew {
        return Err(AuthError::InvalidSignature(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + 5 min.)",
            format(now + skew),
            format(now)
        )));
    }
    Ok(())
}

/// The SigV4 canonical request: method, path, query, signed headers, their names, body hash.
fn canonical_request(
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    authorization: &Authorization<'_>,
    body: &[u8],
) -> Result<String, AuthError> {
    let mut canonical = format!("{method}\n{}\n{}\n", canonical_path(uri.path()), canonical_query(uri.query()));
    for name in &authorization.signed_headers {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|value| value.to_str().map(collapse_spaces).map_err(|_| AuthError::mismatch()))
            .collect::<Result<_, _>>()?;
        if values.is_empty() {
            // A header the client says it signed did not arrive.
            return Err(AuthError::mismatch());
        }
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(&values.join(","));
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(authorization.signed_headers_text);
    canonical.push('\n');
    canonical.push_str(&sha256_hex(body));
    Ok(canonical)
}

/// Every service but S3 signs the path URI-encoded once more, segment by segment.
fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    path.split('/').map(uri_encode).collect::<Vec<_>>().join("/")
}

/// Query pairs sorted by name, then value, as the client encoded them (the Firehose API has none).
fn canonical_query(query: Option<&str>) -> String {
    let Some(query) = query.filter(|query| !query.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<(&str, &str)> =
        query.split('&').map(|pair| pair.split_once('=').unwrap_or((pair, ""))).collect();
    pairs.sort_unstable();
    pairs.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join("&")
}

/// RFC 3986 encoding with AWS's unreserved set (`A-Z a-z 0-9 - _ . ~`).
fn uri_encode(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4::SigningParams;

    use super::*;
    use crate::config::AccessKey;

    const BODY: &[u8] = br#"{"DeliveryStreamName":"app-logs","Records":[{"Data":"aGk="}]}"#;

    fn auth() -> AuthConfig {
        AuthConfig {
            access_keys: vec![AccessKey {
                access_key_id: "AKIDSPILLWAY".to_string(),
                secret_access_key: "right-secret".to_string(),
            }],
        }
    }

    /// Headers of a `PutRecordBatch` signed by the SDK's signer at `time`.
    fn signed_headers(key_id: &str, secret: &str, time: SystemTime) -> HeaderMap {
        let identity = Credentials::new(key_id, secret, None, None, "test").into();
        let params = SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("firehose")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let base = [
            ("host", "127.0.0.1:4573"),
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "Firehose_20150804.PutRecordBatch"),
        ];
        let request =
            SignableRequest::new("POST", "http://127.0.0.1:4573/", base.into_iter(), SignableBody::Bytes(BODY))
                .unwrap();
        let (instructions, _signature) = sign(request, &params).unwrap().into_parts();
        let mut headers = HeaderMap::new();
        for (name, value) in base {
            headers.insert(name, value.parse().unwrap());
        }
        for (name, value) in instructions.headers() {
            let name = axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            headers.insert(name, value.parse().unwrap());
        }
        headers
    }

    fn check(headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), AuthError> {
        verify(&auth(), "POST", &Uri::from_static("/"), headers, body, now)
    }

    #[test]
    fn a_request_signed_by_the_sdk_signer_verifies() {
        let now = SystemTime::now();
        assert_eq!(check(&signed_headers("AKIDSPILLWAY", "right-secret", now), BODY, now), Ok(()));
    }

    #[test]
    fn wrong_secret_unknown_key_tampered_body_and_no_header_are_refused() {
        let now = SystemTime::now();
        let wrong_secret = check(&signed_headers("AKIDSPILLWAY", "wrong", now), BODY, now).unwrap_err();
        assert_eq!(wrong_secret.code(), "InvalidSignatureException");
        let unknown = check(&signed_headers("AKIDOTHER", "right-secret", now), BODY, now).unwrap_err();
        assert_eq!(unknown, AuthError::UnrecognizedClient);
        assert_eq!(unknown.to_string(), "The security token included in the request is invalid.");
        let tampered = check(&signed_headers("AKIDSPILLWAY", "right-secret", now), b"{}", now).unwrap_err();
        assert_eq!(tampered.code(), "InvalidSignatureException");
        let unsigned = check(&HeaderMap::new(), BODY, now).unwrap_err();
        assert_eq!(unsigned.code(), "MissingAuthenticationTokenException");
    }

    #[test]
    fn a_clock_skew_over_five_minutes_is_refused() {
        let signed_at = SystemTime::now();
        let headers = signed_headers("AKIDSPILLWAY", "right-secret", signed_at);
        assert_eq!(check(&headers, BODY, signed_at + Duration::from_secs(4 * 60)), Ok(()));
        let expired = check(&headers, BODY, signed_at + Duration::from_secs(6 * 60)).unwrap_err();
        assert_eq!(expired.code(), "InvalidSignatureException");
        assert!(expired.to_string().starts_with("Signature expired: "), "{expired}");
        let early = check(&headers, BODY, signed_at - Duration::from_secs(6 * 60)).unwrap_err();
        assert!(early.to_string().starts_with("Signature not yet current: "), "{early}");
    }
}
