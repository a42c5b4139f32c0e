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
//! Reading it back ([`load_for_image`]) checks each file against the index,
//! and the BTF against the kernel's own copy in the image; what cannot be
//! trusted is replaced (the image's BTF) or refused with a one-line reason.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use memimage::material::{self, Derived, Material};
use memimage::profile::Selection;
use memimage::{Kernel, PhysicalMemory, Profile};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::shell::Shell;

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

/// Material fetched from the target, held in memory until the image lands.
pub struct Fetched {
    record: MaterialRecord,
    contents: Vec<(&'static str, Vec<u8>)>,
}

/// Fetches every source; never fails the capture: what the target cannot
/// give is recorded as missing.
pub async fn fetch(shell: &Shell<'_>) -> Fetched {
    let mut fetched = Fetched {
        record: MaterialRecord::default(),
        contents: Vec::new(),
    };
    for s in SOURCES {
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
        tracing::info!("profile material: {} unavailable: {error}", s.command);
        fetched.record.missing.push(MissingFile {
            name: s.file.into(),
            source: s.command.into(),
            error,
        });
    }
    fetched
}

/// `dir/NAME.lime` -> `dir/NAME.material`.
pub fn dir_for(image: &Path) -> PathBuf {
    crate::manifest::sidecar_path(image, "material")
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
            crate::sink::write_small_file(&part.join(name), bytes)
                .with_context(|| format!("writing {}", part.join(name).display()))?;
        }
        let mut index = serde_json::to_vec_pretty(&record)?;
        index.push(b'\n');
        crate::sink::write_small_file(&part.join(INDEX), &index)?;
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

/// Material read back from disk.
struct OnDisk {
    dir: PathBuf,
    files: std::collections::BTreeMap<String, Vec<u8>>,
    /// Files whose bytes differ from the index (damaged since the capture).
    notes: Vec<String>,
}

fn read_dir(dir: &Path) -> anyhow::Result<OnDisk> {
    let mut disk = OnDisk {
        dir: dir.to_path_buf(),
        files: Default::default(),
        notes: Vec::new(),
    };
    let index: Option<MaterialRecord> = std::fs::read(dir.join(INDEX))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if index.is_none() {
        disk.notes.push(format!(
            "{} has no readable {INDEX}: file hashes not checked",
            dir.display()
        ));
    }
    for s in SOURCES {
        let path = dir.join(s.file);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if let Some(want) = index
            .as_ref()
            .and_then(|i| i.files.iter().find(|f| f.name == s.file))
        {
            let got = hex::encode(Sha256::digest(&bytes));
            if got != want.sha256 {
                disk.notes.push(format!(
                    "{} changed since the capture ({} bytes, SHA-256 {}; the index says {} bytes, {}): not used",
                    path.display(),
                    bytes.len(),
                    &got[..16],
                    want.bytes,
                    &want.sha256[..want.sha256.len().min(16)]
                ));
                continue;
            }
        }
        disk.files.insert(s.file.to_string(), bytes);
    }
    Ok(disk)
}

/// What was learnt while building a profile from material.
pub struct MaterialCheck {
    pub derived: Derived,
    /// One line: where the profile came from.
    pub summary: String,
    /// Problems found and how they were handled.
    pub notes: Vec<String>,
}

impl MaterialCheck {
    /// After the kernel is located: did kallsyms and iomem come from this
    /// boot? (A different boot of the same build still analyses correctly.)
    pub fn check_kernel(&mut self, kernel: &Kernel<'_, '_>) {
        let v = material::verify(kernel, &self.derived, &[]);
        self.notes.extend(v.notes);
    }
}

/// Builds the profile for `image` from the material beside it. Errors say
/// what is missing or damaged and that `--profile` is the way out.
pub fn load_for_image(
    image: &Path,
    phys: &PhysicalMemory<'_>,
    sel: &Selection,
) -> anyhow::Result<(Profile, MaterialCheck)> {
    let dir = dir_for(image);
    if !dir.is_dir() {
        bail!(
            "no kernel profile: {} has no capture material beside it (expected {}, written by `mshot` captures of targets with /sys/kernel/btf/vmlinux); pass --profile FILE|DIR (a Volatility 3 ISF or Rekall profile, or a directory of them)",
            image.display(),
            dir.display()
        );
    }
    load_dir(&dir, Some(phys), sel)
}

/// Builds a profile from a material directory; with `phys`, the BTF is
/// checked against (and if need be replaced by) the image's own copy.
pub fn load_dir(
    dir: &Path,
    phys: Option<&PhysicalMemory<'_>>,
    sel: &Selection,
) -> anyhow::Result<(Profile, MaterialCheck)> {
    let disk = read_dir(dir)?;
    let (profile, derived, summary, notes) = build(&disk, phys, |m, btf| {
        m.profile_with_btf(btf, &format!("material:{}", dir.display()), sel)
            .map_err(anyhow::Error::from)
    })?;
    Ok((
        profile,
        MaterialCheck {
            derived,
            summary,
            notes,
        },
    ))
}

/// The whole material as a Volatility 3 ISF document (for `profile export`).
pub fn isf_for(
    dir: &Path,
    phys: Option<&PhysicalMemory<'_>>,
) -> anyhow::Result<(serde_json::Value, String, Vec<String>)> {
    let disk = read_dir(dir)?;
    let (doc, _, summary, notes) = build(&disk, phys, |m, btf| {
        m.isf_with_btf(btf, &Selection::All)
            .map_err(anyhow::Error::from)
    })?;
    Ok((doc, summary, notes))
}

type Built<T> = (T, Derived, String, Vec<String>);

fn build<T>(
    disk: &OnDisk,
    phys: Option<&PhysicalMemory<'_>>,
    make: impl Fn(&Material<'_>, &[u8]) -> anyhow::Result<(T, Derived)>,
) -> anyhow::Result<Built<T>> {
    let get = |n: &str| disk.files.get(n).map(Vec::as_slice);
    let m = Material {
        btf: get("vmlinux.btf"),
        kallsyms: get("kallsyms"),
        iomem: get("iomem"),
        version: get("version"),
    };
    let mut notes = disk.notes.clone();
    let d = disk.dir.display();
    if m.kallsyms.is_none() {
        bail!(
            "capture material {d} has no usable kallsyms, so kernel addresses are unknown; pass --profile FILE|DIR"
        );
    }
    if m.version.is_none() {
        notes.push(format!(
            "{d} has no version file: the kernel is found without its banner"
        ));
    }
    let own_btf = match &m.btf {
        Some(b) => match material::Btf::parse(b) {
            Ok(_) => None,
            Err(e) => Some(format!("{d}/vmlinux.btf is unusable ({e})")),
        },
        None => Some(format!("{d} has no vmlinux.btf")),
    };
    // The kernel keeps its BTF in memory: compare, or take it from there.
    let image_btf = phys.and_then(|p| material::btf_from_image(p, &m));
    let (btf, source): (&[u8], String) = match (own_btf, &image_btf, m.btf) {
        (None, Some(img), Some(mine)) if img.as_slice() == mine => {
            (mine, "BTF checked against the image".into())
        }
        (None, Some(img), Some(_)) => {
            notes.push(format!(
                "{d}/vmlinux.btf differs from the kernel's own BTF in the image: using the image's"
            ));
            (img.as_slice(), "BTF from the image".into())
        }
        (None, None, Some(mine)) => (
            mine,
            if phys.is_some() {
                notes.push("the kernel's own BTF was not found in the image: the material's BTF is used unchecked".into());
                "BTF unchecked".into()
            } else {
                "BTF".into()
            },
        ),
        (Some(problem), Some(img), _) => {
            notes.push(format!(
                "{problem}: using the kernel's own BTF from the image"
            ));
            (img.as_slice(), "BTF from the image".into())
        }
        (Some(problem), None, _) => bail!(
            "{problem}, and the image holds no BTF of its own{}; pass --profile FILE|DIR",
            if phys.is_none() {
                " (no image given)"
            } else {
                ""
            }
        ),
        (None, _, None) => bail!("{d} has no vmlinux.btf; pass --profile FILE|DIR"),
    };
    let (out, derived) = make(&m, btf).with_context(|| format!("capture material {d}"))?;
    let summary = format!(
        "profile from capture material {d}: {} BTF types ({source}), {} kallsyms symbols",
        derived.btf_types, derived.symbols
    );
    Ok((out, derived, summary, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_dir_is_a_sidecar() {
        assert_eq!(
            dir_for(Path::new("/c/web1.lime")),
            Path::new("/c/web1.material")
        );
    }

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
        let disk = read_dir(&dir).unwrap();
        assert!(disk.files.is_empty());
        assert!(
            disk.notes[0].contains("changed since the capture"),
            "{:?}",
            disk.notes
        );
        // No material: the error names the directory and --profile.
        let e = build(&disk, None, |_, _| -> anyhow::Result<((), Derived)> {
            unreachable!()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("no usable kallsyms") && e.contains("--profile"),
            "{e}"
        );
    }
}
