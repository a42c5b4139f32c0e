//! What both architectures' locators share: the scans behind their
//! fallback strategies, the init_task check every candidate must pass, and
//! the explanation when none does.

use super::locate::{expected_banner, find_banners, read_partial};
use super::vmcoreinfo::{NOTE_NAME, VmcoreInfo};
use super::{Kernel, KernelError};
use crate::format::PhysicalMemory;
use crate::profile::Profile;

/// At most this many hits of a scan are tried.
const MAX_CANDIDATES: usize = 64;

/// `init_task` as a candidate is checked: its link address, and the fields
/// read at its physical place.
pub(super) struct InitTask {
    /// Link address of `init_task`.
    pub task: u64,
    /// Link address of `init_files`, which `init_task.files` points at.
    files: u64,
    pub comm_off: u64,
    pid_off: u64,
    files_off: u64,
}

impl InitTask {
    pub fn new(profile: &Profile) -> Result<Self, KernelError> {
        Ok(InitTask {
            task: profile.symbol("init_task")?,
            files: profile.symbol("init_files")?,
            comm_off: profile.offset("task_struct", "comm")?,
            pid_off: profile.offset("task_struct", "pid")?,
            files_off: profile.offset("task_struct", "files")?,
        })
    }

    /// Checks the task at physical `task_pa` ("swapper", pid 0) and returns
    /// the virtual KASLR slide its `files` pointer gives. Err says why not.
    pub fn slide_at(&self, phys: &PhysicalMemory<'_>, task_pa: u64) -> Result<u64, String> {
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
        let slide = files.wrapping_sub(self.files);
        if slide % 0x1000 != 0 {
            return Err(format!(
                "virtual shift {slide:#x} from init_task.files is not page-aligned"
            ));
        }
        Ok(slide)
    }
}

/// Every VMCOREINFO note found in physical memory.
pub(super) fn vmcoreinfo_notes(phys: &PhysicalMemory<'_>) -> Result<Vec<VmcoreInfo>, KernelError> {
    let hits =
        phys.find_all(NOTE_NAME, MAX_CANDIDATES)
            .map_err(|source| KernelError::Physical {
                what: "VMCOREINFO scan".into(),
                source,
            })?;
    Ok(hits
        .into_iter()
        .filter_map(|hit| {
            let mut note = vec![0u8; 4096];
            let n = read_partial(phys, hit.wrapping_sub(12), &mut note);
            VmcoreInfo::parse_note(note.get(..n).unwrap_or_default())
        })
        .collect())
}

/// Physical addresses where `init_task` may sit: its name, "swapper/0"
/// padded with NULs, found anywhere (Volatility's way).
pub(super) fn init_task_hits(
    phys: &PhysicalMemory<'_>,
    init: &InitTask,
) -> Result<Vec<u64>, KernelError> {
    let hits = phys
        .find_all(b"swapper/0\0\0\0\0\0\0\0", MAX_CANDIDATES)
        .map_err(|source| KernelError::Physical {
            what: "init_task scan".into(),
            source,
        })?;
    Ok(hits
        .into_iter()
        .map(|hit| hit.wrapping_sub(init.comm_off))
        .collect())
}

/// The banner text at `pa`, up to its NUL.
pub(super) fn banner_at(phys: &PhysicalMemory<'_>, pa: u64) -> Vec<u8> {
    let mut full = [0u8; 512];
    let n = read_partial(phys, pa, &mut full);
    let text = full.get(..n).unwrap_or_default();
    let end = memchr::memchr(0, text).unwrap_or(text.len());
    text.get(..end).unwrap_or_default().to_vec()
}

/// Reads VMCOREINFO through `vmcoreinfo_note` when the kernel has one.
pub(super) fn attach_vmcoreinfo(k: &mut Kernel<'_, '_>) {
    if let Ok(sym) = k.symbol("vmcoreinfo_note")
        && let Ok(note_va) = k.vm.read_u64(sym)
    {
        let mut note = vec![0u8; 4096];
        if k.vm.read(note_va, &mut note).is_ok() {
            k.vmcoreinfo = VmcoreInfo::parse_note(&note);
        }
    }
}

/// Nothing validated: the error, in terms of what the image does hold (no
/// banner at all, another kernel's banner, or this kernel's with `detail`).
pub(super) fn explain(phys: &PhysicalMemory<'_>, profile: &Profile, detail: String) -> KernelError {
    let banners = match find_banners(phys, 4) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let Some((_, found)) = banners.first() else {
        return KernelError::NoBanner;
    };
    let found_s = String::from_utf8_lossy(found).trim_end().to_string();
    if let Some(exp) = expected_banner(profile)
        && !banners.iter().any(|(_, b)| exp.starts_with(b))
    {
        return KernelError::WrongProfile {
            profile: profile.name.clone(),
            expected: String::from_utf8_lossy(exp).trim_end().to_string(),
            found: found_s,
        };
    }
    KernelError::NotLocated {
        profile: profile.name.clone(),
        banner: found_s,
        detail,
    }
}
