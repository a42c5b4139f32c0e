//! `/proc/kallsyms` and `/proc/iomem` as the target printed them.
//!
//! kallsyms addresses are runtime addresses: KASLR has already been
//! applied. The virtual slide is `_text - LINK_TEXT`, where `LINK_TEXT`
//! is where x86-64 kernels link `_text` (`__START_KERNEL_map` +
//! `CONFIG_PHYSICAL_START`, 16 MiB on every distribution kernel we know),
//! or [`LINK_TEXT_ARM64`] on AArch64 (`KIMAGE_VADDR` of 6.x kernels).
//! A kernel linked elsewhere still works: every address moves by the same
//! constant and discovery measures the real slide from the image.

use std::collections::HashMap;

/// Link-time address of `_text` on x86-64.
pub const LINK_TEXT: u64 = 0xffff_ffff_8100_0000;
/// Link-time address of `_text` on AArch64 (6.x, 48-bit minimum VA).
pub const LINK_TEXT_ARM64: u64 = 0xffff_8000_8000_0000;
/// On x86-64, addresses below this are per-CPU offsets or absolute values,
/// which KASLR does not move; any x86-64 `_text` lies above it.
const KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// The same bound on AArch64: its kernel addresses all lie above it.
const ARM64_KERNEL_SPACE: u64 = 0xff00_0000_0000_0000;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KallsymsError {
    #[error("kallsyms has no kernel symbols: expected lines \"ADDRESS TYPE NAME\", found {0}")]
    Empty(String),
    #[error(
        "kallsyms addresses are hidden (all zero): it was read without root, or kptr_restrict=2 on the target"
    )]
    Hidden,
    #[error("kallsyms has no _text symbol, so the KASLR slide is unknown")]
    NoText,
}

/// Core-kernel symbols (module symbols are left out), runtime addresses.
#[derive(Debug, Clone)]
pub struct Kallsyms<'a> {
    /// Name → runtime address; `None` when the name has several addresses.
    symbols: HashMap<&'a str, Option<u64>>,
    /// Runtime address of `_text`.
    pub text: u64,
}

