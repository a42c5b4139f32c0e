//! The S3 sink: the image goes from the SSH channel into an S3 multipart
//! upload part by part while it arrives, so a jump box with little disk can
//! capture a large machine.
//!
//! Why it is built this way:
//! - A memory stream cannot be replayed, so a part stays in memory until S3
//!   acknowledged it. Parts in flight are limited by a semaphore, and the
//!   writer thread blocks (and with it the SSH window, and LiME) while all are
//!   busy: memory is `part_size x (concurrency + 1)` (+ the fixed queues of
//!   the receive path), whatever the image size.
//! - Every part carries its CRC32C, which S3 checks; after completion the
//!   object's size and CRC32C are compared with what was sent (`verify`,
//!   which never deletes the object). The image's SHA-256 is known only
//!   after the last byte, when the object's metadata can no longer change
//!   without a server-side copy; it goes into the manifest and into the
//!   manifest object's metadata.
//! - An upload is completed only after the caller proved the stream whole
//!   (LiME headers, byte count, ranges). Anything else, Ctrl-C included,
//!   aborts it: no orphaned parts keep billing, no object looks complete.
//! - Nothing is overwritten without `--overwrite`: the keys are checked before
//!   the capture starts, and completion carries `If-None-Match: *`.

pub mod material;
pub mod verify;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart, ServerSideEncryption,
};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;

pub const MIB: u64 = 1 << 20;
/// Smallest part mshot uses (S3 allows 5 MiB; 8 MiB is the AWS CLI's default).
pub const MIN_PART_SIZE: u64 = 8 * MIB;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's most parts per upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's largest object.
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;
/// Attempts per request (the first try included) unless AWS_MAX_ATTEMPTS says otherwise.
const DEFAULT_ATTEMPTS: u32 = 6;
/// Attempts for the abort: it is what keeps orphaned parts from billing, so it
/// outlasts a short outage of the server.
const ABORT_ATTEMPTS: u32 = 10;

/// Server-side encryption requested with `--sse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sse {
    /// SSE-S3 (`AES256`).
    S3,
    /// SSE-KMS (`aws:kms`), optionally with a key id or ARN.
    Kms(Option<String>),
}

/// Where and how to upload, validated by `config`.
#[derive(Clone, Debug)]
pub struct S3Spec {
    pub bucket: String,
    /// Key prefix without leading or trailing slashes; may be empty.
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    pub sse: Option<Sse>,
    pub concurrency: usize,
    /// The smallest part size; grows with the image (see `part_size_for`).
    pub min_part_size: u64,
    pub overwrite: bool,
}

/// An upload as asked for, before validation: from the flags or from a fleet
/// file's `bucket:`. One validation serves both.
#[derive(Clone, Debug, Default)]
pub struct BucketRequest {
    pub name: String,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// Parts in flight (default 4).
    pub concurrency: Option<u64>,
    /// Smallest part size in MiB (default 8).
    pub part_size_mib: Option<u64>,
    pub overwrite: bool,
}

impl BucketRequest {
    /// Checks the names and sizes.
    pub fn validate(&self) -> anyhow::Result<S3Spec> {
        let bucket = &self.name;
        if bucket.is_empty() || bucket.contains('/') || bucket.starts_with("s3:") {
            bail!(
                "bucket must be a plain bucket name, without s3:// or a slash: {bucket:?}; put a path in the prefix"
            );
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("the endpoint URL must start with http:// or https://: {url:?}");
        }
        let prefix = self
            .prefix
            .as_deref()
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        if prefix.split('/').any(|p| p == ".." || p == ".") {
            bail!("the prefix must not contain . or .. segments: {prefix:?}");
        }
        let concurrency = self.concurrency.unwrap_or(4);
        if !(1..=64).contains(&concurrency) {
            bail!("S3 concurrency must be 1 to 64 parts in flight, not {concurrency}");
        }
        let part_size_mib = self.part_size_mib.unwrap_or(8);
        if !(8..=5120).contains(&part_size_mib) {
            bail!("the S3 part size must be 8 to 5120 MiB, not {part_size_mib}");
        }
        Ok(S3Spec {
            bucket: bucket.clone(),
            prefix,
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            profile: self.profile.clone(),
            sse: parse_sse(self.sse.as_deref(), self.sse_kms_key_id.as_deref())?,
            concurrency: concurrency as usize,
            min_part_size: part_size_mib * MIB,
            overwrite: self.overwrite,
        })
    }
}

