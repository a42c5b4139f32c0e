//! The kcore source's parsers and framing on headers as the lab guests
//! and real kernels write them.

use super::*;

fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let pad = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(4) * 4, 0);
    let mut out = Vec::new();
    out.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(name);
    out.push(0);
    pad(&mut out);
    out.extend_from_slice(desc);
    pad(&mut out);
    out
}

#[test]
fn elf_notes_are_read_in_order_and_a_cut_note_ends_them() {
    let mut bytes = note(b"CORE", 1, &[7u8; 13]);
    bytes.extend(note(
        b"VMCOREINFO",
        0,
        b"OSRELEASE=6.1.0\nKERNELOFFSET=2a000000\n",
    ));
    bytes.extend(note(b"GNU", 3, &[0xab; 20]));
    let notes = elf_notes(&bytes);
    let names: Vec<&[u8]> = notes.iter().map(|n| n.name).collect();
    assert_eq!(names, [&b"CORE"[..], b"VMCOREINFO", b"GNU"]);
    assert_eq!(notes[1].desc, b"OSRELEASE=6.1.0\nKERNELOFFSET=2a000000\n");
    assert_eq!((notes[2].kind, notes[2].desc.len()), (3, 20));
    // Cut inside the last note: the ones before it stand.
    assert_eq!(elf_notes(&bytes[..bytes.len() - 4]).len(), 2);
    // A size that overflows is the end, not a panic.
    let mut bad = vec![0xff; 12];
    bad.extend_from_slice(&[0; 8]);
    assert!(elf_notes(&bad).is_empty());
}
use tokio::io::AsyncReadExt;

/// Program headers as the 6.1 lab guest's /proc/kcore has them.
fn lab_segments() -> Vec<Segment> {
    let seg = |offset, vaddr, paddr, filesz| Segment {
        offset,
        vaddr,
        paddr,
        filesz,
    };
    vec![
        seg(0x7fff98203000, 0xffffffff98200000, 0x1b400000, 0x3430000),
        seg(0x4b3180003000, 0xffffcb3180000000, u64::MAX, 0x1fffffffffff),
        seg(0x7fffc0003000, 0xffffffffc0000000, u64::MAX, 0x3f000000),
        seg(0xa3680004000, 0xffff8a3680001000, 0x1000, 0x9e000),
        seg(0x798800003000, 0xfffff98800000000, u64::MAX, 0x3000),
        seg(0xa3680103000, 0xffff8a3680100000, 0x100000, 0x1fee0000),
        seg(0x798800007000, 0xfffff98800004000, u64::MAX, 0x7fc000),
    ]
}

