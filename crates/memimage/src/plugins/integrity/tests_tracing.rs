//! tracepoints on `synth::integrity`: every probe of the kernel's table and
//! of a module's own tracepoints is a row named by its owner; the hidden
//! module's probe is the one finding.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::tests::{s, with_kernel};
use super::tracepoints::{Entries, entry_form, guess_form};
use crate::format::PhysicalMemory;
use crate::plugins::{Options, Row, run_plugin};
use crate::profile::{Profile, Selection};
use crate::synth::integrity::{DIRECT, KIT_NAME, Plant, build};

const OPTS: Options = Options { threads: false };

fn rows(k: &crate::kernel::Kernel<'_, '_>, plugin: &str) -> Vec<Row> {
    run_plugin(plugin, k, &OPTS).unwrap()
}

fn probes(plant: Plant) -> Vec<[String; 5]> {
    with_kernel(plant, None, |k| {
        rows(k, "tracepoints")
            .iter()
            .map(|r| ["tracepoint", "defined_in", "symbol", "priority", "owner"].map(|c| s(r, c)))
            .collect()
    })
}

#[test]
fn tracepoint_probes_of_the_kernel_and_of_modules_are_rows() {
    let row = |tp: &str, def: &str, sym: &str, prio: &str, owner: &str| {
        [tp, def, sym, prio, owner].map(str::to_string)
    };
    let clean = vec![
        row(
            "sched_switch",
            "kernel",
            "trace_event_raw_event_sched_switch",
            "10",
            "kernel: trace_event_raw_event_sched_switch",
        ),
        row(
            "e1000_xmit",
            "e1000",
            "__bpf_trace_e1000_xmit",
            "0",
            "kernel: __bpf_trace_e1000_xmit",
        ),
    ];
    assert_eq!(probes(Plant::default()), clean);
    let mut planted = clean.clone();
    planted.insert(
        1,
        row(
            "sched_process_exec",
            "kernel",
            "-",
            "10",
            &format!("hidden module {KIT_NAME}"),
        ),
    );
    let plant = Plant {
        hidden_module: true,
        tracepoint: true,
        ..Plant::default()
    };
    assert_eq!(probes(plant), planted);
    with_kernel(plant, None, |k| {
        let t: Vec<_> = rows(k, "triage")
            .into_iter()
            .filter(|r| s(r, "check") == "tracepoints")
            .collect();
        assert_eq!(t.len(), 1);
        assert_eq!(s(&t[0], "result"), "finding");
        assert_eq!(s(&t[0], "severity"), "high");
        assert!(s(&t[0], "what").contains("sched_process_exec"));
    });
}

/// The synthetic profile gives `__start___tracepoints_ptrs` no type (as
/// capture material does not): the module field's `int *` decides; without
/// it, the table itself, read both ways.
#[test]
fn entry_form_follows_the_types_or_the_first_entry() {
    with_kernel(Plant::default(), None, |k| {
        let start = k.symbol("__start___tracepoints_ptrs").unwrap();
        let stop = k.symbol("__stop___tracepoints_ptrs").unwrap();
        assert_eq!(entry_form(k, start, stop), Entries::Relative);
        assert_eq!(guess_form(k, start, stop), Entries::Relative);
    });
    // The same table as one absolute pointer (`struct tracepoint *`).
    let mut ik = build(Plant::default(), None);
    let tp = ik.mem.read_u64(0x8_0000) as u32 as i32 as i64;
    ik.mem
        .write_u64(0x8_0000, (DIRECT + 0x8_0000).wrapping_add_signed(tp));
    let phys = PhysicalMemory::parse(&ik.mem.bytes).unwrap();
    let profile = Profile::load_with(ik.isf.as_bytes(), "synth", &Selection::INTEGRITY).unwrap();
    let k = crate::synth::kernel(&phys, &profile, ik.mem.dtb);
    let start = k.symbol("__start___tracepoints_ptrs").unwrap();
    let stop = k.symbol("__stop___tracepoints_ptrs").unwrap();
    assert_eq!(guess_form(&k, start, stop), Entries::Absolute);
}