impl S3Spec {
    /// `PREFIX/HOST/NAME`, the image's key.
    pub fn image_key(&self, host: &str, name: &str) -> String {
        let host = crate::util::sanitize::file_name_part(host);
        if self.prefix.is_empty() {
            format!("{host}/{name}")
        } else {
            format!("{}/{host}/{name}", self.prefix)
        }
    }
}

/// Host names may hold `:` (IPv6) or `%` (scope): keep keys plain.
/// Validates `--sse` and `--sse-kms-key-id`.
pub fn parse_sse(sse: Option<&str>, kms_key_id: Option<&str>) -> anyhow::Result<Option<Sse>> {
    match (sse, kms_key_id) {
        (None, None) => Ok(None),
        (Some("AES256"), None) => Ok(Some(Sse::S3)),
        (Some("aws:kms"), key) => Ok(Some(Sse::Kms(key.map(str::to_string)))),
        (Some("AES256"), Some(_)) => {
            bail!("--sse-kms-key-id goes with --sse aws:kms, not --sse AES256")
        }
        (None, Some(_)) => bail!("--sse-kms-key-id needs --sse aws:kms"),
        (Some(other), _) => bail!("--sse {other:?}: expected AES256 or aws:kms"),
    }
}

/// The part size for an image of `expected` bytes: at least `min`, and large
/// enough that the image fits in 10,000 parts. Whole MiB, all parts equal
/// but the last (some S3-compatible stores insist).
pub fn part_size_for(expected: Option<u64>, min: u64) -> anyhow::Result<u64> {
    let min = min.max(MIN_PART_SIZE);
    let Some(expected) = expected else {
        return Ok(min);
    };
    if expected > MAX_OBJECT_SIZE {
        bail!(
            "the image will be {expected} bytes, more than S3's largest object (5 TiB); capture to --output-dir instead"
        );
    }
    let needed = expected.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    let size = min.max(needed);
    if size > MAX_PART_SIZE {
        bail!("--s3-part-size is larger than S3's largest part (5 GiB)");
    }
    Ok(size)
}

/// The largest image `part_size` allows.
pub fn max_image_for(part_size: u64) -> u64 {
    (part_size * MAX_PARTS).min(MAX_OBJECT_SIZE)
}

/// An S3 client, checked: credentials found, region known, bucket reachable.
pub struct Bucket {
    client: Client,
    spec: S3Spec,
    region: String,
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
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(
            RetryConfig::standard()
                .with_max_attempts(attempts)
                .with_initial_backoff(Duration::from_millis(500))
                .with_max_backoff(Duration::from_secs(8)),
        );
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

    /// Fails if `key` exists and `--overwrite` was not given.
    pub async fn check_absent(&self, key: &str) -> anyhow::Result<()> {
        if self.spec.overwrite {
            return Ok(());
        }
        match self
            .client
            .head_object()
            .bucket(&self.spec.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => bail!(
                "s3://{}/{key} already exists; choose another --filename or --prefix, or give --overwrite",
                self.spec.bucket
            ),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => bail!(
                "cannot check whether s3://{}/{key} exists: {}",
                self.spec.bucket,
                describe(&e)
            ),
        }
    }

