#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
use super::*;
use crate::format::{PhysicalMemory, write::lime_image};
use crate::synth::SynthMemory;

fn check(five: bool) {
    let mut m = SynthMemory::new(0x80_0000, 0x80_0000, five);
    let k = if five {
        0xff11_0000_0000_0000u64
    } else {
        0xffff_8880_0000_0000
    };
    m.map(k + 0x1000, 0x5000, 0x1000);
    m.map(k + 0x4000_0000, 0x20_0000, 0x20_0000);
    m.write(0x5000, b"four-kib");
    m.write(0x20_0000 + 0x1234, b"two-mib");
    let img = lime_image(&[(0, &m.bytes)]);
    let pm = PhysicalMemory::parse(&img).unwrap();
    let mode = if five {
        PagingMode::Level5
    } else {
        PagingMode::Level4
    };
    let vm = VirtualMemory::new(&pm, mode, m.dtb);
    let mut b = [0u8; 8];
    vm.read(k + 0x1000, &mut b).unwrap();
    assert_eq!(&b, b"four-kib");
    let mut b = [0u8; 7];
    vm.read(k + 0x4000_1234, &mut b).unwrap();
    assert_eq!(&b, b"two-mib");
    assert_eq!(
        translate(&pm, mode, m.dtb, k + 0x4000_1234)
            .unwrap()
            .page_size,
        0x20_0000
    );
    assert!(matches!(
        vm.read_u64(k + 0x2000),
        Err(MemoryError::NotPresent { .. })
    ));
    assert!(matches!(
        vm.read_u64(0x0000_9000_0000_0000 | (1 << 62)),
        Err(MemoryError::NonCanonical { .. })
    ));
}

#[test]
fn four_level() {
    check(false);
}

#[test]
fn five_level() {
    check(true);
}

#[test]
fn one_gib_page_and_pat_bit() {
    let mut m = SynthMemory::new(0x10_0000, 0x10_0000, false);
    // A 1 GiB page at physical 0 with the PAT bit set: PA must ignore bit 12.
    let va = 0xffff_ffff_8000_0000u64;
    m.map(va, 0, 0x4000_0000);
    let pdpt = m.read_u64(m.dtb + ((va >> 39) & 0x1ff) * 8) & 0x000f_ffff_ffff_f000;
    let slot = pdpt + ((va >> 30) & 0x1ff) * 8;
    let e = m.read_u64(slot);
    m.write_u64(slot, e | 0x1000);
    m.write(0x3008, b"gigapage");
    let img = lime_image(&[(0, &m.bytes)]);
    let pm = PhysicalMemory::parse(&img).unwrap();
    let vm = VirtualMemory::new(&pm, PagingMode::Level4, m.dtb);
    let t = translate(&pm, PagingMode::Level4, m.dtb, va + 0x3008).unwrap();
    assert_eq!(
        t,
        Translation {
            pa: 0x3008,
            page_size: 0x4000_0000
        }
    );
    let mut b = [0u8; 8];
    vm.read(va + 0x3008, &mut b).unwrap();
    assert_eq!(&b, b"gigapage");
    // Mapped, but the frame lies outside the captured memory.
    assert!(matches!(
        vm.read_u64(va + 0x20_0000),
        Err(MemoryError::PageAbsent { .. })
    ));
}