fn ebpf_rows(k: &crate::kernel::Kernel<'_, '_>) -> Vec<[String; 8]> {
    rows(k, "ebpf")
        .iter()
        .map(|r| {
            [
                "id",
                "name",
                "type",
                "tag",
                "attached",
                "helpers",
                "in_idr",
                "in_kallsyms",
            ]
            .map(|c| s(r, c))
        })
        .collect()
}

fn ebpf_triage(plant: Plant, edit: impl FnOnce(&mut crate::synth::SynthMemory)) -> Vec<Row> {
    triage_of(plant, edit, "ebpf")
}

/// Triage's rows of one check, on the kernel `edit` changed.
fn triage_of(
    plant: Plant,
    edit: impl FnOnce(&mut crate::synth::SynthMemory),
    check: &str,
) -> Vec<Row> {
    let mut ik = build(plant, None);
    edit(&mut ik.mem);
    let phys = PhysicalMemory::parse(&ik.mem.bytes).unwrap();
    let profile = Profile::load_with(ik.isf.as_bytes(), "synth", &Selection::INTEGRITY).unwrap();
    let k = crate::synth::kernel(&phys, &profile, ik.mem.dtb);
    rows(&k, "triage")
        .into_iter()
        .filter(|r| s(r, "check") == check)
        .collect()
}

#[test]
fn ebpf_lists_programs_with_their_links_and_helpers() {
    let row = |v: [&str; 8]| v.map(str::to_string);
    let sd = row([
        "1",
        "sd_devices",
        "cgroup_device",
        "a001020304050607",
        "cgroup /system.slice (hook 3)",
        "",
        "true",
        "true",
    ]);
    with_kernel(Plant::default(), None, |k| {
        assert_eq!(ebpf_rows(k), vec![sd.clone()]);
    });
    let t = ebpf_triage(Plant::default(), |_| {});
    assert_eq!(t.len(), 1);
    assert_eq!(s(&t[0], "result"), "ok");
    assert_eq!(
        s(&t[0], "what"),
        "1 eBPF programs, 0 links; the hooks of 2 cgroups, 2 network devices and 0 trace events: no findings"
    );
    with_kernel(Plant::all(), None, |k| {
        let mut sd = sd;
        sd[4] = "cgroup /system.slice (hook 3); \
                 xdp (driver) on eth0 (net namespace 4026531840) \
                 (link 0xffff8880000c2000, not in link_idr)"
            .into();
        assert_eq!(
            ebpf_rows(k),
            vec![
                sd,
                row([
                    "2",
                    "kit_rawtp",
                    "raw_tracepoint",
                    "a101020304050607",
                    "link 1 raw_tracepoint: tracepoint sched_process_exec",
                    "bpf_probe_write_user",
                    "true",
                    "true",
                ]),
                row([
                    "3",
                    "kit_hidden",
                    "kprobe",
                    "a201020304050607",
                    "perf event uprobe /usr/sbin/sshd+0x4f2a0",
                    "",
                    "false",
                    "true",
                ]),
                row([
                    "4",
                    "kit_cgroup",
                    "cgroup_skb",
                    "a301020304050607",
                    "cgroup / (hook 1)",
                    "",
                    "false",
                    "false",
                ]),
            ]
        );
    });
}

