//! The integrity checks on `synth::integrity`: a clean kernel gives no
//! findings, each planted item is found and named by its module, and a
//! missing symbol or unknown code gives "not checked", never "ok".
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use crate::format::PhysicalMemory;
use crate::kernel::Kernel;
use crate::plugins::{Options, Row, Value, run_plugin};
use crate::profile::{Profile, Selection};
use crate::synth::integrity::{KIT_NAME, Plant, build};

pub(super) fn with_kernel<T>(
    plant: Plant,
    drop: Option<&str>,
    f: impl FnOnce(&Kernel<'_, '_>) -> T,
) -> T {
    let ik = build(plant, drop);
    let phys = PhysicalMemory::parse(&ik.mem.bytes).unwrap();
    let profile =
        Profile::load_with(ik.isf.as_bytes(), "synth-integrity", &Selection::INTEGRITY).unwrap();
    let k = crate::synth::kernel(&phys, &profile, ik.mem.dtb);
    f(&k)
}

pub(super) fn s(r: &Row, key: &str) -> String {
    match r.get(key) {
        Some(Value::Str(v)) => v.clone(),
        Some(Value::UInt(v)) => v.to_string(),
        Some(Value::Int(v)) => v.to_string(),
        Some(Value::Null) => "-".into(),
        other => panic!("{key}: {other:?}"),
    }
}

fn triage(plant: Plant, drop: Option<&str>) -> Vec<(String, String, String, String)> {
    with_kernel(plant, drop, |k| {
        run_plugin("triage", k, &Options { threads: false })
            .unwrap()
            .iter()
            .map(|r| (s(r, "check"), s(r, "result"), s(r, "what"), s(r, "owner")))
            .collect()
    })
}

#[test]
fn clean_kernel_has_no_findings() {
    let rows = triage(Plant::default(), None);
    for (check, result, what, _) in &rows {
        assert_eq!(result, "ok", "{check}: {what}");
    }
    assert_eq!(rows.len(), super::CHECKS.len());
}

#[test]
fn every_planted_item_is_found_and_named() {
    let rows = triage(Plant::all(), None);
    let found = |check: &str, needle: &str| {
        rows.iter().any(|(c, r, w, o)| {
            c == check && r == "finding" && w.contains(needle) && o.contains(KIT_NAME)
        })
    };
    let owner = format!("hidden module {KIT_NAME}");
    assert!(found("hidden_modules", KIT_NAME), "{rows:#?}");
    assert!(found("check_modules", KIT_NAME), "{rows:#?}");
    assert!(
        found("check_syscall", "62 (kill) is redirected in sys_call_table"),
        "{rows:#?}"
    );
    assert!(
        found("check_syscall", "62 (kill) is redirected in x64_sys_call"),
        "{rows:#?}"
    );
    assert!(found("check_idt", "vector 0x3"), "{rows:#?}");
    assert!(found("keyboard_notifiers", "keyboard"), "{rows:#?}");
    assert!(found("netfilter", "ipv4 hook 4"), "{rows:#?}");
    assert!(found("ftrace", "ftrace hook"), "{rows:#?}");
    assert!(
        found("tracepoints", "tracepoint sched_process_exec"),
        "{rows:#?}"
    );
    assert!(found("check_afinfo", "tcp4_seq_ops.show"), "{rows:#?}");
    assert!(found("tty_check", "ttyS0"), "{rows:#?}");
    assert!(found("kmsg", "tainted the kernel"), "{rows:#?}");
    // The hidden task and the oops are named by what they are.
    let named = |check: &str, needle: &str, who: &str| {
        rows.iter()
            .any(|(c, r, w, o)| c == check && r == "finding" && w.contains(needle) && o == who)
    };
    assert!(
        named(
            "psscan",
            "is hidden from the task list",
            "process 4242 (kitd)"
        ),
        "{rows:#?}"
    );
    assert!(named("kmsg", "the kernel oopsed", "kernel"), "{rows:#?}");
    let no_holder = "no process holds it open (kept by its attachment or a pin)";
    assert!(
        named(
            "ebpf",
            "eBPF program 2 (kit_rawtp, raw_tracepoint) calls bpf_probe_write_user",
            no_holder
        ),
        "{rows:#?}"
    );
    assert!(
        named(
            "ebpf",
            "eBPF program 3 (kit_hidden, kprobe) is hidden from the program list",
            no_holder
        ),
        "{rows:#?}"
    );
    // Nothing else: exactly one finding per planted item (the syscall
    // check two); those in code owned by the hidden module.
    let findings: Vec<_> = rows.iter().filter(|(_, r, _, _)| r == "finding").collect();
    assert!(
        named(
            "unowned_code",
            "executable memory in module space that no module owns (1 pages)",
            "unknown (no module owns it)"
        ),
        "{rows:#?}"
    );
    for what in [
        "eBPF program 4 (kit_cgroup, cgroup_skb) is hidden from the program list",
        "eBPF program 1 (sd_devices, cgroup_device) is attached by a link hidden",
    ] {
        assert!(named("ebpf", what, no_holder), "{rows:#?}");
    }
    assert_eq!(findings.len(), 19, "{findings:#?}");
    let by_module = findings
        .iter()
        .filter(|(c, _, _, _)| !["psscan", "kmsg", "ebpf", "unowned_code"].contains(&c.as_str()));
    assert!(by_module.clone().all(|(_, _, _, o)| *o == owner));
    assert_eq!(by_module.count(), 11);
}

