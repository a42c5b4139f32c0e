//! What one capture needs, built and checked before any connection (by
//! `commands::job` from flags, or `fleet::config` from a fleet file).

use std::path::PathBuf;
use std::time::Duration;

use super::manifest;
use crate::pipeline::source::SourceOptions;
use crate::repository::ModuleFile;
pub use crate::target::SudoPolicy;
use crate::transport::{Endpoint, HostKeyPolicy, SshOptions};
use crate::util::secret::Secret;

/// Everything one capture needs, already validated by `commands::job` or `fleet::config`.
pub struct CaptureJob {
    /// Jump hosts in order, then the target.
    pub route: Vec<Endpoint>,
    pub host_keys: HostKeyPolicy,
    pub ssh: SshOptions,
    /// A module file, or a repository resolved once the kernel is known.
    pub module: ModuleSource,
    /// The local image. With `local_image` false only its name (also the S3
    /// object's) and its directory (the manifest's local copy) are used.
    pub image_path: PathBuf,
    pub local_image: bool,
    /// Stream the image into S3 as well (or only, without `local_image`).
    pub s3: Option<crate::pipeline::sink::s3::S3Spec>,
    pub sudo_password: Option<Secret>,
    /// `--sudo` / `sudo:`, and where the sudo password came from.
    pub sudo: SudoPolicy,
    /// Unload a LiME module that is already loaded instead of refusing.
    pub force: bool,
    /// Check everything up to loading the module, then clean up.
    pub dry_run: bool,
    /// Longest silence tolerated from LiME's stream before the capture fails.
    pub stream_idle_timeout: Duration,
    /// Which source produces the stream (LiME, kcore), compression, digest.
    pub source: SourceOptions,
}

impl CaptureJob {
    pub fn target(&self) -> &Endpoint {
        // config guarantees a non-empty route
        &self.route[self.route.len() - 1]
    }
}

/// Where the LiME module comes from.
pub enum ModuleSource {
    /// `--module FILE`, read and hashed before connecting.
    File(ModuleFile),
    /// A module repository: resolved in `run` after `uname`, verified before
    /// anything is written on the target.
    Repository(crate::repository::RepositorySpec),
}

impl ModuleSource {
    /// The module file, when one was given rather than a repository.
    pub fn file(&self) -> Option<&ModuleFile> {
        match self {
            ModuleSource::File(module) => Some(module),
            ModuleSource::Repository(_) => None,
        }
    }

    /// The manifest's record before (or without) resolution.
    pub(super) fn record(&self) -> manifest::ModuleRecord {
        match self {
            ModuleSource::File(module) => module_record(module, None),
            ModuleSource::Repository(spec) => manifest::ModuleRecord {
                local_path: String::new(),
                sha256: String::new(),
                size: 0,
                remote_path: String::new(),
                repository: Some(crate::repository::ModuleOrigin::unresolved(spec)),
            },
        }
    }
}

pub(super) fn module_record(
    module: &ModuleFile,
    origin: Option<crate::repository::ModuleOrigin>,
) -> manifest::ModuleRecord {
    manifest::ModuleRecord {
        local_path: module.path.display().to_string(),
        sha256: module.sha256.clone(),
        size: module.bytes.len() as u64,
        remote_path: String::new(),
        repository: origin,
    }
}

/// `HOST-STAMP-mem.lime`, the host made safe for a file name.
pub fn default_filename(server: &str) -> String {
    let safe = crate::util::sanitize::file_name_part(server);
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    format!("{safe}-{stamp}-mem.lime")
}

/// The login name of whoever runs mshot, the default remote user.
pub fn local_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into())
}
