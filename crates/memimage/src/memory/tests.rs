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
