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

mod locate;
mod vmcoreinfo;

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

/// A located kernel: everything a plugin needs to read kernel objects.
#[derive(Debug)]
pub struct Kernel<'p, 'a> {
    pub phys: &'p PhysicalMemory<'a>,
    pub profile: &'p Profile,
    /// Kernel address space (through the kernel's DTB).
    pub vm: VirtualMemory<'p, 'a>,
    /// Virtual KASLR slide: runtime VA = link VA + `aslr_shift`.
    pub aslr_shift: u64,
    /// Physical shift: PA = link VA - KERNEL_MAP + `phys_shift` (wrapping).
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
        locate::locate(phys, profile, true)
    }

    /// The kernel at a known physical shift (`KERNELOFFSET + phys_base`
    /// from VMCOREINFO), validated as `locate` validates what it finds;
    /// nothing is searched, so this suits a live source.
    pub fn at_shift(
        phys: &'p PhysicalMemory<'a>,
        profile: &'p Profile,
        shift: u64,
    ) -> Result<Self, KernelError> {
        locate::at_shift(phys, profile, shift)
    }

    /// Only the cheap probe; `Ok(None)` when it finds nothing. Used to pick
    /// a profile out of a directory without scanning the image per profile.
    pub fn probe(
        phys: &'p PhysicalMemory<'a>,
        profile: &'p Profile,
    ) -> Result<Option<Self>, KernelError> {
        match locate::locate(phys, profile, false) {
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
