//! Capture-time profile material in the bucket: `NAME.material/` goes beside
//! the image as `PREFIX/HOST/NAME.material/FILE`, one object per file, so a
//! capture taken straight into S3 can be analysed with no profile once it is
//! downloaded (`aws s3 cp --recursive`), as it could on disk.
//!
//! Why it is built this way:
//! - Order: image, then material, then the manifest. The image is completed
//!   first (material without its image would be noise), and the manifest last
//!   and listing the material's keys, so a manifest in the bucket implies
//!   that every object it lists is there.
//! - Each object is one `PutObject` carrying the file's SHA-256, the value
//!   the manifest records: S3 refuses a body that does not hash to it, so the
//!   bucket holds exactly what the target printed. The object is read back
//!   (size, SHA-256) as the image is: a disagreement keeps the object,
//!   tagged, and reads it back (`s3::verify`). Keys are checked free before the
//!   capture starts, and each put carries `If-None-Match: *` unless
//!   `--overwrite`, the image's rule.
//! - `index.json` goes too (the manifest's material list, as written beside
//!   the image), so a downloaded copy is checked on reading like a local one.
//! - A file that fails to upload does not fail the capture: the image, the
//!   evidence that cannot be taken again, is complete and proven in the
//!   bucket, and the material is also on local disk beside the manifest's
//!   local copy (with `--bucket` alone, in `--log-dir` or the current
//!   directory). Failing the capture would invite a rerun, which captures a
//!   different memory and finds the image's key taken. So the failure is a
//!   warning naming each file, the error and the local copy, and the
//!   manifest records it (`s3.material.failed`) next to what did arrive
//!   (`s3.material.objects`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::pipeline::sink::s3::Bucket;
use crate::target::material::{INDEX, MaterialRecord, dir_for};

/// What the manifest's `s3.material` records.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct MaterialUpload {
    /// `PREFIX/HOST/NAME.material/`.
    pub prefix: String,
    pub objects: Vec<MaterialObject>,
    /// Files that are not in the bucket, and why.
    pub failed: Vec<MaterialFailure>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MaterialObject {
    pub name: String,
    pub key: String,
    pub bytes: u64,
    /// Hex, as in the manifest's `material.files`.
    pub sha256: String,
    /// The SHA-256 S3 reports for the object (base64), when it reports one.
    pub checksum_sha256: Option<String>,
    pub version_id: Option<String>,
    /// Present when S3's own SHA-256 did not prove it and a read-back did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<crate::pipeline::sink::s3::verify::Verification>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MaterialFailure {
    pub name: String,
    pub key: String,
    pub error: String,
}

impl MaterialUpload {
    /// One line for the operator when some material is not in the bucket.
    pub fn problem(&self) -> Option<String> {
        if self.failed.is_empty() {
            return None;
        }
        let which: Vec<String> = self
            .failed
            .iter()
            .map(|f| format!("{} ({})", f.name, f.error))
            .collect();
        Some(format!(
            "{} of {} profile material files were not uploaded to {}: {}",
            self.failed.len(),
            self.failed.len() + self.objects.len(),
            self.prefix,
            which.join("; ")
        ))
    }
}

/// One file to upload and the SHA-256 it must have.
#[derive(Debug)]
pub struct Body {
    pub name: String,
    pub sha256: String,
    pub bytes: Vec<u8>,
}

