//! The three discovery strategies and the validation they share.

use super::vmcoreinfo::{NOTE_NAME, VmcoreInfo};
use super::{Kernel, KernelError};
use crate::format::PhysicalMemory;
use crate::memory::{PagingMode, VirtualMemory};
use crate::profile::Profile;

/// Base of the kernel-image mapping (`__START_KERNEL_map`).
pub const KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
const STEP_2M: u64 = 0x20_0000;
pub(super) const BANNER_PREFIX: &[u8] = b"Linux version ";
const MAX_CANDIDATES: usize = 64;

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
    task_sym: u64,
    files_sym: u64,
    dtb_sym: u64,
    comm_off: u64,
    pid_off: u64,
    files_off: u64,
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
        Ok(k) => ctx.finish(k),
        Err(detail) => Err(KernelError::NotAsStated {
            profile: profile.name.clone(),
            detail,
        }),
    }
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
                    Ok(k) => return ctx.finish(k),
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
    let notes =
        phys.find_all(NOTE_NAME, MAX_CANDIDATES)
            .map_err(|source| KernelError::Physical {
                what: "VMCOREINFO scan".into(),
                source,
            })?;
    for hit in notes {
        let mut note = vec![0u8; 4096];
        let n = read_partial(phys, hit.wrapping_sub(12), &mut note);
        let Some(info) = VmcoreInfo::parse_note(note.get(..n).unwrap_or_default()) else {
            continue;
        };
        let (Some(aslr), Some(phys_base)) = (info.kernel_offset(), info.number("phys_base")) else {
            continue;
        };
        let shift = aslr.wrapping_add(phys_base as u64);
        match ctx.try_shift(shift, "vmcoreinfo") {
            Ok(k) => return ctx.finish(k),
            Err(e) => detail = e,
        }
    }
    // 3. init_task.comm = "swapper/0" padded with NULs.
    let hits = phys
        .find_all(b"swapper/0\0\0\0\0\0\0\0", MAX_CANDIDATES)
        .map_err(|source| KernelError::Physical {
            what: "init_task scan".into(),
            source,
        })?;
    for hit in hits {
        let task_pa = hit.wrapping_sub(ctx.comm_off);
        let shift = task_pa.wrapping_sub(link_pa(ctx.task_sym));
        if shift % 0x1000 != 0 {
            continue;
        }
        match ctx.try_shift(shift, "swapper-scan") {
            Ok(k) => return ctx.finish(k),
            Err(e) => detail = e,
        }
    }
    // Nothing validated: explain with what the image does hold.
    let banners = find_banners(phys, 4)?;
    let Some((_, found)) = banners.first() else {
        return Err(KernelError::NoBanner);
    };
    let found_s = String::from_utf8_lossy(found).trim_end().to_string();
    if let Some(exp) = expected_banner(profile)
        && !banners.iter().any(|(_, b)| exp.starts_with(b))
    {
        return Err(KernelError::WrongProfile {
            profile: profile.name.clone(),
            expected: String::from_utf8_lossy(exp).trim_end().to_string(),
            found: found_s,
        });
    }
    Err(KernelError::NotLocated {
        profile: profile.name.clone(),
        banner: found_s,
        detail,
    })
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
            task_sym: profile.symbol("init_task")?,
            files_sym: profile.symbol("init_files")?,
            dtb_sym,
            comm_off: profile.offset("task_struct", "comm")?,
            pid_off: profile.offset("task_struct", "pid")?,
            files_off: profile.offset("task_struct", "files")?,
        })
    }

    /// Checks one physical shift; Err carries why it was rejected.
    fn try_shift(&self, shift: u64, method: &'static str) -> Result<Kernel<'p, 'a>, String> {
        let phys = self.phys;
        let task_pa = link_pa(self.task_sym).wrapping_add(shift);
        let mut comm = [0u8; 16];
        phys.read(task_pa.wrapping_add(self.comm_off), &mut comm)
            .map_err(|e| format!("init_task at physical {task_pa:#x}: {e}"))?;
        if !comm.starts_with(b"swapper") {
            return Err(format!(
                "init_task at physical {task_pa:#x} has comm {:?}, expected \"swapper/0\"",
                String::from_utf8_lossy(&comm).trim_end_matches('\0')
            ));
        }
        let mut pid = [0u8; 4];
        phys.read(task_pa.wrapping_add(self.pid_off), &mut pid)
            .map_err(|e| e.to_string())?;
        if pid != [0; 4] {
            return Err(format!(
                "init_task at physical {task_pa:#x} has pid {}",
                u32::from_le_bytes(pid)
            ));
        }
        let files = phys
            .read_u64(task_pa.wrapping_add(self.files_off))
            .map_err(|e| format!("init_task.files: {e}"))?;
        let aslr = files.wrapping_sub(self.files_sym);
        if aslr % 0x1000 != 0 {
            return Err(format!(
                "virtual shift {aslr:#x} from init_task.files is not page-aligned"
            ));
        }
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
        let mut full = [0u8; 512];
        let n = read_partial(phys, banner_pa, &mut full);
        let text = full.get(..n).unwrap_or_default();
        let end = memchr::memchr(0, text).unwrap_or(text.len());
        Ok(Kernel {
            phys,
            profile: self.profile,
            vm,
            aslr_shift: aslr,
            image_base: KERNEL_MAP,
            phys_shift: shift,
            dtb,
            mode,
            banner: text.get(..end).unwrap_or_default().to_vec(),
            banner_pa,
            vmcoreinfo: None,
            method,
            notes: Default::default(),
        })
    }

    /// Reads VMCOREINFO through `vmcoreinfo_note` when the kernel has one.
    fn finish(&self, mut k: Kernel<'p, 'a>) -> Result<Kernel<'p, 'a>, KernelError> {
        if let Ok(sym) = k.symbol("vmcoreinfo_note")
            && let Ok(note_va) = k.vm.read_u64(sym)
        {
            let mut note = vec![0u8; 4096];
            if k.vm.read(note_va, &mut note).is_ok() {
                k.vmcoreinfo = VmcoreInfo::parse_note(&note);
            }
        }
        Ok(k)
    }
}
