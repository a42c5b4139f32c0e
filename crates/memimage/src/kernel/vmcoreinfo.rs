//! VMCOREINFO: the kernel's own "KEY=VALUE" note for crash tools
//! (OSRELEASE, KERNELOFFSET, NUMBER(phys_base), SYMBOL(...)…).

use std::collections::BTreeMap;

/// Parsed VMCOREINFO text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmcoreInfo {
    pub entries: BTreeMap<String, String>,
}

/// The note name as it is stored: "VMCOREINFO" NUL, padded to 4 bytes.
pub const NOTE_NAME: &[u8] = b"VMCOREINFO\0\0";

impl VmcoreInfo {
    /// Parses the note descriptor text; `None` unless it looks genuine
    /// (starts with OSRELEASE=, printable).
    pub fn parse(text: &[u8]) -> Option<Self> {
        let end = memchr::memchr(0, text).unwrap_or(text.len());
        let text = text.get(..end)?;
        if !text.starts_with(b"OSRELEASE=") {
            return None;
        }
        let s = std::str::from_utf8(text).ok()?;
        if s.bytes()
            .any(|b| !(b == b'\n' || (0x20..0x7f).contains(&b)))
        {
            return None;
        }
        let entries = s
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Self { entries })
    }

    /// Parses the note at the start of `note` (12-byte header, name, text).
    pub fn parse_note(note: &[u8]) -> Option<Self> {
        let word = |i: usize| -> Option<u32> {
            let b = note.get(i..i + 4)?;
            Some(u32::from_le_bytes([
                *b.first()?,
                *b.get(1)?,
                *b.get(2)?,
                *b.get(3)?,
            ]))
        };
        let (namesz, descsz, ty) = (word(0)?, word(4)?, word(8)?);
        if namesz != 11 || ty != 0 || descsz == 0 || note.get(12..24)? != NOTE_NAME {
            return None;
        }
        let desc = note.get(
            24..24
                + usize::try_from(descsz)
                    .ok()?
                    .min(note.len().saturating_sub(24)),
        )?;
        Self::parse(desc)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// KERNELOFFSET (hex) = the virtual KASLR slide.
    pub fn kernel_offset(&self) -> Option<u64> {
        u64::from_str_radix(self.get("KERNELOFFSET")?, 16).ok()
    }

    /// NUMBER(name) (decimal, may be negative).
    pub fn number(&self, name: &str) -> Option<i64> {
        self.get(&format!("NUMBER({name})"))?.parse().ok()
    }

    /// SYMBOL(name) (hex).
    pub fn symbol(&self, name: &str) -> Option<u64> {
        u64::from_str_radix(self.get(&format!("SYMBOL({name})"))?, 16).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_note() {
        let text = b"OSRELEASE=6.1.0\nKERNELOFFSET=1e000000\nNUMBER(phys_base)=-16777216\nSYMBOL(init_top_pgt)=ffffffff82a0a000\n";
        let mut note = Vec::new();
        note.extend_from_slice(&11u32.to_le_bytes());
        note.extend_from_slice(&(text.len() as u32).to_le_bytes());
        note.extend_from_slice(&0u32.to_le_bytes());
        note.extend_from_slice(NOTE_NAME);
        note.extend_from_slice(text);
        let v = VmcoreInfo::parse_note(&note).unwrap();
        assert_eq!(v.kernel_offset(), Some(0x1e00_0000));
        assert_eq!(v.number("phys_base"), Some(-16_777_216));
        assert_eq!(v.symbol("init_top_pgt"), Some(0xffff_ffff_82a0_a000));
        assert!(VmcoreInfo::parse(b"garbage").is_none());
    }
}
