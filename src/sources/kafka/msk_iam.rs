//! Amazon MSK IAM access control (`auth: { type: msk_iam, region? }`): SASL/OAUTHBEARER whose
//! token is a SigV4-presigned `GET https://kafka.<region>.amazonaws.com/?Action=kafka-cluster%3AConnect`
//! (service `kafka-cluster`, valid 900 s), base64url without padding, as AWS's signers make it
//! (aws-msk-iam-sasl-signer-python and -go): the same query parameters in the Python signer's
//! order, then an unsigned `User-Agent` parameter naming spillway.
//!
//! - **Credentials** come from the standard AWS chain (environment, profile, web identity, ECS,
//!   IMDS, `credential_process`), the region from `region` or the chain. They are loaded on the
//!   async runtime and kept until 5 minutes before they expire (15 minutes for credentials without
//!   an expiry, as the SDK's own cache does).
//! - **Refresh**: librdkafka asks for a token when the client starts and again at 80 % of the
//!   token's lifetime, through `ClientContext::generate_oauth_token` on the thread that polls the
//!   consumer. The Kafka reader polls on the blocking pool (its consumer thread, or the cluster
//!   mode's fetch tasks), so [`MskIamAuth::token`] may wait there for the credential lookup it
//!   spawns on the runtime; a failure (no region, no credentials) is handed to librdkafka, which
//!   reports it as an authentication error and asks again 10 s later.
//!
//! Must not: run on an async worker thread (it waits, bounded, for the runtime), or log a
//! credential or a token.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
use aws_sigv4::sign::v4::SigningParams;
use base64::Engine;

/// The SigV4 service name MSK checks.
const SIGNING_NAME: &str = "kafka-cluster";
/// How long a token is valid: the signers' `X-Amz-Expires`.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);
/// The `User-Agent` query parameter of spillway's tokens.
pub const USER_AGENT: &str = concat!("spillway/", env!("CARGO_PKG_VERSION"));
/// The longest a polling thread waits for the credential chain (IMDS, STS, a process).
const CREDENTIALS_WAIT: Duration = Duration::from_secs(30);
/// Credentials are loaded again this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// Credentials without an expiry are loaded again after this.
const NO_EXPIRY_REUSE: Duration = Duration::from_secs(900);

/// A token and the time it expires.
#[derive(Clone, PartialEq, Eq)]
pub struct MskIamToken {
    /// base64url (no padding) of the presigned URL.
    pub token: String,
    /// When the token stops being valid: epoch milliseconds.
    pub expires_ms: i64,
}

/// Never prints the token (it authenticates as the credentials' principal until it expires).
impl std::fmt::Debug for MskIamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MskIamToken").field("token", &"<redacted>").field("expires_ms", &self.expires_ms).finish()
    }
}

/// The token for `credentials` in `region` signed at `time`, with `user_agent` as its
/// `User-Agent` parameter. Pure: the same inputs give the same token (the reference signer's
/// for the same inputs and its own user agent).
pub fn presigned_token(
    credentials: &Credentials,
    region: &str,
    time: SystemTime,
    user_agent: &str,
) -> Result<MskIamToken, String> {
    if credentials.access_key_id().is_empty() || credentials.secret_access_key().is_empty() {
        return Err("the AWS credentials are empty".to_string());
    }
    let valid_region = !region.is_empty() && region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid_region {
        return Err(format!("{region:?} is not an AWS region"));
    }
    let url = format!("https://kafka.{region}.amazonaws.com/?Action=kafka-cluster%3AConnect");
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let params = SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|error| format!("cannot sign the MSK IAM token: {error}"))?
        .into();
    // No headers but `host`, which the signer takes from the URL; an empty body.
    let request = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|error| format!("cannot sign the MSK IAM token: {error}"))?;
    let (instructions, _signature) =
        sign(request, &params).map_err(|error| format!("cannot sign the MSK IAM token: {error}"))?.into_parts();
    let (_headers, signed) = instructions.into_parts();
    let value = |name: &str| -> Result<String, String> {
        signed
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
            .ok_or_else(|| format!("the signer gave no {name}"))
    };
    // The Python signer's order: the action, the authentication parameters (the session token
    // last of them), the signature, then the unsigned user agent.
    let mut query = vec![("Action", "kafka-cluster:Connect".to_string())];
    for name in ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders"] {
        query.push((name, value(name)?));
    }
    if credentials.session_token().is_some() {
        query.push(("X-Amz-Security-Token", value("X-Amz-Security-Token")?));
    }
    query.push(("X-Amz-Signature", value("X-Amz-Signature")?));
    query.push(("User-Agent", user_agent.to_string()));
    let rendered: Vec<String> =
        query.iter().map(|(name, value)| format!("{}={}", percent_encode(name), percent_encode(value))).collect();
    let presigned = format!("https://kafka.{region}.amazonaws.com/?{}", rendered.join("&"));
    // The signature covers whole seconds (`X-Amz-Date`): the token expires 900 s after that.
    let signed_at = time.duration_since(UNIX_EPOCH).map_err(|_| "the clock is before 1970".to_string())?.as_secs();
    let expires_ms = i64::try_from((signed_at + TOKEN_LIFETIME.as_secs()) * 1000)
        .map_err(|_| "the clock is out of range".to_string())?;
    Ok(MskIamToken { token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(presigned), expires_ms })
}

