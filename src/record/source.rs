//! How the stream was produced: the method asked for and used, why, what
//! the target allowed, the wire and stored bytes, and LiME's digest.

/// `--method`: how memory is read on the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// LiME when a module is available and the target accepts it, else /proc/kcore.
    #[default]
    Auto,
    /// Load the LiME kernel module (needs --module).
    Lime,
    /// Read /proc/kcore with dd; nothing is pushed or loaded.
    Kcore,
}

/// The method a capture actually used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Used {
    Lime,
    Kcore,
}

impl Used {
    pub fn name(self) -> &'static str {
        match self {
            Used::Lime => "lime",
            Used::Kcore => "kcore",
        }
    }
}

/// What the target says about loading modules and reading /proc/kcore.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TargetPolicy {
    /// `kernel.modules_disabled`: no module can load until reboot.
    pub modules_disabled: bool,
    /// `module.sig_enforce`: only signed modules load.
    pub sig_enforce: bool,
    /// The active lockdown mode (`none`, `integrity`, `confidentiality`), if the
    /// kernel has lockdown.
    pub lockdown: Option<String>,
    pub kcore_present: bool,
}

/// The manifest's record of the source: method, why, wire vs image bytes, digest.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SourceRecord {
    pub method: Option<Used>,
    pub requested: Option<Method>,
    pub reason: String,
    pub target_policy: Option<TargetPolicy>,
    /// Bytes that crossed the SSH connection for the image.
    pub wire_bytes: u64,
    pub compressed: bool,
    /// "plain" (the LiME image) or "zlib" (the stream as LiME sent it).
    pub stored_as: String,
    /// SHA-256 of the stored file when that is the compressed stream.
    pub stored_sha256: Option<String>,
    pub stored_bytes: Option<u64>,
    pub digest: Option<DigestRecord>,
    pub kcore: Option<KcoreRecord>,
    /// Set only when the test hook altered the received stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_corrupt_offset: Option<u64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DigestRecord {
    pub algorithm: String,
    /// What LiME computed in the kernel, over the plain image.
    pub lime: String,
    /// What mshot computed over what it received (after inflation).
    pub mshot: String,
    pub matches: bool,
}

/// What the manifest says about a kcore capture.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KcoreRecord {
    pub segments_used: Vec<SegmentRecord>,
    /// Parts of System RAM not in the image (partial pages kcore never serves).
    pub not_covered: Vec<super::RangeRecord>,
    pub remote_reads: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SegmentRecord {
    pub file_offset: String,
    pub vaddr: String,
    pub paddr: String,
    pub bytes: u64,
}