/// Every AArch64 geometry the kernel supports: a page and a block in the
/// upper (TTBR1) half read back, a hole is `NotPresent` with the span of
/// the entry that is missing, and an address of the wrong width is refused.
#[test]
fn aarch64_geometries() {
    use super::{Aarch64Paging, Granule};
    let cases = [
        (Granule::K4, 39, 0x20_0000u64, 3usize),
        (Granule::K4, 48, 0x20_0000, 4),
        (Granule::K4, 52, 0x4000_0000, 5),
        (Granule::K16, 36, 0x200_0000, 2),
        (Granule::K16, 47, 0x200_0000, 3),
        (Granule::K16, 48, 0x200_0000, 4),
        (Granule::K16, 52, 0x200_0000, 4),
        (Granule::K64, 42, 0x2000_0000, 2),
        (Granule::K64, 48, 0x2000_0000, 3),
        (Granule::K64, 52, 0x2000_0000, 3),
    ];
    for (granule, va_bits, block, levels) in cases {
        let paging = Aarch64Paging { granule, va_bits };
        assert!(paging.is_valid(), "{paging:?}");
        let page = granule.page_size();
        let mem = (block * 2).max(0x100_0000) as usize + 0x40_0000;
        let mut m = SynthMemory::new_aarch64(mem, mem as u64, paging);
        let base = !0u64 << (va_bits - 1); // start of the upper half
        let text = base + 3 * block + 5 * page;
        m.map(text, 2 * page, page);
        m.map(base + block, block, block);
        m.write(2 * page + 8, b"a page");
        m.write(block + 0x1234, b"a block");
        let img = lime_image(&[(0, &m.bytes)]);
        let pm = PhysicalMemory::parse(&img).unwrap();
        let mode = m.mode();
        let vm = VirtualMemory::new(&pm, mode, m.dtb);
        let ctx = format!("{granule:?} {va_bits} bits");
        let mut b = [0u8; 6];
        vm.read(text + 8, &mut b)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(&b, b"a page", "{ctx}");
        let t = translate(&pm, mode, m.dtb, base + block + 0x1234).unwrap();
        assert_eq!((t.pa, t.page_size), (block + 0x1234, block), "{ctx}");
        match vm.read_u64(text + page) {
            Err(MemoryError::NotPresent { span, level, .. }) => {
                assert_eq!(span, page, "{ctx}");
                assert_eq!(level, "L3", "{ctx}");
            }
            other => panic!("{ctx}: {other:?}"),
        }
        // The top level's name says how many levels were walked.
        let top_name = ["L3", "L2", "L1", "L0", "L-1"][levels - 1];
        match vm.read_u64(base) {
            Err(MemoryError::NotPresent { level, .. }) if level == top_name => {}
            Err(MemoryError::NotPresent { level, .. }) => assert!(levels > 1, "{ctx}: {level}"),
            other => panic!("{ctx}: base {other:?}"),
        }
        assert!(
            matches!(
                vm.read_u64(base.wrapping_sub(1u64 << 40) & !(1 << 63)),
                Err(MemoryError::NonCanonical { .. })
            ),
            "{ctx}"
        );
    }
}

/// Output addresses above 48 bits: LPA2 keeps bits 51:50 in descriptor
/// bits 9:8; 64 KiB pages keep bits 51:48 in bits 15:12. Bits 9:8 are
/// shareability, not address, without LPA2. The contiguous hint (bit 52)
/// changes nothing for a walk.
#[test]
fn aarch64_high_output_addresses() {
    use super::{Aarch64Paging, Granule};
    let high = 0x000d_0000_0000_0000u64; // bits 51:50 and 48 set
    let data = vec![0x5au8; 0x1_0000];
    for (granule, va_bits) in [(Granule::K4, 52), (Granule::K64, 52), (Granule::K64, 48)] {
        let paging = Aarch64Paging { granule, va_bits };
        let page = granule.page_size();
        let mut m = SynthMemory::new_aarch64(0x40_0000, 0x40_0000, paging);
        let va = !0u64 << (va_bits - 1);
        m.map(va, high, page);
        let img = lime_image(&[(0, &m.bytes), (high, &data)]);
        let pm = PhysicalMemory::parse(&img).unwrap();
        let t = translate(&pm, PagingMode::Aarch64(paging), m.dtb, va + 0x10).unwrap();
        assert_eq!(t.pa, high + 0x10, "{granule:?} {va_bits}");
    }
    // Without LPA2, bits 9:8 (inner shareable = 0b11) are not address bits.
    let paging = Aarch64Paging {
        granule: Granule::K4,
        va_bits: 48,
    };
    let mut m = SynthMemory::new_aarch64(0x40_0000, 0x40_0000, paging);
    let va = 0xffff_8000_1000_0000u64;
    m.map(va, 0x2000, 0x1000);
    let mode = PagingMode::Aarch64(paging);
    assert_eq!(mode.va_bits(), 48);
    let leaf = slot_at(&m, va, 3);
    let e = m.read_u64(leaf);
    m.write_u64(leaf, e | 0x300 | (1 << 52));
    let img = lime_image(&[(0, &m.bytes)]);
    let pm = PhysicalMemory::parse(&img).unwrap();
    assert_eq!(translate(&pm, mode, m.dtb, va + 4).unwrap().pa, 0x2004);
    // A last-level entry with bit 1 clear is reserved: not mapped.
    let mut m2 = m.clone();
    m2.write_u64(leaf, (e | 0x300) & !2);
    let img = lime_image(&[(0, &m2.bytes)]);
    let pm = PhysicalMemory::parse(&img).unwrap();
    assert!(matches!(
        translate(&pm, mode, m2.dtb, va),
        Err(MemoryError::NotPresent { level: "L3", .. })
    ));
}

