#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
use super::write::{avml_image, lime_image};
use super::*;

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn lime_ranges_and_gaps() {
    let a = pattern(0x2000, 1);
    let b = pattern(0x1000, 2);
    let img = lime_image(&[(0x1000, &a), (0x10000, &b)]);
    let pm = PhysicalMemory::parse(&img).unwrap();
    assert_eq!(pm.format(), ImageFormat::Lime);
    assert_eq!(
        pm.ranges().collect::<Vec<_>>(),
        vec![(0x1000, 0x3000), (0x10000, 0x11000)]
    );
    let mut buf = [0u8; 16];
    pm.read(0x1ff8, &mut buf).unwrap();
    assert_eq!(&buf[..], &a[0xff8..0x1008]);
    assert_eq!(
        pm.read(0x2ff8, &mut buf),
        Err(FormatError::Absent { addr: 0x3000 })
    );
    assert_eq!(pm.read(0x0, &mut buf), Err(FormatError::Absent { addr: 0 }));
    assert_eq!(pm.slice(0x10000, 4).unwrap(), &b[..4]);
}

#[test]
fn adjacent_ranges_read_across() {
    let a = pattern(0x1000, 3);
    let b = pattern(0x1000, 4);
    let img = lime_image(&[(0, &a), (0x1000, &b)]);
    let pm = PhysicalMemory::parse(&img).unwrap();
    let mut buf = [0u8; 8];
    pm.read(0xffc, &mut buf).unwrap();
    assert_eq!(&buf[..4], &a[0xffc..]);
    assert_eq!(&buf[4..], &b[..4]);
}

#[test]
fn truncated_and_bad_headers() {
    let a = pattern(0x1000, 5);
    let mut img = lime_image(&[(0, &a)]);
    img.truncate(img.len() - 1);
    let e = PhysicalMemory::parse(&img).unwrap_err();
    assert!(matches!(e, FormatError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("4096"), "{e}");
    let mut img = lime_image(&[(0x2000, &a), (0x1000, &a)]);
    assert!(PhysicalMemory::parse(&img).is_err());
    img[4] = 9;
    assert!(
        PhysicalMemory::parse(&img)
            .unwrap_err()
            .to_string()
            .contains("version 9")
    );
    assert_eq!(PhysicalMemory::parse(&[]).unwrap_err(), FormatError::Empty);
}

#[test]
fn raw_image() {
    let a = pattern(0x3000, 6);
    let pm = PhysicalMemory::parse(&a).unwrap();
    assert_eq!(pm.format(), ImageFormat::Raw);
    assert_eq!(
        pm.read_u64(8).unwrap(),
        u64::from_le_bytes(a[8..16].try_into().unwrap())
    );
    assert!(pm.read_u64(0x3000).is_err());
}

#[test]
fn avml_matches_lime() {
    let a = pattern(200_000, 7);
    let b = vec![0u8; 70_000];
    let ranges: [(u64, &[u8]); 2] = [(0x1000, &a), (0x100000, &b)];
    let lime = lime_image(&ranges);
    let avml = avml_image(&ranges).unwrap();
    let pl = PhysicalMemory::parse(&lime).unwrap();
    let pa = PhysicalMemory::parse(&avml).unwrap();
    assert_eq!(pa.format(), ImageFormat::AvmlCompressed);
    assert_eq!(
        pl.ranges().collect::<Vec<_>>(),
        pa.ranges().collect::<Vec<_>>()
    );
    for addr in [
        0x1000u64,
        0x1000 + 65530,
        0x1000 + 131072 - 3,
        0x100000 + 69990,
    ] {
        let mut x = [0u8; 10];
        let mut y = [0u8; 10];
        pl.read(addr, &mut x).unwrap();
        pa.read(addr, &mut y).unwrap();
        assert_eq!(x, y, "at {addr:#x}");
    }
    let needle = &a[65530..65542];
    assert_eq!(
        pl.find_all(needle, 5000).unwrap(),
        pa.find_all(needle, 5000).unwrap()
    );
    assert!(
        pa.find_all(needle, 5000)
            .unwrap()
            .contains(&(0x1000 + 65530))
    );
}
