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

mod bucket;
mod destination;
pub mod material;
mod upload;
pub mod verify;

#[cfg(test)]
mod tests;

use std::time::Duration;

use anyhow::bail;
use aws_sdk_s3::types::ServerSideEncryption;
use base64::Engine;

pub use bucket::{Bucket, PutChecked, describe};
pub use destination::{Destination, S3Record};
pub use upload::{Completed, PartFeeder, Upload};

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
        // Host names may hold `:` (IPv6) or `%` (scope): keep keys plain.
        let host = crate::util::sanitize::file_name_part(host);
        if self.prefix.is_empty() {
            format!("{host}/{name}")
        } else {
            format!("{}/{host}/{name}", self.prefix)
        }
    }

    /// The server-side encryption and KMS key id of every request that
    /// creates an object.
    fn sse_headers(&self) -> (Option<ServerSideEncryption>, Option<String>) {
        match &self.sse {
            None => (None, None),
            Some(Sse::S3) => (Some(ServerSideEncryption::Aes256), None),
            Some(Sse::Kms(key_id)) => (Some(ServerSideEncryption::AwsKms), key_id.clone()),
        }
    }

    /// `If-None-Match: *` on every request that would replace an object,
    /// unless `--overwrite`.
    fn if_none_match(&self) -> Option<String> {
        (!self.overwrite).then(|| "*".to_string())
    }
}

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
