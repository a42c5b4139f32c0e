//! Finding the running kernel inside a physical image: where its banner
//! is, how far KASLR slid it (virtually and physically), which page-table
//! root (DTB) maps it, and whether that all reads back consistently.
//!
//! Strategy, cheapest first:
//! 1. Probe: the kernel image is physically contiguous and KASLR moves it
//!    in 2 MiB steps, so `linux_banner` can only sit at
//!    `link_pa(linux_banner) + n * 2 MiB`. Checking those few hundred spots
//!    touches a few pages instead of the whole image (RSS and time).
//! 2. VMCOREINFO: scan for the note and take KERNELOFFSET/phys_base.
//! 3. Volatility's way: scan for `init_task.comm` ("swapper/0").
//!
//! Every candidate is accepted only after `linux_banner`, read through the
//! new translation, matches the banner expected (the profile's, or the
//! bytes found physically). VMCOREINFO, when the kernel exposes it through
//! `vmcoreinfo_note`, is read and cross-checked.

mod arm64;
mod candidate;
mod locate;
mod vmcoreinfo;

pub use arm64::{is_arm64, vmcoreinfo_geometry};
pub use locate::{KERNEL_MAP, find_banners};
pub use vmcoreinfo::VmcoreInfo;

use crate::format::{FormatError, PhysicalMemory};
use crate::memory::{MemoryError, PagingMode, VirtualMemory};
use crate::profile::{Profile, ProfileError};

/// Errors from locating the kernel or reading its objects.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KernelError {
    #[error(
        "no Linux banner in the image: expected \"Linux version ...\" somewhere in physical memory, found none"
    )]
    NoBanner,
    #[error(
        "profile {profile} is for another kernel: expected banner \"{expected}\", image has \"{found}\""
    )]
    WrongProfile {
        profile: String,
        expected: String,
        found: String,
    },
    #[error(
        "kernel not located with profile {profile}: banner \"{banner}\" is in the image, but no init_task candidate validated ({detail})"
    )]
    NotLocated {
        profile: String,
        banner: String,
        detail: String,
    },
    #[error("the kernel is not where the machine says it is (profile {profile}): {detail}")]
    NotAsStated { profile: String, detail: String },
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("reading {what}: {source}")]
    Memory {
        what: String,
        #[source]
        source: MemoryError,
    },
    #[error("reading {what}: {source}")]
    Physical {
        what: String,
        #[source]
        source: FormatError,
    },
}

impl KernelError {
    /// Whether a live source failed underneath (see [`FormatError::Source`]).
    pub fn is_source_failure(&self) -> bool {
        match self {
            KernelError::Physical { source, .. } => source.is_source_failure(),
            KernelError::Memory {
                source: MemoryError::Physical { source, .. },
                ..
            } => source.is_source_failure(),
            _ => false,
        }
    }
}

fn no_statement(profile: &Profile) -> KernelError {
    KernelError::NotAsStated {
        profile: profile.name.clone(),
        detail: "it stated neither VMCOREINFO nor a \"Kernel code\" range in iomem".into(),
    }
}

/// A located kernel: everything a plugin needs to read kernel objects.
#[derive(Debug)]
pub struct Kernel<'p, 'a> {
    pub phys: &'p PhysicalMemory<'a>,
    pub profile: &'p Profile,
    /// Kernel address space (through the kernel's DTB).
    pub vm: VirtualMemory<'p, 'a>,
    /// Virtual KASLR slide: runtime VA = link VA + `aslr_shift`.
    pub aslr_shift: u64,
    /// Link address the physical shift counts from: `KERNEL_MAP` on x86-64,
    /// `_text` on AArch64.
    pub image_base: u64,
    /// Physical shift: PA = link VA - `image_base` + `phys_shift`
    /// (wrapping); on AArch64 this is PA(`_text`).
    pub phys_shift: u64,
    pub dtb: u64,
    pub mode: PagingMode,
    /// The banner as it is in memory, without the trailing NUL.
    pub banner: Vec<u8>,
    pub banner_pa: u64,
    pub vmcoreinfo: Option<VmcoreInfo>,
    /// Which strategy found the kernel ("probe", "vmcoreinfo", "swapper-scan").
    pub method: &'static str,
    /// What plugins noticed about the image that their rows cannot say
    /// (see [`Kernel::note`]); each said once.
    pub notes: std::sync::Mutex<Vec<String>>,
}

impl<'p, 'a> Kernel<'p, 'a> {
    /// Records something the reader of a plugin's output should know, such
    /// as a list repaired from its other end; repeats are dropped.
    pub fn note(&self, text: String) {
        let mut notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        if !notes.contains(&text) {
            notes.push(text);
        }
    }