/// Each eBPF plant alone is one finding of its own weight; a program off
/// the IDR whose references are gone is being freed, not hidden.
#[test]
fn ebpf_findings_are_the_planted_programs() {
    let only = |plant: Plant| -> Vec<(String, String)> {
        ebpf_triage(plant, |_| {})
            .iter()
            .filter(|r| s(r, "result") == "finding")
            .map(|r| (s(r, "severity"), s(r, "what")))
            .collect()
    };
    let write_user = only(Plant {
        bpf: true,
        ..Plant::default()
    });
    assert_eq!(write_user.len(), 1, "{write_user:?}");
    assert_eq!(write_user[0].0, "high");
    assert!(write_user[0].1.contains("bpf_probe_write_user"));
    let hidden = only(Plant {
        bpf_hidden: true,
        ..Plant::default()
    });
    assert_eq!(hidden.len(), 1, "{hidden:?}");
    assert!(hidden[0].1.contains("kit_hidden"), "{hidden:?}");
    // Its aux (physical 0x9_7000) with no references left.
    let freed = ebpf_triage(
        Plant {
            bpf_hidden: true,
            ..Plant::default()
        },
        |m| m.write_u64(0x9_7000, 0),
    );
    assert_eq!(s(&freed[0], "result"), "ok", "{freed:?}");
    // On a hook only: hidden, and why.
    let on_hook = only(Plant {
        bpf_hook_hidden: true,
        ..Plant::default()
    });
    assert_eq!(
        on_hook,
        [(
            "high".to_string(),
            "eBPF program 4 (kit_cgroup, cgroup_skb) is hidden from the program list (prog_idr)"
                .to_string()
        )]
    );
    let t = ebpf_triage(
        Plant {
            bpf_hook_hidden: true,
            ..Plant::default()
        },
        |_| {},
    );
    assert!(
        s(&t[0], "evidence").ends_with(": attached to cgroup / (hook 1)"),
        "{t:?}"
    );
    // A link missing from link_idr, unless it is being freed.
    let plant = Plant {
        bpf_link_hidden: true,
        ..Plant::default()
    };
    let link = only(plant);
    assert_eq!(link.len(), 1, "{link:?}");
    assert_eq!(link[0].0, "high");
    assert_eq!(
        link[0].1,
        "eBPF program 1 (sd_devices, cgroup_device) is attached by a link hidden from the link list (link_idr)"
    );
    let freed = ebpf_triage(plant, |m| m.write_u64(0xc_2000, 0));
    assert_eq!(s(&freed[0], "result"), "ok", "{freed:?}");
}

/// A program on a uprobe PMU event is found through the probed file's
/// uprobe in `uprobes_tree` and named by file and offset; a consumer that
/// is not a trace_uprobe's (another handler) holds no event.
#[test]
fn a_program_on_a_uprobe_is_found_through_uprobes_tree() {
    let plant = Plant {
        bpf_hidden: true,
        bpf_uprobe: true,
        ..Plant::default()
    };
    let t = ebpf_triage(plant, |_| {});
    let hidden: Vec<&Row> = t.iter().filter(|r| s(r, "result") == "finding").collect();
    assert_eq!(hidden.len(), 1, "{t:?}");
    assert!(
        s(hidden[0], "evidence")
            .ends_with(", attached to perf event uprobe /usr/sbin/sshd+0x4f2a0"),
        "{t:?}"
    );
    let ok = t.iter().find(|r| s(r, "result") == "ok");
    assert!(ok.is_none(), "{t:?}");
    // Registered as a tracefs event too (on ftrace_events): still one attachment.
    let registered = ebpf_triage(plant, |m| {
        let (head, call) = (0xd_0000, 0xd_0420);
        for (at, to) in [
            (head, call),
            (head + 8, call),
            (call, head),
            (call + 8, head),
        ] {
            m.write_u64(at, DIRECT + to);
        }
    });
    let evidence: Vec<String> = registered.iter().map(|r| s(r, "evidence")).collect();
    assert_eq!(evidence.len(), 1, "{registered:?}");
    assert!(
        evidence[0].ends_with(
            ": on the BPF symbol list, attached to perf event uprobe /usr/sbin/sshd+0x4f2a0"
        ),
        "{evidence:?}"
    );
    // The consumer's handler (physical 0xd_0230) is not uprobe_dispatcher.
    let other = ebpf_triage(plant, |m| m.write_u64(0xd_0230, DIRECT + 0x10));
    let evidence: Vec<String> = other
        .iter()
        .filter(|r| s(r, "result") == "finding")
        .map(|r| s(r, "evidence"))
        .collect();
    assert_eq!(evidence.len(), 1, "{other:?}");
    assert!(!evidence[0].contains("uprobe"), "{evidence:?}");
}

