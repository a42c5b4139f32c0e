//! Finding an AArch64 kernel: where the image lies physically, how far
//! KASLR slid it, and which geometry its tables use.
//!
//! The image is one physically contiguous block loaded 2 MiB-aligned, and
//! everything follows from the physical address of `_text`:
//! `kimage_voffset = runtime _text - PA(_text)`, and `swapper_pg_dir`
//! (TTBR1's table) sits at a fixed distance from `_text`. The geometry is
//! the one the CPU runs: `64 - TCR_EL1_T1SZ` from VMCOREINFO, not
//! `NUMBER(VA_BITS)`, which is what the kernel was built for. Without
//! VMCOREINFO, `vabits_actual` when the kernel has the variable, then every
//! geometry Linux supports; a wrong one cannot read the banner back.

use super::candidate::{self, InitTask};
use super::locate::{BANNER_PREFIX, expected_banner, finish};
use super::vmcoreinfo::VmcoreInfo;
use super::{Kernel, KernelError};
use crate::format::PhysicalMemory;
use crate::memory::{Aarch64Paging, Granule, PagingMode, VirtualMemory};
use crate::profile::Profile;

const STEP_2M: u64 = 0x20_0000;

/// Geometries in the order they are tried: clouds and Debian first.
const GEOMETRIES: [(Granule, u32); 10] = [
    (Granule::K4, 48),
    (Granule::K4, 52),
    (Granule::K4, 39),
    (Granule::K64, 48),
    (Granule::K64, 52),
    (Granule::K64, 42),
    (Granule::K16, 48),
    (Granule::K16, 47),
    (Granule::K16, 52),
    (Granule::K16, 36),
];

/// A 52-bit, 64 KiB kernel on a 48-bit CPU points TTBR1 this far into its
/// 1,024-entry top table (`TTBR1_BADDR_4852_OFFSET`).
const TTBR1_4852_OFFSET: u64 = (1024 - 64) * 8;

/// Whether `profile` describes an AArch64 kernel: only it has both
/// `kimage_voffset` and a `swapper_pg_dir` symbol (x86-64 names its table
/// `init_top_pgt`).
pub fn is_arm64(profile: &Profile) -> bool {
    profile.symbol("kimage_voffset").is_ok() && profile.symbol("swapper_pg_dir").is_ok()
}

struct Ctx<'p, 'a> {
    phys: &'p PhysicalMemory<'a>,
    profile: &'p Profile,
    text: u64,
    banner: u64,
    swapper: u64,
    init: InitTask,
}

/// What is known before a candidate is checked.
#[derive(Default, Clone, Copy)]
struct Hints {
    geometry: Option<Aarch64Paging>,
    /// Virtual slide VMCOREINFO gave, checked against init_task's.
    aslr: Option<u64>,
}

pub(super) fn locate<'p, 'a>(
    phys: &'p PhysicalMemory<'a>,
    profile: &'p Profile,
    full: bool,
) -> Result<Kernel<'p, 'a>, KernelError> {
    let ctx = Ctx::new(phys, profile)?;
    let mut detail = String::from("no candidate");
    // 1. Probe: the banner at a fixed distance from a 2 MiB-aligned _text.
    let want = expected_banner(profile).unwrap_or(BANNER_PREFIX);
    let banner_off = ctx.banner.wrapping_sub(ctx.text);
    for (start, end) in phys.ranges() {
        let mut text_pa = start.div_ceil(STEP_2M) * STEP_2M;
        while text_pa < end {
            let pa = text_pa.wrapping_add(banner_off);
            let mut got = vec![0u8; want.len()];
            if phys.read(pa, &mut got).is_ok() && got == want {
                match ctx.try_text(text_pa, Hints::default(), "probe") {
                    Ok(k) => return Ok(finish(k)),
                    Err(e) => detail = e,
                }
            }
            text_pa += STEP_2M;
        }
    }
    if !full {
        return Err(ctx.not_located(detail));
    }
    // 2. VMCOREINFO notes anywhere in memory.
    for info in candidate::vmcoreinfo_notes(phys)? {
        match ctx.try_vmcoreinfo(&info) {
            Ok(k) => return Ok(finish(k)),
            Err(e) => detail = e,
        }
    }
    // 3. init_task's name, anywhere.
    for task_pa in candidate::init_task_hits(phys, &ctx.init)? {
        let text_pa = task_pa.wrapping_sub(ctx.init.task.wrapping_sub(ctx.text));
        if text_pa % 0x1000 != 0 {
            continue;
        }
        match ctx.try_text(text_pa, Hints::default(), "swapper-scan") {
            Ok(k) => return Ok(finish(k)),
            Err(e) => detail = e,
        }
    }
    Err(candidate::explain(phys, profile, detail))
}

/// The kernel VMCOREINFO describes (a running machine's /proc/kcore note).
pub(super) fn from_vmcoreinfo<'p, 'a>(
    phys: &'p PhysicalMemory<'a>,
    profile: &'p Profile,
    info: &VmcoreInfo,
) -> Result<Kernel<'p, 'a>, KernelError> {
    let ctx = Ctx::new(phys, profile)?;
    ctx.try_vmcoreinfo(info)
        .map(finish)
        .map_err(|detail| ctx.not_as_stated(detail))
}

/// The kernel with `_text` at physical `text_pa` (iomem's "Kernel code").
pub(super) fn at_text<'p, 'a>(
    phys: &'p PhysicalMemory<'a>,
    profile: &'p Profile,
    text_pa: u64,
) -> Result<Kernel<'p, 'a>, KernelError> {
    let ctx = Ctx::new(phys, profile)?;
    ctx.try_text(text_pa, Hints::default(), "iomem")
        .map(finish)
        .map_err(|detail| ctx.not_as_stated(detail))
}