    /// The notes recorded since the last call.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Locates the kernel described by `profile` in `phys`.
    pub fn locate(phys: &'p PhysicalMemory<'a>, profile: &'p Profile) -> Result<Self, KernelError> {
        if arm64::is_arm64(profile) {
            arm64::locate(phys, profile, true)
        } else {
            locate::locate(phys, profile, true)
        }
    }

    /// The kernel of a running machine, from what it states about itself:
    /// its VMCOREINFO note and the start of "Kernel code" in /proc/iomem.
    /// Each candidate is validated as `locate` validates what it finds, and
    /// nothing is searched, so this suits a live source.
    pub fn from_running(
        phys: &'p PhysicalMemory<'a>,
        profile: &'p Profile,
        info: Option<&VmcoreInfo>,
        kernel_code: Option<u64>,
    ) -> Result<Self, KernelError> {
        if arm64::is_arm64(profile) {
            let mut last = None;
            if let Some(info) = info {
                match arm64::from_vmcoreinfo(phys, profile, info) {
                    Ok(k) => return Ok(k),
                    Err(e) => last = Some(e),
                }
            }
            if let Some(code) = kernel_code {
                match arm64::at_text(phys, profile, code) {
                    Ok(k) => return Ok(k),
                    Err(e) => last = Some(e),
                }
            }
            return Err(last.unwrap_or_else(|| no_statement(profile)));
        }
        let mut shifts = Vec::new();
        if let Some(info) = info {
            let phys_base = info.number("phys_base").unwrap_or(0) as u64;
            shifts.push(phys_base);
            if let Some(offset) = info.kernel_offset() {
                shifts.push(phys_base.wrapping_add(offset));
            }
        }
        if let (Some(code), Ok(text)) = (kernel_code, profile.symbol("_text")) {
            shifts.push(code.wrapping_sub(text.wrapping_sub(KERNEL_MAP)));
        }
        shifts.dedup();
        let mut last = None;
        for shift in shifts {
            match locate::at_shift(phys, profile, shift) {
                Ok(k) => return Ok(k),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| no_statement(profile)))
    }

    /// Physical address of a kernel-image symbol's link address.
    pub fn image_pa(&self, link: u64) -> u64 {
        link.wrapping_sub(self.image_base)
            .wrapping_add(self.phys_shift)
    }

    /// How the kernel was found and how it translates, in one line.
    pub fn describe(&self) -> String {
        format!(
            "found by {}: {}, KASLR slide {:#x}, page tables at {:#x}",
            self.method,
            self.mode.describe(),
            self.aslr_shift,
            self.dtb
        )
    }

    pub fn is_aarch64(&self) -> bool {
        self.mode.is_aarch64()
    }

    /// Only the cheap probe; `Ok(None)` when it finds nothing. Used to pick
    /// a profile out of a directory without scanning the image per profile.
    pub fn probe(
        phys: &'p PhysicalMemory<'a>,
        profile: &'p Profile,
    ) -> Result<Option<Self>, KernelError> {
        let found = if arm64::is_arm64(profile) {
            arm64::locate(phys, profile, false)
        } else {
            locate::locate(phys, profile, false)
        };
        match found {
            Ok(k) => Ok(Some(k)),
            Err(KernelError::Profile(e)) => Err(KernelError::Profile(e)),
            Err(_) => Ok(None),
        }
    }

    /// Runtime address of a profile symbol.
    pub fn symbol(&self, name: &str) -> Result<u64, KernelError> {
        Ok(self.profile.symbol(name)?.wrapping_add(self.aslr_shift))
    }

    pub fn read_u64(&self, va: u64, what: impl FnOnce() -> String) -> Result<u64, KernelError> {
        self.vm.read_u64(va).map_err(|source| KernelError::Memory {
            what: what(),
            source,
        })
    }

    pub fn read(
        &self,
        va: u64,
        buf: &mut [u8],
        what: impl FnOnce() -> String,
    ) -> Result<(), KernelError> {
        self.vm.read(va, buf).map_err(|source| KernelError::Memory {
            what: what(),
            source,
        })
    }

    /// Reads `st.field` of the object at `obj` as an integer, honouring its
    /// width, sign, bitfield and wrappers such as `kuid_t`.
    pub fn read_int(&self, obj: u64, st: &str, field: &str) -> Result<i128, KernelError> {
        let f = self.profile.field(st, field)?;
        let layout = self.profile.int_layout(&f.ty).ok_or_else(|| {
            KernelError::Profile(ProfileError::Malformed {
                expected: format!("an integer type for {st}.{field}"),
                found: format!("{:?}", f.ty),
            })
        })?;
        let raw = self
            .vm
            .read_uint(
                obj.wrapping_add(f.offset),
                usize::try_from(layout.size).unwrap_or(8),
            )
            .map_err(|source| KernelError::Memory {
                what: format!("{st}.{field} of {obj:#x}"),
                source,
            })?;
        Ok(layout.decode(raw))
    }
}