/// `index.json` as `material::store` writes it beside the image.
fn index(record: &MaterialRecord) -> Option<Body> {
    let mut bytes = serde_json::to_vec_pretty(record).ok()?;
    bytes.push(b'\n');
    Some(Body {
        name: INDEX.to_string(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        bytes,
    })
}

/// The bodies of material fetched during this capture (held in memory, so
/// they go to the bucket even if storing them locally failed). `dir` is the
/// material directory's name, as `index.json` records it.
pub fn from_fetched(fetched: &crate::target::material::Fetched, dir: &str) -> Vec<Body> {
    let mut record = fetched.record().clone();
    record.dir = dir.to_string();
    let mut bodies: Vec<Body> = fetched
        .files()
        .map(|(file, bytes)| Body {
            name: file.name.clone(),
            sha256: file.sha256.clone(),
            bytes: bytes.to_vec(),
        })
        .collect();
    if !bodies.is_empty() {
        bodies.extend(index(&record));
    }
    bodies
}

/// For `mshot upload`: the material the manifest lists, read from the
/// directory beside `image` and checked against the manifest's SHA-256s.
/// `Ok(None)` when the manifest lists none or the directory is absent (the
/// image goes alone, with a warning); an error when a listed file is missing
/// or differs, before anything is sent.
pub fn read_local(image: &Path, manifest: &serde_json::Value) -> anyhow::Result<Option<Vec<Body>>> {
    let Some(value) = manifest.get("material").filter(|m| !m.is_null()) else {
        return Ok(None);
    };
    let record: MaterialRecord = serde_json::from_value(value.clone())
        .map_err(|e| anyhow!("the manifest's material section is not readable: {e}"))?;
    if record.files.is_empty() {
        return Ok(None);
    }
    // The name the capture stored it under, if it is a plain name.
    let dir: PathBuf = if !record.dir.is_empty() && !record.dir.contains('/') && record.dir != ".."
    {
        image.with_file_name(&record.dir)
    } else {
        dir_for(image)
    };
    if !dir.is_dir() {
        tracing::warn!(
            "the manifest lists profile material, but {} is not there: uploading the image without it",
            dir.display()
        );
        return Ok(None);
    }
    let mut bodies = Vec::new();
    for file in &record.files {
        let path = dir.join(&file.name);
        if file.name.contains('/') || file.name == ".." {
            bail!(
                "the manifest lists material file {:?}: not a plain file name",
                file.name
            );
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => bail!(
                "cannot read {} ({e}), which the manifest lists with SHA-256 {}; nothing was uploaded (move {} away to upload the image without its material)",
                path.display(),
                file.sha256,
                dir.display()
            ),
        };
        let got = hex::encode(Sha256::digest(&bytes));
        if !got.eq_ignore_ascii_case(&file.sha256) {
            bail!(
                "{} does not match its manifest: SHA-256 {got}, the manifest records {}; the material changed since the capture, nothing was uploaded",
                path.display(),
                file.sha256
            );
        }
        bodies.push(Body {
            name: file.name.clone(),
            sha256: got,
            bytes,
        });
    }
    bodies.extend(index(&record));
    Ok(Some(bodies))
}

/// Uploads each body under `prefix`; never fails, records what happened.
pub async fn upload(
    bucket: &Bucket,
    prefix: &str,
    image_key: &str,
    bodies: Vec<Body>,
    cancel: &CancellationToken,
) -> MaterialUpload {
    let mut record = MaterialUpload {
        prefix: prefix.to_string(),
        ..Default::default()
    };
    for body in bodies {
        let key = format!("{prefix}{}", body.name);
        let result = if cancel.is_cancelled() {
            Err(anyhow!("interrupted before it was sent"))
        } else {
            tokio::select! {
                r = put(bucket, &key, image_key, &body) => r,
                _ = cancel.cancelled() => Err(anyhow!("interrupted while it was sent")),
            }
        };
        match result {
            Ok(put) => record.objects.push(MaterialObject {
                name: body.name,
                key,
                bytes: body.bytes.len() as u64,
                sha256: body.sha256,
                checksum_sha256: put.checksum_sha256,
                version_id: put.version_id,
                verification: put.verification,
            }),
            Err(e) => {
                let error = crate::util::sanitize::one_line(&format!("{e:#}"));
                tracing::warn!("profile material {} not uploaded: {error}", body.name);
                record.failed.push(MaterialFailure {
                    name: body.name,
                    key,
                    error,
                });
            }
        }
    }
    if record.failed.is_empty() {
        tracing::info!(
            "S3: {} profile material files in {}",
            record.objects.len(),
            bucket.uri(prefix)
        );
    }
    record
}

async fn put(
    bucket: &Bucket,
    key: &str,
    image_key: &str,
    body: &Body,
) -> anyhow::Result<crate::pipeline::sink::s3::PutChecked> {
    // The bytes were hashed when fetched or read; a difference now is a bug
    // or bad memory, and S3 would refuse them anyway.
    let got = hex::encode(Sha256::digest(&body.bytes));
    if !got.eq_ignore_ascii_case(&body.sha256) {
        bail!(
            "its bytes hash to {got}, the manifest records {}",
            body.sha256
        );
    }
    let content_type = if body.name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let metadata = HashMap::from([("mshot-image-key".to_string(), image_key.to_string())]);
    bucket
        .put_sha256(
            key,
            body.bytes.clone(),
            &body.sha256,
            content_type,
            metadata,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_for(dir: &str, files: &[(&str, &[u8])]) -> serde_json::Value {
        let files: Vec<serde_json::Value> = files
            .iter()
            .map(|(name, bytes)| {
                serde_json::json!({
                    "name": name,
                    "source": "cat x",
                    "bytes": bytes.len(),
                    "sha256": hex::encode(Sha256::digest(bytes)),
                })
            })
            .collect();
        serde_json::json!({"material": {"dir": dir, "files": files, "missing": []}})
    }

    #[test]
    fn local_material_is_checked_against_the_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("h.lime");
        let manifest = manifest_for("h.material", &[("version", b"v1\n"), ("uname", b"u\n")]);
        // No directory: the image goes alone.
        assert!(read_local(&image, &manifest).unwrap().is_none());
        // No material in the manifest: nothing to read.
        assert!(
            read_local(&image, &serde_json::json!({"material": null}))
                .unwrap()
                .is_none()
        );
        let dir = tmp.path().join("h.material");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("version"), b"v1\n").unwrap();
        let e = read_local(&image, &manifest).unwrap_err().to_string();
        assert!(
            e.contains("uname") && e.contains("nothing was uploaded"),
            "{e}"
        );
        std::fs::write(dir.join("uname"), b"u\n").unwrap();
        let bodies = read_local(&image, &manifest).unwrap().unwrap();
        let names: Vec<&str> = bodies.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["version", "uname", INDEX]);
        // The index is the manifest's record, as material::store writes it.
        let index: MaterialRecord = serde_json::from_slice(&bodies[2].bytes).unwrap();
        assert_eq!(index.dir, "h.material");
        assert_eq!(index.files.len(), 2);
        // A changed file is refused, naming both hashes.
        std::fs::write(dir.join("uname"), b"U\n").unwrap();
        let e = read_local(&image, &manifest).unwrap_err().to_string();
        assert!(e.contains(&hex::encode(Sha256::digest(b"U\n"))), "{e}");
        assert!(e.contains(&hex::encode(Sha256::digest(b"u\n"))), "{e}");
        // A manifest cannot point outside the directory.
        let evil = manifest_for("h.material", &[("../h.lime", b"x")]);
        assert!(read_local(&image, &evil).is_err());
    }

    #[test]
    fn problem_names_every_failed_file() {
        let mut up = MaterialUpload {
            prefix: "p/h/x.material/".into(),
            ..Default::default()
        };
        assert!(up.problem().is_none());
        up.failed.push(MaterialFailure {
            name: "kallsyms".into(),
            key: "p/h/x.material/kallsyms".into(),
            error: "HTTP 503".into(),
        });
        let p = up.problem().unwrap();
        assert!(
            p.contains("1 of 1") && p.contains("kallsyms (HTTP 503)"),
            "{p}"
        );
    }
}
