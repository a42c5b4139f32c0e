//! One capture's place in the bucket: the keys of the image, the manifest
//! and the material, and what the manifest records of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::material::{Body, MaterialUpload};
use super::{Bucket, S3Spec, Upload, verify};

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
    material: Option<MaterialUpload>,
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
        let upload =
            Upload::start(&self.bucket, &self.image_key, expected, metadata, acked).await?;
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
        files: Vec<Body>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> &MaterialUpload {
        let record = super::material::upload(
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
    pub material: Option<MaterialUpload>,
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
