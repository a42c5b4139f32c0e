//! Capture-time profile material: what a running target says about its own
//! kernel (`/sys/kernel/btf/vmlinux`, `/proc/kallsyms`, `/proc/iomem`,
//! `/proc/version`), turned into a [`Profile`] with no debug symbols.
//!
//! - Types come from BTF ([`btf`]), converted to an ISF document
//!   ([`Material::isf`]) that the ordinary ISF loader reads, so analysis and
//!   `profile export` (Volatility 3) see one and the same profile.
//! - Addresses come from kallsyms, made link-time by subtracting the slide
//!   (`_text` minus its link address), so discovery works as with any ISF.
//! - The banner is `/proc/version`, which prints `linux_banner` byte for byte.
//!
//! Material can be stale or damaged, so after the kernel is located
//! [`verify`] compares it with the image: the KASLR slide and the physical
//! load address (another boot?), and the BTF against the kernel's own copy
//! at `__start_BTF` in memory. [`btf_from_image`] recovers that copy when
//! the material's BTF is missing or broken.

pub mod btf;
mod isf;
pub mod kallsyms;
pub mod vmlinux;

pub use btf::{Btf, BtfError};
pub use isf::SYMBOL_TYPES;
pub use kallsyms::{Kallsyms, KallsymsError, LINK_TEXT, LINK_TEXT_ARM64, iomem_kernel_code};

use crate::format::PhysicalMemory;
use crate::kernel::Kernel;
use crate::profile::{Profile, ProfileError, Selection};

/// Errors that make material unusable as a profile.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MaterialError {
    #[error("no BTF (the target had no readable /sys/kernel/btf/vmlinux)")]
    NoBtf,
    #[error("BTF: {0}")]
    Btf(#[from] BtfError),
    #[error("no kallsyms (the target's /proc/kallsyms was not captured)")]
    NoKallsyms,
    #[error("kallsyms: {0}")]
    Kallsyms(#[from] KallsymsError),
    #[error("BTF has no struct {0}: expected the kernel's vmlinux BTF")]
    MissingType(&'static str),
    #[error("profile built from the material: {0}")]
    Profile(#[from] ProfileError),
}

/// The material files' bytes, as the target printed them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Material<'a> {
    pub btf: Option<&'a [u8]>,
    pub kallsyms: Option<&'a [u8]>,
    pub iomem: Option<&'a [u8]>,
    pub version: Option<&'a [u8]>,
}

/// Facts taken from the material, for [`verify`] and for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    /// Virtual KASLR slide of the boot kallsyms came from.
    pub slide: u64,
    /// Physical address of `_text` from /proc/iomem ("Kernel code").
    pub kernel_code: Option<u64>,
    /// Link-time address given to `_text` (by architecture).
    pub link_text: u64,
    /// Link-time address and length of the kernel's BTF in memory.
    pub start_btf: Option<u64>,
    pub btf_len: u64,
    pub btf_types: u32,
    pub symbols: usize,
}

/// Structs without which no plugin can run; their absence means the BTF
/// is not a kernel's vmlinux BTF.
const REQUIRED: &[&str] = &["task_struct", "list_head", "mm_struct"];

impl<'a> Material<'a> {
    /// The material as an ISF document keeping `sel`, plus derived facts.
    pub fn isf(&self, sel: &Selection) -> Result<(serde_json::Value, Derived), MaterialError> {
        self.isf_with_btf(self.btf.ok_or(MaterialError::NoBtf)?, sel)
    }

    /// Same, with BTF bytes from elsewhere (e.g. [`btf_from_image`]).
    pub fn isf_with_btf(
        &self,
        btf_bytes: &[u8],
        sel: &Selection,
    ) -> Result<(serde_json::Value, Derived), MaterialError> {
        let ks = Kallsyms::parse(self.kallsyms.ok_or(MaterialError::NoKallsyms)?)?;
        let btf = Btf::parse(btf_bytes)?;
        for t in REQUIRED {
            let found = btf
                .iter()
                .any(|(_, k)| matches!(k, btf::Kind::Struct { name, .. } if name == t));
            if !found {
                return Err(MaterialError::MissingType(t));
            }
        }
        let banner = self.version.map(|v| {
            let mut b = v.to_vec();
            b.push(0);
            b
        });
        let doc = isf::build(
            &btf,
            &isf::Inputs {
                kallsyms: &ks,
                banner: banner.as_deref(),
            },
            sel,
        );
        let derived = Derived {
            slide: ks.slide(),
            kernel_code: self.iomem.and_then(iomem_kernel_code),
            link_text: ks.link_text(),
            start_btf: ks.link("__start_BTF"),
            btf_len: btf_bytes.len() as u64,
            btf_types: btf.len(),
            symbols: ks.len(),
        };
        Ok((doc, derived))
    }

    /// A profile for analysis (only what `sel` keeps), plus derived facts.
    pub fn profile(
        &self,
        name: &str,
        sel: &Selection,
    ) -> Result<(Profile, Derived), MaterialError> {
        self.profile_with_btf(self.btf.ok_or(MaterialError::NoBtf)?, name, sel)
    }

    pub fn profile_with_btf(
        &self,
        btf_bytes: &[u8],
        name: &str,
        sel: &Selection,
    ) -> Result<(Profile, Derived), MaterialError> {
        let (doc, derived) = self.isf_with_btf(btf_bytes, sel)?;
        let bytes = serde_json::to_vec(&doc).map_err(|e| ProfileError::Json(e.to_string()))?;
        let profile = Profile::load_with(&bytes, name, &Selection::All)?;
        Ok((profile, derived))
    }
}

/// What [`verify`] found when comparing material with the located kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// kallsyms and iomem match this boot of the kernel.
    pub same_boot: bool,
    /// Explanations, one sentence each, for the user.
    pub notes: Vec<String>,
    /// The kernel's own BTF in the image differs from the material's
    /// (or could not be read): `Some(true)` equal, `Some(false)` differs.
    pub btf_matches: Option<bool>,
}

