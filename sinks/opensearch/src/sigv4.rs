//! `auth: { type: aws_sigv4 }`: requests signed as Amazon OpenSearch Service (`es`) or
//! OpenSearch Serverless (`aoss`) expect, with credentials from the standard AWS chain (env,
//! profile, web identity, ECS, instance role), refreshed before they expire. Signing hashes the
//! whole body, so it runs on the blocking pool.
//!
//! Must not: retry, or log credentials.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4::SigningParams;
use bytes::Bytes;
use spillway_sink_api::SinkError;
use tokio::sync::{Mutex, OnceCell};

/// Credentials are fetched again this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

pub struct SigV4Signer {
    region: String,
    service: String,
    provider: OnceCell<Option<SharedCredentialsProvider>>,
    cached: Mutex<Option<Credentials>>,
}

impl std::fmt::Debug for SigV4Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigV4Signer").field("region", &self.region).field("service", &self.service).finish()
    }
}

impl SigV4Signer {
    pub fn new(region: String, service: String) -> Self {
        Self { region, service, provider: OnceCell::new(), cached: Mutex::new(None) }
    }

    /// A signer with fixed credentials (tests, or keys given in the config).
    pub fn with_credentials(region: String, service: String, credentials: Credentials) -> Self {
        let signer = Self::new(region, service);
        let provider = OnceCell::new_with(Some(Some(SharedCredentialsProvider::new(credentials))));
        Self { provider, ..signer }
    }

    async fn credentials(&self) -> Result<Credentials, SinkError> {
        let mut cached = self.cached.lock().await;
        if let Some(credentials) = cached.as_ref() {
            let fresh = credentials.expiry().is_none_or(|expiry| {
                expiry.duration_since(SystemTime::now()).is_ok_and(|left| left > REFRESH_BEFORE_EXPIRY)
            });
            if fresh {
                return Ok(credentials.clone());
            }
        }
        let provider = self
            .provider
            .get_or_init(|| async {
                aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await.credentials_provider()
            })
            .await;
        let Some(provider) = provider else {
            return Err(SinkError::retriable(
                "OpenSearch.CredentialsUnavailable",
                "no AWS credential provider is configured",
            ));
        };
        let credentials = provider.provide_credentials().await.map_err(|error| {
            // The operator can fix the credentials without losing data: retriable.
            SinkError::retriable("OpenSearch.CredentialsUnavailable", "cannot load AWS credentials for SigV4")
                .with_source(error)
        })?;
        *cached = Some(credentials.clone());
        Ok(credentials)
    }

    /// The headers to add to a request (`authorization`, `x-amz-date`, `x-amz-content-sha256`,
    /// `x-amz-security-token`).
    pub async fn headers(
        &self,
        method: &'static str,
        url: &str,
        content_type: Option<&'static str>,
        body: Bytes,
    ) -> Result<Vec<(String, String)>, SinkError> {
        let credentials = self.credentials().await?;
        let (region, service, url) = (self.region.clone(), self.service.clone(), url.to_string());
        tokio::task::spawn_blocking(move || {
            sign_headers(&credentials, &region, &service, method, &url, content_type, &body, SystemTime::now())
        })
        .await
        .map_err(|error| {
            SinkError::retriable("OpenSearch.SigningFailed", "the signing task failed").with_source(error)
        })?
    }
}

/// Sign one request at `time`; returns the headers to add.
#[allow(clippy::too_many_arguments)]
pub fn sign_headers(
    credentials: &Credentials,
    region: &str,
    service: &str,
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(String, String)>, SinkError> {
    let failed = |error: &dyn std::fmt::Display| {
        SinkError::permanent("OpenSearch.SigningFailed", format!("cannot sign the request: {error}"))
    };
    let parsed = url::Url::parse(url).map_err(|error| failed(&error))?;
    let host = match (parsed.host_str(), parsed.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => return Err(failed(&"the url has no host")),
    };
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let identity = credentials.clone().into();
    let params = SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|error| failed(&error))?
        .into();
    let mut base = vec![("host", host.as_str())];
    if let Some(content_type) = content_type {
        base.push(("content-type", content_type));
    }
    let request = SignableRequest::new(method, url, base.into_iter(), SignableBody::Bytes(body))
        .map_err(|error| failed(&error))?;
    let (instructions, _signature) = sign(request, &params).map_err(|error| failed(&error))?.into_parts();
    Ok(instructions.headers().map(|(name, value)| (name.to_string(), value.to_string())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_get_an_es_signature_with_the_body_hash() {
        let credentials = Credentials::new("AKIDEXAMPLE", "secret", Some("token".into()), None, "test");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_115_200); // 2025-11-26T00:00:00Z
        let headers = sign_headers(
            &credentials,
            "eu-west-1",
            "es",
            "POST",
            "https://search-logs.eu-west-1.es.amazonaws.com/_bulk?filter_path=errors",
            Some("application/x-ndjson"),
            b"{\"index\":{}}\n{}\n",
            time,
        )
        .unwrap();
        let get = |name: &str| headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
        let authorization = get("authorization").unwrap();
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20251126/eu-west-1/es/aws4_request"),
            "{authorization}"
        );
        assert!(
            authorization
                .contains("SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token"),
            "{authorization}"
        );
        assert_eq!(get("x-amz-date").as_deref(), Some("20251126T000000Z"));
        assert_eq!(get("x-amz-security-token").as_deref(), Some("token"));
        // sha256 of the body, hex.
        assert_eq!(get("x-amz-content-sha256").unwrap().len(), 64);
    }
}
