//! Redshift's load protocol, as Firehose drives it (reference §8): the text of a manifest that
//! lists a batch's staged S3 objects, and the `COPY … FROM '<manifest>' … MANIFEST` statement
//! with the user's copy options and a credentials clause. Pure: no I/O.
//!
//! The sink that stages, writes these and runs the statement is [`crate::redshift_sink`].
//!
//! Must not: talk to S3 or the database.

use serde::Serialize;
use spillway_sink_api::Secret;

use crate::schema::quote_identifier;

/// How Redshift reads the staged objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyCredentials {
    /// `aws_iam_role=<arn>` (what Firehose uses: the role attached to the cluster).
    IamRole(String),
    /// `aws_access_key_id=…;aws_secret_access_key=…[;token=…]`.
    Keys { access_key_id: Secret, secret_access_key: Secret, session_token: Option<Secret> },
}

#[derive(Serialize)]
struct Manifest<'a> {
    entries: Vec<ManifestEntry<'a>>,
}

#[derive(Serialize)]
struct ManifestEntry<'a> {
    url: &'a str,
    mandatory: bool,
}

/// A Redshift manifest listing `urls` (`s3://bucket/key`), each mandatory: a missing object
/// fails the COPY instead of loading a partial batch.
pub fn manifest(urls: &[String]) -> String {
    let entries = urls.iter().map(|url| ManifestEntry { url, mandatory: true }).collect();
    // Serializing strings and booleans cannot fail.
    serde_json::to_string(&Manifest { entries }).unwrap_or_default()
}

/// `'…'` with quotes doubled, as SQL string literals need.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `COPY <table> (<columns>) FROM '<manifest url>' CREDENTIALS '…' MANIFEST <copy_options>`.
/// `table` is used as written (it may be schema-qualified); columns are quoted.
pub fn copy_statement(
    table: &str,
    columns: Option<&[String]>,
    manifest_url: &str,
    credentials: &CopyCredentials,
    copy_options: Option<&str>,
) -> String {
    let mut statement = format!("COPY {table}");
    if let Some(columns) = columns.filter(|columns| !columns.is_empty()) {
        let quoted: Vec<String> = columns.iter().map(|column| quote_identifier(column)).collect();
        statement.push_str(&format!(" ({})", quoted.join(", ")));
    }
    let credentials = match credentials {
        CopyCredentials::IamRole(arn) => format!("aws_iam_role={arn}"),
        CopyCredentials::Keys { access_key_id, secret_access_key, session_token } => {
            let mut keys = format!(
                "aws_access_key_id={};aws_secret_access_key={}",
                access_key_id.expose(),
                secret_access_key.expose()
            );
            if let Some(token) = session_token {
                keys.push_str(&format!(";token={}", token.expose()));
            }
            keys
        }
    };
    statement.push_str(&format!(" FROM {} CREDENTIALS {} MANIFEST", literal(manifest_url), literal(&credentials)));
    if let Some(options) = copy_options.map(str::trim).filter(|options| !options.is_empty()) {
        statement.push(' ');
        statement.push_str(options);
    }
    statement
}

/// The part of a staged object's key after the staging prefix (`yyyy/MM/dd/HH/<name>`), its
/// name without the file extension (a manifest is JSON, not gzip).
fn dated_name<'a>(prefix: &str, object_key: &'a str) -> (&'a str, &'a str) {
    let rest = object_key.strip_prefix(prefix).unwrap_or(object_key);
    let (folder, name) = match rest.rfind('/') {
        Some(slash) => (&rest[..=slash], &rest[slash + 1..]),
        None => ("", rest),
    };
    // Names end `-<uuid><extension>`: the extension starts at the first `.` after the last `-`.
    let stem = match name.rfind('-').and_then(|dash| name[dash..].find('.').map(|dot| dash + dot)) {
        Some(dot) => &name[..dot],
        None => name,
    };
    (folder, stem)
}

/// Where a batch's manifest is written: `<prefix>manifests/yyyy/MM/dd/HH/<object name>`, beside
/// the objects as Firehose lays them out.
pub fn manifest_key(prefix: &str, object_key: &str) -> String {
    let (folder, stem) = dated_name(prefix, object_key);
    format!("{prefix}manifests/{folder}{stem}")
}

/// Where a batch's manifest goes once its retry duration is over (Firehose's
/// `<prefix>errors/manifests/yyyy/MM/dd/HH/<manifest name>`), for a manual `COPY … MANIFEST`.
/// The hour is the batch's own (its oldest record's arrival), so a replay writes the same key.
pub fn error_manifest_key(prefix: &str, object_key: &str) -> String {
    let (folder, stem) = dated_name(prefix, object_key);
    format!("{prefix}errors/manifests/{folder}{stem}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_list_every_object_as_mandatory() {
        let text = manifest(&["s3://b/k1.gz".to_string(), "s3://b/k\"2".to_string()]);
        assert_eq!(
            text,
            r#"{"entries":[{"url":"s3://b/k1.gz","mandatory":true},{"url":"s3://b/k\"2","mandatory":true}]}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["entries"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn copy_statements_carry_columns_credentials_and_options() {
        let role = CopyCredentials::IamRole("arn:aws:iam::123456789012:role/firehose".into());
        let columns = ["id".to_string(), "at".to_string()];
        assert_eq!(
            copy_statement(
                "public.events",
                Some(&columns),
                "s3://bucket/manifests/2026/11/26/00/s-1",
                &role,
                Some("JSON 'auto' GZIP")
            ),
            "COPY public.events (\"id\", \"at\") FROM 's3://bucket/manifests/2026/11/26/00/s-1' \
             CREDENTIALS 'aws_iam_role=arn:aws:iam::123456789012:role/firehose' MANIFEST JSON 'auto' GZIP"
        );
        let keys = CopyCredentials::Keys {
            access_key_id: Secret::new("AKID"),
            secret_access_key: Secret::new("se'cret"),
            session_token: Some(Secret::new("tok")),
        };
        assert_eq!(
            copy_statement("t", None, "s3://b/m", &keys, None),
            "COPY t FROM 's3://b/m' CREDENTIALS 'aws_access_key_id=AKID;aws_secret_access_key=se''cret;token=tok' MANIFEST"
        );
    }

    #[test]
    fn manifests_sit_beside_the_objects_and_failed_ones_under_errors_manifests() {
        let object = "staging/2026/11/26/00/my.stream-1-2026-11-26-00-00-00-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0.gz";
        assert_eq!(
            manifest_key("staging/", object),
            "staging/manifests/2026/11/26/00/my.stream-1-2026-11-26-00-00-00-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
        );
        assert_eq!(
            error_manifest_key("staging/", object),
            "staging/errors/manifests/2026/11/26/00/my.stream-1-2026-11-26-00-00-00-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
        );
        // No prefix, no extension.
        let bare = "2026/11/26/00/s-1-2026-11-26-00-00-00-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(manifest_key("", bare), format!("manifests/{bare}"));
        assert_eq!(error_manifest_key("", bare), format!("errors/manifests/{bare}"));
    }
}
