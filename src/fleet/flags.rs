//! What the command line sets over a fleet file (`commands::fleet` builds
//! it from the flags): a layer above each host's own and `defaults:`.

use std::path::PathBuf;

use super::config::{BucketSpec, RepositorySpec};
use super::yaml::Node;

/// What the flags set, for `config::load`.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// Host keys (`output_dir`, `known_hosts`, `agent`, `connect_timeout`,
    /// `stream_timeout`, `method`, `compress`, `store_compressed`, `digest`)
    /// with the flags' values, above every host.
    pub host: Vec<(String, Node)>,
    /// `--output-dir`: also the report's default directory.
    pub output_dir: Option<PathBuf>,
    /// `--bucket` and the S3 flags: every host's bucket.
    pub bucket: Option<BucketSpec>,
    /// `--repository`, `--repository-url`, `--repository-key`.
    pub repository: Option<RepositoryFlags>,
    /// `--analyze` (applied by `main`): every host needs a local image.
    pub analyze: bool,
}

/// As for one capture: `--repository` or a URL turns the repository on; a
/// key alone only replaces the key.
#[derive(Clone, Debug, Default)]
pub struct RepositoryFlags {
    pub enable: bool,
    pub url: Option<String>,
    pub key: Option<String>,
}

impl RepositoryFlags {
    /// The file's `repository:` (if any) with the flags over it.
    pub fn over(&self, file: Option<RepositorySpec>) -> RepositorySpec {
        let mut spec = file.unwrap_or(RepositorySpec {
            gpg_verify: true,
            ..RepositorySpec::default()
        });
        spec.enabled |= self.enable;
        if let Some(url) = &self.url {
            spec.url = Some(url.clone());
            spec.dir = None;
        }
        if let Some(key) = &self.key {
            spec.key = Some(key.clone());
        }
        spec
    }
}
