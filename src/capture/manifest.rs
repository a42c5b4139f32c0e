//! The capture manifest: the JSON document beside the image that gathers
//! what every layer recorded (source, S3, material, module, cleanup, audit).

use std::path::Path;

use jiff::Timestamp;

use crate::record::audit::AuditEntry;
use crate::record::{CleanupReport, ImageRecord, Privilege, RangeRecord};

#[derive(Clone, Debug, serde::Serialize)]
pub struct Manifest {
    pub tool: String,
    pub tool_version: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub jump_hosts: Vec<String>,
    pub kernel_release: String,
    pub machine: String,
    pub privilege: Option<Privilege>,
    pub dry_run: bool,
    pub module: ModuleRecord,
    pub lime_arguments: String,
    pub started: Timestamp,
    pub finished: Timestamp,
    pub duration_seconds: f64,
    /// Absent when no complete image was kept.
    pub image: Option<ImageRecord>,
    /// System RAM ranges from the target's /proc/iomem.
    pub expected_ranges: Vec<RangeRecord>,
    pub error: Option<String>,
    /// Capture-time profile material (`NAME.material/`) with its hashes.
    pub material: Option<crate::target::material::MaterialRecord>,
    /// How the stream was produced (LiME or kcore, and why), wire bytes, digest.
    pub source: crate::pipeline::source::SourceRecord,
    /// The S3 upload, when `--bucket` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<crate::pipeline::sink::s3::S3Record>,
    pub cleanup: CleanupReport,
    pub audit: Vec<AuditEntry>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ModuleRecord {
    pub local_path: String,
    pub sha256: String,
    pub size: u64,
    pub remote_path: String,
    /// Where a module repository's module came from (URL, signing key, entry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<crate::repository::ModuleOrigin>,
}

pub fn write(path: &Path, manifest: &Manifest) -> std::io::Result<()> {
    let mut text = serde_json::to_vec_pretty(manifest).map_err(std::io::Error::other)?;
    text.push(b'\n');
    crate::util::fs::write_small_file(path, &text)
}