/// Compares material with the kernel located in the image.
pub fn verify(kernel: &Kernel<'_, '_>, derived: &Derived, btf_bytes: &[u8]) -> Verdict {
    let mut v = Verdict {
        same_boot: true,
        ..Verdict::default()
    };
    if kernel.aslr_shift != derived.slide {
        v.same_boot = false;
        v.notes.push(format!(
            "kallsyms is from another boot: its KASLR slide is {:#x}, the image's is {:#x}; the kernel build matches (same banner), so the image's own slide is used",
            derived.slide, kernel.aslr_shift
        ));
    }
    if let Some(code) = derived.kernel_code {
        let image_text = kernel.image_pa(derived.link_text);
        if code != image_text {
            v.same_boot = false;
            v.notes.push(format!(
                "iomem is from another boot: \"Kernel code\" starts at {code:#x}, the image's kernel at {image_text:#x}; the image's own address is used"
            ));
        }
    }
    if let Some(start) = derived.start_btf {
        let va = start.wrapping_add(kernel.aslr_shift);
        let mut buf = vec![0u8; btf_bytes.len()];
        v.btf_matches = Some(kernel.vm.read(va, &mut buf).is_ok() && buf == btf_bytes);
        if v.btf_matches == Some(false) {
            v.notes.push(format!(
                "the BTF differs from the kernel's own BTF at __start_BTF ({va:#x}) in the image"
            ));
        }
    }
    v
}

const BTF_HEADER: &[u8] = &[0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
/// The kernel's BTF is a few MB; anything beyond this is not one.
const MAX_BTF: u64 = 64 << 20;

/// The kernel's own BTF, copied out of the image: at the physical address
/// kallsyms and iomem give (`__start_BTF - _text + Kernel code`) when both
/// are known, else the largest BTF blob found by scanning (modules' split
/// BTF blobs are much smaller and fail [`Btf::parse`]).
pub fn btf_from_image(phys: &PhysicalMemory<'_>, material: &Material<'_>) -> Option<Vec<u8>> {
    let read_at = |pa: u64| -> Option<Vec<u8>> {
        let mut head = [0u8; 24];
        phys.read(pa, &mut head).ok()?;
        let len = btf::announced_len(&head)?;
        if len > MAX_BTF {
            return None;
        }
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        phys.read(pa, &mut buf).ok()?;
        Btf::parse(&buf).ok()?;
        Some(buf)
    };
    let hint = (|| {
        let ks = Kallsyms::parse(material.kallsyms?).ok()?;
        let code = iomem_kernel_code(material.iomem?)?;
        let off = ks.runtime("__start_BTF")?.checked_sub(ks.text)?;
        Some(code + off)
    })();
    if let Some(b) = hint.and_then(read_at) {
        return Some(b);
    }
    let hits = phys.find_all(BTF_HEADER, 64).ok()?;
    let mut best: Option<Vec<u8>> = None;
    for pa in hits {
        if let Some(b) = read_at(pa)
            && best.as_ref().is_none_or(|x| b.len() > x.len())
        {
            best = Some(b);
        }
    }
    best
}

/// How an exported profile file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Plain,
    Xz,
    Gzip,
}

/// Compresses an exported profile (xz preset 6, as dwarf2json users do;
/// gzip level 6).
pub fn compress(data: &[u8], codec: Codec) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    match codec {
        Codec::Plain => Ok(data.to_vec()),
        Codec::Xz => {
            let mut e = liblzma::write::XzEncoder::new(Vec::with_capacity(data.len() / 8), 6);
            e.write_all(data)?;
            e.finish()
        }
        Codec::Gzip => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 6),
                flate2::Compression::new(6),
            );
            e.write_all(data)?;
            e.finish()
        }
    }
}

#[cfg(test)]
mod tests;
