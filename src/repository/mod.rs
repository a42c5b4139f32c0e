//! The LiME module repository: a signed `manifest.json` listing one module per
//! kernel release and architecture, with the modules beside it, served over
//! HTTP(S) or read from a directory (layout in kernel-modules/README.md).
//!
//! `resolve` runs once the target's `uname -r`/`uname -m` are known and before
//! anything is written on the target. Its order is the safety argument: the
//! manifest's minisign signature is checked against a pinned key (never one
//! fetched from the repository), then the module's size and SHA-256 against
//! the signed manifest, every time, also for a copy in the cache.

pub mod manifest;
pub mod signature;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use sha2::{Digest, Sha256};

pub use manifest::{ModuleEntry, RepoManifest};
pub use signature::TrustedKey;

pub const MANIFEST_NAME: &str = "manifest.json";
pub const SIGNATURE_NAME: &str = "manifest.json.minisig";
/// What `--repository` uses when no URL is given: the repository the Docker
/// image ships (kernel-modules/repo, signed with the built-in key).
pub const DEFAULT_REPOSITORY: &str = "/usr/share/mshot/modules";
pub const ENV_REPOSITORY_URL: &str = "MSHOT_REPOSITORY_URL";
pub const ENV_REPOSITORY_KEY: &str = "MSHOT_REPOSITORY_KEY";
/// LiME is ~30 KB stripped, ~2 MB with debug info; anything far larger is not LiME.
const MAX_MODULE_BYTES: u64 = 64 << 20;
const MAX_SIGNATURE_BYTES: u64 = 4096;

/// Where a repository is.
#[derive(Clone, Debug, PartialEq)]
pub enum Location {
    /// An http(s) base URL ending in `/`.
    Http(reqwest::Url),
    Dir(PathBuf),
}

impl Location {
    /// `http(s)://...`, `file:///...` or a path.
    pub fn parse(value: &str) -> anyhow::Result<Location> {
        let value = value.trim();
        if value.is_empty() {
            bail!("the repository URL is empty");
        }
        let lower = value.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let mut url = reqwest::Url::parse(value)
                .map_err(|e| anyhow!("bad repository URL {value:?}: {e}"))?;
            if url.query().is_some() || url.fragment().is_some() {
                bail!("repository URL {value:?}: give the directory, without ?query or #fragment");
            }
            if !url.path().ends_with('/') {
                url.set_path(&format!("{}/", url.path()));
            }
            Ok(Location::Http(url))
        } else if lower.starts_with("file:") {
            let url = reqwest::Url::parse(value)
                .map_err(|e| anyhow!("bad repository URL {value:?}: {e}"))?;
            let path = url
                .to_file_path()
                .map_err(|_| anyhow!("repository URL {value:?}: not a local file:/// URL"))?;
            Ok(Location::Dir(path))
        } else if let Some((scheme, _)) = value.split_once("://") {
            bail!(
                "repository URL {value:?}: scheme {scheme:?} is not supported (http, https, file or a directory)"
            )
        } else {
            Ok(Location::Dir(PathBuf::from(value)))
        }
    }

    /// The URL or path of a file in the repository, for messages and fetching.
    pub fn name_of(&self, file: &str) -> String {
        match self {
            Location::Http(base) => base
                .join(file)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| format!("{base}{file}")),
            Location::Dir(dir) => dir.join(file).display().to_string(),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Http(url) => write!(f, "{url}"),
            Location::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// A repository to take the module from, validated before any connection.
#[derive(Clone, Debug)]
pub struct RepositorySpec {
    pub location: Location,
    pub key: TrustedKey,
    /// Downloaded modules, by SHA-256; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl RepositorySpec {
    /// From the flags: `url` (or the default repository) and `key` (or the built-in key).
    pub fn new(url: Option<&str>, key: Option<&str>) -> anyhow::Result<RepositorySpec> {
        let location = Location::parse(url.unwrap_or(DEFAULT_REPOSITORY))?;
        if url.is_none()
            && let Location::Dir(dir) = &location
            && !dir.join(MANIFEST_NAME).is_file()
        {
            bail!(
                "--repository: the default repository {} is not here (the Docker image ships it); give --repository-url URL (or {ENV_REPOSITORY_URL}, or repository.url in ~/.config/mshot/config.yaml)",
                dir.display()
            );
        }
        let key = match key {
            Some(value) => TrustedKey::from_arg(value)?,
            None => TrustedKey::builtin()?,
        };
        Ok(RepositorySpec {
            location,
            key,
            cache_dir: default_cache_dir(),
        })
    }
}

/// `$XDG_CACHE_HOME/mshot/modules`, else `~/.cache/mshot/modules`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("mshot").join("modules"))
}

