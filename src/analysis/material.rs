//! Reading capture-time material back (`NAME.material/`, written by
//! `material`): each file is checked against `index.json`, the BTF against
//! the kernel's own copy in the image, and kallsyms/iomem against the
//! located kernel; what cannot be trusted is replaced (the image's BTF) or
//! refused with a one-line reason that names `--profile` as the way out.
//!
//! Kept apart from `material` (the SSH side) so that it depends on nothing
//! but memimage, serde and the file system.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use memimage::material::{self, Derived, Material};
use memimage::profile::Selection;
use memimage::{Kernel, PhysicalMemory, Profile};
use sha2::{Digest, Sha256};

use crate::record::material::{FILES, INDEX, MaterialRecord, dir_for};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    for file in FILES {
        let path = dir.join(file);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if let Some(want) = index
            .as_ref()
            .and_then(|i| i.files.iter().find(|f| f.name == *file))
        {
            let got = hex(&Sha256::digest(&bytes));
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
        disk.files.insert(file.to_string(), bytes);
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
    profile_from(&read_dir(dir)?, phys, sel)
}

/// Builds a profile from material held in memory (a running host's, read
/// just now), with no image to check it against.
pub fn load_files(
    label: &str,
    files: std::collections::BTreeMap<String, Vec<u8>>,
    sel: &Selection,
) -> anyhow::Result<(Profile, MaterialCheck)> {
    let held = OnDisk {
        dir: PathBuf::from(label),
        files,
        notes: Vec::new(),
    };
    profile_from(&held, None, sel)
}

fn profile_from(
    material: &OnDisk,
    phys: Option<&PhysicalMemory<'_>>,
    sel: &Selection,
) -> anyhow::Result<(Profile, MaterialCheck)> {
    let label = format!("material:{}", material.dir.display());
    let (profile, derived, summary, notes) = build(material, phys, |m, btf| {
        m.profile_with_btf(btf, &label, sel)
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
    use crate::record::material::MaterialFile;

    #[test]
    fn material_dir_is_a_sidecar() {
        assert_eq!(
            dir_for(Path::new("/c/web1.lime")),
            Path::new("/c/web1.material")
        );
        assert_eq!(dir_for(Path::new("img")), Path::new("img.material"));
    }

    #[test]
    fn damaged_files_are_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let record = MaterialRecord {
            dir: "x.material".into(),
            files: vec![MaterialFile {
                name: "version".into(),
                source: "cat /proc/version".into(),
                bytes: 3,
                sha256: hex(&Sha256::digest(b"v1\n")),
            }],
            missing: vec![],
        };
        std::fs::write(dir.join(INDEX), serde_json::to_vec(&record).unwrap()).unwrap();
        std::fs::write(dir.join("version"), b"v1\n").unwrap();
        assert!(read_dir(dir).unwrap().files.contains_key("version"));
        std::fs::write(dir.join("version"), b"v2\n").unwrap();
        let disk = read_dir(dir).unwrap();
        assert!(disk.files.is_empty());
        assert!(
            disk.notes[0].contains("changed since the capture"),
            "{:?}",
            disk.notes
        );
    }
}
