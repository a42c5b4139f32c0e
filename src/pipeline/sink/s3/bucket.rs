//! The checked client of one bucket, the requests on single objects, and
//! how an SDK error reads.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail};
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::head_object::builders::HeadObjectFluentBuilder;
use aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder;
use aws_sdk_s3::primitives::ByteStream;

use super::{DEFAULT_ATTEMPTS, S3Spec, b64, part_attempt_timeout, verify};

/// An S3 client, checked: credentials found, region known, bucket reachable.
pub struct Bucket {
    pub(super) client: Client,
    pub(super) spec: S3Spec,
    pub(super) region: String,
}

impl Bucket {
    /// Loads the standard AWS chain (environment, profiles, SSO, web
    /// identity, instance metadata) and checks the bucket, before anything
    /// happens on the target.
    pub async fn connect(spec: &S3Spec) -> anyhow::Result<Bucket> {
        let attempts = std::env::var("AWS_MAX_ATTEMPTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_ATTEMPTS)
            .max(1);
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(backoff(
            attempts,
            Duration::from_millis(500),
            Duration::from_secs(8),
        ));
        if let Some(profile) = &spec.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &spec.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &spec.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        let region = sdk.region().map(|r| r.to_string()).ok_or_else(|| {
            anyhow!("no AWS region: give --region, or set AWS_REGION or a region in the profile")
        })?;
        let credentials = sdk.credentials_provider().ok_or_else(|| {
            anyhow!("no AWS credentials provider; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, --aws-profile, SSO or an instance role")
        })?;
        {
            use aws_sdk_s3::config::ProvideCredentials;
            credentials.provide_credentials().await.map_err(|e| {
                let why = credentials_problem(&e, spec.profile.is_some());
                match &spec.profile {
                    Some(profile) => anyhow!(
                        "no AWS credentials from --aws-profile {profile:?} ({why}); check the profile's name in ~/.aws/config and ~/.aws/credentials (or AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE)"
                    ),
                    None => anyhow!(
                        "no AWS credentials found ({why}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, --aws-profile, SSO or an instance role"
                    ),
                }
            })?;
        }
        let config = aws_sdk_s3::config::Builder::from(&sdk)
            // S3-compatible servers rarely have per-bucket DNS names.
            .force_path_style(spec.endpoint_url.is_some())
            .build();
        let client = Client::from_conf(config);
        match client.head_bucket().bucket(&spec.bucket).send().await {
            Ok(_) => {}
            Err(e) => match status(&e) {
                Some(404) => bail!(
                    "S3 bucket {:?} does not exist (region {region}{}); create it or check --bucket",
                    spec.bucket,
                    endpoint_note(spec)
                ),
                Some(301 | 400) if spec.region.is_none() => bail!(
                    "S3 bucket {:?} is not in region {region}: give --region",
                    spec.bucket
                ),
                Some(401 | 403) => bail!(
                    "S3 refused access to bucket {:?} (HTTP {}): check the credentials (AWS_PROFILE, --aws-profile, AWS_ACCESS_KEY_ID) and the bucket policy",
                    spec.bucket,
                    status(&e).unwrap_or_default()
                ),
                _ => bail!(
                    "cannot reach S3 bucket {:?}{}: {}",
                    spec.bucket,
                    endpoint_note(spec),
                    describe(&e)
                ),
            },
        }
        Ok(Bucket {
            client,
            spec: spec.clone(),
            region,
        })
    }

    pub fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.spec.bucket)
    }

    /// HEAD of `key`; the caller adds what it wants reported.
    pub(super) fn head_object(&self, key: &str) -> HeadObjectFluentBuilder {
        self.client.head_object().bucket(&self.spec.bucket).key(key)
    }

    /// Fails if `key` exists and `--overwrite` was not given.
    pub async fn check_absent(&self, key: &str) -> anyhow::Result<()> {
        if self.spec.overwrite {
            return Ok(());
        }
        let found = missing_ok(self.head_object(key).send().await)
            .map_sdk_err(format!("cannot check whether {} exists", self.uri(key)))?;
        match found {
            Some(_) => Err(self.taken(key)),
            None => Ok(()),
        }
    }

    /// Fails if any object's key starts with `prefix` and `--overwrite` was
    /// not given (the material directory of an earlier capture, say).
    pub async fn check_prefix_free(&self, prefix: &str) -> anyhow::Result<()> {
        if self.spec.overwrite {
            return Ok(());
        }
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.spec.bucket)
            .prefix(prefix)
            .max_keys(1)
            .send()
            .await
            .map_sdk_err(format!(
                "cannot check whether {} holds objects",
                self.uri(prefix)
            ))?;
        match out.contents().first().and_then(|o| o.key()) {
            Some(key) => Err(self.taken(key)),
            None => Ok(()),
        }
    }

    /// Why a capture does not go to a key that holds an object.
    fn taken(&self, key: &str) -> anyhow::Error {
        anyhow!(
            "{} already exists; choose another --filename or --prefix, or give --overwrite",
            self.uri(key)
        )
    }

    /// A one-request upload of `body` to `key` with the spec's
    /// no-overwrite rule and server-side encryption; the caller adds the
    /// checksum.
    fn put_request(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        metadata: HashMap<String, String>,
    ) -> PutObjectFluentBuilder {
        let (sse, kms_key_id) = self.spec.sse_headers();
        self.client
            .put_object()
            .bucket(&self.spec.bucket)
            .key(key)
            .content_type(content_type)
            .set_metadata(Some(metadata))
            .body(ByteStream::from(body))
            .set_if_none_match(self.spec.if_none_match())
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key_id)
    }

    /// Uploads a small object (the manifest) in one request.
    pub async fn put_small(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        metadata: HashMap<String, String>,
    ) -> anyhow::Result<()> {
        let crc = crc32c::crc32c(&body);
        self.put_request(key, body, content_type, metadata)
            .checksum_crc32_c(b64(&crc.to_be_bytes()))
            .send()
            .await
            .map_sdk_err(format!("cannot upload {}", self.uri(key)))?;
        Ok(())
    }

    /// Uploads a small object in one request with its SHA-256, which S3
    /// checks against the body on arrival (a mismatch stores nothing), then
    /// checks size and SHA-256 as S3 reports them (`verify::settle`: on a
    /// disagreement the object is kept, tagged and read back).
    /// `sha256` is hex, as in the manifest.
    pub async fn put_sha256(
        &self,
        key: &str,
        body: Vec<u8>,
        sha256: &str,
        content_type: &str,
        metadata: HashMap<String, String>,
    ) -> anyhow::Result<PutChecked> {
        let raw = hex::decode(sha256)
            .ok()
            .filter(|r| r.len() == 32)
            .ok_or_else(|| anyhow!("{sha256:?} is not a SHA-256"))?;
        let sha_b64 = b64(&raw);
        let len = body.len() as u64;
        let out = self
            .put_request(key, body, content_type, metadata)
            .checksum_sha256(&sha_b64)
            .customize()
            // As for a part: a request that never gets an answer is retried.
            .config_override(attempt_timeout(len))
            .send()
            .await
            .map_sdk_err(format!("cannot upload {}", self.uri(key)))?;
        let reply = verify::Reply {
            checksum: out.checksum_sha256().map(str::to_string),
            version: out.version_id().map(str::to_string),
            ..Default::default()
        };
        let sent = verify::Sent { bytes: len, sha256 };
        let (head, verification) =
            verify::object(self, key, &sent, verify::Expect::Sha256(&sha_b64), reply).await;
        if !verification.verified {
            bail!(
                "{} does not match what was sent: {}",
                self.uri(key),
                verification.summary()
            );
        }
        let clean = (verification.checks.iter()).all(|c| c.outcome == verify::Outcome::Passed);
        Ok(PutChecked {
            checksum_sha256: head.reported,
            version_id: head.version,
            verification: (!clean).then_some(verification),
        })
    }
}