    /// Starts a multipart upload of an image of about `expected` bytes.
    pub async fn start_upload(
        self: &Arc<Self>,
        key: &str,
        expected: Option<u64>,
        metadata: HashMap<String, String>,
        acked: Arc<AtomicU64>,
    ) -> anyhow::Result<Arc<Upload>> {
        let part_size = part_size_for(expected, self.spec.min_part_size)?;
        self.check_absent(key).await?;
        let mut request = self
            .client
            .create_multipart_upload()
            .bucket(&self.spec.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .set_metadata(Some(metadata));
        request = match &self.spec.sse {
            None => request,
            Some(Sse::S3) => request.server_side_encryption(ServerSideEncryption::Aes256),
            Some(Sse::Kms(key_id)) => request
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .set_ssekms_key_id(key_id.clone()),
        };
        // A full-object CRC32C is what mshot can compare most plainly; a
        // server that refuses the type gets the request without it.
        let out = match request
            .clone()
            .checksum_type(ChecksumType::FullObject)
            .send()
            .await
        {
            Err(e) if matches!(status(&e), Some(400 | 501)) => {
                tracing::debug!(
                    "S3 refused ChecksumType FULL_OBJECT ({}); asking without",
                    describe(&e)
                );
                request.send().await
            }
            other => other,
        };
        let out = out.map_err(|e| {
            anyhow!(
                "cannot start the S3 upload of s3://{}/{key}: {}",
                self.spec.bucket,
                describe(&e)
            )
        })?;
        let upload_id = out
            .upload_id()
            .ok_or_else(|| anyhow!("S3 started an upload of {key} but sent no upload id"))?
            .to_string();
        tracing::info!(
            "S3: uploading to s3://{}/{key} in parts of {} MiB ({} in flight; largest image {} GiB)",
            self.spec.bucket,
            part_size / MIB,
            self.spec.concurrency,
            max_image_for(part_size) >> 30
        );
        Ok(Arc::new(Upload {
            bucket: self.clone(),
            key: key.to_string(),
            upload_id,
            part_size,
            slots: Arc::new(Semaphore::new(self.spec.concurrency.max(1))),
            parts: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            state: Mutex::new(UploadState::Open),
            completed: Mutex::new(None),
            acked,
            spare: Mutex::new(Vec::new()),
        }))
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
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.spec.bucket)
            .key(key)
            .content_type(content_type)
            .set_metadata(Some(metadata))
            .body(ByteStream::from(body));
        if !self.spec.overwrite {
            request = request.if_none_match("*");
        }
        match &self.spec.sse {
            None => request,
            Some(Sse::S3) => request.server_side_encryption(ServerSideEncryption::Aes256),
            Some(Sse::Kms(key_id)) => request
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .set_ssekms_key_id(key_id.clone()),
        }
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
        let request = self
            .put_request(key, body, content_type, metadata)
            .checksum_crc32_c(b64(&crc.to_be_bytes()));
        request.send().await.map_err(|e| {
            anyhow!(
                "cannot upload s3://{}/{key}: {}",
                self.spec.bucket,
                describe(&e)
            )
        })?;
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
            .config_override(
                aws_sdk_s3::config::Builder::default().timeout_config(
                    TimeoutConfig::builder()
                        .operation_attempt_timeout(part_attempt_timeout(len))
                        .build(),
                ),
            )
            .send()
            .await
            .map_err(|e| anyhow!("cannot upload {}: {}", self.uri(key), describe(&e)))?;
        let reply = verify::Reply {
            checksum: out.checksum_sha256().map(str::to_string),
            version: out.version_id().map(str::to_string),
            ..Default::default()
        };
        let head = verify::head(self, key, len, verify::Expect::Sha256(&sha_b64), reply).await;
        let version = head.version;
        let sent = verify::Sent { bytes: len, sha256 };
        let verification = verify::settle(self, key, version.as_deref(), &sent, head.checks).await;
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
            version_id: version,
            verification: (!clean).then_some(verification),
        })
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
            .map_err(|e| {
                anyhow!(
                    "cannot check whether {} holds objects: {}",
                    self.uri(prefix),
                    describe(&e)
                )
            })?;
        if let Some(key) = out.contents().first().and_then(|o| o.key()) {
            bail!(
                "{} already exists; choose another --filename or --prefix, or give --overwrite",
                self.uri(key)
            );
        }
        Ok(())
    }

    pub fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.spec.bucket)
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

/// One capture's place in the bucket: the checked client, the image's and
/// the manifest's keys, and the upload once started. Owned by the capture,
/// which aborts an unfinished upload on every path.
pub struct Destination {
    pub bucket: Arc<Bucket>,
    pub image_key: String,
    pub manifest_key: String,
    /// `PREFIX/HOST/NAME.material/`: the capture's profile material, beside
    /// the image as `NAME.material/` is on disk.
    pub material_prefix: String,
    upload: Option<Arc<Upload>>,
    material: Option<crate::pipeline::sink::s3::material::MaterialUpload>,
}