fn elf(segments: &[Segment], with_note: bool) -> Vec<u8> {
    let mut phdrs = Vec::new();
    if with_note {
        let mut note = [0u8; 56];
        note[0..4].copy_from_slice(&4u32.to_le_bytes());
        phdrs.push(note);
    }
    for s in segments {
        let mut p = [0u8; 56];
        p[0..4].copy_from_slice(&1u32.to_le_bytes());
        p[4..8].copy_from_slice(&7u32.to_le_bytes());
        p[8..16].copy_from_slice(&s.offset.to_le_bytes());
        p[16..24].copy_from_slice(&s.vaddr.to_le_bytes());
        p[24..32].copy_from_slice(&s.paddr.to_le_bytes());
        p[32..40].copy_from_slice(&s.filesz.to_le_bytes());
        p[40..48].copy_from_slice(&s.filesz.to_le_bytes());
        phdrs.push(p);
    }
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[16..18].copy_from_slice(&4u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
    out[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    out[0x38..0x3a].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
    for p in phdrs {
        out.extend_from_slice(&p);
    }
    out
}

#[test]
fn parses_program_headers() {
    let bytes = elf(&lab_segments(), true);
    assert_eq!(
        parse_header(&bytes).unwrap(),
        Header::Segments(lab_segments())
    );
    assert_eq!(
        parse_header(&bytes[..200]).unwrap(),
        Header::NeedBytes(bytes.len() as u64)
    );
    assert!(
        parse_header(b"not an elf file at all, really not, no no no no no no no no no").is_err()
    );
    let mut exec = bytes.clone();
    exec[16] = 2;
    assert!(
        parse_header(&exec)
            .unwrap_err()
            .to_string()
            .contains("core")
    );
    let mut be = bytes;
    be[5] = 2;
    assert!(parse_header(&be).is_err());
}

#[test]
fn plans_the_lab_guest() {
    let ram = [
        PhysRange {
            start: 0x1000,
            end: 0x9fbff,
        },
        PhysRange {
            start: 0x100000,
            end: 0x1ffdffff,
        },
    ];
    let segments = lab_segments();
    let plan = plan(&ram, &segments);
    assert_eq!(
        plan.ranges,
        vec![
            PlannedRange {
                range: PhysRange {
                    start: 0x1000,
                    end: 0x9efff
                },
                pieces: vec![Piece {
                    file_offset: 0xa3680004000,
                    len: 0x9e000
                }],
            },
            // The direct map, not the kernel-text segment inside it.
            PlannedRange {
                range: PhysRange {
                    start: 0x100000,
                    end: 0x1ffdffff
                },
                pieces: vec![Piece {
                    file_offset: 0xa3680103000,
                    len: 0x1fee0000
                }],
            },
        ]
    );
    assert_eq!(
        plan.uncovered,
        vec![PhysRange {
            start: 0x9f000,
            end: 0x9fbff
        }]
    );
    check_plan(&plan, &segments).unwrap();
    let command = stream_command(&plan);
    assert_eq!(command.matches("dd if=/proc/kcore").count(), 2);
    assert!(command.contains(&format!("skip={} count={}", 0xa3680103000u64, 0x1fee0000)));
    let rec = record(&plan, &segments);
    assert_eq!(rec.segments_used.len(), 2);
    assert_eq!(rec.remote_reads, 2);
}

#[test]
fn refuses_missing_memory() {
    let ram = [PhysRange {
        start: 0x100000,
        end: 0x4fffffff,
    }];
    let plan = plan(&ram, &lab_segments());
    let e = check_plan(&plan, &lab_segments()).unwrap_err().to_string();
    assert!(e.contains("0x1ffe0000-0x4fffffff"), "{e}");

    // Old kernels: no physical addresses at all.
    let none: Vec<Segment> = lab_segments()
        .into_iter()
        .map(|s| Segment {
            paddr: u64::MAX,
            ..s
        })
        .collect();
    let plan = super::plan(&ram, &none);
    assert!(check_plan(&plan, &none).is_err());
}

#[test]
fn splits_at_holes_and_joins_adjacent_segments() {
    let seg = |offset, paddr, filesz| Segment {
        offset,
        vaddr: 0,
        paddr,
        filesz,
    };
    // Two adjacent segments, contiguous in the file: one piece.
    let segments = [seg(0x10000, 0x0, 0x2000), seg(0x12000, 0x2000, 0x2000)];
    let p = plan(
        &[PhysRange {
            start: 0,
            end: 0x3fff,
        }],
        &segments,
    );
    assert_eq!(p.ranges.len(), 1);
    assert_eq!(p.ranges[0].pieces.len(), 1);
    // A hole in the middle: two LiME ranges and the hole reported.
    let segments = [seg(0x10000, 0x0, 0x1000), seg(0x50000, 0x3000, 0x1000)];
    let p = plan(
        &[PhysRange {
            start: 0,
            end: 0x3fff,
        }],
        &segments,
    );
    assert_eq!(p.image_ranges().len(), 2);
    assert_eq!(
        p.uncovered,
        vec![PhysRange {
            start: 0x1000,
            end: 0x2fff
        }]
    );
    assert!(!is_partial_page(&p.uncovered[0]));
    assert!(is_partial_page(&PhysRange {
        start: 0x9f000,
        end: 0x9fbff
    }));
    assert!(is_partial_page(&PhysRange {
        start: 0x9f800,
        end: 0xa07ff
    }));
}

#[tokio::test]
async fn frames_lime_ranges() {
    let ranges = vec![
        PhysRange {
            start: 0x1000,
            end: 0x1fff,
        },
        PhysRange {
            start: 0x5000,
            end: 0x5003,
        },
    ];
    let raw: Vec<u8> = (0..4100u32).map(|i| i as u8).collect();
    let mut out = Vec::new();
    LimeFramer::new(std::io::Cursor::new(raw.clone()), ranges.clone())
        .read_to_end(&mut out)
        .await
        .unwrap();
    let mut validator = crate::pipeline::lime::LimeValidator::new();
    validator.feed(&out).unwrap();
    assert_eq!(validator.finish().unwrap(), ranges);
    assert_eq!(&out[32..32 + 4096], &raw[..4096]);
    assert_eq!(&out[out.len() - 4..], &raw[4096..]);

    // More than planned is an error; fewer is a short (invalid) image.
    let mut long = raw.clone();
    long.push(0);
    let mut sink = Vec::new();
    assert!(
        LimeFramer::new(std::io::Cursor::new(long), ranges.clone())
            .read_to_end(&mut sink)
            .await
            .is_err()
    );
    let mut short = Vec::new();
    LimeFramer::new(std::io::Cursor::new(raw[..100].to_vec()), ranges)
        .read_to_end(&mut short)
        .await
        .unwrap();
    let mut validator = crate::pipeline::lime::LimeValidator::new();
    validator.feed(&short).unwrap();
    assert!(validator.finish().is_err());
}

#[test]
fn explains_failures() {
    assert!(explain_read_failure("dd: /proc/kcore: Permission denied").contains("root"));
    assert!(
        explain_read_failure("dd: can't open '/proc/kcore': No such file or directory")
            .contains("CONFIG_PROC_KCORE")
    );
}
