//! Small readers the process and network plugins share: pointer and
//! integer fields by name, per-process address spaces, C strings that may
//! cross pages, and the rule for which errors skip an object.

use crate::kernel::{Kernel, KernelError};
use crate::memory::{MemoryError, VirtualMemory};
use crate::profile::{IntLayout, ProfileError, TypeRef};

/// Memory errors (an unmapped or uncaptured page) skip the object being
/// read, as Volatility does; profile errors (a missing field) and a failed
/// live source are real errors and propagate.
pub(crate) fn soft<T>(r: Result<T, KernelError>) -> Result<Option<T>, KernelError> {
    match r {
        Ok(v) => Ok(Some(v)),
        // A live source that failed ends the plugin: skipping would turn a
        // lost connection into rows that look complete.
        Err(e) if e.is_source_failure() => Err(e),
        Err(KernelError::Memory { .. } | KernelError::Physical { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the pointer `st.field` of the object at `obj`.
pub(crate) fn ptr(k: &Kernel<'_, '_>, obj: u64, st: &str, field: &str) -> Result<u64, KernelError> {
    let off = k.profile.offset(st, field)?;
    k.read_u64(obj.wrapping_add(off), || {
        format!("{st}.{field} of {obj:#x}")
    })
}

/// Reads the integer `st.field` as unsigned. Enums whose definition the
/// selective loader skipped (anonymous ones such as `socket.state`) read as
/// 4-byte integers, their size on every kernel we support.
pub(crate) fn uint(
    k: &Kernel<'_, '_>,
    obj: u64,
    st: &str,
    field: &str,
) -> Result<u64, KernelError> {
    let f = k.profile.field(st, field)?;
    let layout = match (k.profile.int_layout(&f.ty), &f.ty) {
        (Some(l), _) => l,
        (None, TypeRef::Enum(_)) => IntLayout {
            size: 4,
            signed: false,
            bits: None,
        },
        (None, ty) => {
            return Err(KernelError::Profile(ProfileError::Malformed {
                expected: format!("an integer type for {st}.{field}"),
                found: format!("{ty:?}"),
            }));
        }
    };
    let raw =
        k.vm.read_uint(
            obj.wrapping_add(f.offset),
            usize::try_from(layout.size).unwrap_or(8),
        )
        .map_err(|source| KernelError::Memory {
            what: format!("{st}.{field} of {obj:#x}"),
            source,
        })?;
    let v = layout.decode(raw);
    Ok(u64::try_from(v).unwrap_or(v as u64))
}

/// (offset, element count) of an array field.
pub(crate) fn array_field(
    k: &Kernel<'_, '_>,
    st: &str,
    field: &str,
) -> Result<(u64, u64), KernelError> {
    let f = k.profile.field(st, field)?;
    match &f.ty {
        TypeRef::Array { count, .. } => Ok((f.offset, *count)),
        other => Err(KernelError::Profile(ProfileError::Malformed {
            expected: format!("an array for {st}.{field}"),
            found: format!("{other:?}"),
        })),
    }
}

/// The address space of a process whose `mm_struct` is at `mm`; `None`
/// when its page-table root cannot be translated.
pub(crate) fn process_vm<'p, 'a>(
    k: &Kernel<'p, 'a>,
    mm: u64,
) -> Result<Option<VirtualMemory<'p, 'a>>, KernelError> {
    let Some(pgd) = soft(ptr(k, mm, "mm_struct", "pgd"))? else {
        return Ok(None);
    };
    Ok(k.vm
        .translate(pgd)
        .ok()
        .map(|dtb| VirtualMemory::new(k.phys, k.mode, dtb)))
}

/// Reads a NUL-terminated string of at most `max` bytes, page by page, so
/// that a string ending just before an unmapped page still reads.
pub(crate) fn cstr(
    vm: &VirtualMemory<'_, '_>,
    va: u64,
    max: usize,
) -> Result<Vec<u8>, MemoryError> {
    let mut out = Vec::new();
    let mut cur = va;
    while out.len() < max {
        let in_page = usize::try_from(0x1000 - (cur & 0xfff)).unwrap_or(0x1000);
        let n = in_page.min(max - out.len());
        let mut buf = vec![0u8; n];
        vm.read(cur, &mut buf)?;
        if let Some(p) = memchr::memchr(0, &buf) {
            out.extend_from_slice(buf.get(..p).unwrap_or_default());
            return Ok(out);
        }
        out.extend_from_slice(&buf);
        cur = cur.wrapping_add(n as u64);
    }
    Ok(out)
}

/// Like [`cstr`] through the kernel's address space.
pub(crate) fn kernel_cstr(k: &Kernel<'_, '_>, va: u64, max: usize) -> Result<Vec<u8>, KernelError> {
    cstr(&k.vm, va, max).map_err(|source| KernelError::Memory {
        what: format!("string at {va:#x}"),
        source,
    })
}

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
