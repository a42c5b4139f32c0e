//! A kernel's debug `vmlinux` (Debian's `linux-image-*-dbg` package, or a
//! build tree's) as material: types from its `.BTF` section, link-time
//! addresses from its ELF symbol table, and `linux_banner` read from the
//! section that holds it. The profile it makes carries link-time addresses,
//! as one made with dwarf2json does, so a capture's KASLR slide is found
//! from the image.

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

/// What a vmlinux provides, in the shapes [`super::Material`] reads.
#[derive(Debug, Clone)]
pub struct Vmlinux {
    pub btf: Vec<u8>,
    /// The symbol table as kallsyms would print it ("ADDR t NAME" lines).
    pub symbols: Vec<u8>,
    /// `linux_banner`'s text, as /proc/version shows it.
    pub banner: Option<Vec<u8>>,
    /// `uname -m` of the kernel's architecture.
    pub machine: &'static str,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VmlinuxError {
    #[error("not an ELF file: {0}")]
    NotElf(String),
    #[error("the ELF file is for {0}, not an x86-64 or arm64 kernel")]
    Machine(String),
    #[error(
        "no .BTF section: the kernel was built without CONFIG_DEBUG_INFO_BTF, or this is not its vmlinux"
    )]
    NoBtf,
    #[error("no symbol table: expected the debug vmlinux (the -dbg package's), not a stripped one")]
    NoSymbols,
}

pub fn read(data: &[u8]) -> Result<Vmlinux, VmlinuxError> {
    let file = object::File::parse(data).map_err(|e| VmlinuxError::NotElf(e.to_string()))?;
    let machine = match file.architecture() {
        object::Architecture::X86_64 => "x86_64",
        object::Architecture::Aarch64 => "aarch64",
        other => return Err(VmlinuxError::Machine(format!("{other:?}"))),
    };
    let btf = file
        .section_by_name(".BTF")
        .and_then(|s| s.data().ok())
        .filter(|d| !d.is_empty())
        .ok_or(VmlinuxError::NoBtf)?
        .to_vec();
    let mut symbols = Vec::new();
    let mut banner_addr = None;
    for sym in file.symbols() {
        let (Ok(name), addr) = (sym.name(), sym.address()) else {
            continue;
        };
        // Section, file and arm64 mapping symbols ($x, $d) name no object.
        if name.is_empty()
            || name.starts_with('$')
            || matches!(sym.kind(), SymbolKind::Section | SymbolKind::File)
        {
            continue;
        }
        if name == "linux_banner" {
            banner_addr = Some(addr);
        }
        let ty = if sym.kind() == SymbolKind::Text {
            't'
        } else {
            'd'
        };
        symbols.extend_from_slice(format!("{addr:016x} {ty} {name}\n").as_bytes());
    }
    if symbols.is_empty() {
        return Err(VmlinuxError::NoSymbols);
    }
    let banner = banner_addr.and_then(|addr| {
        let section = file
            .sections()
            .find(|s| addr >= s.address() && addr - s.address() < s.size())?;
        let data = section.data().ok()?;
        let from = data.get(usize::try_from(addr - section.address()).ok()?..)?;
        let end = memchr::memchr(0, from)?;
        Some(from.get(..end)?.to_vec())
    });
    Ok(Vmlinux {
        btf,
        symbols,
        banner,
        machine,
    })
}
