//! The repository manifest (`manifest.json`): which LiME module serves which
//! kernel release and architecture, with its size and SHA-256. The manifest is
//! what the signature covers, so every module is as trusted as its line here.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

/// The `format` value this version reads and writes.
pub const FORMAT: &str = "mshot-module-repository/1";
/// Larger manifests are refused before parsing (thousands of kernels fit in 1 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RepoManifest {
    pub format: String,
    /// When `mshot repo index` wrote it (RFC 3339).
    pub generated: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub modules: Vec<ModuleEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModuleEntry {
    /// `uname -r` of the kernels this module loads into.
    pub kernel_release: String,
    /// `uname -m`: x86_64, aarch64.
    pub arch: String,
    /// Path relative to the manifest, `/`-separated.
    pub file: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
    pub lime_version: String,
    #[serde(default)]
    pub build: BuildInfo,
}

/// How a module was built (from `build-lime.sh`'s `.build.json`); informative.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BuildInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lime_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vermagic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built: Option<String>,
}

impl RepoManifest {
    /// Parses and checks a manifest; `name` (URL or path) goes into errors.
    pub fn parse(bytes: &[u8], name: &str) -> anyhow::Result<RepoManifest> {
        let manifest: RepoManifest = serde_json::from_slice(bytes)
            .map_err(|e| anyhow!("{name}: not a module repository manifest: {e}"))?;
        if manifest.format != FORMAT {
            bail!(
                "{name}: format {:?}, this mshot reads {FORMAT:?}; upgrade mshot or rebuild the repository",
                manifest.format
            );
        }
        let mut seen = std::collections::HashSet::new();
        for entry in &manifest.modules {
            entry.check().map_err(|e| anyhow!("{name}: {e}"))?;
            if !seen.insert((entry.kernel_release.as_str(), entry.arch.as_str())) {
                bail!(
                    "{name}: two modules for {} ({}); the manifest is ambiguous",
                    entry.kernel_release,
                    entry.arch
                );
            }
        }
        Ok(manifest)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self).unwrap_or_default();
        text.push(b'\n');
        text
    }

    /// The module for exactly this release and architecture.
    pub fn find(&self, release: &str, arch: &str) -> Option<&ModuleEntry> {
        self.modules
            .iter()
            .find(|m| m.kernel_release == release && m.arch == arch)
    }

    /// Up to `n` releases for `arch` most like `release`: same flavour
    /// (`-cloud-amd64`) first, then the longest common prefix.
    pub fn closest(&self, release: &str, arch: &str, n: usize) -> Vec<&str> {
        let wanted_flavour = flavour(release);
        let mut candidates: Vec<(bool, usize, &str)> = self
            .modules
            .iter()
            .filter(|m| m.arch == arch)
            .map(|m| {
                let r = m.kernel_release.as_str();
                let prefix = r
                    .bytes()
                    .zip(release.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                (flavour(r) == wanted_flavour, prefix, r)
            })
            .collect();
        candidates.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)).then(a.2.cmp(b.2)));
        candidates.into_iter().take(n).map(|c| c.2).collect()
    }
}

/// The part of a release after its version numbers: "6.1.0-56-cloud-amd64" ->
/// "cloud-amd64", "6.12.117+deb12-amd64" -> "amd64", "5.15.0-91-generic" -> "generic".
pub fn flavour(release: &str) -> String {
    release
        .split('-')
        .skip(1)
        .skip_while(|t| t.starts_with(|c: char| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join("-")
}

impl ModuleEntry {
    fn check(&self) -> anyhow::Result<()> {
        let what = format!("module for {} ({})", self.kernel_release, self.arch);
        if !is_release(&self.kernel_release) {
            bail!("bad kernel_release {:?}", self.kernel_release);
        }
        if self.arch.is_empty()
            || !self
                .arch
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            bail!("{what}: bad arch {:?}", self.arch);
        }
        check_relative_path(&self.file).map_err(|e| anyhow!("{what}: {e}"))?;
        if self.size == 0 {
            bail!("{what}: size 0");
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            bail!(
                "{what}: sha256 {:?} is not 64 lower-case hex digits",
                self.sha256
            );
        }
        Ok(())
    }
}

/// What `uname -r` can print, and nothing a path or shell could misread.
pub fn is_release(release: &str) -> bool {
    !release.is_empty()
        && release.len() <= 128
        && !release.starts_with(['.', '-'])
        && release
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+_~-".contains(&b))
}

/// A manifest's `file`: relative, `/`-separated, no `..`, no odd characters,
/// so joining it to a URL or directory stays inside the repository.
pub fn check_relative_path(file: &str) -> anyhow::Result<()> {
    let ok_chars = file
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._+~-/".contains(&b));
    let ok_parts = file
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..");
    if file.is_empty() || file.len() > 512 || !ok_chars || !ok_parts {
        bail!("file {file:?} is not a plain relative path inside the repository");
    }
    Ok(())
}

// ------------------------------------------------------------------ index

/// What the index learns from a module file itself.
pub struct ModuleFacts {
    pub arch: String,
    pub release: String,
}

/// Reads the architecture (ELF e_machine) and kernel release (modinfo
/// vermagic) of a module, as the capture checks them.
pub fn module_facts(bytes: &[u8]) -> anyhow::Result<ModuleFacts> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        bail!("not a kernel module (no ELF header)");
    }
    let arch = match u16::from_le_bytes([bytes[18], bytes[19]]) {
        62 => "x86_64",
        183 => "aarch64",
        other => bail!("ELF machine {other} is not one mshot supports"),
    };
    let release = find_vermagic(bytes)
        .ok_or_else(|| anyhow!("no vermagic= in its modinfo: not a kernel module?"))?;
    if !is_release(&release) {
        bail!("vermagic names an odd kernel release {release:?}");
    }
    Ok(ModuleFacts {
        arch: arch.to_string(),
        release,
    })
}

