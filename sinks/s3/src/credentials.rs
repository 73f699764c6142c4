//! Credentials from the standard AWS chain when the YAML names no keys: environment, shared
//! config/credentials files and profiles (`AWS_PROFILE`), web identity, ECS and instance
//! metadata, resolved by `aws-config` as every AWS SDK does, cached until shortly before expiry.
//! object_store's own environment lookup covers only part of that chain.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_credential_types::provider::ProvideCredentials;
use object_store::CredentialProvider;
use object_store::aws::AwsCredential;
use tokio::sync::{Mutex, OnceCell};

/// Refresh temporary credentials this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub(crate) struct AwsChainCredentials {
    chain: OnceCell<aws_config::default_provider::credentials::DefaultCredentialsChain>,
    cached: Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

impl AwsChainCredentials {
    fn still_fresh(expiry: Option<SystemTime>) -> bool {
        expiry.is_none_or(|expiry| SystemTime::now() + REFRESH_BEFORE_EXPIRY < expiry)
    }
}

#[async_trait]
impl CredentialProvider for AwsChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, expiry)) = cached.as_ref()
            && Self::still_fresh(*expiry)
        {
            return Ok(credential.clone());
        }
        let chain = self
            .chain
            .get_or_init(|| async {
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder().build().await
            })
            .await;
        let resolved = chain.provide_credentials().await.map_err(|error| object_store::Error::Generic {
            store: "S3",
            source: format!("no AWS credentials: set access_key_id / secret_access_key, or configure the standard AWS chain (environment, profile, instance role): {error}").into(),
        })?;
        let credential = Arc::new(AwsCredential {
            key_id: resolved.access_key_id().to_string(),
            secret_key: resolved.secret_access_key().to_string(),
            token: resolved.session_token().map(str::to_string),
        });
        *cached = Some((credential.clone(), resolved.expiry()));
        Ok(credential)
    }
}