impl Destination {
    /// Connects and checks that neither key exists (unless `--overwrite`).
    pub async fn prepare(spec: &S3Spec, host: &str, image_name: &str) -> anyhow::Result<Self> {
        let bucket = Arc::new(Bucket::connect(spec).await?);
        let image_key = spec.image_key(host, image_name);
        let manifest_key = crate::record::manifest_path_for(std::path::Path::new(&image_key))
            .to_string_lossy()
            .into_owned();
        let material_prefix = format!(
            "{}/",
            crate::target::material::dir_for(std::path::Path::new(&image_key)).to_string_lossy()
        );
        bucket.check_absent(&image_key).await?;
        bucket.check_absent(&manifest_key).await?;
        bucket.check_prefix_free(&material_prefix).await?;
        Ok(Destination {
            bucket,
            image_key,
            manifest_key,
            material_prefix,
            upload: None,
            material: None,
        })
    }

    pub async fn start(
        &mut self,
        expected: Option<u64>,
        mut metadata: HashMap<String, String>,
        acked: Arc<AtomicU64>,
    ) -> anyhow::Result<Arc<Upload>> {
        // A second start (LiME refused, kcore instead) replaces the first
        // upload: abort it, so it leaves no parts behind.
        if let Some(previous) = self.upload.take() {
            previous.abort().await?;
        }
        metadata.insert("mshot-manifest".into(), self.manifest_key.clone());
        let metadata = metadata
            .into_iter()
            .map(|(k, v)| (k, ascii_value(&v)))
            .collect();
        let upload = self
            .bucket
            .start_upload(&self.image_key, expected, metadata, acked)
            .await?;
        self.upload = Some(upload.clone());
        Ok(upload)
    }

    pub fn completed(&self) -> bool {
        self.upload.as_ref().is_some_and(|u| u.is_completed())
    }

    /// Aborts the upload unless it completed. `Ok(true)` when it aborted one.
    pub async fn abort_unfinished(&self) -> anyhow::Result<bool> {
        match &self.upload {
            Some(upload) => upload.abort().await,
            None => Ok(false),
        }
    }

    pub fn record(&self) -> Option<S3Record> {
        self.upload.as_ref().map(|u| S3Record {
            material: self.material.clone(),
            ..u.record(&self.manifest_key)
        })
    }

    /// Uploads the capture's profile material beside the completed image
    /// (never before: a material directory in the bucket belongs to an
    /// image there). Failures are recorded, not returned: see `s3::material`.
    pub async fn put_material(
        &mut self,
        files: Vec<crate::pipeline::sink::s3::material::Body>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> &crate::pipeline::sink::s3::material::MaterialUpload {
        let record = crate::pipeline::sink::s3::material::upload(
            &self.bucket,
            &self.material_prefix,
            &self.image_key,
            files,
            cancel,
        )
        .await;
        self.material.insert(record)
    }

    /// Uploads the manifest beside the completed image, with the image's
    /// SHA-256 in its metadata too.
    pub async fn put_manifest(&self, json: Vec<u8>, image_sha256: &str) -> anyhow::Result<()> {
        let metadata = HashMap::from([
            ("mshot-image-key".to_string(), self.image_key.clone()),
            ("mshot-image-sha256".to_string(), image_sha256.to_string()),
        ]);
        self.bucket
            .put_small(&self.manifest_key, json, "application/json", metadata)
            .await
    }
}

/// S3 metadata travels in HTTP headers: printable ASCII only.
fn ascii_value(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn endpoint_note(spec: &S3Spec) -> String {
    spec.endpoint_url
        .as_deref()
        .map(|u| format!(" at {u}"))
        .unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UploadState {
    Open,
    Completed,
    Aborted,
}

/// Why a part failed: the first failure stops the stream.
#[derive(Clone, Debug)]
pub struct PartFailure {
    pub part: i32,
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

impl std::fmt::Display for PartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "S3 upload of part {} (bytes {}-{}) failed: {}",
            self.part,
            self.offset,
            self.offset + self.len.saturating_sub(1),
            self.reason
        )
    }
}

/// One multipart upload. Shared by the feeder (writer thread), the part
/// tasks and the capture, which aborts it on every path that did not complete it.
pub struct Upload {
    bucket: Arc<Bucket>,
    key: String,
    upload_id: String,
    part_size: u64,
    slots: Arc<Semaphore>,
    parts: Mutex<Vec<DonePart>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    failure: Mutex<Option<PartFailure>>,
    state: Mutex<UploadState>,
    completed: Mutex<Option<Completed>>,
    acked: Arc<AtomicU64>,
    /// Part buffers S3 is done with, for the feeder to fill again: the same
    /// `concurrency + 1` buffers serve the whole image, so memory neither
    /// grows with it nor depends on how the allocator treats 8 MiB blocks.
    spare: Mutex<Vec<BytesMut>>,
}

#[derive(Clone, Debug)]
struct DonePart {
    number: i32,
    etag: String,
    crc: u32,
    len: u64,
}

/// What the manifest records of a completed upload.
#[derive(Clone, Debug, serde::Serialize)]
pub struct S3Record {
    pub bucket: String,
    pub key: String,
    pub uri: String,
    pub region: String,
    pub endpoint_url: Option<String>,
    pub upload_id: String,
    pub part_size: u64,
    pub parts: usize,
    pub max_image_bytes: u64,
    /// The object's CRC32C as S3 reports it (full-object, or composite with
    /// `-PARTS`); mshot's own when S3 reports none.
    pub checksum_crc32c: Option<String>,
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub manifest_key: String,
    pub completed: bool,
    pub aborted: bool,
    /// How the completed object was checked (`s3::verify`).
    pub verification: Option<verify::Verification>,
    /// The profile material's objects (and any that failed), once uploaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub material: Option<crate::pipeline::sink::s3::material::MaterialUpload>,
}

impl S3Record {
    /// Why the object is not verified, when it is complete but is not.
    pub fn unverified(&self) -> Option<String> {
        let v = self.verification.as_ref().filter(|v| !v.verified)?;
        Some(format!(
            "{} is kept but not verified: {}",
            self.uri,
            v.summary()
        ))
    }
}

/// What `complete` verified.
#[derive(Clone, Debug)]
pub struct Completed {
    pub etag: Option<String>,
    pub checksum_crc32c: String,
    pub version_id: Option<String>,
    pub verification: verify::Verification,
}

impl Upload {
    pub fn uri(&self) -> String {
        self.bucket.uri(&self.key)
    }

