//! Capture-time profile material: what the target says about its own kernel,
//! fetched before LiME loads and stored beside the image, so the image can be
//! analysed (and exported as a Volatility 3 ISF) with no profile at all.
//!
//! Layout: `NAME.lime` gets a sidecar directory `NAME.material/` holding the
//! files exactly as the target printed them (`vmlinux.btf`, `kallsyms`,
//! `iomem`, `version`, `uname`, `os-release`, `cmdline`) and `index.json`,
//! which lists each with its source command, size and SHA-256 (the manifest
//! carries the same list). A directory rather than a bundle: every file can
//! be checked with `sha256sum` and read with `less`. It is written as
//! `NAME.material.part/` and renamed only once complete, and only when the
//! image itself was kept.
//!
//! Reading it back is `material_load`'s job.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

pub use crate::record::material::{INDEX, MaterialFile, MaterialRecord, MissingFile, dir_for};
use crate::target::shell::Shell;

/// One file of material and the command that produced it on the target.
struct Source {
    file: &'static str,
    command: &'static str,
    /// kallsyms shows zero addresses, and BTF/iomem may be unreadable, without root.
    root: bool,
}

/// What is fetched, in order. Fixed strings: nothing here needs quoting.
const SOURCES: &[Source] = &[
    Source {
        file: "vmlinux.btf",
        command: "cat /sys/kernel/btf/vmlinux",
        root: true,
    },
    Source {
        file: "kallsyms",
        command: "cat /proc/kallsyms",
        root: true,
    },
    Source {
        file: "iomem",
        command: "cat /proc/iomem",
        root: true,
    },
    Source {
        file: "version",
        command: "cat /proc/version",
        root: false,
    },
    Source {
        file: "uname",
        command: "uname -a",
        root: false,
    },
    Source {
        file: "os-release",
        command: "cat /etc/os-release",
        root: false,
    },
    Source {
        file: "cmdline",
        command: "cat /proc/cmdline",
        root: false,
    },
];

/// Material fetched from the target, held in memory until the image lands.
pub struct Fetched {
    record: MaterialRecord,
    contents: Vec<(&'static str, Vec<u8>)>,
}

impl Fetched {
    pub fn record(&self) -> &MaterialRecord {
        &self.record
    }

    /// Each fetched file with its record (name, SHA-256), for the bucket.
    pub fn files(&self) -> impl Iterator<Item = (&MaterialFile, &[u8])> {
        self.contents.iter().filter_map(|(name, bytes)| {
            let file = self.record.files.iter().find(|f| f.name == *name)?;
            Some((file, bytes.as_slice()))
        })
    }
}

/// Fetches every source; never fails the capture: what the target cannot
/// give is recorded as missing.
pub async fn fetch(shell: &Shell<'_>) -> Fetched {
    fetch_only(shell, |_| true).await
}

/// Fetches the sources whose file name `want` accepts.
pub async fn fetch_only(shell: &Shell<'_>, want: impl Fn(&str) -> bool) -> Fetched {
    let mut fetched = Fetched {
        record: MaterialRecord::default(),
        contents: Vec::new(),
    };
    for s in SOURCES.iter().filter(|s| want(s.file)) {
        let out = if s.root {
            shell.run_root(s.command, &[], None).await
        } else {
            shell.run_plain(s.command).await
        };
        let error = match out {
            Ok(out) if out.success() && !out.stdout.is_empty() => {
                fetched.record.files.push(MaterialFile {
                    name: s.file.into(),
                    source: s.command.into(),
                    bytes: out.stdout.len() as u64,
                    sha256: hex::encode(Sha256::digest(&out.stdout)),
                });
                fetched.contents.push((s.file, out.stdout));
                continue;
            }
            Ok(out) if out.success() => "empty output".to_string(),
            Ok(out) => format!("{}: {}", out.describe_status(), out.stderr_line()),
            Err(e) => format!("{e:#}"),
        };
        // Common and harmless (no /etc/os-release on a busybox host); the
        // manifest records it, and -v shows it.
        tracing::debug!("profile material: {} unavailable: {error}", s.command);
        fetched.record.missing.push(MissingFile {
            name: s.file.into(),
            source: s.command.into(),
            error,
        });
    }
    fetched
}

/// Stores fetched material beside a kept image and returns the manifest
/// record; with no image, only the record (hashes, no files). A storage
/// failure is logged and recorded, never fatal: the image is what counts.
pub fn finish(fetched: Option<Fetched>, image: Option<&Path>) -> Option<MaterialRecord> {
    let fetched = fetched?;
    let Some(image) = image else {
        return Some(fetched.record);
    };
    match store(image, &fetched) {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::warn!("cannot store the profile material: {e:#}");
            let mut record = fetched.record;
            record.missing.push(MissingFile {
                name: "(all)".into(),
                source: dir_for(image).display().to_string(),
                error: format!("not stored: {e:#}"),
            });
            Some(record)
        }
    }
}

fn store(image: &Path, fetched: &Fetched) -> anyhow::Result<MaterialRecord> {
    let dir = dir_for(image);
    let mut part = dir.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let _ = std::fs::remove_dir_all(&part);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&part)
            .with_context(|| format!("creating {}", part.display()))?;
    }
    let mut record = fetched.record.clone();
    record.dir = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let result = (|| -> anyhow::Result<()> {
        for (name, bytes) in &fetched.contents {
            crate::util::fs::write_small_file(&part.join(name), bytes)
                .with_context(|| format!("writing {}", part.join(name).display()))?;
        }
        let mut index = serde_json::to_vec_pretty(&record)?;
        index.push(b'\n');
        crate::util::fs::write_small_file(&part.join(INDEX), &index)?;
        std::fs::rename(&part, &dir)
            .with_context(|| format!("renaming {} to {}", part.display(), dir.display()))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&part);
        return Err(e);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_writes_files_and_an_index_once() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("h.lime");
        let fetched = || Fetched {
            record: MaterialRecord {
                dir: String::new(),
                files: vec![MaterialFile {
                    name: "version".into(),
                    source: "cat /proc/version".into(),
                    bytes: 4,
                    sha256: hex::encode(Sha256::digest(b"v1\n\0")),
                }],
                missing: vec![],
            },
            contents: vec![("version", b"v1\n\0".to_vec())],
        };
        let rec = finish(Some(fetched()), Some(&image)).unwrap();
        assert_eq!(rec.dir, "h.material");
        let dir = tmp.path().join("h.material");
        assert_eq!(std::fs::read(dir.join("version")).unwrap(), b"v1\n\0");
        let index: MaterialRecord =
            serde_json::from_slice(&std::fs::read(dir.join(INDEX)).unwrap()).unwrap();
        assert_eq!(index.files[0].sha256, rec.files[0].sha256);
        assert!(!tmp.path().join("h.material.part").exists());
        // A second capture under the same name does not overwrite it.
        let rec = finish(Some(fetched()), Some(&image)).unwrap();
        assert!(
            rec.missing
                .iter()
                .any(|m| m.error.contains("already exists"))
        );
        // Damage is noticed on reading.
        std::fs::write(dir.join("version"), b"v2\n").unwrap();
        let e =
            crate::analysis::material::load_dir(&dir, None, &memimage::profile::Selection::PLUGINS)
                .err()
                .unwrap()
                .to_string();
        assert!(
            e.contains("no usable kallsyms") && e.contains("--profile"),
            "{e}"
        );
    }

    #[test]
    fn sources_are_the_files_read_back() {
        let names: Vec<&str> = SOURCES.iter().map(|s| s.file).collect();
        assert_eq!(names, crate::record::material::FILES);
    }
}
