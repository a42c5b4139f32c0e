//! End to end on a synthetic kernel: page tables, KASLR slide, tasks,
//! threads, credentials, command lines and modules, all built here, so
//! the suite needs no real capture.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use memimage::format::write::{avml_image, lime_image};
use memimage::kernel::KERNEL_MAP;
use memimage::plugins::{Options, Row, Value, run_banner, run_plugin};
use memimage::synth::SynthMemory;
use memimage::{Aarch64Paging, Granule, Kernel, KernelError, PagingMode, PhysicalMemory, Profile};

const PHYS_SHIFT: u64 = 0x20_0000; // kernel loaded 2 MiB above its link address
const ASLR: u64 = 0x1000_0000; // virtual slide
const DIRECT: u64 = 0xffff_8880_0000_0000;
const BANNER: &[u8] = b"Linux version 6.1.0-synth (test@example) (gcc 12) #1 SMP\n\0";

/// Where a synthetic kernel lives: x86-64 (4 or 5 levels) or AArch64.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Arch {
    X86 { five: bool },
    Arm(Aarch64Paging),
}

impl Arch {
    /// Link address of physical offset 0 of the layout below (the image's
    /// `_text` is linked at `base + 0x200000`).
    fn base(self) -> u64 {
        match self {
            Arch::X86 { .. } => KERNEL_MAP,
            // KIMAGE_VADDR: 2 GiB into the upper half of the smallest VA size.
            Arch::Arm(a) => (!0u64 << (a.va_bits.min(48) - 1)) + 0x8000_0000 - 0x20_0000,
        }
    }
    fn direct(self) -> u64 {
        match self {
            Arch::X86 { five: true } => 0xff11_0000_0000_0000,
            Arch::X86 { five: false } => DIRECT,
            Arch::Arm(a) => !0u64 << a.va_bits,
        }
    }
    /// A user address every geometry can map.
    fn user(self) -> u64 {
        match self {
            Arch::X86 { .. } => 0x7ffd_1234_5000,
            Arch::Arm(_) => 0x2_1234_0000,
        }
    }
    fn mode(self) -> PagingMode {
        match self {
            Arch::X86 { five: true } => PagingMode::Level5,
            Arch::X86 { five: false } => PagingMode::Level4,
            Arch::Arm(a) => PagingMode::Aarch64(a),
        }
    }
}