/// RFC 3986 percent-encoding of everything but the unreserved characters (what botocore and Go's
/// `url.Values` do for these values: no spaces occur).
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The credential chain and region of one `msk_iam` source, shared by its consumers.
pub(crate) struct MskIamAuth {
    /// `auth.region`, else the chain's.
    region: Option<String>,
    /// The runtime the credential lookups run on: the one it was made on, else the polling
    /// thread's (a blocking-pool thread knows its runtime).
    runtime: Option<tokio::runtime::Handle>,
    /// The chain's provider and region, loaded on first use.
    chain: tokio::sync::OnceCell<(Option<SharedCredentialsProvider>, Option<String>)>,
    cached: Mutex<Option<Credentials>>,
}

impl MskIamAuth {
    pub(crate) fn new(region: Option<String>) -> Arc<MskIamAuth> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        Arc::new(MskIamAuth { region, runtime, chain: tokio::sync::OnceCell::new(), cached: Mutex::new(None) })
    }

    /// A fresh token. Waits (at most [`CREDENTIALS_WAIT`]) for the credential lookup it runs on
    /// the runtime: call it on a blocking-pool or librdkafka thread, never on an async worker.
    pub(crate) fn token(self: &Arc<Self>) -> Result<MskIamToken, String> {
        let Some(runtime) = self.runtime.clone().or_else(|| tokio::runtime::Handle::try_current().ok()) else {
            return Err("msk_iam: no async runtime to load AWS credentials on".to_string());
        };
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let auth = self.clone();
        runtime.spawn(async move {
            // The receiver may have given up waiting; nothing to do then.
            let _ = sender.send(auth.credentials().await);
        });
        let (credentials, region) = match receiver.recv_timeout(CREDENTIALS_WAIT) {
            Ok(loaded) => loaded?,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "msk_iam: the AWS credential chain did not answer within {} s",
                    CREDENTIALS_WAIT.as_secs()
                ));
            }
            // The lookup task was dropped: the runtime is shutting down.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err("msk_iam: the credential lookup was cancelled (shutting down)".to_string());
            }
        };
        presigned_token(&credentials, &region, SystemTime::now(), USER_AGENT)
            .map_err(|error| format!("msk_iam: {error}"))
    }

    /// Credentials (cached while fresh) and the region.
    async fn credentials(&self) -> Result<(Credentials, String), String> {
        let (provider, chain_region) = self
            .chain
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
                if let Some(region) = &self.region {
                    loader = loader.region(aws_config::Region::new(region.clone()));
                }
                let config = loader.load().await;
                (config.credentials_provider(), config.region().map(ToString::to_string))
            })
            .await;
        let Some(region) = chain_region.clone() else {
            return Err("msk_iam: no AWS region: set auth.region (or AWS_REGION, or a profile's region)".to_string());
        };
        let cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(credentials) = cached
            && fresh(&credentials, SystemTime::now())
        {
            return Ok((credentials, region));
        }
        let Some(provider) = provider else {
            return Err("msk_iam: no AWS credential provider is configured".to_string());
        };
        let credentials = provider.provide_credentials().await.map_err(|error| {
            format!("msk_iam: cannot load AWS credentials: {}", spillway_sink_api::error_chain(&error))
        })?;
        let stamped = match credentials.expiry() {
            Some(_) => credentials.clone(),
            // Remember when credentials without an expiry were loaded, to load them again later.
            None => Credentials::new(
                credentials.access_key_id(),
                credentials.secret_access_key(),
                credentials.session_token().map(str::to_string),
                Some(SystemTime::now() + NO_EXPIRY_REUSE + REFRESH_BEFORE_EXPIRY),
                "msk_iam",
            ),
        };
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = Some(stamped);
        Ok((credentials, region))
    }
}

