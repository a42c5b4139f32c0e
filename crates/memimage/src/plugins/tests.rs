//! The process and network plugins on `synth::proc`: a synthetic kernel
//! with one bash process (maple tree and `vm_next` list variants).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::memdump::{Chunk, dump_regions, read_region};
use super::{Options, Row, Value, run_plugin};
use crate::format::PhysicalMemory;
use crate::kernel::Kernel;
use crate::memory::{PagingMode, VirtualMemory};
use crate::profile::Profile;
use crate::synth::proc::{self, DIRECT, HEAP, NETNS, STACK, VDSO};

fn with_kernel<T>(maple: bool, f: impl FnOnce(&Kernel<'_, '_>) -> T) -> T {
    let pk = proc::build(maple);
    with_image(&pk.mem.bytes, &pk.isf, pk.mem.dtb, f)
}

fn with_image<T>(bytes: &[u8], isf: &str, dtb: u64, f: impl FnOnce(&Kernel<'_, '_>) -> T) -> T {
    let phys = PhysicalMemory::parse(bytes).unwrap();
    let profile = Profile::load(isf.as_bytes(), "synth-proc").unwrap();
    let k = Kernel {
        phys: &phys,
        profile: &profile,
        vm: VirtualMemory::new(&phys, PagingMode::Level4, dtb),
        aslr_shift: 0,
        image_base: crate::kernel::KERNEL_MAP,
        phys_shift: 0,
        dtb,
        mode: PagingMode::Level4,
        banner: Vec::new(),
        banner_pa: 0,
        vmcoreinfo: None,
        method: "synthetic",
        notes: Default::default(),
    };
    f(&k)
}

fn run(k: &Kernel<'_, '_>, name: &str) -> Vec<Row> {
    run_plugin(name, k, &Options { threads: false }).unwrap()
}

/// start, end, perms, pgoff, major, minor, inode, path.
type MapRow = (u64, u64, String, u64, u64, u64, u64, String);

fn maps(k: &Kernel<'_, '_>) -> Vec<MapRow> {
    run(k, "maps")
        .iter()
        .map(|r| {
            let u = |n: &str| match r.get(n) {
                Some(Value::UInt(v)) => *v,
                other => panic!("{n}: {other:?}"),
            };
            let s = |n: &str| match r.get(n) {
                Some(Value::Str(v)) => v.clone(),
                other => panic!("{n}: {other:?}"),
            };
            (
                u("start"),
                u("end"),
                s("perms"),
                u("pgoff"),
                u("major"),
                u("minor"),
                u("inode"),
                s("path"),
            )
        })
        .collect()
}

fn expected_maps() -> Vec<MapRow> {
    let anon = |s: u64, e: u64, p: &str, n: &str| (s, e, p.into(), 0, 0, 0, 0, n.into());
    vec![
        (
            0x40_0000,
            0x40_2000,
            "r-x".into(),
            0x1000,
            8,
            1,
            42,
            "/usr/bin/bash".into(),
        ),
        anon(HEAP, HEAP + 0x3000, "rw-", "[heap]"),
        // 0x700000..0x700123 is not page-aligned: dropped as smeared.
        anon(STACK, STACK + 0x2000, "rw-", "[stack]"),
        anon(VDSO, VDSO + 0x1000, "r-x", "[vdso]"),
    ]
}

#[test]
fn maps_from_the_maple_tree() {
    // The child whose parent word is wrong and the 0x406 internal entry
    // are skipped; the rest come in address order.
    with_kernel(true, |k| assert_eq!(maps(k), expected_maps()));
}

#[test]
fn maps_from_the_vm_next_list() {
    // The list ends in a cycle back to the first VMA; the walk stops there.
    with_kernel(false, |k| assert_eq!(maps(k), expected_maps()));
}

#[test]
fn netstat_tcp4_udp6_unix() {
    with_kernel(true, |k| {
        let rows = run(k, "netstat");
        let view: Vec<Vec<Value>> = rows
            .iter()
            .map(|r| {
                [
                    "fd",
                    "inode",
                    "family",
                    "type",
                    "proto",
                    "local_addr",
                    "local_port",
                    "remote_addr",
                    "remote_port",
                    "state",
                ]
                .iter()
                .map(|c| r.get(c).cloned().unwrap())
                .collect()
            })
            .collect();
        let s = |v: &str| Value::Str(v.into());
        let u = Value::UInt;
        assert_eq!(
            view,
            vec![
                vec![
                    u(1),
                    u(5001),
                    s("AF_INET"),
                    s("STREAM"),
                    s("TCP"),
                    s("10.0.0.1"),
                    u(22),
                    s("10.0.0.2"),
                    u(50000),
                    s("ESTABLISHED")
                ],
                vec![
                    u(2),
                    u(5002),
                    s("AF_INET6"),
                    s("DGRAM"),
                    s("UDP"),
                    s("::1"),
                    u(53),
                    s("::"),
                    u(0),
                    s("UNCONNECTED")
                ],
                vec![
                    u(3),
                    u(5003),
                    s("AF_UNIX"),
                    s("STREAM"),
                    Value::Null,
                    s("/run/x.sock"),
                    u(5003),
                    s("@abs"),
                    u(5004),
                    s("LISTEN")
                ],
            ]
        );
        for r in &rows {
            assert_eq!(r.get("pid"), Some(&Value::Int(100)));
            assert_eq!(r.get("comm"), Some(&Value::Str("bash".into())));
            assert_eq!(r.get("netns"), Some(&Value::UInt(u64::from(NETNS))));
        }
    });
}

