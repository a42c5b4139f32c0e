//! The capture manifest: a JSON record beside the image of what was captured,
//! how, and every remote command that ran.

pub mod audit;

use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::record::audit::AuditEntry;
use crate::target::{PhysRange, Privilege};

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

#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageRecord {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub ranges: Vec<RangeRecord>,
}

/// A range with hex addresses, as people read them in /proc/iomem.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RangeRecord {
    pub start: String,
    pub end: String,
    pub bytes: u64,
}

impl From<&PhysRange> for RangeRecord {
    fn from(r: &PhysRange) -> Self {
        RangeRecord {
            start: format!("{:#x}", r.start),
            end: format!("{:#x}", r.end),
            bytes: r.bytes(),
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CleanupReport {
    pub module_unloaded: bool,
    pub temp_dir_removed: bool,
    pub errors: Vec<String>,
}

/// `dir/NAME.lime` -> `dir/NAME.json`; other names get `.json` appended.
pub fn manifest_path_for(image: &Path) -> PathBuf {
    sidecar_path(image, "json")
}

/// `dir/NAME.lime` -> `dir/NAME.<suffix>`.
pub fn sidecar_path(image: &Path, suffix: &str) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".lime").unwrap_or(&name);
    image.with_file_name(format!("{stem}.{suffix}"))
}

pub fn write(path: &Path, manifest: &Manifest) -> std::io::Result<()> {
    let mut text = serde_json::to_vec_pretty(manifest).map_err(std::io::Error::other)?;
    text.push(b'\n');
    crate::pipeline::sink::write_small_file(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_names() {
        assert_eq!(
            manifest_path_for(Path::new("/x/h-1.lime")),
            Path::new("/x/h-1.json")
        );
        assert_eq!(manifest_path_for(Path::new("img")), Path::new("img.json"));
        assert_eq!(
            sidecar_path(Path::new("a/b.lime"), "pstree.json"),
            Path::new("a/b.pstree.json")
        );
    }
}
