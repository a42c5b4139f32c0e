//! Profiles built from capture-time material (BTF + kallsyms), checked
//! against the dwarf2json ISF of the same kernel on the real Debian 6.1
//! capture in `shared/fixtures` (skipped, with a message, when absent).
//!
//! The BTF is the kernel's own, cut out of the capture (the kernel keeps
//! it in memory at `__start_BTF`; it is the same file as the guest's
//! /sys/kernel/btf/vmlinux). kallsyms is what that boot would have
//! printed: the ISF's link-time addresses plus the slide the image shows.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use memimage::material::{self, Material, MaterialError};
use memimage::plugins::{Options, run_plugin};
use memimage::profile::{Selection, TypeRef};
use memimage::{Kernel, PhysicalMemory, Profile};
use std::fmt::Write as _;

mod common;
use common::{NAME, capture};

/// Every struct the plugins and the integrity checks read, and
/// `tk_read_base`, which boot times reach through `tk_core`'s anonymous
/// struct: each one's BTF layout is held against the dwarf2json ISF.
fn oracle_types() -> &'static [&'static str] {
    let mut v = memimage::plugins::INTEGRITY_TYPES.to_vec();
    v.push("tk_read_base");
    Box::leak(v.into_boxed_slice())
}

/// The integrity selection (every symbol, its enums) with the oracle's
/// types.
fn oracle() -> Selection {
    let Selection::Only { symbols, .. } = Selection::PLUGINS else {
        panic!("PLUGINS is a selection")
    };
    let Selection::Only { enums, .. } = Selection::INTEGRITY else {
        panic!("INTEGRITY is a selection")
    };
    let mut syms = symbols.to_vec();
    syms.extend(["__start_BTF", "_text"]);
    Selection::Only {
        types: oracle_types(),
        symbols: Box::leak(syms.into_boxed_slice()),
        enums,
        all_symbols: true,
    }
}

/// kallsyms text for `profile`'s symbols as a boot with `slide` prints them.
fn kallsyms_for(profile: &Profile, slide: u64) -> String {
    let mut s = String::new();
    for (name, sym) in &profile.symbols {
        let a = if sym.address >= 0xffff_ffff_8000_0000 {
            sym.address.wrapping_add(slide)
        } else {
            sym.address
        };
        writeln!(s, "{a:016x} D {name}").unwrap();
    }
    s
}

/// Anonymous type names differ between producers; compare them as one.
/// pahole writes a multi-dimensional array as one dimension (`xa_node.marks`
/// is `[3][1]` in DWARF, `[3]` in BTF): compare arrays flattened.
fn norm(t: &TypeRef) -> TypeRef {
    match t {
        TypeRef::Struct(n) if n.starts_with("unnamed") => TypeRef::Struct("<anon>".into()),
        TypeRef::Enum(n) if n.starts_with("unnamed") => TypeRef::Enum("<anon>".into()),
        TypeRef::Pointer(s) => TypeRef::Pointer(Box::new(norm(s))),
        TypeRef::Array { count, elem } => match norm(elem) {
            TypeRef::Array { count: inner, elem } => TypeRef::Array {
                count: count * inner,
                elem,
            },
            elem => TypeRef::Array {
                count: *count,
                elem: Box::new(elem),
            },
        },
        TypeRef::Bitfield {
            position,
            length,
            storage,
        } => TypeRef::Bitfield {
            position: *position,
            length: *length,
            storage: Box::new(norm(storage)),
        },
        other => other.clone(),
    }
}

/// Equal, or both name an anonymous type (dwarf2json names some anonymous
/// enums that BTF reaches through a typedef, `socket_state`).
fn same_type(a: &TypeRef, b: &TypeRef) -> bool {
    let anon = |t: &TypeRef| norm(t) != *t;
    norm(a) == norm(b)
        || matches!((a, b), (TypeRef::Enum(_), TypeRef::Enum(_)) if anon(a) || anon(b))
}

struct Fixture {
    image: memmap2::Mmap,
    isf: Profile,
    version: Vec<u8>,
}

fn fixture() -> Option<Fixture> {
    let (lime, dir) = capture()?;
    let bytes = std::fs::read(dir.join(format!("{NAME}.json.xz"))).unwrap();
    let isf = Profile::load_with(&bytes, NAME, &oracle()).unwrap();
    let file = std::fs::File::open(&lime).unwrap();
    let image = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    // /proc/version prints linux_banner without its NUL.
    let mut version = isf.banner.clone().unwrap();
    version.pop();
    Some(Fixture {
        image,
        isf,
        version,
    })
}