/// Whether cached credentials may sign another token.
fn fresh(credentials: &Credentials, now: SystemTime) -> bool {
    credentials.expiry().is_some_and(|expiry| expiry.duration_since(now).is_ok_and(|left| left > REFRESH_BEFORE_EXPIRY))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCESS_KEY: &str = "AKIDEXAMPLE";
    const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    /// Characters a real session token has that need encoding: `/`, `+`, `=`.
    const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+abc=";
    /// 2026-01-01T00:00:00Z.
    const SIGNED_AT: u64 = 1_767_225_600;
    const REFERENCE_AGENT: &str = "aws-msk-iam-sasl-signer-python/1.0.2";

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn decode(token: &str) -> String {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).expect("base64url without padding");
        String::from_utf8(bytes).expect("a URL")
    }

    /// What aws-msk-iam-sasl-signer-python 1.0.2 printed for these inputs
    /// (`tests/services/kafka/msk_token.py us-east-1 AKIDEXAMPLE <secret> <session token> 1767225600`):
    /// spillway's token with the reference signer's user agent is byte for byte the same.
    #[test]
    fn the_token_is_the_reference_signers_for_the_same_inputs() {
        let reference = "aHR0cHM6Ly9rYWZrYS51cy1lYXN0LTEuYW1hem9uYXdzLmNvbS8_QWN0aW9uPWthZmthLWNsdXN0ZXIlM0FDb25uZWN0JlgtQW16LUFsZ29yaXRobT1BV1M0LUhNQUMtU0hBMjU2JlgtQW16LUNyZWRlbnRpYWw9QUtJREVYQU1QTEUlMkYyMDI2MDEwMSUyRnVzLWVhc3QtMSUyRmthZmthLWNsdXN0ZXIlMkZhd3M0X3JlcXVlc3QmWC1BbXotRGF0ZT0yMDI2MDEwMVQwMDAwMDBaJlgtQW16LUV4cGlyZXM9OTAwJlgtQW16LVNpZ25lZEhlYWRlcnM9aG9zdCZYLUFtei1TZWN1cml0eS1Ub2tlbj1JUW9KYjNKcFoybHVYMlZqRUpyJTJGJTJGJTJGJTJGJTJGJTJGJTJGJTJGJTJGJTJGd0VhQ1hWekxXVmhjM1F0TVNKSE1FVUNJUSUyQmFiYyUzRCZYLUFtei1TaWduYXR1cmU9YzJjZTU2ZTEzZDUyNjYwZWE3ZDE2YWNhMDJhYzk0MGNmNzdkMjNmMjBlZjA0Njk4ODRjNWM4YmE3ZWZmZTQ5ZiZVc2VyLUFnZW50PWF3cy1tc2staWFtLXNhc2wtc2lnbmVyLXB5dGhvbiUyRjEuMC4y";
        let credentials = Credentials::new(ACCESS_KEY, SECRET_KEY, Some(SESSION_TOKEN.to_string()), None, "test");
        let ours = presigned_token(&credentials, "us-east-1", at(SIGNED_AT), REFERENCE_AGENT).unwrap();
        assert_eq!(decode(&ours.token), decode(reference));
        assert_eq!(ours.token, reference);
        assert_eq!(ours.expires_ms, 1_767_226_500_000);
    }

    #[test]
    fn the_token_names_spillway_and_leaves_out_an_absent_session_token() {
        let credentials = Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test");
        let token = presigned_token(&credentials, "eu-west-1", at(SIGNED_AT + 59), USER_AGENT).unwrap();
        assert_eq!(token.expires_ms, (SIGNED_AT + 59 + 900) as i64 * 1000);
        let url = decode(&token.token);
        assert!(!token.token.contains('='), "no padding");
        assert!(
            url.starts_with(
                "https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256\
                 &X-Amz-Credential=AKIDEXAMPLE%2F20260101%2Feu-west-1%2Fkafka-cluster%2Faws4_request\
                 &X-Amz-Date=20260101T000059Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature="
            ),
            "{url}"
        );
        assert!(!url.contains("X-Amz-Security-Token"), "{url}");
        let user_agent = format!("&User-Agent=spillway%2F{}", env!("CARGO_PKG_VERSION"));
        assert!(url.ends_with(&user_agent), "{url}");
        assert!(!format!("{token:?}").contains(&token.token), "Debug hides the token");
    }

    #[test]
    fn bad_inputs_are_refused_by_name() {
        let empty = Credentials::new("", "", None, None, "test");
        assert!(presigned_token(&empty, "us-east-1", at(SIGNED_AT), USER_AGENT).unwrap_err().contains("empty"));
        let credentials = Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test");
        let bad_region = presigned_token(&credentials, "us-east-1/evil", at(SIGNED_AT), USER_AGENT).unwrap_err();
        assert!(bad_region.contains("not an AWS region"), "{bad_region}");
    }

    #[test]
    fn cached_credentials_are_used_until_five_minutes_before_they_expire() {
        let now = at(SIGNED_AT);
        let expiring =
            |seconds: u64| Credentials::new(ACCESS_KEY, SECRET_KEY, None, Some(at(SIGNED_AT + seconds)), "t");
        assert!(fresh(&expiring(301), now));
        assert!(!fresh(&expiring(300), now));
        assert!(!fresh(&expiring(0), now));
        assert!(!fresh(&Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "t"), now));
    }

    /// Cached credentials and the configured region sign a token on a blocking-pool thread (where
    /// librdkafka's refresh runs), the lookup itself on the runtime.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_chain_signs_from_a_polling_thread() {
        let auth = MskIamAuth::new(Some("ap-southeast-2".to_string()));
        // Seeded as the chain would (the process environment is every test's: not set here).
        *auth.cached.lock().unwrap() = Some(Credentials::new(
            ACCESS_KEY,
            SECRET_KEY,
            None,
            Some(SystemTime::now() + Duration::from_secs(3600)),
            "t",
        ));
        let token = tokio::task::spawn_blocking(move || auth.token()).await.unwrap().unwrap();
        let url = decode(&token.token);
        assert!(
            url.starts_with("https://kafka.ap-southeast-2.amazonaws.com/?Action=kafka-cluster%3AConnect&"),
            "{url}"
        );
        assert!(url.contains("%2Fap-southeast-2%2Fkafka-cluster%2Faws4_request"), "{url}");
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        assert!((token.expires_ms - now_ms - 900_000).abs() < 5_000, "{} vs {now_ms}", token.expires_ms);
    }

    /// The reference signer itself (aws-msk-iam-sasl-signer-python, tests/services/kafka/msk_token.py),
    /// run now with fixed credentials and the same frozen time as spillway's signer: the same
    /// token byte for byte (with its user agent), with and without a session token, in two regions.
    #[test]
    #[ignore = "needs services: scripts/test.sh"]
    fn the_token_is_the_one_the_reference_signer_makes_now() {
        let python = std::env::var("SPILLWAY_TEST_PYTHON").expect("SPILLWAY_TEST_PYTHON (scripts/services.sh env)");
        let path = std::env::var("SPILLWAY_TEST_KAFKA_PYTHONPATH")
            .expect("SPILLWAY_TEST_KAFKA_PYTHONPATH (scripts/services.sh env)");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/services/kafka/msk_token.py");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        for (region, session_token) in [("us-east-1", Some(SESSION_TOKEN)), ("eu-central-1", None)] {
            let output = std::process::Command::new(&python)
                .env("PYTHONPATH", &path)
                .arg(script)
                .args([region, ACCESS_KEY, SECRET_KEY, session_token.unwrap_or("-"), &now.to_string()])
                .output()
                .expect("run msk_token.py");
            assert!(output.status.success(), "msk_token.py: {}", String::from_utf8_lossy(&output.stderr));
            let reference: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
            let user_agent = reference["user_agent"].as_str().expect("user_agent");
            assert!(user_agent.starts_with("aws-msk-iam-sasl-signer-python/"), "{user_agent}");
            let credentials = Credentials::new(ACCESS_KEY, SECRET_KEY, session_token.map(str::to_string), None, "test");
            let ours = presigned_token(&credentials, region, at(now), user_agent).unwrap();
            let theirs = reference["token"].as_str().expect("token");
            // Compared decoded first: a difference then shows which parameter differs.
            assert_eq!(decode(&ours.token), decode(theirs), "{region}");
            assert_eq!(ours.token, theirs);
            assert_eq!(Some(ours.expires_ms), reference["expiry_ms"].as_i64());
        }
    }
}