#[test]
fn each_plant_alone_is_found_by_its_check() {
    let single = [
        (
            "check_syscall",
            Plant {
                table_hook: true,
                ..Plant::default()
            },
        ),
        (
            "check_syscall",
            Plant {
                dispatch_hook: true,
                ..Plant::default()
            },
        ),
        (
            "check_idt",
            Plant {
                idt_hook: true,
                ..Plant::default()
            },
        ),
        (
            "keyboard_notifiers",
            Plant {
                keyboard: true,
                ..Plant::default()
            },
        ),
        (
            "netfilter",
            Plant {
                netfilter: true,
                ..Plant::default()
            },
        ),
        (
            "ftrace",
            Plant {
                ftrace: true,
                ..Plant::default()
            },
        ),
        (
            "check_afinfo",
            Plant {
                afinfo_hook: true,
                ..Plant::default()
            },
        ),
        (
            "tty_check",
            Plant {
                tty_hook: true,
                ..Plant::default()
            },
        ),
        (
            "tracepoints",
            Plant {
                tracepoint: true,
                ..Plant::default()
            },
        ),
    ];
    for (check, plant) in single {
        let rows = triage(plant, None);
        // The hook, and the code it reaches: in module space, no module's.
        let (code, findings): (Vec<_>, Vec<_>) = rows
            .iter()
            .filter(|(_, r, _, _)| r == "finding")
            .partition(|(c, _, _, _)| c == "unowned_code");
        assert_eq!(findings.len(), 1, "{plant:?}: {findings:#?}");
        assert_eq!(findings[0].0, check);
        assert_eq!(code.len(), 1, "{plant:?}: {code:#?}");
        // Without the module in any view, nobody owns the code.
        assert!(findings[0].3.starts_with("unknown"), "{findings:#?}");
        assert!(code[0].3.starts_with("unknown"), "{code:#?}");
    }
}

#[test]
fn hidden_module_carries_its_evidence() {
    with_kernel(Plant::all(), None, |k| {
        let rows = run_plugin("hidden_modules", k, &Options { threads: false }).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(s(&rows[0], "name"), KIT_NAME);
        assert_eq!(s(&rows[0], "list_poisoned"), "true");
        assert_eq!(s(&rows[0], "in_sysfs"), "true");
        let all = run_plugin("modxview", k, &Options { threads: false }).unwrap();
        assert_eq!(all.len(), 2);
    });
}