fn isf(arch: Arch, dtb_link: u64) -> String {
    let base = arch.base();
    let t = |k: &str, n: &str| format!(r#"{{"kind": "{k}", "name": "{n}"}}"#);
    let ptr = |n: &str| {
        format!(r#"{{"kind": "pointer", "subtype": {{"kind": "struct", "name": "{n}"}}}}"#)
    };
    let f = |o: u64, ty: String| format!(r#"{{"offset": {o}, "type": {ty}}}"#);
    let lh = t("struct", "list_head");
    let u = t("base", "unsigned int");
    let i = t("base", "int");
    let ul = t("base", "long unsigned int");
    let comm = r#"{"kind": "array", "count": 16, "subtype": {"kind": "base", "name": "char"}}"#
        .to_string();
    let name = r#"{"kind": "array", "count": 56, "subtype": {"kind": "base", "name": "char"}}"#
        .to_string();
    let mem =
        r#"{"kind": "array", "count": 7, "subtype": {"kind": "struct", "name": "module_memory"}}"#
            .to_string();
    let sym = |name: &str, a: u64| format!(r#""{name}": {{"address": {}}}"#, base + a);
    let arch_syms = match arch {
        Arch::X86 { .. } => sym("init_top_pgt", dtb_link),
        Arch::Arm(_) => format!(
            "{}, {}, {}",
            sym("swapper_pg_dir", dtb_link),
            sym("_text", 0x20_0000),
            sym("kimage_voffset", 0x20_3200)
        ),
    };
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(BANNER)
    };
    format!(
        r#"{{"metadata": {{"format": "6.2.0", "producer": {{"name": "synth", "version": "1.0.0"}}}},
 "base_types": {{"int": {{"size": 4, "signed": true, "kind": "int", "endian": "little"}},
   "unsigned int": {{"size": 4, "signed": false, "kind": "int", "endian": "little"}},
   "long unsigned int": {{"size": 8, "signed": false, "kind": "int", "endian": "little"}},
   "char": {{"size": 1, "signed": true, "kind": "char", "endian": "little"}},
   "pointer": {{"size": 8, "signed": false, "kind": "int", "endian": "little"}}}},
 "user_types": {{
  "list_head": {{"kind": "struct", "size": 16, "fields": {{"next": {}, "prev": {}}}}},
  "kuid_t": {{"kind": "struct", "size": 4, "fields": {{"val": {}}}}},
  "kgid_t": {{"kind": "struct", "size": 4, "fields": {{"val": {}}}}},
  "task_struct": {{"kind": "struct", "size": 512, "fields": {{"__state": {}, "flags": {}, "tasks": {},
     "unnamed_field_0": {{"anonymous": true, "offset": 32, "type": {{"kind": "struct", "name": "unnamed_ids"}}}},
     "parent": {}, "real_parent": {}, "comm": {}, "cred": {}, "real_cred": {}, "mm": {}, "files": {},
     "start_boottime": {}, "thread_group": {}, "signal": {}}}}},
  "unnamed_ids": {{"kind": "struct", "size": 8, "fields": {{"pid": {}, "tgid": {}}}}},
  "cred": {{"kind": "struct", "size": 32, "fields": {{"uid": {}, "gid": {}, "euid": {}, "egid": {}}}}},
  "mm_struct": {{"kind": "struct", "size": 64, "fields": {{"unnamed_field_0": {{"anonymous": true, "offset": 0, "type": {{"kind": "struct", "name": "unnamed_mm"}}}}}}}},
  "unnamed_mm": {{"kind": "struct", "size": 64, "fields": {{"pgd": {}, "arg_start": {}, "arg_end": {}}}}},
  "module_memory": {{"kind": "struct", "size": 16, "fields": {{"size": {}}}}},
  "module": {{"kind": "struct", "size": 256, "fields": {{"list": {}, "name": {}, "mem": {}}}}}
 }},
 "enums": {{"mod_mem_type": {{"size": 4, "base": "unsigned int", "constants": {{"MOD_TEXT": 0, "MOD_DATA": 1, "MOD_RODATA": 2,
   "MOD_RO_AFTER_INIT": 3, "MOD_INIT_TEXT": 4, "MOD_INIT_DATA": 5, "MOD_INIT_RODATA": 6, "MOD_MEM_NUM_TYPES": 7}}}}}},
 "symbols": {{"linux_banner": {{"address": {}, "constant_data": "{b64}"}}, {}, {}, {}, {}}}
}}"#,
        f(0, ptr("list_head")),
        f(8, ptr("list_head")),
        f(0, u.clone()),
        f(0, u.clone()),
        f(0, u.clone()),
        f(4, u.clone()),
        f(0x10, lh.clone()),
        f(0x28, ptr("task_struct")),
        f(0x30, ptr("task_struct")),
        f(0x38, comm),
        f(0x48, ptr("cred")),
        f(0x50, ptr("cred")),
        f(0x58, ptr("mm_struct")),
        f(0x60, ptr("files_struct")),
        f(0x68, ul.clone()),
        f(0x70, lh.clone()),
        f(0x80, ptr("signal_struct")),
        f(0, i.clone()),
        f(4, i),
        f(4, t("struct", "kuid_t")),
        f(8, t("struct", "kgid_t")),
        f(0x14, t("struct", "kuid_t")),
        f(0x18, t("struct", "kgid_t")),
        f(
            0x10,
            r#"{"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}"#.into()
        ),
        f(0x20, ul.clone()),
        f(0x28, ul),
        f(8, u),
        f(8, lh),
        f(0x18, name),
        f(0x60, mem),
        base + 0x20_0100,
        sym("init_task", 0x20_1000),
        sym("init_files", 0x20_3000),
        sym("modules", 0x20_3100),
        arch_syms,
    )
}

struct Built {
    image: Vec<u8>,
    profile: String,
    arch: Arch,
}

/// Physical layout: kernel image at 0x400000 (link 0x200000), objects in
/// the direct map at 0x100000.., user pages at 0x300000.
fn build(arch: Arch) -> Built {
    let mut m = match arch {
        Arch::X86 { five } => SynthMemory::new(0x80_0000, 0x80_0000, five),
        Arch::Arm(a) => SynthMemory::new_aarch64(0x80_0000, 0x80_0000, a),
    };
    let base = arch.base();
    let kva = |pa: u64| base + (pa - PHYS_SHIFT) + ASLR; // runtime VA of kernel-image PA
    let dva = |pa: u64| arch.direct() + pa;
    match arch {
        Arch::X86 { .. } => {
            m.map(kva(0x40_0000), 0x40_0000, 0x20_0000);
            for pa in (0..0x80_0000).step_by(0x20_0000) {
                m.map(dva(pa), pa, 0x20_0000);
            }
        }
        Arch::Arm(_) => {
            m.map_range(kva(0x40_0000), 0x40_0000, 0x20_0000);
            m.map_range(dva(0), 0, 0x80_0000);
        }
    }
    m.write(0x40_0100, BANNER);
    // Tasks: init_task in the image, others in the direct map.
    let init = 0x40_1000u64;
    let tasks = [
        (init, 0i64, 0i64, "swapper/0", 0u64),
        (0x10_0000, 1, 1, "init", init),
        (0x10_0400, 2, 2, "kthreadd", init),
        (0x10_0800, 50, 50, "sh", 0x10_0000),
        (0x10_0c00, 51, 50, "worker", 0x10_0000),
    ];
    let va_of = |pa: u64| if pa == init { kva(pa) } else { dva(pa) };
    // Ring of leaders through tasks (offset 0x10); thread 51 is only in 50's thread_group.
    let leaders: Vec<u64> = tasks.iter().filter(|t| t.1 == t.2).map(|t| t.0).collect();
    for (i, &pa) in leaders.iter().enumerate() {
        let next = leaders[(i + 1) % leaders.len()];
        let prev = leaders[(i + leaders.len() - 1) % leaders.len()];
        m.write_u64(pa + 0x10, va_of(next) + 0x10);
        m.write_u64(pa + 0x18, va_of(prev) + 0x10);
    }
    let cred = 0x18_0000u64;
    m.write(cred + 4, &1000u32.to_le_bytes());
    m.write(cred + 8, &100u32.to_le_bytes());
    m.write(cred + 0x14, &0u32.to_le_bytes());
    m.write(cred + 0x18, &100u32.to_le_bytes());
    for &(pa, pid, tgid, comm, parent) in &tasks {
        m.write(pa + 0x20, &(pid as i32).to_le_bytes());
        m.write(pa + 0x24, &(tgid as i32).to_le_bytes());
        if parent != 0 {
            m.write_u64(pa + 0x28, va_of(parent));
            m.write_u64(pa + 0x30, va_of(parent));
        }
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        m.write(pa + 0x38, &c);
        m.write_u64(pa + 0x48, dva(cred));
        m.write_u64(pa + 0x68, 1_000_000 * pid as u64);
        // A live task has its signal_struct (Volatility's validity test).
        m.write_u64(pa + 0x80, dva(0x18_3000));
        // Empty thread_group rings point at themselves.
        m.write_u64(pa + 0x70, va_of(pa) + 0x70);
        m.write_u64(pa + 0x78, va_of(pa) + 0x70);
    }
    m.write_u64(init + 0x60, kva(0x40_3000)); // init_task.files = &init_files
    // Thread 51 in 50's thread_group.
    m.write_u64(0x10_0800 + 0x70, dva(0x10_0c00) + 0x70);
    m.write_u64(0x10_0800 + 0x78, dva(0x10_0c00) + 0x70);
    m.write_u64(0x10_0c00 + 0x70, dva(0x10_0800) + 0x70);
    m.write_u64(0x10_0c00 + 0x78, dva(0x10_0800) + 0x70);
    // Process address space for pid 50 with its command line.
    let root = m.new_root();
    let user = arch.user();
    let page = m.mode().page_size();
    m.map_in(root, user, 0x30_0000, page);
    let args = b"/bin/sh\0-c\0echo hi\0";
    m.write(0x30_0010, args);
    let mm = 0x18_1000u64;
    m.write_u64(mm + 0x10, dva(root));
    m.write_u64(mm + 0x20, user + 0x10);
    m.write_u64(mm + 0x28, user + 0x10 + args.len() as u64);
    m.write_u64(0x10_0800 + 0x58, dva(mm));
    m.write_u64(0x10_0c00 + 0x58, dva(mm));
    // pid 1 has an mm whose arguments are not mapped: args must be null.
    let mm1 = 0x18_2000u64;
    m.write_u64(mm1 + 0x10, dva(root));
    m.write_u64(mm1 + 0x20, user + 0x1_0000_0000);
    m.write_u64(mm1 + 0x28, user + 0x1_0000_0010);
    m.write_u64(0x10_0000 + 0x58, dva(mm1));
    // Modules: head at 0x403100, one module "synthmod".
    let head = 0x40_3100u64;
    let md = 0x19_0000u64;
    m.write_u64(head, dva(md) + 8);
    m.write_u64(head + 8, dva(md) + 8);
    m.write_u64(md + 8, kva(head));
    m.write_u64(md + 16, kva(head));
    m.write(md + 0x18, b"synthmod\0");
    for (i, sz) in [4096u32, 8192, 0, 0, 512, 0, 0].iter().enumerate() {
        m.write(md + 0x60 + 16 * i as u64 + 8, &sz.to_le_bytes());
    }
    let dtb_link = m.dtb - PHYS_SHIFT;
    // Leave a gap in the capture (0x600000..0x700000 is not in the image).
    let image = lime_image(&[
        (0, &m.bytes[..0x60_0000]),
        (0x70_0000, &m.bytes[0x70_0000..]),
    ]);
    Built {
        image,
        profile: isf(arch, dtb_link),
        arch,
    }
}

fn col(rows: &[Row], k: &str) -> Vec<Value> {
    rows.iter().map(|r| r.get(k).cloned().unwrap()).collect()
}

fn check(b: &Built, image: &[u8]) {
    let phys = PhysicalMemory::parse(image).unwrap();
    let profile = Profile::load(b.profile.as_bytes(), "synth").unwrap();
    let k = Kernel::locate(&phys, &profile).unwrap();
    assert_eq!(k.aslr_shift, ASLR);
    assert_eq!(k.image_pa(b.arch.base() + 0x20_0100), 0x40_0100);
    assert_eq!(k.mode, b.arch.mode());
    assert_eq!(k.method, "probe");
    let opts = Options { threads: false };
    let ps = run_plugin("pslist", &k, &opts).unwrap();
    assert_eq!(
        col(&ps, "pid"),
        vec![Value::Int(1), Value::Int(2), Value::Int(50)]
    );
    assert_eq!(col(&ps, "comm")[2], Value::Str("sh".into()));
    assert_eq!(col(&ps, "uid")[0], Value::Int(1000));
    assert_eq!(col(&ps, "egid")[0], Value::Int(100));
    let thr = run_plugin("pslist", &k, &Options { threads: true }).unwrap();
    assert_eq!(
        col(&thr, "tid"),
        vec![Value::Int(1), Value::Int(2), Value::Int(50), Value::Int(51)]
    );
    assert_eq!(col(&thr, "pid")[3], Value::Int(50));
    let tree = run_plugin("pstree", &k, &opts).unwrap();
    assert_eq!(
        col(&tree, "pid"),
        vec![Value::Int(1), Value::Int(50), Value::Int(2)]
    );
    assert_eq!(
        col(&tree, "depth"),
        vec![Value::Int(0), Value::Int(1), Value::Int(0)]
    );
    let aux = run_plugin("psaux", &k, &opts).unwrap();
    assert_eq!(
        col(&aux, "args"),
        vec![
            Value::Null,
            Value::Str("[kthreadd]".into()),
            Value::Str("/bin/sh -c echo hi".into())
        ]
    );
    let lsmod = run_plugin("lsmod", &k, &opts).unwrap();
    assert_eq!(col(&lsmod, "name"), vec![Value::Str("synthmod".into())]);
    assert_eq!(col(&lsmod, "size"), vec![Value::UInt(4096 + 8192 + 512)]);
    let banners = run_banner(&phys).unwrap();
    assert_eq!(col(&banners, "offset"), vec![Value::UInt(0x40_0100)]);
    // Rekall round trip of the same profile: same tree.
    let rk = serde_json::to_vec(&profile.to_rekall_json()).unwrap();
    let rprof = Profile::load(&rk, "synth-rekall").unwrap();
    let kr = Kernel::locate(&phys, &rprof).unwrap();
    assert_eq!(run_plugin("pstree", &kr, &opts).unwrap(), tree);
}

#[test]
fn four_level_lime() {
    let b = build(Arch::X86 { five: false });
    check(&b, &b.image);
}

#[test]
fn five_level_lime() {
    let b = build(Arch::X86 { five: true });
    // Tell the kernel it runs 5-level via __pgtable_l5_enabled.
    let mut prof: serde_json::Value = serde_json::from_str(&b.profile).unwrap();
    prof["symbols"]["__pgtable_l5_enabled"] =
        serde_json::json!({"address": KERNEL_MAP + 0x20_0200});
    let mut image = b.image.clone();
    // PA 0x400200 lives in the first LiME range, after its 32-byte header.
    image[32 + 0x40_0200] = 1;
    let b = Built {
        image,
        profile: prof.to_string(),
        arch: Arch::X86 { five: true },
    };
    check(&b, &b.image);
}

#[test]
fn avml_same_as_lime() {
    let b = build(Arch::X86 { five: false });
    let phys = PhysicalMemory::parse(&b.image).unwrap();
    let mut ranges = Vec::new();
    for (s, e) in phys.ranges() {
        let mut buf = vec![0u8; (e - s) as usize];
        phys.read(s, &mut buf).unwrap();
        ranges.push((s, buf));
    }
    let refs: Vec<(u64, &[u8])> = ranges.iter().map(|(s, b)| (*s, b.as_slice())).collect();
    let avml = avml_image(&refs).unwrap();
    check(&b, &avml);
}

#[test]
fn one_line_errors() {
    let b = build(Arch::X86 { five: false });
    let profile = Profile::load(b.profile.as_bytes(), "synth").unwrap();
    // No banner at all.
    let blank = lime_image(&[(0, &vec![0u8; 0x10_0000])]);
    let phys = PhysicalMemory::parse(&blank).unwrap();
    let e = Kernel::locate(&phys, &profile).unwrap_err();
    assert_eq!(e, KernelError::NoBanner);
    // A profile for another kernel.
    let other = b.profile.replace(
        &{
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(BANNER)
        },
        &{
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .encode(b"Linux version 5.10.0-other (x@y) (gcc 10) #1\n\0")
        },
    );
    let other = Profile::load(other.as_bytes(), "other").unwrap();
    let phys = PhysicalMemory::parse(&b.image).unwrap();
    let e = Kernel::locate(&phys, &other).unwrap_err().to_string();
    assert!(
        e.contains("is for another kernel")
            && e.contains("5.10.0-other")
            && e.contains("6.1.0-synth"),
        "{e}"
    );
    assert!(!e.contains('\n'));
    // Truncated image.
    let e = PhysicalMemory::parse(&b.image[..b.image.len() - 100])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("truncated image"), "{e}");
}