    pub fn failure(&self) -> Option<PartFailure> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn fail(&self, failure: PartFailure) {
        if let Ok(mut slot) = self.failure.lock()
            && slot.is_none()
        {
            tracing::warn!("{failure}");
            *slot = Some(failure);
        }
    }

    fn state(&self) -> UploadState {
        self.state
            .lock()
            .map(|s| *s)
            .unwrap_or(UploadState::Aborted)
    }

    pub fn is_completed(&self) -> bool {
        self.state() == UploadState::Completed
    }

    pub fn record(&self, manifest_key: &str) -> S3Record {
        let completed = self.completed.lock().ok().and_then(|c| c.clone());
        let completed = completed.as_ref();
        let parts = self.parts.lock().map(|p| p.len()).unwrap_or(0);
        S3Record {
            bucket: self.bucket.spec.bucket.clone(),
            key: self.key.clone(),
            uri: self.uri(),
            region: self.bucket.region.clone(),
            endpoint_url: self.bucket.spec.endpoint_url.clone(),
            upload_id: self.upload_id.clone(),
            part_size: self.part_size,
            parts,
            max_image_bytes: max_image_for(self.part_size),
            checksum_crc32c: completed.map(|c| c.checksum_crc32c.clone()),
            etag: completed.and_then(|c| c.etag.clone()),
            version_id: completed.and_then(|c| c.version_id.clone()),
            verification: completed.map(|c| c.verification.clone()),
            manifest_key: manifest_key.to_string(),
            completed: self.state() == UploadState::Completed,
            aborted: self.state() == UploadState::Aborted,
            material: None,
        }
    }

