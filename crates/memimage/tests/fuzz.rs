//! Property-based fuzzing of everything that reads untrusted bytes: the
//! image parser, paging over garbage tables, the profile loader, and
//! kernel discovery on mutated images. Properties: no panic, errors are
//! one line. Seeds live in `tests/corpus/` (regenerate with
//! `MSHOT_REGEN_CORPUS=1 cargo test -p memimage --test fuzz`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use memimage::format::write::{avml_image, lime_image};
use memimage::memory::{Aarch64Paging, Granule, PagingMode, VirtualMemory, translate};
use memimage::{Kernel, PhysicalMemory, Profile};
use proptest::prelude::*;
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

const MINI_ISF: &str = r#"{"metadata": {"format": "6.2.0"},
 "base_types": {"int": {"size": 4, "signed": true, "kind": "int", "endian": "little"},
   "pointer": {"size": 8, "signed": false, "kind": "int", "endian": "little"}},
 "user_types": {"task_struct": {"kind": "struct", "size": 64, "fields": {
    "comm": {"offset": 16, "type": {"kind": "array", "count": 16, "subtype": {"kind": "base", "name": "char"}}},
    "pid": {"offset": 0, "type": {"kind": "base", "name": "int"}},
    "files": {"offset": 8, "type": {"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}},
    "unnamed_field_0": {"anonymous": true, "offset": 32, "type": {"kind": "struct", "name": "unnamed_x"}}}},
  "unnamed_x": {"kind": "struct", "size": 8, "fields": {"tasks": {"offset": 0, "type": {"kind": "bitfield", "bit_position": 1, "bit_length": 3, "type": {"kind": "base", "name": "int"}}}}}},
 "enums": {"mod_mem_type": {"size": 4, "base": "int", "constants": {"MOD_TEXT": 0}}},
 "symbols": {"linux_banner": {"address": 18446744071564165376, "constant_data": "TGludXggdmVyc2lvbiB4ICh5KQoA"},
   "init_task": {"address": 18446744071564169216}, "init_files": {"address": 18446744071564173312},
   "init_top_pgt": {"address": 18446744071564177408}}}"#;

/// Where `synth::integrity` keeps the objects of the newer checks
/// (physical): init_task and the tasks, the PID namespace, its xarray
/// nodes and pids, `prb` and its ring, descriptors, infos and data, the
/// tty driver list, driver, slots, tty, line discipline and its ops,
/// `tcp4_seq_ops`, the tracepoint table, tracepoints and probe arrays, and
/// the eBPF IDRs, their nodes, the pack, programs, their aux (ksym, prog,
/// name), the link and its tracepoint map; the cgroups, their kernfs nodes
/// and program lists, the net devices, the hidden XDP link, the seccomp
/// filters and classic programs (aux, fprog, instructions); the trace
/// events list, `uprobes_tree`, the uprobe, its trace_uprobe (consumer,
/// probe), the probe event and its program array.
const OBJECTS: &[usize] = &[
    0x2_9000, 0x4_0000, 0x4_1000, 0x4_2000, 0x4_3000, 0x4_8000, 0x4_9000, 0x4_9400, 0x4_a000,
    0x5_0000, 0x5_0100, 0x5_1000, 0x5_2000, 0x5_3000, 0x6_0000, 0x6_0100, 0x6_0400, 0x6_1000,
    0x6_2000, 0x6_2100, 0x7_0000, 0x8_0000, 0x8_0100, 0x8_0200, 0x8_0800, 0x8_0900, 0x8_0a00,
    0x9_0000, 0x9_0400, 0x9_0800, 0x9_0c00, 0x9_1000, 0x9_2000, 0x9_5000, 0x9_5100, 0x9_5300,
    0x9_6300, 0x9_7300, 0x9_8000, 0x9_a000, 0x9_a100, 0xc_0000, 0xc_0100, 0xc_0400, 0xc_0500,
    0xc_0800, 0xc_0a00, 0xc_1000, 0xc_1100, 0xc_1400, 0xc_1500, 0xc_2000, 0xc_3000, 0xc_3100,
    0xc_4000, 0xc_4400, 0xc_4700, 0xc_4800, 0xc_4900, 0xc_5000, 0xd_0000, 0xd_0100, 0xd_0200,
    0xd_0280, 0xd_0400, 0xd_0480, 0xd_0600,
];

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut mem = vec![0u8; 0x8000];
    mem[0x100..0x100 + 20].copy_from_slice(b"Linux version x (y)\n");
    mem[0x1010..0x1019].copy_from_slice(b"swapper/0");
    mem[0x2000..0x200c].copy_from_slice(b"VMCOREINFO\0\0");
    let rekall = serde_json::to_vec(
        &Profile::load(MINI_ISF.as_bytes(), "m")
            .unwrap()
            .to_rekall_json(),
    )
    .unwrap();
    vec![
        (
            "lime-small.lime",
            lime_image(&[(0, &mem[..0x4000]), (0x6000, &mem[0x6000..])]),
        ),
        (
            "avml-small.lime",
            avml_image(&[(0x1000, &mem[..0x3000])]).unwrap(),
        ),
        ("raw-small.raw", mem[..0x3000].to_vec()),
        ("mini-isf.json", MINI_ISF.as_bytes().to_vec()),
        ("mini-rekall.json", rekall),
        ("bad-header.lime", {
            let mut l = lime_image(&[(0, &mem[..0x1000])]);
            l[8] = 0xff;
            l
        }),
    ]
}