/// The same kernel on AArch64, in every geometry Linux builds: found by the
/// probe, the geometry told apart by reading the banner back, and every
/// process and module plugin gives the x86-64 answers.
#[test]
fn aarch64_every_geometry() {
    for (granule, va_bits) in [
        (Granule::K4, 48),
        (Granule::K4, 52),
        (Granule::K4, 39),
        (Granule::K16, 47),
        (Granule::K16, 48),
        (Granule::K16, 52),
        (Granule::K64, 42),
        (Granule::K64, 48),
        (Granule::K64, 52),
    ] {
        let b = build(Arch::Arm(Aarch64Paging { granule, va_bits }));
        check(&b, &b.image);
    }
}

/// A running AArch64 machine states where its kernel is: VMCOREINFO
/// (KERNELOFFSET, kimage_voffset, and the VA size the CPU runs, which a
/// kernel built for 52 bits reports apart from `VA_BITS`), or iomem's
/// "Kernel code". Each is checked against the image, not trusted.
#[test]
fn aarch64_from_running_statements() {
    use memimage::kernel::{VmcoreInfo, vmcoreinfo_geometry};
    let paging = Aarch64Paging {
        granule: Granule::K4,
        va_bits: 48,
    };
    let arch = Arch::Arm(paging);
    let b = build(arch);
    let phys = PhysicalMemory::parse(&b.image).unwrap();
    let profile = Profile::load(b.profile.as_bytes(), "synth").unwrap();
    let text_runtime = arch.base() + 0x20_0000 + ASLR;
    let voffset = text_runtime.wrapping_sub(0x40_0000) as i64;
    let info = |offset: u64, voffset: i64| {
        VmcoreInfo::parse(
            format!(
                "OSRELEASE=6.12.0-synth\nPAGESIZE=4096\nKERNELOFFSET={offset:x}\n\
                 NUMBER(VA_BITS)=52\nNUMBER(kimage_voffset)={voffset}\nNUMBER(TCR_EL1_T1SZ)=16\n"
            )
            .as_bytes(),
        )
        .unwrap()
    };
    assert_eq!(vmcoreinfo_geometry(&info(ASLR, voffset)), Some(paging));
    let k = Kernel::from_running(&phys, &profile, Some(&info(ASLR, voffset)), None).unwrap();
    assert_eq!(
        (k.method, k.mode, k.aslr_shift),
        ("vmcoreinfo", arch.mode(), ASLR)
    );
    assert_eq!(k.image_pa(arch.base() + 0x20_0000), 0x40_0000);
    let k = Kernel::from_running(&phys, &profile, None, Some(0x40_0000)).unwrap();
    assert_eq!((k.method, k.aslr_shift), ("iomem", ASLR));
    // triage on AArch64: no IDT to check, said as such (not "not checked").
    let rows = run_plugin("triage", &k, &Options { threads: false }).unwrap();
    let idt = rows
        .iter()
        .find(|r| r.get("check") == Some(&Value::Str("check_idt".into())))
        .unwrap();
    assert_eq!(
        idt.get("result"),
        Some(&Value::Str("does not apply".into()))
    );
    // A KERNELOFFSET that the image contradicts is refused, in one line.
    let moved = info(ASLR + 0x20_0000, voffset + 0x20_0000);
    let e = Kernel::from_running(&phys, &profile, Some(&moved), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("KERNELOFFSET") && !e.contains('\n'), "{e}");
    let e = Kernel::from_running(&phys, &profile, None, Some(0x60_0000))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("init_task at physical 0x601000") && !e.contains('\n'),
        "{e}"
    );
}