/// bpf_filters: sshd's two seccomp layers, newest first, the first
/// decoded from the instructions the kernel kept.
#[test]
fn seccomp_filters_are_rows_with_their_code() {
    with_kernel(Plant::default(), None, |k| {
        let got: Vec<[String; 5]> = rows(k, "bpf_filters")
            .iter()
            .map(|r| ["pid", "comm", "attached", "instructions", "code"].map(|c| s(r, c)))
            .collect();
        let row = |v: [&str; 5]| v.map(str::to_string);
        assert_eq!(
            got,
            [
                row([
                    "100",
                    "sshd",
                    "seccomp, layer 1 of 2",
                    "4",
                    "0: ld [4]; 1: jeq #0xc000003e jt 2 jf 3; 2: ret #0x7fff0000; 3: ret #0",
                ]),
                row([
                    "100",
                    "sshd",
                    "seccomp, layer 2 of 2",
                    "0",
                    "(the kernel kept no copy of the original instructions)",
                ]),
            ]
        );
    });
    let t = triage_of(Plant::all(), |_| {}, "bpf_filters");
    assert_eq!(
        (s(&t[0], "result"), s(&t[0], "what")),
        (
            "ok".to_string(),
            "0 socket filters, 2 seccomp filters of 1 processes: no findings".to_string()
        )
    );
}

#[test]
fn tracepoint_data_names_the_bpf_program() {
    // The kernel's own probe on sched_switch passes a trace_event_file;
    // pointing it at a program names the program.
    let mut ik = build(Plant::default(), None);
    ik.mem.write_u64(0x8_0808, DIRECT + 0x9_1000);
    let phys = PhysicalMemory::parse(&ik.mem.bytes).unwrap();
    let profile = Profile::load_with(ik.isf.as_bytes(), "synth", &Selection::INTEGRITY).unwrap();
    let k = crate::synth::kernel(&phys, &profile, ik.mem.dtb);
    let r = rows(&k, "tracepoints");
    assert_eq!(s(&r[0], "bpf_program"), "BPF program 1 (sd_devices)");
    assert_eq!(s(&r[1], "bpf_program"), "-");
    // Since 6.10 a raw tracepoint's probe data is the link.
    let plant = Plant {
        bpf: true,
        ..Plant::default()
    };
    let mut ik = build(plant, None);
    ik.mem.write_u64(0x8_0808, DIRECT + 0x9_a000);
    let phys = PhysicalMemory::parse(&ik.mem.bytes).unwrap();
    let profile = Profile::load_with(ik.isf.as_bytes(), "synth", &Selection::INTEGRITY).unwrap();
    let k = crate::synth::kernel(&phys, &profile, ik.mem.dtb);
    let r = rows(&k, "tracepoints");
    assert_eq!(
        s(&r[0], "bpf_program"),
        "BPF program 2 (kit_rawtp) through link 1"
    );
}

