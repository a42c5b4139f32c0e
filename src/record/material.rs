//! Capture-time profile material (`NAME.material/` beside the image): the
//! files, the record in the manifest and in `index.json`. Fetched by
//! `target::material`, read back by `analysis::material`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The material files, in fetch order (`target::material::SOURCES`).
pub const FILES: &[&str] = &[
    "vmlinux.btf",
    "kallsyms",
    "iomem",
    "version",
    "uname",
    "os-release",
    "cmdline",
];

pub const INDEX: &str = "index.json";

/// The material's record, in the manifest and in `index.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MaterialRecord {
    /// The sidecar directory's name (beside the image); empty when nothing
    /// was stored (dry run, failed capture).
    pub dir: String,
    pub files: Vec<MaterialFile>,
    /// Sources the target could not provide, and why.
    pub missing: Vec<MissingFile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MaterialFile {
    pub name: String,
    pub source: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MissingFile {
    pub name: String,
    pub source: String,
    pub error: String,
}

/// `dir/NAME.lime` -> `dir/NAME.material` (other names get `.material` appended).
pub fn dir_for(image: &Path) -> PathBuf {
    super::sidecar_path(image, "material")
}
