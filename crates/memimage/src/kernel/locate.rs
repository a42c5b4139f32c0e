//! The three discovery strategies and the validation they share.

use super::candidate::{self, InitTask};
use super::{Kernel, KernelError};
use crate::format::PhysicalMemory;
use crate::memory::{PagingMode, VirtualMemory};
use crate::profile::Profile;

/// Base of the kernel-image mapping (`__START_KERNEL_map`).
pub const KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
const STEP_2M: u64 = 0x20_0000;
pub(super) const BANNER_PREFIX: &[u8] = b"Linux version ";

fn link_pa(va: u64) -> u64 {
    va.wrapping_sub(KERNEL_MAP)
}

/// Every "Linux version ..." string in physical memory (up to `limit`),
/// with its physical address; text is cut at NUL or newline.
pub fn find_banners(
    phys: &PhysicalMemory<'_>,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, KernelError> {
    let hits = phys
        .find_all(BANNER_PREFIX, limit.saturating_mul(4))
        .map_err(|source| KernelError::Physical {
            what: "banner scan".into(),
            source,
        })?;
    let mut out = Vec::new();
    for pa in hits {
        let mut buf = [0u8; 256];
        let n = read_partial(phys, pa, &mut buf);
        let text = buf.get(..n).unwrap_or_default();
        let end = text.iter().position(|&b| b == 0 || b == b'\n').unwrap_or(n);
        let text = text.get(..end).unwrap_or_default();
        // Real banners carry the compiler in parentheses; format strings
        // such as "Linux version %s" do not.
        if text.len() > BANNER_PREFIX.len() + 4 && text.contains(&b'(') && !text.contains(&b'%') {
            out.push((pa, text.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

pub(super) fn read_partial(phys: &PhysicalMemory<'_>, pa: u64, buf: &mut [u8]) -> usize {
    let mut n = buf.len();
    while n > 0 {
        if let Some(dst) = buf.get_mut(..n)
            && phys.read(pa, dst).is_ok()
        {
            return n;
        }
        n /= 2;
    }
    0
}

/// The banner bytes we expect in memory (profile's, without the NUL).
pub(super) fn expected_banner(profile: &Profile) -> Option<&[u8]> {
    let b = profile.banner.as_deref()?;
    Some(b.strip_suffix(b"\0").unwrap_or(b))
}

struct Ctx<'p, 'a> {
    phys: &'p PhysicalMemory<'a>,
    profile: &'p Profile,
    banner_sym: u64,
    dtb_sym: u64,
    init: InitTask,
}

/// The kernel at a physical shift already known (from the VMCOREINFO of
/// a running machine's /proc/kcore), validated as a found one would be.
pub(super) fn at_shift<'p, 'a>(
    phys: &'p PhysicalMemory<'a>,
    profile: &'p Profile,
    shift: u64,
) -> Result<Kernel<'p, 'a>, KernelError> {
    let ctx = Ctx::new(phys, profile)?;
    match ctx.try_shift(shift, "vmcoreinfo") {
        Ok(k) => Ok(finish(k)),
        Err(detail) => Err(KernelError::NotAsStated {
            profile: profile.name.clone(),
            detail,
        }),
    }
}

/// A found kernel with its VMCOREINFO read, when it has one.
pub(super) fn finish<'p, 'a>(mut k: Kernel<'p, 'a>) -> Kernel<'p, 'a> {
    candidate::attach_vmcoreinfo(&mut k);
    k
}

pub(super) fn locate<'p, 'a>(
    phys: &'p PhysicalMemory<'a>,
    profile: &'p Profile,
    full: bool,
) -> Result<Kernel<'p, 'a>, KernelError> {
    let ctx = Ctx::new(phys, profile)?;
    let mut detail = String::from("no candidate");
    // 1. Probe 2 MiB-aligned spots for the banner.
    let want: &[u8] = expected_banner(profile).unwrap_or(BANNER_PREFIX);
    let first = link_pa(ctx.banner_sym) % STEP_2M;
    for (start, end) in phys.ranges() {
        let mut pa = start - start % STEP_2M + first;
        if pa < start {
            pa += STEP_2M;
        }
        while pa < end {
            if phys.slice(pa, want.len()).is_some_and(|s| s == want)
                || (phys.slice(pa, want.len()).is_none() && read_eq(phys, pa, want))
            {
                match ctx.try_shift(pa.wrapping_sub(link_pa(ctx.banner_sym)), "probe") {
                    Ok(k) => return Ok(finish(k)),
                    Err(e) => detail = e,
                }
            }
            pa += STEP_2M;
        }
    }
    if !full {
        return Err(KernelError::NotLocated {
            profile: profile.name.clone(),
            banner: String::new(),
            detail,
        });
    }
    // 2. VMCOREINFO notes.
    for info in candidate::vmcoreinfo_notes(phys)? {
        let (Some(aslr), Some(phys_base)) = (info.kernel_offset(), info.number("phys_base")) else {
            continue;
        };
        let shift = aslr.wrapping_add(phys_base as u64);
        match ctx.try_shift(shift, "vmcoreinfo") {
            Ok(k) => return Ok(finish(k)),
            Err(e) => detail = e,
        }
    }
    // 3. init_task's name.
    for task_pa in candidate::init_task_hits(phys, &ctx.init)? {
        let shift = task_pa.wrapping_sub(link_pa(ctx.init.task));
        if shift % 0x1000 != 0 {
            continue;
        }
        match ctx.try_shift(shift, "swapper-scan") {
            Ok(k) => return Ok(finish(k)),
            Err(e) => detail = e,
        }
    }
    Err(candidate::explain(phys, profile, detail))
}

fn read_eq(phys: &PhysicalMemory<'_>, pa: u64, want: &[u8]) -> bool {
    let mut buf = vec![0u8; want.len()];
    phys.read(pa, &mut buf).is_ok() && buf == want
}

impl<'p, 'a> Ctx<'p, 'a> {
    fn new(phys: &'p PhysicalMemory<'a>, profile: &'p Profile) -> Result<Self, KernelError> {
        let dtb_sym = ["init_top_pgt", "init_level4_pgt", "swapper_pg_dir"]
            .iter()
            .find_map(|s| profile.symbol(s).ok())
            .map_or_else(|| profile.symbol("init_top_pgt"), Ok)?;
        Ok(Ctx {
            phys,
            profile,
            banner_sym: profile.symbol("linux_banner")?,
            dtb_sym,
            init: InitTask::new(profile)?,
        })
    }

    /// Checks one physical shift; Err carries why it was rejected.
    fn try_shift(&self, shift: u64, method: &'static str) -> Result<Kernel<'p, 'a>, String> {
        let phys = self.phys;
        let task_pa = link_pa(self.init.task).wrapping_add(shift);
        let aslr = self.init.slide_at(phys, task_pa)?;
        let l5 = self
            .profile
            .symbol("__pgtable_l5_enabled")
            .ok()
            .and_then(|s| {
                let mut b = [0u8; 4];
                phys.read(link_pa(s).wrapping_add(shift), &mut b).ok()?;
                Some(u32::from_le_bytes(b) != 0)
            })
            .unwrap_or(false);
        let mode = if l5 {
            PagingMode::Level5
        } else {
            PagingMode::Level4
        };
        let dtb = link_pa(self.dtb_sym).wrapping_add(shift);
        let vm = VirtualMemory::new(phys, mode, dtb);
        // Validation: the banner must read back through the translation.
        let banner_va = self.banner_sym.wrapping_add(aslr);
        let banner_pa = link_pa(self.banner_sym).wrapping_add(shift);
        let want = expected_banner(self.profile).unwrap_or(BANNER_PREFIX);
        let mut got = vec![0u8; want.len()];
        vm.read(banner_va, &mut got)
            .map_err(|e| format!("banner through DTB {dtb:#x}: {e}"))?;
        if got != want {
            return Err(format!(
                "banner read through DTB {dtb:#x} does not match the expected banner"
            ));
        }
        Ok(Kernel {
            phys,
            profile: self.profile,
            vm,
            aslr_shift: aslr,
            image_base: KERNEL_MAP,
            phys_shift: shift,
            dtb,
            mode,
            banner: candidate::banner_at(phys, banner_pa),
            banner_pa,
            vmcoreinfo: None,
            method,
            notes: Default::default(),
        })
    }
}