/// Builds the manifest for every `*.ko` under `root/modules`, taking the
/// LiME version and build details from each `.ko.build.json` beside it.
pub fn index(root: &Path, description: Option<String>) -> anyhow::Result<RepoManifest> {
    let modules_dir = root.join("modules");
    let mut files = Vec::new();
    collect_modules(&modules_dir, &mut files)
        .with_context(|| format!("cannot list {}", modules_dir.display()))?;
    if files.is_empty() {
        bail!(
            "no *.ko under {}: build some first (mshot repo build --out {} RELEASE)",
            modules_dir.display(),
            root.display()
        );
    }
    files.sort();
    let mut modules = Vec::new();
    for path in files {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let facts = module_facts(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let relative = path
            .strip_prefix(root)
            .map_err(|_| anyhow!("{} is outside {}", path.display(), root.display()))?
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        check_relative_path(&relative).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let sidecar = PathBuf::from(format!("{}.build.json", path.display()));
        let (lime_version, build) = match std::fs::read(&sidecar) {
            Ok(text) => {
                read_build_json(&text, &facts).map_err(|e| anyhow!("{}: {e}", sidecar.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ("unknown".into(), BuildInfo::default())
            }
            Err(e) => bail!("cannot read {}: {e}", sidecar.display()),
        };
        modules.push(ModuleEntry {
            kernel_release: facts.release,
            arch: facts.arch,
            file: relative,
            size: bytes.len() as u64,
            sha256: crate::repository::sha256_hex(&bytes),
            lime_version,
            build,
        });
    }
    modules.sort_by(|a, b| (&a.arch, &a.kernel_release).cmp(&(&b.arch, &b.kernel_release)));
    let manifest = RepoManifest {
        format: FORMAT.into(),
        generated: jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        description,
        modules,
    };
    // The same checks a reader applies (duplicates, names).
    RepoManifest::parse(
        &manifest.to_json(),
        &root.join("manifest.json").display().to_string(),
    )?;
    Ok(manifest)
}

fn collect_modules(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            collect_modules(&path, out)?;
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "ko") {
            out.push(path);
        }
    }
    Ok(())
}

fn read_build_json(text: &[u8], facts: &ModuleFacts) -> anyhow::Result<(String, BuildInfo)> {
    #[derive(Deserialize)]
    struct Sidecar {
        kernel_release: Option<String>,
        arch: Option<String>,
        lime_version: Option<String>,
        #[serde(flatten)]
        build: BuildInfo,
    }
    let sidecar: Sidecar = serde_json::from_slice(text).map_err(|e| anyhow!("bad JSON: {e}"))?;
    if let Some(release) = &sidecar.kernel_release
        && *release != facts.release
    {
        bail!(
            "says kernel {release} but the module's vermagic says {}",
            facts.release
        );
    }
    if let Some(arch) = &sidecar.arch
        && *arch != facts.arch
    {
        bail!("says arch {arch} but the module is {}", facts.arch);
    }
    Ok((
        sidecar.lime_version.unwrap_or_else(|| "unknown".into()),
        sidecar.build,
    ))
}

/// The kernel release in a module's `vermagic=` modinfo string.
pub fn find_vermagic(module: &[u8]) -> Option<String> {
    let needle = b"vermagic=";
    let start = module.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let rest = &module[start..];
    let end = rest.iter().position(|&b| b == b' ' || b == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(release: &str, arch: &str) -> ModuleEntry {
        ModuleEntry {
            kernel_release: release.into(),
            arch: arch.into(),
            file: format!("modules/{arch}/lime-{release}.ko"),
            size: 10,
            sha256: "ab".repeat(32),
            lime_version: "1.9.1".into(),
            build: BuildInfo::default(),
        }
    }

    fn manifest(entries: Vec<ModuleEntry>) -> RepoManifest {
        RepoManifest {
            format: FORMAT.into(),
            generated: "2026-01-01T00:00:00Z".into(),
            description: None,
            modules: entries,
        }
    }

    #[test]
    fn round_trip_and_find() {
        let m = manifest(vec![
            entry("6.1.0-56-amd64", "x86_64"),
            entry("6.1.0-56-amd64", "aarch64"),
        ]);
        let parsed = RepoManifest::parse(&m.to_json(), "m").unwrap();
        assert_eq!(parsed, m);
        assert_eq!(
            parsed.find("6.1.0-56-amd64", "aarch64").unwrap().arch,
            "aarch64"
        );
        assert!(parsed.find("6.1.0-56", "x86_64").is_none());
        assert!(parsed.find("6.1.0-56-amd64", "i686").is_none());
    }

    #[test]
    fn refuses_bad_manifests() {
        let good = manifest(vec![entry("6.1.0-56-amd64", "x86_64")]);
        type Change = Box<dyn Fn(&mut RepoManifest)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "format",
                Box::new(|m| m.format = "mshot-module-repository/9".into()),
            ),
            (
                "ambiguous",
                Box::new(|m| m.modules.push(m.modules[0].clone())),
            ),
            (
                "parent dir",
                Box::new(|m| m.modules[0].file = "../etc/passwd".into()),
            ),
            (
                "absolute",
                Box::new(|m| m.modules[0].file = "/etc/passwd".into()),
            ),
            (
                "empty part",
                Box::new(|m| m.modules[0].file = "modules//x.ko".into()),
            ),
            (
                "url",
                Box::new(|m| m.modules[0].file = "http://evil/x.ko".into()),
            ),
            ("sha", Box::new(|m| m.modules[0].sha256 = "AB".repeat(32))),
            ("short sha", Box::new(|m| m.modules[0].sha256 = "ab".into())),
            ("size", Box::new(|m| m.modules[0].size = 0)),
            (
                "release",
                Box::new(|m| m.modules[0].kernel_release = "6.1; rm -rf /".into()),
            ),
            ("arch", Box::new(|m| m.modules[0].arch = "x86 64".into())),
        ];
        for (name, change) in cases {
            let mut m = good.clone();
            change(&mut m);
            assert!(
                RepoManifest::parse(&m.to_json(), "m").is_err(),
                "{name} accepted"
            );
        }
        assert!(RepoManifest::parse(b"{}", "m").is_err());
        assert!(RepoManifest::parse(b"<xml/>", "m").is_err());
        let error = RepoManifest::parse(b"[1]", "http://x/manifest.json").unwrap_err();
        assert!(error.to_string().starts_with("http://x/manifest.json: "));
    }

    #[test]
    fn flavours() {
        assert_eq!(flavour("6.1.0-56-amd64"), "amd64");
        assert_eq!(flavour("6.1.0-56-cloud-amd64"), "cloud-amd64");
        assert_eq!(flavour("6.12.117+deb12-cloud-amd64"), "cloud-amd64");
        assert_eq!(flavour("5.15.0-91-generic"), "generic");
        assert_eq!(flavour("5.10.210-201.852.amzn2.x86_64"), "");
    }

    #[test]
    fn closest_prefers_flavour_then_prefix() {
        let m = manifest(vec![
            entry("6.1.0-55-amd64", "x86_64"),
            entry("6.1.0-56-cloud-amd64", "x86_64"),
            entry("6.12.117+deb12-amd64", "x86_64"),
            entry("6.1.0-56-amd64", "aarch64"),
            entry("5.10.0-30-amd64", "x86_64"),
        ]);
        assert_eq!(
            m.closest("6.1.0-56-amd64", "x86_64", 3),
            ["6.1.0-55-amd64", "6.12.117+deb12-amd64", "5.10.0-30-amd64"]
        );
        assert_eq!(
            m.closest("6.1.0-57-cloud-amd64", "x86_64", 1),
            ["6.1.0-56-cloud-amd64"]
        );
        assert!(m.closest("6.1.0-56-amd64", "riscv64", 3).is_empty());
    }

    #[test]
    fn module_facts_from_elf() {
        let mut bytes = vec![0u8; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[18..20].copy_from_slice(&62u16.to_le_bytes());
        bytes.extend_from_slice(b"\0vermagic=6.1.0-56-amd64 SMP preempt mod_unload \0");
        let facts = module_facts(&bytes).unwrap();
        assert_eq!(
            (facts.arch.as_str(), facts.release.as_str()),
            ("x86_64", "6.1.0-56-amd64")
        );
        bytes[18] = 3;
        assert!(module_facts(&bytes).is_err());
        assert!(module_facts(b"not elf at all, not at all").is_err());
    }

    #[test]
    fn paths() {
        for ok in [
            "modules/x86_64/lime-6.1.0-56-amd64.ko",
            "lime.ko",
            "a/b+c~d.ko",
        ] {
            check_relative_path(ok).unwrap();
        }
        for bad in [
            "", "/x", "a/../b", "./a", "a/", "a b", "a\\b", "a?x", "%2e%2e/x",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?}");
        }
    }
}