/// Where a module came from; recorded in the capture manifest.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModuleOrigin {
    pub repository: String,
    pub key_id: String,
    pub key_origin: String,
    /// SHA-256 of the signed manifest.json that listed the module.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
    /// The signature's trusted comment (signing time, file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<ModuleEntry>,
    /// URL or path the module was read from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched_from: Option<String>,
    /// Whether a cached copy (re-verified) was used instead of a download.
    pub from_cache: bool,
}

impl ModuleOrigin {
    /// What is known before resolution, for a manifest of a run that fails early.
    pub fn unresolved(spec: &RepositorySpec) -> ModuleOrigin {
        ModuleOrigin {
            repository: spec.location.to_string(),
            key_id: spec.key.id.clone(),
            key_origin: spec.key.origin.clone(),
            manifest_sha256: None,
            signed_comment: None,
            entry: None,
            fetched_from: None,
            from_cache: false,
        }
    }
}

pub struct Resolved {
    pub module: ModuleFile,
    pub origin: ModuleOrigin,
}

/// A repository's manifest, signature checked.
pub struct VerifiedManifest {
    pub manifest: RepoManifest,
    pub sha256: String,
    pub signed: signature::Signed,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Finds, fetches and verifies the module for `release`/`arch`.
pub async fn resolve(spec: &RepositorySpec, release: &str, arch: &str) -> anyhow::Result<Resolved> {
    let client = Fetcher::new(&spec.location)?;
    let verified = fetch_manifest(&client, spec).await?;
    let Some(entry) = verified.manifest.find(release, arch).cloned() else {
        return Err(no_match(spec, &verified.manifest, release, arch));
    };
    let (module, from_cache) = fetch_module(&client, spec, &entry).await?;
    tracing::info!(
        "module for {release} ({arch}) from {}: {} ({} bytes, SHA-256 {}, manifest signed by key {}){}",
        spec.location,
        entry.file,
        entry.size,
        entry.sha256,
        verified.signed.key_id,
        if from_cache {
            ", cached copy re-verified"
        } else {
            ""
        }
    );
    Ok(Resolved {
        origin: ModuleOrigin {
            manifest_sha256: Some(verified.sha256),
            signed_comment: Some(verified.signed.trusted_comment),
            fetched_from: Some(spec.location.name_of(&entry.file)),
            entry: Some(entry),
            from_cache,
            ..ModuleOrigin::unresolved(spec)
        },
        module,
    })
}

/// Fetches `manifest.json` and its signature and checks the signature.
pub async fn fetch_manifest(
    client: &Fetcher,
    spec: &RepositorySpec,
) -> anyhow::Result<VerifiedManifest> {
    let name = spec.location.name_of(MANIFEST_NAME);
    let bytes = client
        .get(MANIFEST_NAME, manifest::MAX_MANIFEST_BYTES)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "{name} not found: is {} a module repository?",
                spec.location
            )
        })?;
    let signature = client
        .get(SIGNATURE_NAME, MAX_SIGNATURE_BYTES)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "{name} is not signed: {} not found; mshot refuses unsigned manifests (sign it with mshot repo sign)",
                spec.location.name_of(SIGNATURE_NAME)
            )
        })?;
    let signature = String::from_utf8(signature).map_err(|_| {
        anyhow!(
            "{} is not a minisign signature",
            spec.location.name_of(SIGNATURE_NAME)
        )
    })?;
    let signed = spec.key.verify(&bytes, &signature, &name)?;
    let manifest = RepoManifest::parse(&bytes, &name)?;
    Ok(VerifiedManifest {
        sha256: sha256_hex(&bytes),
        manifest,
        signed,
    })
}

