//! `mshot profile export`: the profile built from a capture's material,
//! written as a Volatility 3 ISF (or a Rekall profile), so the capture can
//! also be opened with those tools. `mshot profile build`: the same from a
//! kernel's debug vmlinux.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use memimage::material::{Codec, compress};
use memimage::profile::Selection;
use memimage::{PhysicalMemory, Profile};

use crate::cli::{BuildArgs, ExportArgs, ExportFormat, ProfileArgs, ProfileCommand, ProfileOutput};

pub fn run(args: &ProfileArgs) -> anyhow::Result<()> {
    match &args.command {
        ProfileCommand::Export(a) => export(a),
        ProfileCommand::Build(a) => build(a),
    }
}

fn refuse_existing(output: &Path, force: bool) -> anyhow::Result<()> {
    if output.exists() && !force {
        bail!(
            "{} already exists: choose another -o, or pass --force to replace it",
            output.display()
        );
    }
    Ok(())
}

fn build(args: &BuildArgs) -> anyhow::Result<()> {
    refuse_existing(&args.out.output, args.out.force)?;
    let file = std::fs::File::open(&args.vmlinux)
        .with_context(|| format!("opening {}", args.vmlinux.display()))?;
    // SAFETY: read-only map of a file this process only reads.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", args.vmlinux.display()))?;
    let v = memimage::material::vmlinux::read(&map)
        .with_context(|| format!("{}", args.vmlinux.display()))?;
    let material = memimage::material::Material {
        btf: Some(&v.btf),
        kallsyms: Some(&v.symbols),
        iomem: None,
        version: v.banner.as_deref(),
    };
    let (doc, derived) = material
        .isf(&Selection::All)
        .with_context(|| format!("profile from {}", args.vmlinux.display()))?;
    eprintln!(
        "mshot: profile from {} ({}): {} BTF types, {} symbols{}",
        args.vmlinux.display(),
        v.machine,
        derived.btf_types,
        derived.symbols,
        if v.banner.is_some() {
            ""
        } else {
            "; no linux_banner, so the profile cannot be matched to an image by its banner"
        }
    );
    write_profile(&doc, &args.out)
}

fn codec_for(path: &Path) -> Codec {
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        Codec::Xz
    } else if name.ends_with(".gz") {
        Codec::Gzip
    } else {
        Codec::Plain
    }
}

fn export(args: &ExportArgs) -> anyhow::Result<()> {
    refuse_existing(&args.out.output, args.out.force)?;
    let (dir, image) = if args.input.is_dir() {
        (args.input.clone(), None)
    } else if args.input.is_file() {
        (
            crate::record::material::dir_for(&args.input),
            Some(&args.input),
        )
    } else {
        bail!(
            "{} does not exist: expected a memory image or its NAME.material directory",
            args.input.display()
        );
    };
    if !dir.is_dir() {
        bail!(
            "no capture material at {}: only images captured by mshot from a target with /sys/kernel/btf/vmlinux carry one",
            dir.display()
        );
    }
    // With the image, the BTF is checked against (or taken from) its kernel.
    let map = match image {
        Some(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("opening image {}", path.display()))?;
            // SAFETY: read-only map of a finished capture file.
            Some(
                unsafe { memmap2::Mmap::map(&file) }
                    .with_context(|| format!("mapping image {}", path.display()))?,
            )
        }
        None => None,
    };
    let phys = match &map {
        Some(m) => Some(PhysicalMemory::parse(m).context("reading the image")?),
        None => None,
    };
    let (doc, summary, notes) = crate::analysis::material::isf_for(&dir, phys.as_ref())?;
    eprintln!("mshot: {summary}");
    for n in &notes {
        eprintln!("mshot: note: {n}");
    }
    write_profile(&doc, &args.out)
}

/// Writes `doc` in `out.format` to `out.output` (compressed by its
/// extension), whole or not at all.
fn write_profile(doc: &serde_json::Value, out: &ProfileOutput) -> anyhow::Result<()> {
    let output = out.output.as_path();
    let json = match out.format {
        ExportFormat::Isf => serde_json::to_vec(doc)?,
        ExportFormat::Rekall => {
            let bytes = serde_json::to_vec(doc)?;
            let p = Profile::load_with(&bytes, "material", &Selection::All)?;
            serde_json::to_vec(&p.to_rekall_json())?
        }
    };
    let data = compress(&json, codec_for(output)).context("compressing the profile")?;
    let mut tmp = output.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, &data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, output)
        .with_context(|| format!("renaming {} to {}", tmp.display(), output.display()))?;
    eprintln!(
        "mshot: wrote {} ({} bytes, {} uncompressed)",
        output.display(),
        data.len(),
        json.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_by_extension() {
        assert_eq!(codec_for(Path::new("a.json.xz")), Codec::Xz);
        assert_eq!(codec_for(Path::new("a.json.gz")), Codec::Gzip);
        assert_eq!(codec_for(Path::new("a.json")), Codec::Plain);
    }
}
