//! AWS Signature Version 4 verification (`server.auth`) for the Firehose API, NDJSON puts and
//! the protected read-only routes: rebuilds the canonical request from what arrived (method,
//! path, query, the headers the client listed in `SignedHeaders`, the SHA-256 of the body),
//! derives the signing key with the AWS SDK's own `aws-sigv4` functions, and compares signatures
//! in constant time. Errors carry AWS's error types and wording, so SDKs report them as they
//! would against Firehose.
//!
//! Two steps, because SDKs do not sign a body hash header for Firehose and the signature cannot
//! be checked without the body: [`precheck`] does everything the headers allow (key known, scope,
//! date within the skew, the route's required headers signed), so callers refuse anonymous and
//! unknown-key requests before reserving any body memory; [`Prechecked::verify_body`] finishes
//! with the body. A request that signed `x-amz-content-sha256` is fully verified by the first
//! step, and the second only compares the body's hash.
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

/// What a Firehose API call (`POST /`) must sign: AWS SDKs, the AWS CLI and Fluent Bit sign
/// every one of them.
pub const FIREHOSE_API_SIGNED_HEADERS: &[&str] = &["host", "x-amz-date", "x-amz-target", "content-type"];
/// What an NDJSON put must sign. curl (`--aws-sigv4`) sends no `x-amz-target`, and signs
/// `content-type` only when it is given with `-H`, so the command in docs/security.md gives it.
pub const NDJSON_SIGNED_HEADERS: &[&str] = &["host", "x-amz-date", "content-type"];
/// What a read-only `GET` (`/metrics`, the status page) must sign: it has no body or content type.
pub const READ_SIGNED_HEADERS: &[&str] = &["host", "x-amz-date"];

/// A request whose signature passed every check that needs no body: a well-formed
/// `Authorization` header from a configured key, for service `firehose`, dated within the skew,
/// covering the required headers, each of them present. When the request also signed an
/// `x-amz-content-sha256`, the signature itself was checked against it too ([`Prechecked::is_verified`]).
pub struct Prechecked<'a> {
    authorization: Authorization<'a>,
    secret: &'a str,
    amz_date: &'a str,
    signed_at: DateTime<Utc>,
    method: &'a str,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    /// The body's SHA-256 the client signed in `x-amz-content-sha256`, when it did.
    declared_payload_hash: Option<&'a str>,
}