/// The slot of `va`'s entry at `depth` (0 = top, 3 = last) of 4 KiB,
/// 4-level tables, found by hand (either architecture: the synthetic
/// tables keep their addresses below bit 48).
fn slot_at(m: &SynthMemory, va: u64, depth: usize) -> u64 {
    let shifts = [39, 30, 21, 12];
    let mut table = m.dtb;
    for shift in shifts.iter().take(depth) {
        table = m.read_u64(table + ((va >> shift) & 0x1ff) * 8) & 0x0000_ffff_ffff_f000;
    }
    table + ((va >> shifts[depth]) & 0x1ff) * 8
}

/// Executable leaves: what a kernel may run, per architecture's bits (NX at
/// any level; PXN on a leaf, PXNTable above it), limited to a range.
#[test]
fn executable_leaves_follow_each_architectures_bits() {
    use super::{Aarch64Paging, Granule, Leaf, executable_leaves};
    // x86-64: one executable page, one NX page, one under an NX table.
    let mut m = SynthMemory::new(0x40_0000, 0x40_0000, false);
    let base = 0xffff_ffff_c000_0000u64;
    m.map(base, 0x1000, 0x1000);
    m.map(base + 0x1000, 0x2000, 0x1000);
    m.map(base + 0x20_0000, 0x3000, 0x1000);
    let slot = slot_at(&m, base + 0x1000, 3);
    m.write_u64(slot, m.read_u64(slot) | 1 << 63);
    let pd = slot_at(&m, base + 0x20_0000, 2);
    m.write_u64(pd, m.read_u64(pd) | 1 << 63);
    let img = lime_image(&[(0, &m.bytes)]);
    let pm = PhysicalMemory::parse(&img).unwrap();
    let mut unread = 0;
    let got = executable_leaves(
        &pm,
        m.mode(),
        m.dtb,
        base,
        base + 0x3000_0000,
        100,
        &mut unread,
    );
    assert_eq!(
        got,
        [Leaf {
            va: base,
            size: 0x1000
        }]
    );
    assert_eq!(unread, 0);
    // Outside the range: nothing.
    assert!(
        executable_leaves(
            &pm,
            m.mode(),
            m.dtb,
            base + 0x1000,
            base + 0x2000,
            100,
            &mut unread
        )
        .is_empty()
    );

    // AArch64, 4 KiB / 48 bits: a page, a PXN page, a 2 MiB block.
    let paging = Aarch64Paging {
        granule: Granule::K4,
        va_bits: 48,
    };
    let mut a = SynthMemory::new_aarch64(0x80_0000, 0x80_0000, paging);
    let kbase = 0xffff_8000_8000_0000u64;
    a.map(kbase, 0x1000, 0x1000);
    a.map(kbase + 0x1000, 0x2000, 0x1000);
    a.map(kbase + 0x40_0000, 0x40_0000, 0x20_0000);
    let slot = slot_at(&a, kbase + 0x1000, 3);
    a.write_u64(slot, a.read_u64(slot) | 1 << 53);
    let img = lime_image(&[(0, &a.bytes)]);
    let pm = PhysicalMemory::parse(&img).unwrap();
    let got = executable_leaves(
        &pm,
        a.mode(),
        a.dtb,
        kbase,
        kbase + 0x8000_0000,
        100,
        &mut unread,
    );
    assert_eq!(
        got,
        [
            Leaf {
                va: kbase,
                size: 0x1000
            },
            Leaf {
                va: kbase + 0x40_0000,
                size: 0x20_0000
            }
        ]
    );
    // PXNTable on the table above the page bars it too.
    let pmd = slot_at(&a, kbase, 2);
    a.write_u64(pmd, a.read_u64(pmd) | 1 << 59);
    let img = lime_image(&[(0, &a.bytes)]);
    let pm = PhysicalMemory::parse(&img).unwrap();
    let got = executable_leaves(
        &pm,
        a.mode(),
        a.dtb,
        kbase,
        kbase + 0x8000_0000,
        100,
        &mut unread,
    );
    assert_eq!(
        got,
        [Leaf {
            va: kbase + 0x40_0000,
            size: 0x20_0000
        }]
    );
}