    /// Sends one part on the runtime; holds a slot until S3 answered.
    fn spawn_part(
        self: &Arc<Self>,
        handle: &tokio::runtime::Handle,
        number: i32,
        offset: u64,
        data: Bytes,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let upload = self.clone();
        let task = handle.spawn(async move {
            if upload.slots.is_closed() {
                return; // aborting: send nothing more
            }
            let len = data.len() as u64;
            let crc = crc32c::crc32c(&data);
            let buffer = data.clone();
            let crc_b64 = b64(&crc.to_be_bytes());
            let b = &upload.bucket;
            // The SDK retries transient failures (5xx, throttling, timeouts,
            // lost connections) with backoff; the body is `Bytes`, so every
            // attempt resends the same part.
            let result = b
                .client
                .upload_part()
                .bucket(&b.spec.bucket)
                .key(&upload.key)
                .upload_id(&upload.upload_id)
                .part_number(number)
                .content_length(len as i64)
                .checksum_crc32_c(&crc_b64)
                .body(ByteStream::from(data))
                .customize()
                // A server that accepts a part and never answers (seen with
                // Garage under load) would otherwise hold its slot forever:
                // cut the attempt off, and the retry sends the part again.
                .config_override(
                    aws_sdk_s3::config::Builder::default().timeout_config(
                        TimeoutConfig::builder()
                            .operation_attempt_timeout(part_attempt_timeout(len))
                            .build(),
                    ),
                )
                // CRC32C already guards the bytes (and TLS the way there):
                // signing would hash every byte once more.
                .disable_payload_signing()
                .send()
                .await;
            let failure = |reason: String| PartFailure {
                part: number,
                offset,
                len,
                reason,
            };
            match result {
                Ok(out) => match out.checksum_crc32_c() {
                    Some(echo) if echo != crc_b64 => upload.fail(failure(format!(
                        "S3 acknowledged it with CRC32C {echo}, but mshot sent {crc_b64}"
                    ))),
                    _ => {
                        let etag = out.e_tag().unwrap_or_default().to_string();
                        if let Ok(mut parts) = upload.parts.lock() {
                            parts.push(DonePart {
                                number,
                                etag,
                                crc,
                                len,
                            });
                        }
                        upload.acked.fetch_add(len, Ordering::Relaxed);
                    }
                },
                Err(e) => upload.fail(failure(describe(&e))),
            }
            // The request (and every retry's clone of the body) is gone, so
            // the buffer is ours again; return it before freeing the slot,
            // or the feeder could find no spare and allocate another.
            if let Ok(mut buffer) = buffer.try_into_mut() {
                buffer.clear();
                if let Ok(mut spare) = upload.spare.lock() {
                    spare.push(buffer);
                }
            }
            drop(slot);
        });
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
    }

