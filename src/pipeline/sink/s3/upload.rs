//! One multipart upload: parts sent while the stream arrives, then
//! completed once the caller proved the stream whole, or aborted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use aws_sdk_s3::operation::abort_multipart_upload::builders::AbortMultipartUploadFluentBuilder;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;

use super::bucket::{MapSdkErr, attempt_timeout, backoff, missing_ok, status};
use super::{
    ABORT_ATTEMPTS, Bucket, MAX_PARTS, MIB, S3Record, b64, describe, max_image_for, part_size_for,
    verify,
};

/// A request on this multipart upload, with its bucket, key and upload id
/// (the SDK's request builders share no trait to set them in a function).
macro_rules! upload_request {
    ($upload:expr, $operation:ident) => {{
        let upload: &Upload = $upload;
        upload
            .bucket
            .client
            .$operation()
            .bucket(&upload.bucket.spec.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
    }};
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

/// What `complete` verified.
#[derive(Clone, Debug)]
pub struct Completed {
    pub etag: Option<String>,
    pub checksum_crc32c: String,
    pub version_id: Option<String>,
    pub verification: verify::Verification,
}

impl Upload {
    /// Starts a multipart upload of an image of about `expected` bytes.
    pub(super) async fn start(
        bucket: &Arc<Bucket>,
        key: &str,
        expected: Option<u64>,
        metadata: HashMap<String, String>,
        acked: Arc<AtomicU64>,
    ) -> anyhow::Result<Arc<Upload>> {
        let spec = &bucket.spec;
        let part_size = part_size_for(expected, spec.min_part_size)?;
        bucket.check_absent(key).await?;
        let (sse, kms_key_id) = spec.sse_headers();
        let request = bucket
            .client
            .create_multipart_upload()
            .bucket(&spec.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .set_metadata(Some(metadata))
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key_id);
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
        let out = out.map_sdk_err(format!("cannot start the S3 upload of {}", bucket.uri(key)))?;
        let upload_id = out
            .upload_id()
            .ok_or_else(|| anyhow!("S3 started an upload of {key} but sent no upload id"))?
            .to_string();
        tracing::info!(
            "S3: uploading to {} in parts of {} MiB ({} in flight; largest image {} GiB)",
            bucket.uri(key),
            part_size / MIB,
            spec.concurrency,
            max_image_for(part_size) >> 30
        );
        Ok(Arc::new(Upload {
            bucket: bucket.clone(),
            key: key.to_string(),
            upload_id,
            part_size,
            slots: Arc::new(Semaphore::new(spec.concurrency.max(1))),
            parts: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            state: Mutex::new(UploadState::Open),
            completed: Mutex::new(None),
            acked,
            spare: Mutex::new(Vec::new()),
        }))
    }

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

    fn set_state(&self, state: UploadState) {
        if let Ok(mut s) = self.state.lock() {
            *s = state;
        }
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
            // The SDK retries transient failures (5xx, throttling, timeouts,
            // lost connections) with backoff; the body is `Bytes`, so every
            // attempt resends the same part.
            let result = upload_request!(&upload, upload_part)
                .part_number(number)
                .content_length(len as i64)
                .checksum_crc32_c(&crc_b64)
                .body(ByteStream::from(data))
                .customize()
                // A server that accepts a part and never answers (seen with
                // Garage under load) would otherwise hold its slot forever.
                .config_override(attempt_timeout(len))
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

    fn take_tasks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    }

    async fn wait_for_parts(&self) {
        for task in self.take_tasks() {
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
        let out = upload_request!(self, complete_multipart_upload)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed_parts))
                    .build(),
            )
            // S3 refuses to complete if the key appeared meanwhile.
            .set_if_none_match(self.bucket.spec.if_none_match())
            .send()
            .await
            .map_sdk_err(format!(
                "S3 refused to complete the upload of {}",
                self.uri()
            ))?;
        self.set_state(UploadState::Completed);
        let reply = verify::Reply {
            checksum: out.checksum_crc32_c().map(str::to_string),
            kind: out.checksum_type().cloned(),
            version: out.version_id().map(str::to_string),
            etag: out.e_tag().map(str::to_string),
        };
        let sent = verify::Sent {
            bytes,
            sha256: stored_sha256,
        };
        let (head, verification) = verify::object(
            &self.bucket,
            &self.key,
            &sent,
            verify::Expect::Crc32c(&crc),
            reply,
        )
        .await;
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
        let tasks = self.take_tasks();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        let retry = aws_sdk_s3::config::Builder::default().retry_config(backoff(
            ABORT_ATTEMPTS,
            Duration::from_secs(1),
            Duration::from_secs(10),
        ));
        let result = self
            .abort_request()
            .customize()
            .config_override(retry)
            .send()
            .await;
        let by_hand = format!(
            "abort it by hand: aws s3api abort-multipart-upload --bucket {} --key {} --upload-id {}",
            self.bucket.spec.bucket, self.key, self.upload_id
        );
        if let Err(e) = missing_ok(result) {
            bail!(
                "cannot abort the S3 multipart upload of {} ({}); {by_hand}",
                self.uri(),
                describe(&e)
            );
        }
        self.set_state(UploadState::Aborted);
        // S3 may keep a part whose upload was in flight during the abort:
        // check, and abort once more if so.
        let listed = upload_request!(self, list_parts).send().await;
        if let Ok(out) = listed
            && !out.parts().is_empty()
        {
            let again = self.abort_request().send().await;
            if missing_ok(again).is_err() {
                bail!("parts of {} survived the abort; {by_hand}", self.uri());
            }
        }
        tracing::info!("S3: aborted the upload of {}", self.uri());
        Ok(true)
    }

    /// Asks S3 to drop every part; a 404 means it already has.
    fn abort_request(&self) -> AbortMultipartUploadFluentBuilder {
        upload_request!(self, abort_multipart_upload)
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