/// A symbol a check needs is missing: that check says "not checked" with
/// the symbol's name, and is never reported as ok.
#[test]
fn missing_symbols_are_not_checked() {
    for (symbol, check) in [
        ("idt_table", "check_idt"),
        ("module_kset", "check_modules"),
        ("mod_tree", "hidden_modules"),
        ("keyboard_notifier_list", "keyboard_notifiers"),
        ("net_namespace_list", "netfilter"),
        ("_stext", "check_syscall"),
        ("ftrace_ops_list", "ftrace"),
        ("kprobe_table", "kprobes"),
        ("__start___tracepoints_ptrs", "tracepoints"),
        ("prog_idr", "ebpf"),
        ("cgrp_dfl_root", "ebpf"),
        ("prog_idr", "bpf_filters"),
        ("prb", "kmsg"),
        ("tty_drivers", "tty_check"),
        ("tcp4_seq_ops", "check_afinfo"),
        ("init_pid_ns", "psscan"),
        ("init_task", "process_spoofing"),
    ] {
        let rows = triage(Plant::all(), Some(symbol));
        let mine: Vec<_> = rows.iter().filter(|(c, _, _, _)| c == check).collect();
        assert!(
            mine.iter()
                .any(|(_, r, w, _)| r == "not checked" && w.contains(symbol)),
            "{symbol}: {mine:#?}"
        );
        assert!(
            mine.iter().all(|(_, r, _, _)| r != "ok"),
            "{symbol}: {mine:#?}"
        );
    }
}

/// Dispatcher code the decoder does not know (a `ret` where a case should
/// be) leaves the dispatcher "not checked".
#[test]
fn unknown_dispatcher_code_is_not_checked() {
    let mut ik = build(Plant::default(), None);
    // x64_sys_call sits at TEXT + 0x1000, physical 0x101000.
    ik.mem.write(0x10_1005, &[0xc3]);
    let phys = PhysicalMemory::parse(&ik.mem.bytes).unwrap();
    let profile = Profile::load_with(ik.isf.as_bytes(), "synth", &Selection::INTEGRITY).unwrap();
    let k = crate::synth::kernel(&phys, &profile, ik.mem.dtb);
    let rows = run_plugin("triage", &k, &Options { threads: false }).unwrap();
    assert!(rows.iter().any(|r| s(r, "check") == "check_syscall"
        && s(r, "result") == "not checked"
        && s(r, "what").contains("x64_sys_call")));
}

/// The synthetic kernel's bytes served as a live source.
struct Served<'b>(&'b [u8]);

impl crate::format::PageSource for Served<'_> {
    fn read_at(&self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
        let at = addr as usize;
        buf.copy_from_slice(&self.0[at..at + buf.len()]);
        Ok(())
    }
}

/// On a live source nothing can search all of memory: psscan says it did
/// not look, every other check runs as on the image, and the verdict
/// never reads as clean for what was skipped.
#[test]
fn a_live_source_runs_every_check_but_the_carving_which_is_not_checked() {
    let ik = build(Plant::default(), None);
    let served = Served(&ik.mem.bytes);
    let phys = PhysicalMemory::from_source(
        &[(0, ik.mem.bytes.len() as u64)],
        &served,
        16 << 10,
        64 << 20,
    );
    let profile =
        Profile::load_with(ik.isf.as_bytes(), "synth-integrity", &Selection::INTEGRITY).unwrap();
    let k = crate::synth::kernel(&phys, &profile, ik.mem.dtb);
    let live: Vec<(String, String)> = run_plugin("triage", &k, &Options { threads: false })
        .unwrap()
        .iter()
        .map(|r| (s(r, "check"), s(r, "result")))
        .collect();
    let image: Vec<(String, String)> = triage(Plant::default(), None)
        .into_iter()
        .map(|(c, r, _, _)| (c, r))
        .collect();
    assert_eq!(live.len(), image.len(), "{live:?}");
    for ((check, l), (_, i)) in live.iter().zip(&image) {
        if check == "psscan" {
            assert_eq!(l, "not checked", "psscan on a live source: {live:?}");
        } else {
            assert_eq!(l, i, "{check}: live {l}, image {i}");
        }
    }
    let verdict =
        super::Verdict::of(&run_plugin("triage", &k, &Options { threads: false }).unwrap());
    assert!(
        !verdict.text().contains("every check ran"),
        "{}",
        verdict.text()
    );
}