fn corpus() -> Vec<Vec<u8>> {
    let dir = corpus_dir();
    if std::env::var_os("MSHOT_REGEN_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (n, b) in seeds() {
            std::fs::write(dir.join(n), b).unwrap();
        }
    }
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.extend(seeds().into_iter().map(|(_, b)| b));
    out
}

fn mutate(mut b: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for &(pos, v) in edits {
        if !b.is_empty() {
            let i = pos % b.len();
            b[i] = v;
        }
    }
    if let Some(c) = cut
        && !b.is_empty()
    {
        b.truncate(c % b.len());
    }
    b
}

fn exercise_image(bytes: &[u8], profile: &Profile) {
    let Ok(phys) = PhysicalMemory::parse(bytes) else {
        return;
    };
    let mut buf = [0u8; 64];
    for (s, e) in phys.ranges().take(4) {
        let _ = phys.read(s, &mut buf);
        let _ = phys.read(e.saturating_sub(8), &mut buf);
    }
    let _ = phys.find_all(b"Linux version", 8);
    if let Err(e) = Kernel::locate(&phys, profile) {
        assert!(!e.to_string().contains('\n'));
    }
}

/// MINI_ISF as dwarf2json lays it out (two-space indents, `symbols` last),
/// so that it is read by its layout.
fn dwarf2json_text() -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        metadata: &'a serde_json::Value,
        base_types: &'a serde_json::Value,
        user_types: &'a serde_json::Value,
        enums: &'a serde_json::Value,
        symbols: &'a serde_json::Value,
    }
    let v: serde_json::Value = serde_json::from_str(MINI_ISF).unwrap();
    serde_json::to_vec_pretty(&Doc {
        metadata: &v["metadata"],
        base_types: &v["base_types"],
        user_types: &v["user_types"],
        enums: &v["enums"],
        symbols: &v["symbols"],
    })
    .unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b).unwrap();
    gz.finish().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A laid-out profile (read by its layout; gzip is read whole) gives
    /// what one pass over the same text gives, the same profile or the
    /// same error, however its structure is broken; except that damage
    /// only in entries nothing reads is not seen (then it loads).
    #[test]
    fn layout_read_agrees_with_one_pass(edits in proptest::collection::vec((any::<usize>(), proptest::sample::select(b"{}[],:\" \n0a".to_vec())), 0..4)) {
        let text = mutate(dwarf2json_text(), &edits, None);
        let by_layout = Profile::load(&text, "f");
        let whole = Profile::load(&gzip(&text), "f");
        match (&by_layout, &whole) {
            (Ok(_), Err(_)) => {}
            _ => prop_assert_eq!(&by_layout, &whole),
        }
    }

    #[test]
    fn image_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut b = bytes.clone();
        if b.len() >= 8 && b[0] % 2 == 0 {
            b[..4].copy_from_slice(&0x4C69_4D45u32.to_le_bytes());
            b[4] %= 3;
            b[5..8].fill(0);
        }
        if let Err(e) = PhysicalMemory::parse(&b) {
            prop_assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn mutated_seeds_never_panic(seed in 0usize..64, edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8), cut in proptest::option::of(any::<usize>())) {
        let c = corpus();
        let profile = Profile::load(MINI_ISF.as_bytes(), "mini").unwrap();
        let b = mutate(c[seed % c.len()].clone(), &edits, cut);
        exercise_image(&b, &profile);
        if let Ok(p) = Profile::load(&b, "fuzz") {
            let _ = p.to_rekall_json();
            let _ = Profile::from_cache_bytes(&p.to_cache_bytes(), "fuzz");
        }
    }

    #[test]
    fn mutated_profiles_never_panic(edits in proptest::collection::vec((any::<usize>(), 0x20u8..0x7f), 0..6)) {
        let b = mutate(MINI_ISF.as_bytes().to_vec(), &edits, None);
        match Profile::load(&b, "fuzz") {
            Ok(p) => {
                let img = lime_image(&[(0, &[0u8; 0x3000])]);
                exercise_image(&img, &p);
            }
            Err(e) => prop_assert!(!e.to_string().contains('\n')),
        }
    }

    /// The process and network plugins (descriptor tables, sockets, the
    /// maple tree and vm_next list, paths, heaps, environments, memdump's
    /// hole skipping) on a synthetic kernel with mutated object memory.
    #[test]
    fn process_plugins_on_mutated_kernels(maple in any::<bool>(), edits in proptest::collection::vec((0x1_0000usize..0x3_a000, any::<u8>()), 1..64), words in proptest::collection::vec((0x1_0000usize..0x3_a000, any::<u64>()), 0..8)) {
        use memimage::plugins::memdump::{dump_regions, read_region};
        use memimage::plugins::{Options, run_plugin};
        use memimage::synth::proc;
        let pk = proc::build(maple);
        let mut bytes = pk.mem.bytes.clone();
        for (at, v) in edits {
            bytes[at] = v;
        }
        for (at, v) in words {
            bytes[at & !7..(at & !7) + 8].copy_from_slice(&v.to_le_bytes());
        }
        let phys = PhysicalMemory::parse(&bytes).unwrap();
        let profile = Profile::load(pk.isf.as_bytes(), "synth-proc").unwrap();
        let k = memimage::synth::kernel(&phys, &profile, pk.mem.dtb);
        for p in ["netstat", "maps", "envars", "bash", "memdump", "psaux", "lsof", "process_spoofing"] {
            if let Err(e) = run_plugin(p, &k, &Options { threads: true }) {
                prop_assert!(!e.to_string().contains('\n'));
            }
        }
        if let Ok(regions) = dump_regions(&k, &[]) {
            for r in regions.iter().take(8) {
                let _ = read_region(&k, r, |_| -> Result<(), ()> { Ok(()) });
            }
        }
    }

    /// The integrity checks (module carving, sysfs and list walks, the
    /// dispatcher decoder, IDT, notifier chains, netfilter, task carving
    /// and the PID table, the printk ring, seq and tty operations,
    /// tracepoint tables and probes, eBPF programs and links) on a planted
    /// synthetic kernel whose data, text and module memory are mutated.
    #[test]
    fn integrity_checks_on_mutated_kernels(plant_all in any::<bool>(), edits in proptest::collection::vec((0x2_0000usize..0x2_a000, any::<u8>()), 0..32), code in proptest::collection::vec(any::<u8>(), 0..0x100), words in proptest::collection::vec((0x30_0000usize..0x33_0000, any::<u64>()), 0..16), objects in proptest::collection::vec((proptest::sample::select(OBJECTS.to_vec()), 0usize..0x100, any::<u64>()), 0..16)) {
        use memimage::plugins::{Options, run_plugin};
        use memimage::profile::Selection;
        use memimage::synth::integrity::{Plant, build};
        let ik = build(if plant_all { Plant::all() } else { Plant::default() }, None);
        let mut bytes = ik.mem.bytes.clone();
        for (at, v) in edits {
            bytes[at] = v;
        }
        // x64_sys_call's code (physical 0x101000) replaced by garbage.
        bytes[0x10_1000..0x10_1000 + code.len()].copy_from_slice(&code);
        for (at, v) in words {
            bytes[at & !7..(at & !7) + 8].copy_from_slice(&v.to_le_bytes());
        }
        // Words of the tasks, PID table nodes, printk ring and tty objects.
        for (base, off, v) in objects {
            let at = (base + off) & !7;
            bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let phys = PhysicalMemory::parse(&bytes).unwrap();
        let profile = Profile::load_with(ik.isf.as_bytes(), "synth", &Selection::INTEGRITY).unwrap();
        let k = memimage::synth::kernel(&phys, &profile, ik.mem.dtb);
        for p in ["triage", "modxview"] {
            match run_plugin(p, &k, &Options { threads: false }) {
                Ok(rows) => prop_assert!(!rows.is_empty() || p == "modxview"),
                Err(e) => prop_assert!(!e.to_string().contains('\n')),
            }
        }
    }

    #[test]
    fn paging_over_garbage(mem in proptest::collection::vec(any::<u8>(), 0x2000..0x4000), dtb in any::<u64>(), va in any::<u64>(), pick in 0usize..12) {
        let img = lime_image(&[(0, &mem)]);
        let phys = PhysicalMemory::parse(&img).unwrap();
        let arm = |granule, va_bits| PagingMode::Aarch64(Aarch64Paging { granule, va_bits });
        let modes = [
            PagingMode::Level4, PagingMode::Level5,
            arm(Granule::K4, 39), arm(Granule::K4, 48), arm(Granule::K4, 52),
            arm(Granule::K16, 36), arm(Granule::K16, 47), arm(Granule::K16, 48), arm(Granule::K16, 52),
            arm(Granule::K64, 42), arm(Granule::K64, 48), arm(Granule::K64, 52),
        ];
        let mode = modes[pick];
        let _ = translate(&phys, mode, dtb % 0x4000, va);
        let mut buf = [0u8; 300];
        let _ = VirtualMemory::new(&phys, mode, dtb % 0x4000).read(va, &mut buf);
    }

    /// Pages mapped at random places in a random AArch64 geometry read back
    /// at exactly their physical address (tables written by the synthetic
    /// builder from the architecture's rules, read by the walker).
    #[test]
    fn aarch64_pages_round_trip(pick in 0usize..10, slots in proptest::collection::vec((any::<u64>(), 0u64..48), 1..12)) {
        let geometries = [
            (Granule::K4, 39), (Granule::K4, 48), (Granule::K4, 52),
            (Granule::K16, 36), (Granule::K16, 47), (Granule::K16, 48), (Granule::K16, 52),
            (Granule::K64, 42), (Granule::K64, 48), (Granule::K64, 52),
        ];
        let (granule, va_bits) = geometries[pick];
        let paging = Aarch64Paging { granule, va_bits };
        let page = granule.page_size();
        // 48 data pages at the bottom, tables above them.
        let mut m = memimage::synth::SynthMemory::new_aarch64((page * 160) as usize, page * 160, paging);
        let mut mapped = std::collections::BTreeMap::new();
        for (raw, frame) in slots {
            let va = (raw | (!0u64 << (va_bits - 1))) & !(page - 1);
            if mapped.insert(va, frame).is_none() {
                m.map(va, frame * page, page);
                m.write(frame * page + 8, &va.to_le_bytes());
            }
        }
        let img = lime_image(&[(0, &m.bytes)]);
        let phys = PhysicalMemory::parse(&img).unwrap();
        for (va, frame) in mapped {
            let t = translate(&phys, m.mode(), m.dtb, va + 8).unwrap();
            prop_assert_eq!(t.pa, frame * page + 8);
        }
    }
}