/// What `put_sha256` stored: the SHA-256 as S3 reports it (base64), when it does.
#[derive(Clone, Debug)]
pub struct PutChecked {
    pub checksum_sha256: Option<String>,
    pub version_id: Option<String>,
    /// How it was verified, when a check other than S3's SHA-256 had to.
    pub verification: Option<verify::Verification>,
}

/// The SDK's standard retries: transient failures (5xx, throttling,
/// timeouts, lost connections) again after a growing wait.
pub(super) fn backoff(attempts: u32, first_wait: Duration, longest_wait: Duration) -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(attempts)
        .with_initial_backoff(first_wait)
        .with_max_backoff(longest_wait)
}

/// A request override that cuts off an attempt sending `len` bytes after
/// `part_attempt_timeout`, so a server that takes the body and never
/// answers gets it again from the retry instead of holding the request forever.
pub(super) fn attempt_timeout(len: u64) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default().timeout_config(
        TimeoutConfig::builder()
            .operation_attempt_timeout(part_attempt_timeout(len))
            .build(),
    )
}

fn endpoint_note(spec: &S3Spec) -> String {
    spec.endpoint_url
        .as_deref()
        .map(|u| format!(" at {u}"))
        .unwrap_or_default()
}

/// Why the credential chain found nothing, on one line. The chain's error
/// lists every provider it tried, a line each; with a profile named, the
/// profile's line is the one that matters.
fn credentials_problem(e: &(dyn std::error::Error + 'static), profile_named: bool) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.iter().find(|l| l.starts_with("Profile:")) {
        Some(line) if profile_named => line.trim_start_matches("Profile:").trim().to_string(),
        _ => lines.join("; "),
    }
}

pub(super) fn status<E, R>(e: &SdkError<E, R>) -> Option<u16>
where
    R: HttpStatus,
{
    e.raw_response().map(|r| r.status_code())
}

/// A request's result with "not found" (HTTP 404) as `None`: for the
/// requests where an absent object or upload is what was hoped for.
pub(super) fn missing_ok<T, E, R>(
    result: Result<T, SdkError<E, R>>,
) -> Result<Option<T>, SdkError<E, R>>
where
    R: HttpStatus,
{
    match result {
        Ok(out) => Ok(Some(out)),
        Err(e) if status(&e) == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Lets `status` read the HTTP status of the SDK's response type.
pub trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// One line: the service's code and message when S3 answered, otherwise why
/// it could not be reached, with the error chain.
pub fn describe<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: HttpStatus + std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let status = service.raw().status_code();
            match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message} (HTTP {status})"),
                (Some(code), None) => format!("{code} (HTTP {status})"),
                _ => format!("HTTP {status}"),
            }
        }
        SdkError::DispatchFailure(_) => {
            format!("cannot reach the S3 endpoint: {}", DisplayErrorContext(e))
        }
        SdkError::TimeoutError(_) => "S3 did not answer in time".to_string(),
        _ => DisplayErrorContext(e).to_string(),
    }
    .replace('\n', " ")
}

/// The one form of a failed request's error: `WHAT: ` and `describe`.
pub(super) trait MapSdkErr<T> {
    fn map_sdk_err(self, what: String) -> anyhow::Result<T>;
}

impl<T, E, R> MapSdkErr<T> for Result<T, SdkError<E, R>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: HttpStatus + std::fmt::Debug,
{
    fn map_sdk_err(self, what: String) -> anyhow::Result<T> {
        self.map_err(|e| anyhow!("{what}: {}", describe(&e)))
    }
}