/// The repository has no module for this kernel: the one resolution failure
/// that `--method auto` may answer by reading /proc/kcore instead.
#[derive(Debug)]
pub struct NoModule(pub String);

impl std::fmt::Display for NoModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoModule {}

fn no_match(
    spec: &RepositorySpec,
    manifest: &RepoManifest,
    release: &str,
    arch: &str,
) -> anyhow::Error {
    let closest = manifest.closest(release, arch, 5);
    let has = if closest.is_empty() {
        format!("it has no module for {arch} at all")
    } else {
        format!("closest it has: {}", closest.join(", "))
    };
    anyhow::Error::new(NoModule(format!(
        "no LiME module for kernel {release} ({arch}) in repository {}; {has}; build one on a machine with linux-headers-{release}: mshot repo build --out REPO {release}, then mshot repo index REPO and mshot repo sign REPO (kernel-modules/README.md), or give --module FILE",
        spec.location
    )))
}

/// Reads the module (from the cache when a verified copy is there), checking
/// size and SHA-256 against the signed entry.
async fn fetch_module(
    client: &Fetcher,
    spec: &RepositorySpec,
    entry: &ModuleEntry,
) -> anyhow::Result<(ModuleFile, bool)> {
    let name = spec.location.name_of(&entry.file);
    let cached = match (&spec.location, &spec.cache_dir) {
        (Location::Http(_), Some(dir)) => Some(dir.join(format!("{}.ko", entry.sha256))),
        _ => None,
    };
    if let Some(path) = &cached
        && let Ok(bytes) = std::fs::read(path)
    {
        match check_module(&bytes, entry, &path.display().to_string()) {
            Ok(()) => return Ok((module_file(path.clone(), bytes, entry), true)),
            Err(e) => {
                tracing::warn!("discarding the cached module: {e:#}");
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let bytes = client
        .get(&entry.file, entry.size.min(MAX_MODULE_BYTES) + 1)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "{name} not found, though the signed manifest lists it for {} ({}); the repository is incomplete",
                entry.kernel_release,
                entry.arch
            )
        })?;
    check_module(&bytes, entry, &name)?;
    let path = match (&spec.location, cached) {
        (Location::Dir(dir), _) => dir.join(&entry.file),
        (Location::Http(_), Some(path)) => match store_in_cache(&path, &bytes) {
            Ok(()) => path,
            Err(e) => {
                tracing::warn!("cannot cache the module in {}: {e:#}", path.display());
                PathBuf::from(&name)
            }
        },
        (Location::Http(_), None) => PathBuf::from(&name),
    };
    Ok((module_file(path, bytes, entry), false))
}

fn module_file(path: PathBuf, bytes: Vec<u8>, entry: &ModuleEntry) -> ModuleFile {
    ModuleFile {
        path,
        bytes,
        sha256: entry.sha256.clone(),
    }
}

/// The one check between a repository's bytes and the target: size, then SHA-256.
pub fn check_module(bytes: &[u8], entry: &ModuleEntry, name: &str) -> anyhow::Result<()> {
    if bytes.len() as u64 != entry.size {
        bail!(
            "{name}: size expected {} (signed manifest), actual {}; refusing the module",
            entry.size,
            bytes.len()
        );
    }
    let actual = sha256_hex(bytes);
    if actual != entry.sha256 {
        bail!(
            "{name}: SHA-256 expected {} (signed manifest), actual {actual}; the module was changed, refusing it",
            entry.sha256
        );
    }
    Ok(())
}

