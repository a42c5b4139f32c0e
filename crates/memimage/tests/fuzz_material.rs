//! Property-based fuzzing of the material readers (BTF, kallsyms, iomem) and
//! the ISF they build: arbitrary and mutated bytes never panic, and every
//! error is one line.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use memimage::material::{Btf, Kallsyms, Material, iomem_kernel_code};
use memimage::profile::Selection;
use proptest::prelude::*;

/// A valid BTF blob: int, struct task_struct { int pid; }, list_head, mm_struct.
fn seed() -> Vec<u8> {
    let strings = b"\0int\0task_struct\0pid\0list_head\0mm_struct\0".to_vec();
    let mut t = Vec::new();
    let mut w = |v: u32| t.extend_from_slice(&v.to_le_bytes());
    for v in [1, 1 << 24, 4, 1 << 24 | 32] {
        w(v); // 1: int
    }
    for v in [5, 4 << 24 | 1, 4, 17, 1, 0] {
        w(v); // 2: struct task_struct { int pid; }
    }
    for v in [21, 4 << 24, 16, 31, 4 << 24, 8] {
        w(v); // 3: list_head {}, 4: mm_struct {}
    }
    let mut b = vec![0x9f, 0xeb, 1, 0];
    for v in [
        24u32,
        0,
        t.len() as u32,
        t.len() as u32,
        strings.len() as u32,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&t);
    b.extend_from_slice(&strings);
    b
}

const KALLSYMS: &[u8] = b"ffffffffa0000000 T _text\nffffffffa1a1aa40 D init_task\n";

fn one_line(e: &impl std::fmt::Display) {
    let s = e.to_string();
    assert!(!s.contains('\n') && !s.is_empty(), "{s:?}");
}

#[test]
fn seed_is_valid() {
    let b = seed();
    assert_eq!(Btf::parse(&b).unwrap().len(), 4);
    let m = Material {
        btf: Some(&b),
        kallsyms: Some(KALLSYMS),
        ..Material::default()
    };
    m.profile("seed", &Selection::All).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_btf_never_panics(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
        let mut b = seed();
        let p = pos % b.len();
        b[p] = byte;
        b.truncate(b.len() - cut.min(b.len()));
        if let Err(e) = Btf::parse(&b) {
            one_line(&e);
        }
        let m = Material { btf: Some(&b), kallsyms: Some(KALLSYMS), ..Material::default() };
        if let Err(e) = m.profile("fuzz", &Selection::All) {
            one_line(&e);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Err(e) = Btf::parse(&data) {
            one_line(&e);
        }
        if let Err(e) = Kallsyms::parse(&data) {
            one_line(&e);
        }
        let _ = iomem_kernel_code(&data);
    }
}