/// Check everything about a request's signature that can be checked without its body. Cheap (no
/// body, one HMAC chain at most), so it runs before any memory is reserved for the body.
pub fn precheck<'a>(
    auth: &'a AuthConfig,
    method: &'a str,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    required_signed_headers: &[&str],
    now: SystemTime,
) -> Result<Prechecked<'a>, AuthError> {
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
    if authorization.region.is_empty()
        || !authorization.region.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    {
        return Err(AuthError::IncompleteSignature(format!(
            "Credential should be scoped to a valid region, not '{}'.",
            authorization.region
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
    let unsigned: Vec<&str> =
        required_signed_headers.iter().copied().filter(|name| !authorization.signed_headers.contains(name)).collect();
    if !unsigned.is_empty() {
        return Err(AuthError::IncompleteSignature(format!(
            "the signature must cover the headers {}; SignedHeaders lacks {}",
            required_signed_headers.join(", "),
            unsigned.join(", ")
        )));
    }
    if let Some(absent) = authorization.signed_headers.iter().find(|name| !headers.contains_key(**name)) {
        return Err(AuthError::IncompleteSignature(format!("signed header {absent} is not in the request")));
    }
    let declared_payload_hash = authorization
        .signed_headers
        .contains(&"x-amz-content-sha256")
        .then(|| headers.get("x-amz-content-sha256").and_then(|value| value.to_str().ok()))
        .flatten()
        .filter(|hash| hash.len() == 64 && hash.bytes().all(|byte| byte.is_ascii_hexdigit()));
    let prechecked = Prechecked {
        authorization,
        secret: &key.secret_access_key,
        amz_date,
        signed_at,
        method,
        uri,
        headers,
        declared_payload_hash,
    };
    if let Some(hash) = prechecked.declared_payload_hash {
        // The body's hash is signed: the whole signature can be checked now, the body later.
        prechecked.check_signature(&hash.to_ascii_lowercase())?;
    }
    Ok(prechecked)
}

impl Prechecked<'_> {
    /// The signature itself is already checked (it covered `x-amz-content-sha256`); only the
    /// body's hash is left.
    pub fn is_verified(&self) -> bool {
        self.declared_payload_hash.is_some()
    }

    /// Finish the check with the body that arrived.
    pub fn verify_body(&self, body: &[u8]) -> Result<(), AuthError> {
        let body_hash = sha256_hex(body);
        match self.declared_payload_hash {
            Some(declared) if declared.eq_ignore_ascii_case(&body_hash) => Ok(()),
            Some(_) => Err(AuthError::InvalidSignature(
                "The provided 'x-amz-content-sha256' header does not match what was computed.".to_string(),
            )),
            None => self.check_signature(&body_hash),
        }
    }

    fn check_signature(&self, payload_hash: &str) -> Result<(), AuthError> {
        let authorization = &self.authorization;
        let canonical_request = canonical_request(self.method, self.uri, self.headers, authorization, payload_hash)?;
        let scope = format!("{}/{}/{SERVICE}/aws4_request", authorization.date, authorization.region);
        let string_to_sign =
            format!("{ALGORITHM}\n{}\n{scope}\n{}", self.amz_date, sha256_hex(canonical_request.as_bytes()));
        let signing_key = aws_sigv4::sign::v4::generate_signing_key(
            self.secret,
            SystemTime::from(self.signed_at),
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
}

/// Check one request's signature, body included: [`precheck`], then [`Prechecked::verify_body`].
pub fn verify(
    auth: &AuthConfig,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    required_signed_headers: &[&str],
    body: &[u8],
    now: SystemTime,
) -> Result<(), AuthError> {
    precheck(auth, method, uri, headers, required_signed_headers, now)?.verify_body(body)
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
    payload_hash: &str,
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
    canonical.push_str(payload_hash);
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
    use aws_sigv4::http_request::{PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4::SigningParams;

    use super::*;
    use crate::config::AccessKey;

    const BODY: &[u8] = br#"{"DeliveryStreamName":"app-logs","Records":[{"Data":"aGk="}]}"#;
    const BASE: [(&str, &str); 3] = [
        ("host", "127.0.0.1:4573"),
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", "Firehose_20150804.PutRecordBatch"),
    ];

    fn auth() -> AuthConfig {
        AuthConfig {
            access_keys: vec![AccessKey {
                access_key_id: "AKIDSPILLWAY".to_string(),
                secret_access_key: "right-secret".to_string(),
            }],
            open_routes: Vec::new(),
        }
    }

    /// Headers of a `PutRecordBatch` signed by the SDK's signer at `time`: `signed` are the
    /// headers it signs, `added` are set on the request after signing.
    fn signed_with(
        key_id: &str,
        secret: &str,
        time: SystemTime,
        signed: &[(&str, &str)],
        added: &[(&str, &str)],
        settings: SigningSettings,
    ) -> HeaderMap {
        let identity = Credentials::new(key_id, secret, None, None, "test").into();
        let params = SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("firehose")
            .time(time)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let request =
            SignableRequest::new("POST", "http://127.0.0.1:4573/", signed.iter().copied(), SignableBody::Bytes(BODY))
                .unwrap();
        let (instructions, _signature) = sign(request, &params).unwrap().into_parts();
        let mut headers = HeaderMap::new();
        for (name, value) in signed.iter().chain(added) {
            headers.insert(axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        for (name, value) in instructions.headers() {
            let name = axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            headers.insert(name, value.parse().unwrap());
        }
        headers
    }

    fn signed_headers(key_id: &str, secret: &str, time: SystemTime) -> HeaderMap {
        signed_with(key_id, secret, time, &BASE, &[], SigningSettings::default())
    }

    fn check(headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), AuthError> {
        verify(&auth(), "POST", &Uri::from_static("/"), headers, FIREHOSE_API_SIGNED_HEADERS, body, now)
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

    #[test]
    fn a_signature_that_leaves_out_a_required_header_is_refused_before_the_body() {
        let now = SystemTime::now();
        for left_out in ["host", "content-type", "x-amz-target"] {
            let mut settings = SigningSettings::default();
            settings.excluded_headers.get_or_insert_with(Vec::new).push(left_out.into());
            let headers = signed_with("AKIDSPILLWAY", "right-secret", now, &BASE, &[], settings);
            let uri = Uri::from_static("/");
            let refused = precheck(&auth(), "POST", &uri, &headers, FIREHOSE_API_SIGNED_HEADERS, now)
                .err()
                .unwrap_or_else(|| panic!("{left_out} unsigned must be refused"));
            assert_eq!(refused.code(), "IncompleteSignatureException", "{refused}");
            assert!(refused.to_string().ends_with(&format!("SignedHeaders lacks {left_out}")), "{refused}");
        }
        // NDJSON needs no x-amz-target, the read-only routes no content type either.
        let no_target: Vec<(&str, &str)> = BASE[..2].to_vec();
        let headers = signed_with("AKIDSPILLWAY", "right-secret", now, &no_target, &[], SigningSettings::default());
        let uri = Uri::from_static("/");
        assert!(precheck(&auth(), "POST", &uri, &headers, NDJSON_SIGNED_HEADERS, now).is_ok());
        assert!(precheck(&auth(), "POST", &uri, &headers, FIREHOSE_API_SIGNED_HEADERS, now).is_err());
        // x-amz-date is signed by every SigV4 signer; a header claiming otherwise is refused too.
        let mut headers = signed_headers("AKIDSPILLWAY", "right-secret", now);
        let authorization = headers["authorization"].to_str().unwrap().replace(";x-amz-date", "");
        headers.insert("authorization", authorization.parse().unwrap());
        let refused = check(&headers, BODY, now).unwrap_err();
        assert!(refused.to_string().ends_with("SignedHeaders lacks x-amz-date"), "{refused}");
    }

    #[test]
    fn a_signed_body_hash_is_verified_before_the_body_and_the_body_against_it_after() {
        let now = SystemTime::now();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let uri = Uri::from_static("/");
        let auth = auth();
        let headers = signed_with("AKIDSPILLWAY", "right-secret", now, &BASE, &[], settings.clone());
        assert!(headers.contains_key("x-amz-content-sha256"));
        let prechecked = precheck(&auth, "POST", &uri, &headers, FIREHOSE_API_SIGNED_HEADERS, now).unwrap();
        assert!(prechecked.is_verified());
        assert_eq!(prechecked.verify_body(BODY), Ok(()));
        let other_body = prechecked.verify_body(b"{}").unwrap_err();
        assert!(other_body.to_string().contains("x-amz-content-sha256"), "{other_body}");

        // A wrong secret is found without the body.
        let wrong = signed_with("AKIDSPILLWAY", "wrong", now, &BASE, &[], settings);
        let refused = precheck(&auth, "POST", &uri, &wrong, FIREHOSE_API_SIGNED_HEADERS, now).err();
        assert_eq!(refused.map(|error| error.code()), Some("InvalidSignatureException"));
        // Without the header, only the body can tell.
        let plain = signed_headers("AKIDSPILLWAY", "wrong", now);
        let prechecked = precheck(&auth, "POST", &uri, &plain, FIREHOSE_API_SIGNED_HEADERS, now).unwrap();
        assert!(!prechecked.is_verified());
        assert_eq!(prechecked.verify_body(BODY).map_err(|error| error.code()), Err("InvalidSignatureException"));
    }
}