/// Writes `path` whole or not at all (temporary name, then rename). The
/// temporary name is unique per call: a fleet's hosts may store the same
/// module at once.
fn store_in_cache(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().ok_or_else(|| anyhow!("no cache directory"))?;
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(format!(
        ".{}.{}.{:016x}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })?;
    Ok(())
}

/// Reads files of one repository: HTTP(S) with reqwest (rustls), or a directory.
pub struct Fetcher {
    location: Location,
    http: Option<reqwest::Client>,
}

impl Fetcher {
    pub fn new(location: &Location) -> anyhow::Result<Fetcher> {
        let http = match location {
            Location::Http(_) => Some(
                reqwest::Client::builder()
                    .user_agent(concat!("mshot/", env!("CARGO_PKG_VERSION")))
                    .connect_timeout(Duration::from_secs(15))
                    .timeout(Duration::from_secs(120))
                    .build()
                    .context("cannot set up the HTTP client")?,
            ),
            Location::Dir(_) => None,
        };
        Ok(Fetcher {
            location: location.clone(),
            http,
        })
    }

    /// A file's bytes, `None` when it does not exist (HTTP 404/410, ENOENT).
    /// More than `limit` bytes is an error.
    pub async fn get(&self, file: &str, limit: u64) -> anyhow::Result<Option<Vec<u8>>> {
        manifest::check_relative_path(file)?;
        let name = self.location.name_of(file);
        match (&self.location, &self.http) {
            (Location::Dir(dir), _) => {
                let path = dir.join(file);
                match std::fs::metadata(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if !dir.is_dir() {
                            bail!("repository directory {} does not exist", dir.display());
                        }
                        return Ok(None);
                    }
                    Err(e) => bail!("cannot read {name}: {e}"),
                    Ok(meta) if meta.len() > limit => {
                        bail!(
                            "{name} is {} bytes, more than the {limit} mshot accepts",
                            meta.len()
                        )
                    }
                    Ok(_) => {}
                }
                std::fs::read(&path)
                    .map(Some)
                    .with_context(|| format!("cannot read {name}"))
            }
            (Location::Http(base), Some(client)) => {
                let url = base
                    .join(file)
                    .map_err(|e| anyhow!("bad URL for {file}: {e}"))?;
                let mut response = client.get(url).send().await.map_err(|e| {
                    anyhow!("cannot fetch {name}: {}; check the repository URL and that the server is up", describe_reqwest(&e))
                })?;
                let status = response.status();
                if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
                    return Ok(None);
                }
                if !status.is_success() {
                    bail!("cannot fetch {name}: HTTP {status}");
                }
                if let Some(length) = response.content_length()
                    && length > limit
                {
                    bail!("{name} is {length} bytes, more than the {limit} mshot accepts");
                }
                let mut body = Vec::new();
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(|e| anyhow!("cannot fetch {name}: {}", describe_reqwest(&e)))?
                {
                    body.extend_from_slice(&chunk);
                    if body.len() as u64 > limit {
                        bail!("{name} is more than the {limit} bytes mshot accepts");
                    }
                }
                Ok(Some(body))
            }
            (Location::Http(_), None) => unreachable!("an HTTP location always has a client"),
        }
    }
}

/// reqwest's Display stops at "error sending request"; the cause says why.
fn describe_reqwest(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("https://example.org/lime").unwrap(),
            Location::Http(reqwest::Url::parse("https://example.org/lime/").unwrap())
        );
        assert_eq!(
            Location::parse("file:///srv/repo").unwrap(),
            Location::Dir("/srv/repo".into())
        );
        assert_eq!(
            Location::parse("./repo").unwrap(),
            Location::Dir("./repo".into())
        );
        for bad in [
            "",
            "ftp://x/y",
            "s3://bucket/x",
            "http://x/?a=b",
            "file://host/x",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad:?} accepted");
        }
        let http = Location::parse("http://127.0.0.1:8/r").unwrap();
        assert_eq!(
            http.name_of("modules/x.ko"),
            "http://127.0.0.1:8/r/modules/x.ko"
        );
    }

    #[test]
    fn module_check_names_expected_and_actual() {
        let bytes = b"lime".to_vec();
        let entry = ModuleEntry {
            kernel_release: "6.1.0-56-amd64".into(),
            arch: "x86_64".into(),
            file: "m.ko".into(),
            size: 4,
            sha256: sha256_hex(b"lime"),
            lime_version: "1".into(),
            build: Default::default(),
        };
        check_module(&bytes, &entry, "m.ko").unwrap();
        let error = check_module(b"limf", &entry, "m.ko")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&entry.sha256) && error.contains(&sha256_hex(b"limf")),
            "{error}"
        );
        let error = check_module(b"lime!", &entry, "m.ko")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("size expected 4") && error.contains("actual 5"),
            "{error}"
        );
    }
}

/// The LiME module as read and hashed locally.
#[derive(Clone)]
pub struct ModuleFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub sha256: String,
}