impl<'a> Kallsyms<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, KallsymsError> {
        let mut symbols: HashMap<&'a str, Option<u64>> = HashMap::with_capacity(200_000);
        let mut nonzero = false;
        let mut first_bad = None;
        for line in data.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let mut it = line
                .split(|&b| b == b' ' || b == b'\t')
                .filter(|f| !f.is_empty());
            let (Some(addr), Some(_ty), Some(name)) = (it.next(), it.next(), it.next()) else {
                first_bad.get_or_insert(line);
                continue;
            };
            // A fourth field is "[module]": not part of the kernel image.
            if it.next().is_some() {
                continue;
            }
            let (Some(addr), Ok(name)) = (
                std::str::from_utf8(addr)
                    .ok()
                    .and_then(|a| u64::from_str_radix(a, 16).ok()),
                std::str::from_utf8(name),
            ) else {
                first_bad.get_or_insert(line);
                continue;
            };
            nonzero |= addr != 0;
            symbols
                .entry(name)
                .and_modify(|v| {
                    if *v != Some(addr) {
                        *v = None;
                    }
                })
                .or_insert(Some(addr));
        }
        if symbols.is_empty() {
            let found = match first_bad {
                Some(l) => format!(
                    "{:?}",
                    String::from_utf8_lossy(l.get(..l.len().min(60)).unwrap_or_default())
                ),
                None => "nothing".into(),
            };
            return Err(KallsymsError::Empty(found));
        }
        if !nonzero {
            return Err(KallsymsError::Hidden);
        }
        let text = ["_text", "_stext", "startup_64"]
            .iter()
            .find_map(|n| symbols.get(n).copied().flatten())
            .ok_or(KallsymsError::NoText)?;
        Ok(Kallsyms { symbols, text })
    }

    /// An AArch64 kernel: its `_text` lies below x86-64's kernel map.
    pub fn is_arm64(&self) -> bool {
        self.text < KERNEL_MAP
    }

    /// Where this architecture links `_text`.
    pub fn link_text(&self) -> u64 {
        if self.is_arm64() {
            LINK_TEXT_ARM64
        } else {
            LINK_TEXT
        }
    }

    /// The virtual KASLR slide these addresses carry.
    pub fn slide(&self) -> u64 {
        self.text.wrapping_sub(self.link_text())
    }

    /// Runtime address of a uniquely named symbol.
    pub fn runtime(&self, name: &str) -> Option<u64> {
        self.symbols.get(name).copied().flatten()
    }

    /// Link-time address of a uniquely named symbol (per-CPU offsets and
    /// absolute values stay as they are).
    pub fn link(&self, name: &str) -> Option<u64> {
        self.runtime(name).map(|a| self.to_link(a))
    }

    pub fn to_link(&self, runtime: u64) -> u64 {
        let moved = if self.is_arm64() {
            ARM64_KERNEL_SPACE
        } else {
            KERNEL_MAP
        };
        if runtime >= moved {
            runtime.wrapping_sub(self.slide())
        } else {
            runtime
        }
    }

    /// Uniquely named symbols with link-time addresses, sorted by name.
    pub fn link_symbols(&self) -> Vec<(&'a str, u64)> {
        let mut v: Vec<(&'a str, u64)> = self
            .symbols
            .iter()
            .filter_map(|(n, a)| a.map(|a| (*n, self.to_link(a))))
            .collect();
        v.sort_unstable();
        v
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

/// Start of the "Kernel code" resource in `/proc/iomem`: the physical
/// address of `_text`.
pub fn iomem_kernel_code(iomem: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(iomem).ok()?;
    text.lines().find_map(|l| {
        let (range, what) = l.split_once(" : ")?;
        if what.trim() != "Kernel code" {
            return None;
        }
        let (start, _) = range.trim().split_once('-')?;
        u64::from_str_radix(start, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_kallsyms() {
        let k = Kallsyms::parse(
            b"0000000000031c40 A runqueues\nffffffffb6a00000 T _text\nffffffffb841aa40 D init_task\n\
ffffffffc0000000 t foo\t[e1000]\nffffffffb6a00010 t dup\nffffffffb6a00020 t dup\n",
        )
        .unwrap();
        assert_eq!(k.slide(), 0x35a0_0000);
        assert_eq!(k.link("init_task"), Some(0xffff_ffff_82a1_aa40));
        assert_eq!(k.link("runqueues"), Some(0x31c40));
        assert_eq!(k.runtime("foo"), None);
        assert_eq!(k.runtime("dup"), None);
        assert_eq!(k.len(), 4);
    }

    #[test]
    fn arm64_addresses_move_by_their_own_slide() {
        let k = Kallsyms::parse(
            b"0000000000012340 A cpu_number\nffffb5d8c3400000 T _text\nffffb5d8c4a1c040 D init_task\n",
        )
        .unwrap();
        assert!(k.is_arm64());
        assert_eq!(k.slide(), 0xffffb5d8c3400000 - LINK_TEXT_ARM64);
        assert_eq!(k.link("_text"), Some(LINK_TEXT_ARM64));
        assert_eq!(k.link("init_task"), Some(LINK_TEXT_ARM64 + 0x161_c040));
        assert_eq!(k.link("cpu_number"), Some(0x12340));
    }

    #[test]
    fn hidden_and_garbage_are_errors() {
        assert_eq!(
            Kallsyms::parse(b"0000000000000000 T _text\n0000000000000000 T x\n").unwrap_err(),
            KallsymsError::Hidden
        );
        assert!(matches!(
            Kallsyms::parse(b"\x7fELF garbage"),
            Err(KallsymsError::Empty(_))
        ));
        assert_eq!(
            Kallsyms::parse(b"ffffffff81000000 T x\n").unwrap_err(),
            KallsymsError::NoText
        );
    }

    #[test]
    fn finds_kernel_code() {
        let iomem = b"00100000-1ffdffff : System RAM\n  19e00000-1ac01d31 : Kernel code\n  1ae00000-1b6eafff : Kernel rodata\n";
        assert_eq!(iomem_kernel_code(iomem), Some(0x19e0_0000));
        assert_eq!(iomem_kernel_code(b"nothing"), None);
    }
}