#[test]
fn bash_history_sorted_by_time() {
    with_kernel(true, |k| {
        let rows = run(k, "bash");
        let got: Vec<(Value, Value, Value)> = rows
            .iter()
            .map(|r| {
                (
                    r.get("timestamp").cloned().unwrap(),
                    r.get("time").cloned().unwrap(),
                    r.get("command").cloned().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    Value::Int(1_600_000_000),
                    Value::Str("2020-09-13T12:26:40Z".into()),
                    Value::Str("echo older".into())
                ),
                (
                    Value::Int(1_700_000_000),
                    Value::Str("2023-11-14T22:13:20Z".into()),
                    Value::Str("ls -la /root".into())
                ),
            ]
        );
    });
}

#[test]
fn envars_of_the_process() {
    with_kernel(false, |k| {
        let kv: Vec<(Value, Value)> = run(k, "envars")
            .iter()
            .map(|r| {
                (
                    r.get("key").cloned().unwrap(),
                    r.get("value").cloned().unwrap(),
                )
            })
            .collect();
        let s = |v: &str| Value::Str(v.into());
        assert_eq!(kv, vec![(s("HOME"), s("/root")), (s("LANG"), s("C.UTF-8"))]);
    });
}

/// lsof: every descriptor with its path, device and inode (the pointer
/// into nothing at fd 7 gives an empty path, not an error).
#[test]
fn lsof_lists_every_descriptor() {
    with_kernel(true, |k| {
        let rows = run(k, "lsof");
        let fds: Vec<u64> = rows
            .iter()
            .map(|r| match r.get("fd") {
                Some(Value::UInt(n)) => *n,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(fds, [0, 1, 2, 3, 7]);
        assert_eq!(
            rows[0].get("path"),
            Some(&Value::Str("/usr/bin/bash".into()))
        );
        assert_eq!(rows[0].get("device"), Some(&Value::Str("8:1".into())));
        assert_eq!(rows[0].get("inode"), Some(&Value::UInt(42)));
        assert_eq!(rows[4].get("path"), Some(&Value::Str(String::new())));
    });
}

#[test]
fn memdump_lists_holes_and_streams_bytes() {
    with_kernel(true, |k| {
        let regions = dump_regions(k, &[100]).unwrap();
        assert_eq!(regions.len(), 4);
        assert!(dump_regions(k, &[999]).unwrap().is_empty());
        let heap = regions.iter().find(|r| r.path == "[heap]").unwrap();
        assert_eq!(
            heap.file_name(),
            format!("pid.100.vma.{:#x}-{:#x}.dmp", HEAP, HEAP + 0x3000)
        );
        let mut bytes = Vec::new();
        let holes = read_region(k, heap, |c| -> Result<(), ()> {
            match c {
                Chunk::Data(b) => bytes.extend_from_slice(b),
                Chunk::Hole(n) => bytes.resize(bytes.len() + n as usize, 0),
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(holes, vec![(HEAP + 0x2000, HEAP + 0x3000)]);
        assert_eq!(bytes.len(), 0x3000);
        assert_eq!(&bytes[0x200..0x20c], b"ls -la /root");
        // The text region is not mapped at all: one hole, all zeros.
        let text = &regions[0];
        let mut n = 0u64;
        let holes = read_region(k, text, |c| -> Result<(), ()> {
            if let Chunk::Hole(h) = c {
                n += h;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(holes, vec![(0x40_0000, 0x40_2000)]);
        assert_eq!(n, 0x2000);
        // An error from the sink stops the dump and comes back.
        assert_eq!(read_region(k, heap, |_| Err("full")), Err("full"));
    });
}

#[test]
fn a_corrupt_kernel_gives_rows_or_errors_never_panics() {
    let pk = proc::build(true);
    // Flip bytes across the object area; every plugin must return.
    for seed in 0u64..256 {
        let mut bytes = pk.mem.bytes.clone();
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for _ in 0..256 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = 0x1_0000 + (x % 0x3_0000) as usize;
            bytes[at] = (x >> 32) as u8;
        }
        with_image(&bytes, &pk.isf, pk.mem.dtb, |k| {
            for p in ["netstat", "maps", "envars", "bash", "memdump", "pslist"] {
                if let Err(e) = run_plugin(p, k, &Options { threads: true }) {
                    assert!(!e.to_string().contains('\n'), "{e}");
                }
            }
        });
    }
    let _ = DIRECT;
}

/// A ring smeared as a live capture leaves it: entry S was freed and its
/// memory reused for a new tail entry N after A's page was copied, so the
/// forward walk goes H -> A -> N -> H and misses B and C; walking `prev`
/// from H finds them, and a note says the ring disagreed.
#[test]
fn a_smeared_list_is_completed_from_its_other_end() {
    let mut pk = proc::build(true);
    let [h, a, n, b, c] = [0x38_0000u64, 0x38_0100, 0x38_0200, 0x38_0300, 0x38_0400];
    let v = |pa: u64| DIRECT + pa;
    for (at, next, prev) in [(h, a, n), (a, n, h), (n, h, c), (b, c, a), (c, n, b)] {
        pk.mem.write_u64(at, v(next));
        pk.mem.write_u64(at + 8, v(prev));
    }
    with_image(&pk.mem.bytes, &pk.isf, pk.mem.dtb, |k| {
        let got = super::tasks::walk_list(k, v(h), 0x10, "test").unwrap();
        let want: Vec<u64> = [a, n, c, b].iter().map(|&pa| v(pa) - 0x10).collect();
        assert_eq!(got, want);
        let notes = k.take_notes();
        assert!(
            notes.len() == 1 && notes[0].contains("2 entries found only walking it backwards"),
            "{notes:?}"
        );
    });
    // The consistent ring of the unsmeared kernel gives no note.
    with_kernel(true, |k| {
        run(k, "pslist");
        assert!(k.take_notes().is_empty());
    });
}

/// The synthetic image's bytes served as a live source, one request per
/// block; fails every request from `fail_from` on.
struct MemorySource<'b> {
    bytes: &'b [u8],
    requests: std::cell::Cell<u32>,
    fail_from: u32,
}

impl crate::format::PageSource for MemorySource<'_> {
    fn read_at(&self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
        let n = self.requests.get() + 1;
        self.requests.set(n);
        if n >= self.fail_from {
            return Err("connection lost".into());
        }
        let at = addr as usize;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }
}

fn with_source<T>(fail_from: u32, f: impl FnOnce(&Kernel<'_, '_>, &PhysicalMemory<'_>) -> T) -> T {
    let pk = proc::build(true);
    let source = MemorySource {
        bytes: &pk.mem.bytes,
        requests: Default::default(),
        fail_from,
    };
    let phys =
        PhysicalMemory::from_source(&[(0, pk.mem.bytes.len() as u64)], &source, 4096, 1 << 20);
    let profile = Profile::load(pk.isf.as_bytes(), "synth-proc").unwrap();
    let k = crate::synth::kernel(&phys, &profile, pk.mem.dtb);
    f(&k, &phys)
}

#[test]
fn a_live_source_gives_the_rows_a_file_gives_and_reads_only_what_they_need() {
    let plugins = [
        "pslist", "pstree", "psaux", "netstat", "maps", "envars", "bash", "lsof",
    ];
    let (live, stats) = with_source(u32::MAX, |k, phys| {
        let rows: Vec<Vec<Row>> = plugins.iter().map(|p| run(k, p)).collect();
        (rows, phys.source_stats())
    });
    let file: Vec<Vec<Row>> = with_kernel(true, |k| plugins.iter().map(|p| run(k, p)).collect());
    for ((name, l), f) in plugins.iter().zip(&live).zip(&file) {
        assert!(!f.is_empty(), "{name}: no rows from the file");
        assert_eq!(l, f, "{name}: the live source and the file disagree");
    }
    let size = proc::build(true).mem.bytes.len() as u64;
    assert!(
        stats.requests > 0 && stats.bytes < size / 4,
        "{stats:?} of {size}"
    );
}

#[test]
fn a_failing_live_source_is_an_error_never_fewer_rows() {
    for fail_from in [1, 3, 8] {
        let result = with_source(fail_from, |k, _| {
            run_plugin("pslist", k, &Options { threads: false })
        });
        match result {
            Err(super::PluginError::Kernel { cause, .. }) => {
                assert!(cause.is_source_failure(), "{fail_from}: {cause}")
            }
            other => panic!("source failing from request {fail_from}: {other:?}"),
        }
    }
}

#[test]
fn searches_of_all_memory_refuse_a_live_source() {
    with_source(u32::MAX, |_, phys| {
        let e = phys.find_all(b"Linux version ", 4).unwrap_err();
        assert!(e.to_string().contains("live source"), "{e}");
    });
}
