//! Plain data that every layer records into and the manifest gathers
//! (`capture::manifest`): physical ranges, how root was reached, the image,
//! the source, cleanup, and the audit log of remote commands.

pub mod audit;
pub mod material;
mod source;

pub use source::{
    DigestRecord, KcoreRecord, Method, SegmentRecord, SourceRecord, TargetPolicy, Used,
};

use std::path::{Path, PathBuf};

/// A physical memory range, both ends inclusive (as /proc/iomem and LiME write them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    pub fn bytes(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// How commands become root on the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Privilege {
    /// Logged in as root.
    Root,
    /// `sudo -n` works (NOPASSWD).
    SudoNoPassword,
    /// sudo wants a password; it is written to sudo's stdin, never to argv.
    SudoPassword,
}

impl Privilege {
    /// How the run became root, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Privilege::Root => "root login",
            Privilege::SudoNoPassword => "sudo without a password",
            Privilege::SudoPassword => "sudo with a password",
        }
    }
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