/// A hidden module that also broke its `mkobj.mod` self-reference is
/// neither carved nor in sysfs, but `mod_tree` still holds it.
#[test]
fn mod_tree_finds_a_module_carving_misses() {
    let plant = Plant {
        hidden_module: true,
        ..Plant::default()
    };
    let mut ik = build(plant, None);
    // The hidden module's struct is at module space + 0x2000 (physical
    // 0x30_2000); mkobj.mod at 0x90.
    ik.mem.write_u64(0x30_2090, 0);
    let phys = PhysicalMemory::parse(&ik.mem.bytes).unwrap();
    let profile = Profile::load_with(ik.isf.as_bytes(), "synth", &Selection::INTEGRITY).unwrap();
    let k = crate::synth::kernel(&phys, &profile, ik.mem.dtb);
    let views: Vec<[String; 5]> = rows(&k, "modxview")
        .iter()
        .map(|r| ["name", "in_list", "in_sysfs", "in_mod_tree", "carved"].map(|c| s(r, c)))
        .collect();
    let v = |a: [&str; 5]| a.map(str::to_string);
    assert_eq!(
        views,
        vec![
            v(["e1000", "true", "true", "true", "true"]),
            v([KIT_NAME, "false", "false", "true", "false"]),
        ]
    );
    let t: Vec<Row> = rows(&k, "triage")
        .into_iter()
        .filter(|r| s(r, "result") == "finding")
        .collect();
    assert_eq!(t.len(), 1, "{t:#?}");
    assert_eq!(s(&t[0], "check"), "hidden_modules");
    assert!(s(&t[0], "evidence").contains("in mod_tree"), "{t:#?}");
    assert_eq!(s(&t[0], "owner"), format!("hidden module {KIT_NAME}"));
}

/// unowned_code on a clean kernel: every executable page of module space
/// has an owner (a module's text, an ftrace trampoline known by its code, a
/// kprobe slot page, int3 fill, the BPF pack), module data is NX; the
/// planted code no module owns is the one finding, disassembled.
#[test]
fn module_space_code_is_owned_or_found() {
    const M: u64 = 0xffff_ffff_c000_0000;
    let runs = |k: &crate::kernel::Kernel<'_, '_>| -> Vec<(u64, u64, String)> {
        rows(k, "unowned_code")
            .iter()
            .map(|r| {
                let u = |c| match r.get(c) {
                    Some(crate::plugins::Value::UInt(v)) => *v,
                    other => panic!("{other:?}"),
                };
                (u("start") - M, u("pages"), s(r, "owner"))
            })
            .collect()
    };
    let clean = vec![
        (0x1_0000, 1, "module e1000".to_string()),
        (0x2_9000, 1, "ftrace trampoline".into()),
        (0x2_a000, 1, "kprobe instruction slots".into()),
        (0x2_b000, 1, "no code (int3 or zero fill)".into()),
        (0x2_c000, 1, "ftrace trampoline".into()),
        (0x2_d000, 1, "BPF struct_ops map 1 (tcp_ca)".into()),
        (0x4_0000, 1, "BPF JIT pack: bpf_prog_0_sd_devices".into()),
    ];
    with_kernel(Plant::default(), None, |k| assert_eq!(runs(k), clean));
    let plant = Plant {
        orphan_code: true,
        ..Plant::default()
    };
    with_kernel(plant, None, |k| {
        let mut want = clean.clone();
        want.insert(1, (0x2_8000, 1, "unknown (no module owns it)".into()));
        assert_eq!(runs(k), want);
        let t: Vec<Row> = rows(k, "triage")
            .into_iter()
            .filter(|r| s(r, "result") == "finding")
            .collect();
        assert_eq!(t.len(), 1, "{t:#?}");
        assert_eq!(s(&t[0], "check"), "unowned_code");
        assert_eq!(s(&t[0], "severity"), "high");
        assert_eq!(
            s(&t[0], "evidence"),
            "0xffffffffc0028000-0xffffffffc0029000: at 0xffffffffc0028000: push %rbp; mov %rsp,%rbp; xor %eax,%eax; pop %rbp; ret; add %al,(%rax); add %al,(%rax); add %al,(%rax)"
        );
    });
    // The hidden module's text is its own, not unknown.
    let plant = Plant {
        hidden_module: true,
        ..Plant::default()
    };
    with_kernel(plant, None, |k| {
        assert!(runs(k).contains(&(0x2_0000, 1, format!("hidden module {KIT_NAME}"))));
    });
}