    async fn wait_for_parts(&self) {
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Completes the upload of an image the caller proved whole (`bytes`
    /// long, `stored_sha256` over exactly those bytes), then checks the
    /// object (`verify`): a disagreement keeps it, marked failed, never
    /// deletes it; the result says whether it was verified.
    pub async fn complete(&self, bytes: u64, stored_sha256: &str) -> anyhow::Result<Completed> {
        self.wait_for_parts().await;
        if let Some(failure) = self.failure() {
            bail!("{failure}");
        }
        let mut parts = self.parts.lock().map(|p| p.clone()).unwrap_or_default();
        parts.sort_by_key(|p| p.number);
        let sent: u64 = parts.iter().map(|p| p.len).sum();
        if sent != bytes
            || parts
                .iter()
                .enumerate()
                .any(|(i, p)| p.number != i as i32 + 1)
        {
            bail!(
                "S3 acknowledged {sent} bytes in {} parts, but the image has {bytes}; not completing the upload",
                parts.len()
            );
        }
        let crc = verify::PartsCrc::of(&parts.iter().map(|p| (p.crc, p.len)).collect::<Vec<_>>());
        let b = &self.bucket;
        let completed_parts = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(&p.etag)
                    .checksum_crc32_c(b64(&p.crc.to_be_bytes()))
                    .build()
            })
            .collect();
        let mut request = b
            .client
            .complete_multipart_upload()
            .bucket(&b.spec.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed_parts))
                    .build(),
            );
        if !b.spec.overwrite {
            // S3 refuses to complete if the key appeared meanwhile.
            request = request.if_none_match("*");
        }
        let out = request.send().await.map_err(|e| {
            anyhow!(
                "S3 refused to complete the upload of {}: {}",
                self.uri(),
                describe(&e)
            )
        })?;
        if let Ok(mut s) = self.state.lock() {
            *s = UploadState::Completed;
        }
        let reply = verify::Reply {
            checksum: out.checksum_crc32_c().map(str::to_string),
            kind: out.checksum_type().cloned(),
            version: out.version_id().map(str::to_string),
            etag: out.e_tag().map(str::to_string),
        };
        let head = verify::head(b, &self.key, bytes, verify::Expect::Crc32c(&crc), reply).await;
        let sent = verify::Sent {
            bytes,
            sha256: stored_sha256,
        };
        let verification =
            verify::settle(b, &self.key, head.version.as_deref(), &sent, head.checks).await;
        let completed = Completed {
            etag: head.etag,
            checksum_crc32c: head.reported.unwrap_or(crc.full_object),
            version_id: head.version,
            verification,
        };
        if let Ok(mut slot) = self.completed.lock() {
            *slot = Some(completed.clone());
        }
        Ok(completed)
    }

    /// Aborts the upload unless it completed: stops the part tasks, then asks
    /// S3 to drop every part, then checks that none is left. Returns an error
    /// naming the upload when parts may still be stored.
    pub async fn abort(&self) -> anyhow::Result<bool> {
        if self.state() != UploadState::Open {
            return Ok(false);
        }
        // No new part starts from here on; a feeder waiting for a slot fails.
        self.slots.close();
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        let b = &self.bucket;
        let retry = aws_sdk_s3::config::Builder::default().retry_config(
            RetryConfig::standard()
                .with_max_attempts(ABORT_ATTEMPTS)
                .with_initial_backoff(Duration::from_secs(1))
                .with_max_backoff(Duration::from_secs(10)),
        );
        let result = b
            .client
            .abort_multipart_upload()
            .bucket(&b.spec.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .customize()
            .config_override(retry)
            .send()
            .await;
        let by_hand = format!(
            "abort it by hand: aws s3api abort-multipart-upload --bucket {} --key {} --upload-id {}",
            b.spec.bucket, self.key, self.upload_id
        );
        match result {
            Ok(_) => {}
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => bail!(
                "cannot abort the S3 multipart upload of {} ({}); {by_hand}",
                self.uri(),
                describe(&e)
            ),
        }
        if let Ok(mut s) = self.state.lock() {
            *s = UploadState::Aborted;
        }
        // S3 may keep a part whose upload was in flight during the abort:
        // check, and abort once more if so.
        let listed = b
            .client
            .list_parts()
            .bucket(&b.spec.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
        if let Ok(out) = listed
            && !out.parts().is_empty()
        {
            let again = b
                .client
                .abort_multipart_upload()
                .bucket(&b.spec.bucket)
                .key(&self.key)
                .upload_id(&self.upload_id)
                .send()
                .await;
            if let Err(e) = again
                && status(&e) != Some(404)
            {
                bail!("parts of {} survived the abort; {by_hand}", self.uri());
            }
        }
        tracing::info!("S3: aborted the upload of {}", self.uri());
        Ok(true)
    }
}

/// The writer thread's side: cuts the stream into parts and hands each to
/// the runtime, blocking while all slots are busy.
pub struct PartFeeder {
    upload: Arc<Upload>,
    handle: tokio::runtime::Handle,
    current: BytesMut,
    next_part: i32,
    offset: u64,
    /// Time the stream spent waiting for a free part slot: how much S3
    /// (rather than the source) held the stream back.
    waited: Duration,
}

impl PartFeeder {
    /// Call from a thread that is not a runtime worker (the writer thread).
    pub fn new(upload: Arc<Upload>, handle: tokio::runtime::Handle) -> PartFeeder {
        let size = upload.part_size as usize;
        PartFeeder {
            upload,
            handle,
            current: BytesMut::with_capacity(size),
            next_part: 1,
            offset: 0,
            waited: Duration::ZERO,
        }
    }

    pub fn upload(&self) -> &Arc<Upload> {
        &self.upload
    }

    pub fn write(&mut self, mut data: &[u8]) -> anyhow::Result<()> {
        let size = self.upload.part_size as usize;
        while !data.is_empty() {
            let take = (size - self.current.len()).min(data.len());
            self.current.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.current.len() == size {
                self.submit()?;
            }
        }
        Ok(())
    }

    /// Sends what is left as the last part.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        if !self.current.is_empty() {
            self.submit()?;
        }
        tracing::debug!(
            "S3: the stream waited {:.1} s in all for free part slots",
            self.waited.as_secs_f64()
        );
        Ok(())
    }

    fn submit(&mut self) -> anyhow::Result<()> {
        if let Some(failure) = self.upload.failure() {
            bail!("{failure}");
        }
        if self.next_part as u64 > MAX_PARTS {
            bail!(
                "the stream is larger than S3's 10,000 parts of {} MiB allow ({} bytes); it is larger than /proc/iomem announced",
                self.upload.part_size / MIB,
                max_image_for(self.upload.part_size)
            );
        }
        let clock = std::time::Instant::now();
        let slot = self
            .handle
            .block_on(self.upload.slots.clone().acquire_owned())
            .context("the S3 upload is being aborted")?;
        self.waited += clock.elapsed();
        if let Some(failure) = self.upload.failure() {
            bail!("{failure}");
        }
        // The next buffer is taken only now that a slot is free: at most
        // `concurrency` parts in flight plus this one.
        let size = self.upload.part_size as usize;
        let next = (self.upload.spare.lock().ok())
            .and_then(|mut spare| spare.pop())
            .unwrap_or_else(|| BytesMut::with_capacity(size));
        let data = std::mem::replace(&mut self.current, next).freeze();
        let len = data.len() as u64;
        self.upload
            .spawn_part(&self.handle, self.next_part, self.offset, data, slot);
        self.next_part += 1;
        self.offset += len;
        Ok(())
    }
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