#[test]
fn btf_layouts_equal_the_dwarf_isf_and_plugins_agree() {
    let Some(fx) = fixture() else { return };
    let phys = PhysicalMemory::parse(&fx.image).unwrap();
    let k_isf = Kernel::locate(&phys, &fx.isf).unwrap();

    let t = std::time::Instant::now();
    let btf = material::btf_from_image(&phys, &Material::default()).expect("BTF in the image");
    eprintln!("BTF scan: {:?}, {} bytes", t.elapsed(), btf.len());
    assert_eq!(
        btf.len(),
        4_359_789,
        "same size as the guest's /sys/kernel/btf/vmlinux"
    );

    let kallsyms = kallsyms_for(&fx.isf, k_isf.aslr_shift);
    let m = Material {
        btf: Some(&btf),
        kallsyms: Some(kallsyms.as_bytes()),
        iomem: None,
        version: Some(&fx.version),
    };
    let t = std::time::Instant::now();
    let (p, derived) = m.profile("material", &oracle()).unwrap();
    eprintln!("profile from material: {:?}", t.elapsed());
    assert_eq!(derived.slide, k_isf.aslr_shift);

    // Layouts: sizes and every field's offset and type, struct by struct.
    let mut diffs = String::new();
    for name in oracle_types() {
        let (Some(a), Some(b)) = (fx.isf.structs.get(*name), p.structs.get(*name)) else {
            if !fx.isf.structs.contains_key(*name) && !p.structs.contains_key(*name) {
                continue; // not in this kernel (module_memory is 6.4+)
            }
            writeln!(
                diffs,
                "{name}: in ISF {}, in BTF {}",
                fx.isf.structs.contains_key(*name),
                p.structs.contains_key(*name)
            )
            .unwrap();
            continue;
        };
        if a.size != b.size {
            writeln!(diffs, "{name}: size {} vs {}", a.size, b.size).unwrap();
        }
        for (f, fa) in &a.fields {
            // DECLARE_FLEX_ARRAY's zero-size marker: BTF keeps one empty
            // struct for the whole kernel, named after a typedef of it
            // (lockdep_map_p), where DWARF has one anonymous struct each.
            if f.starts_with("__empty_") && b.fields.get(f).is_some_and(|fb| fb.offset == fa.offset)
            {
                continue;
            }
            match b.fields.get(f) {
                None => writeln!(diffs, "{name}.{f}: missing from BTF").unwrap(),
                Some(fb) if fa.offset != fb.offset || !same_type(&fa.ty, &fb.ty) => writeln!(
                    diffs,
                    "{name}.{f}: ISF {} {:?} vs BTF {} {:?}",
                    fa.offset, fa.ty, fb.offset, fb.ty
                )
                .unwrap(),
                Some(_) => {}
            }
        }
        for f in b.fields.keys() {
            if !a.fields.contains_key(f) {
                writeln!(diffs, "{name}.{f}: only in BTF").unwrap();
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "BTF layouts differ from the ISF:\n{diffs}"
    );
    assert_eq!(p.enums, fx.isf.enums);
    // Symbols typed for Volatility (BTF has no types for most globals):
    // the same type as dwarf2json gives them.
    let tracepoints = ["__start___tracepoints_ptrs", "__stop___tracepoints_ptrs"];
    for name in memimage::material::SYMBOL_TYPES
        .iter()
        .map(|(n, _)| n)
        .chain(&tracepoints)
    {
        let (Some(a), Some(b)) = (fx.isf.symbols.get(*name), p.symbols.get(*name)) else {
            continue;
        };
        if tracepoints.contains(name) {
            assert!(b.ty.is_some(), "{name}: no type from BTF");
        }
        if let (Some(ta), Some(tb)) = (&a.ty, &b.ty) {
            assert!(same_type(ta, tb), "{name}: ISF {ta:?} vs BTF {tb:?}");
        }
    }
    assert_eq!(p.banner, fx.isf.banner);

    // Same kernel found, material agrees with the image, same plugin rows.
    let k = Kernel::locate(&phys, &p).unwrap();
    assert_eq!(
        (k.aslr_shift, k.phys_shift),
        (k_isf.aslr_shift, k_isf.phys_shift)
    );
    let v = material::verify(&k, &derived, &btf);
    assert!(v.same_boot && v.notes.is_empty(), "{v:?}");
    assert_eq!(v.btf_matches, Some(true));
    for plugin in memimage::plugins::PLUGINS {
        if *plugin == "memdump" || *plugin == "banner" {
            continue; // memdump writes files; banner needs no profile
        }
        let opts = Options { threads: true };
        assert_eq!(
            run_plugin(plugin, &k, &opts).unwrap(),
            run_plugin(plugin, &k_isf, &opts).unwrap(),
            "{plugin}"
        );
    }

    // The hinted read (kallsyms + iomem) finds the same BTF without a scan.
    let code = 0x100_0000u64.wrapping_add(k.phys_shift);
    let iomem = format!("  {code:08x}-{:08x} : Kernel code\n", code + 0x100_0000);
    let m2 = Material {
        iomem: Some(iomem.as_bytes()),
        ..m
    };
    assert_eq!(
        material::btf_from_image(&phys, &m2).as_deref(),
        Some(&btf[..])
    );
    let (_, d2) = m2.profile("material", &oracle()).unwrap();
    assert!(material::verify(&k, &d2, &btf).same_boot);
}

#[test]
fn stale_or_broken_material_is_reported() {
    let Some(fx) = fixture() else { return };
    let phys = PhysicalMemory::parse(&fx.image).unwrap();
    let k_isf = Kernel::locate(&phys, &fx.isf).unwrap();
    let btf = material::btf_from_image(&phys, &Material::default()).unwrap();

    // kallsyms of another boot: the slide differs by 2 MiB.
    let other = kallsyms_for(&fx.isf, k_isf.aslr_shift + 0x20_0000);
    let m = Material {
        btf: Some(&btf),
        kallsyms: Some(other.as_bytes()),
        iomem: Some(b"  01000000-01ffffff : Kernel code\n"),
        version: Some(&fx.version),
    };
    let (p, derived) = m.profile("material", &oracle()).unwrap();
    let k = Kernel::locate(&phys, &p).unwrap();
    let v = material::verify(&k, &derived, &btf);
    assert!(!v.same_boot);
    assert!(
        v.notes
            .iter()
            .any(|n| n.contains("kallsyms is from another boot")),
        "{v:?}"
    );
    assert!(
        v.notes
            .iter()
            .any(|n| n.contains("iomem is from another boot"))
    );
    // Link-time addresses do not depend on the boot: the rows are the same.
    let opts = Options { threads: false };
    assert_eq!(
        run_plugin("pstree", &k, &opts).unwrap(),
        run_plugin("pstree", &k_isf, &opts).unwrap()
    );

    // Truncated BTF: a named error, and the image's own copy replaces it.
    let m = Material {
        btf: Some(&btf[..btf.len() / 2]),
        ..m
    };
    let e = m.profile("material", &oracle()).unwrap_err();
    assert!(matches!(e, MaterialError::Btf(_)), "{e}");
    assert!(e.to_string().contains("truncated BTF"), "{e}");
    let own = material::btf_from_image(&phys, &m).unwrap();
    let (p, _) = m.profile_with_btf(&own, "material", &oracle()).unwrap();
    assert!(Kernel::locate(&phys, &p).is_ok());

    // Material of another kernel: the banner is not in the image.
    let m = Material {
        btf: Some(&btf),
        version: Some(b"Linux version 6.1.0-99-amd64 (x@y) (gcc) #1 SMP\n"),
        ..m
    };
    let (p, _) = m.profile("material", &oracle()).unwrap();
    let e = Kernel::locate(&phys, &p).unwrap_err().to_string();
    assert!(
        e.contains("another kernel") || e.contains("not located"),
        "{e}"
    );
}

/// A vmlinux that is not one says why, in one line.
#[test]
fn vmlinux_errors_name_the_problem() {
    use memimage::material::vmlinux::{VmlinuxError, read};
    assert!(matches!(read(b"not an elf"), Err(VmlinuxError::NotElf(_))));
    // This test program: an ELF file, but no kernel (no .BTF).
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let e = read(&exe).unwrap_err();
    assert_eq!(e, VmlinuxError::NoBtf);
    assert!(!e.to_string().contains('\n'));
}