/// The geometry VMCOREINFO states: page size, and the VA size the CPU runs
/// (from TCR_EL1.T1SZ when exported, else `VA_BITS`).
pub fn vmcoreinfo_geometry(info: &VmcoreInfo) -> Option<Aarch64Paging> {
    let granule =
        Granule::from_page_size(u64::try_from(info.get("PAGESIZE")?.parse::<i64>().ok()?).ok()?)?;
    let va_bits = match info.number("TCR_EL1_T1SZ") {
        Some(t1sz) if (12..=39).contains(&t1sz) => 64 - t1sz,
        _ => info.number("VA_BITS")?,
    };
    let paging = Aarch64Paging {
        granule,
        va_bits: u32::try_from(va_bits).ok()?,
    };
    paging.is_valid().then_some(paging)
}

impl<'p, 'a> Ctx<'p, 'a> {
    fn new(phys: &'p PhysicalMemory<'a>, profile: &'p Profile) -> Result<Self, KernelError> {
        let text = ["_text", "_stext", "stext"]
            .iter()
            .find_map(|s| profile.symbol(s).ok())
            .map_or_else(|| profile.symbol("_text"), Ok)?;
        Ok(Ctx {
            phys,
            profile,
            text,
            banner: profile.symbol("linux_banner")?,
            swapper: profile.symbol("swapper_pg_dir")?,
            init: InitTask::new(profile)?,
        })
    }

    fn not_located(&self, detail: String) -> KernelError {
        KernelError::NotLocated {
            profile: self.profile.name.clone(),
            banner: String::new(),
            detail,
        }
    }

    fn not_as_stated(&self, detail: String) -> KernelError {
        KernelError::NotAsStated {
            profile: self.profile.name.clone(),
            detail,
        }
    }

    /// PA(_text) from KERNELOFFSET and kimage_voffset.
    fn try_vmcoreinfo(&self, info: &VmcoreInfo) -> Result<Kernel<'p, 'a>, String> {
        let (Some(aslr), Some(voffset)) = (info.kernel_offset(), info.number("kimage_voffset"))
        else {
            return Err("VMCOREINFO lacks KERNELOFFSET or NUMBER(kimage_voffset)".into());
        };
        let text_pa = self.text.wrapping_add(aslr).wrapping_sub(voffset as u64);
        let hints = Hints {
            geometry: vmcoreinfo_geometry(info),
            aslr: Some(aslr),
        };
        self.try_text(text_pa, hints, "vmcoreinfo")
    }

    /// Checks one physical address of `_text`; Err says why it failed.
    fn try_text(
        &self,
        text_pa: u64,
        hints: Hints,
        method: &'static str,
    ) -> Result<Kernel<'p, 'a>, String> {
        let phys = self.phys;
        let pa_of = |link: u64| link.wrapping_sub(self.text).wrapping_add(text_pa);
        let aslr = self.init.slide_at(phys, pa_of(self.init.task))?;
        if let Some(stated) = hints.aslr
            && stated != aslr
        {
            return Err(format!(
                "VMCOREINFO's KERNELOFFSET {stated:#x} differs from init_task's slide {aslr:#x}"
            ));
        }
        let dtb = pa_of(self.swapper);
        let banner_va = self.banner.wrapping_add(aslr);
        let want = expected_banner(self.profile).unwrap_or(BANNER_PREFIX);
        let mut tried = Vec::new();
        for (paging, root) in self.geometries(text_pa, hints, dtb) {
            let mode = PagingMode::Aarch64(paging);
            let vm = VirtualMemory::new(phys, mode, root);
            let mut got = vec![0u8; want.len()];
            if vm.read(banner_va, &mut got).is_ok() && got == want {
                let banner_pa = pa_of(self.banner);
                return Ok(Kernel {
                    phys,
                    profile: self.profile,
                    vm,
                    aslr_shift: aslr,
                    image_base: self.text,
                    phys_shift: text_pa,
                    dtb: root,
                    mode,
                    banner: candidate::banner_at(phys, banner_pa),
                    banner_pa,
                    vmcoreinfo: None,
                    method,
                    notes: Default::default(),
                });
            }
            tried.push(format!("{:?}/{}", paging.granule, paging.va_bits));
        }
        Err(format!(
            "the banner does not read back through swapper_pg_dir at {dtb:#x} with any geometry ({})",
            tried.join(", ")
        ))
    }

    /// Geometries (and table roots) to try, the likeliest first.
    fn geometries(&self, text_pa: u64, hints: Hints, dtb: u64) -> Vec<(Aarch64Paging, u64)> {
        let mut order: Vec<Aarch64Paging> = Vec::new();
        if let Some(g) = hints.geometry {
            order.push(g);
        }
        // vabits_actual, in kernels that keep it as a variable.
        let actual = self.profile.symbol("vabits_actual").ok().and_then(|s| {
            let v = self
                .phys
                .read_u64(s.wrapping_sub(self.text).wrapping_add(text_pa))
                .ok()?;
            u32::try_from(v).ok().filter(|v| (36..=52).contains(v))
        });
        for (granule, va_bits) in GEOMETRIES {
            if actual.is_none_or(|a| a == va_bits) {
                order.push(Aarch64Paging { granule, va_bits });
            }
        }
        let mut out = Vec::new();
        for g in order {
            if !out.iter().any(|(o, _)| *o == g) {
                out.push((g, dtb));
            }
        }
        if out
            .iter()
            .any(|(g, _)| g.granule == Granule::K64 && g.va_bits == 48)
        {
            out.push((
                Aarch64Paging {
                    granule: Granule::K64,
                    va_bits: 48,
                },
                dtb + TTBR1_4852_OFFSET,
            ));
        }
        out
    }
}