/// How long one attempt at a part may take: a minute, plus the part at
/// 1 MiB/s (a slow link still gets through; a hung request does not wait forever).
/// `MSHOT_S3_ATTEMPT_TIMEOUT` (seconds) overrides it, for tests and odd links.
fn part_attempt_timeout(len: u64) -> Duration {
    let configured = std::env::var("MSHOT_S3_ATTEMPT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&secs| secs > 0);
    Duration::from_secs(configured.unwrap_or(60 + len / MIB))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn status<E, R>(e: &SdkError<E, R>) -> Option<u16>
where
    R: HttpStatus,
{
    e.raw_response().map(|r| r.status_code())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_grow_to_fit_ten_thousand_parts() {
        assert_eq!(part_size_for(None, 0).unwrap(), 8 * MIB);
        assert_eq!(part_size_for(Some(1 << 30), 0).unwrap(), 8 * MIB);
        assert_eq!(max_image_for(8 * MIB), 80_000 * MIB);
        // 1 TiB needs 105 MiB parts (crates.md).
        let tib = part_size_for(Some(1 << 40), 8 * MIB).unwrap();
        assert_eq!(tib, 105 * MIB);
        assert!(tib * MAX_PARTS >= 1 << 40);
        // Any size up to S3's limit fits; beyond it is refused up front.
        for size in [80_000 * MIB + 1, 3 << 40, MAX_OBJECT_SIZE] {
            let part = part_size_for(Some(size), 0).unwrap();
            assert!(part * MAX_PARTS >= size && part <= MAX_PART_SIZE);
            assert_eq!(part % MIB, 0);
        }
        assert!(part_size_for(Some(MAX_OBJECT_SIZE + 1), 0).is_err());
        assert_eq!(part_size_for(Some(1 << 30), 64 * MIB).unwrap(), 64 * MIB);
        // A part attempt's deadline grows with the part: 1 MiB/s plus a minute.
        assert_eq!(part_attempt_timeout(8 * MIB), Duration::from_secs(68));
        assert_eq!(
            part_attempt_timeout(MAX_PART_SIZE),
            Duration::from_secs(60 + 5120)
        );
    }

    #[test]
    fn keys_and_sse() {
        let mut spec = S3Spec {
            bucket: "b".into(),
            prefix: "cases/42".into(),
            region: None,
            endpoint_url: None,
            profile: None,
            sse: None,
            concurrency: 4,
            min_part_size: MIN_PART_SIZE,
            overwrite: false,
        };
        assert_eq!(
            spec.image_key("fe80::1%eth0", "h-1.lime"),
            "cases/42/fe80__1_eth0/h-1.lime"
        );
        spec.prefix.clear();
        assert_eq!(spec.image_key("web1", "x.lime"), "web1/x.lime");
        assert_eq!(parse_sse(None, None).unwrap(), None);
        assert_eq!(parse_sse(Some("AES256"), None).unwrap(), Some(Sse::S3));
        assert_eq!(
            parse_sse(Some("aws:kms"), Some("alias/ir")).unwrap(),
            Some(Sse::Kms(Some("alias/ir".into())))
        );
        assert!(parse_sse(Some("AES256"), Some("k")).is_err());
        assert!(parse_sse(None, Some("k")).is_err());
        assert!(parse_sse(Some("aes256"), None).is_err());
    }
}
