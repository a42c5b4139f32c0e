//! psscan, kmsg, check_afinfo and tty_check rows on `synth::integrity`,
//! and process_spoofing on `synth::proc`: what each reads, that a
//! planted item is its only finding, and that a live capture's artefacts
//! (a fork the list missed, the capture's own LiME in the log) are not.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::tests::{s, with_kernel};
use crate::format::PhysicalMemory;
use crate::kernel::Kernel;
use crate::plugins::{Options, Row, run_plugin};
use crate::profile::{Profile, Selection};
use crate::synth::integrity::{HIDDEN_COMM, HIDDEN_PID, Plant};
use crate::synth::proc;

const OPTS: Options = Options { threads: false };

fn rows(k: &Kernel<'_, '_>, plugin: &str) -> Vec<Row> {
    run_plugin(plugin, k, &OPTS).unwrap()
}

fn triage_of(k: &Kernel<'_, '_>, check: &str) -> Vec<(String, String, String)> {
    rows(k, "triage")
        .iter()
        .filter(|r| s(r, "check") == check)
        .map(|r| (s(r, "result"), s(r, "what"), s(r, "evidence")))
        .collect()
}

#[test]
fn psscan_carves_every_task_and_finds_the_hidden_one() {
    let plant = Plant {
        hidden_task: true,
        ..Plant::default()
    };
    with_kernel(plant, None, |k| {
        let got: Vec<(String, String, String, String, String)> = rows(k, "psscan")
            .iter()
            .map(|r| {
                (
                    s(r, "tid"),
                    s(r, "comm"),
                    s(r, "exit_state"),
                    s(r, "in_list"),
                    s(r, "in_pid_table"),
                )
            })
            .collect();
        let row = |t: &str, c: &str, e: &str, l: &str, p: &str| {
            (t.into(), c.into(), e.into(), l.into(), p.into())
        };
        assert_eq!(
            got,
            vec![
                row("0", "swapper/0", "TASK_RUNNING", "true", "false"),
                row("100", "sshd", "TASK_RUNNING", "true", "true"),
                row("101", "sleep", "TASK_RUNNING", "false", "true"),
                row("99", "cron", "EXIT_DEAD", "false", "false"),
                row(
                    &HIDDEN_PID.to_string(),
                    HIDDEN_COMM,
                    "TASK_RUNNING",
                    "false",
                    "false"
                ),
            ]
        );
        // The fork the list missed is in the PID table: not a finding.
        let t = triage_of(k, "psscan");
        assert_eq!(t.len(), 1, "{t:#?}");
        assert_eq!(t[0].0, "finding");
        assert!(t[0].1.contains("4242 (kitd)"), "{t:#?}");
        assert!(t[0].2.contains("not in the PID table"), "{t:#?}");
        assert!(t[0].2.contains("list_del"), "{t:#?}");
    });
}

/// Without the PID table only an unlinked task is a finding: the hidden
/// one (poisoned pointers), not the fork the list missed.
#[test]
fn psscan_without_the_pid_table() {
    for hidden in [false, true] {
        let plant = Plant {
            hidden_task: hidden,
            ..Plant::default()
        };
        with_kernel(plant, Some("init_pid_ns"), |k| {
            let t = triage_of(k, "psscan");
            let findings: Vec<_> = t.iter().filter(|r| r.0 == "finding").collect();
            assert_eq!(findings.len(), usize::from(hidden), "{t:#?}");
            assert!(
                t.iter()
                    .any(|r| r.0 == "not checked" && r.1.contains("init_pid_ns")),
                "{t:#?}"
            );
            let table: Vec<String> = rows(k, "psscan")
                .iter()
                .map(|r| s(r, "in_pid_table"))
                .collect();
            assert!(table.iter().all(|v| v == "unknown"), "{table:?}");
        });
    }
}

#[test]
fn afinfo_and_tty_rows_name_their_code() {
    with_kernel(Plant::default(), None, |k| {
        let afinfo: Vec<(String, String)> = rows(k, "check_afinfo")
            .iter()
            .map(|r| (s(r, "member"), s(r, "symbol")))
            .collect();
        assert_eq!(afinfo.len(), 4);
        assert!(afinfo.contains(&("show".into(), "tcp4_seq_show".into())));
        let tty = rows(k, "tty_check");
        assert_eq!(tty.len(), 1);
        assert_eq!(s(&tty[0], "name"), "ttyS0");
        assert_eq!(s(&tty[0], "symbol"), "n_tty_receive_buf");
    });
}

#[test]
fn kmsg_reads_the_ring_and_finds_taint_and_oops() {
    with_kernel(Plant::all(), None, |k| {
        let lines: Vec<(String, String, String, String)> = rows(k, "kmsg")
            .iter()
            .map(|r| {
                (
                    s(r, "timestamp"),
                    s(r, "level"),
                    s(r, "caller"),
                    s(r, "line"),
                )
            })
            .collect();
        let l =
            |t: &str, lv: &str, text: &str| (t.into(), lv.into(), "Task(1)".into(), text.into());
        assert_eq!(
            lines,
            vec![
                l("0.000000", "notice", "Linux version 6.1.0-synth"),
                // This record wrapped to the start of the data ring.
                l(
                    "9.000000",
                    "warn",
                    "mshot_testkit: loading out-of-tree module taints kernel."
                ),
                l(
                    "13.003615",
                    "warn",
                    "lime: loading out-of-tree module taints kernel."
                ),
                l(
                    "21.000000",
                    "alert",
                    "BUG: kernel NULL pointer dereference, address: 0000000000000000"
                ),
                l("21.000000", "alert", "Oops: 0000 [#1] PREEMPT SMP NOPTI"),
            ]
        );
        // LiME's own taint line is not a finding; the oops is one finding.
        let t = triage_of(k, "kmsg");
        let what: Vec<&str> = t.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(
            what,
            vec![
                "the kernel oopsed",
                "module mshot_testkit tainted the kernel"
            ],
            "{t:#?}"
        );
    });
    with_kernel(Plant::default(), None, |k| {
        assert_eq!(rows(k, "kmsg").len(), 2);
        assert_eq!(triage_of(k, "kmsg")[0].0, "ok");
    });
}

/// Each of the newer plants alone is its check's only finding.
#[test]
fn each_newer_plant_alone() {
    for (check, owner, plant) in [
        (
            "psscan",
            "process 4242 (kitd)",
            Plant {
                hidden_task: true,
                ..Plant::default()
            },
        ),
        (
            "kmsg",
            "module mshot_testkit",
            Plant {
                taint: true,
                ..Plant::default()
            },
        ),
        (
            "kmsg",
            "kernel",
            Plant {
                oops: true,
                ..Plant::default()
            },
        ),
    ] {
        with_kernel(plant, None, |k| {
            let all = rows(k, "triage");
            let found: Vec<_> = all.iter().filter(|r| s(r, "result") == "finding").collect();
            assert_eq!(found.len(), 1, "{plant:?}: {found:#?}");
            assert_eq!(s(found[0], "check"), check);
            assert_eq!(s(found[0], "owner"), owner);
        });
    }
}

fn with_proc<T>(
    edit: impl FnOnce(&mut proc::ProcKernel),
    f: impl FnOnce(&Kernel<'_, '_>) -> T,
) -> T {
    let mut pk = proc::build(true);
    edit(&mut pk);
    let phys = PhysicalMemory::parse(&pk.mem.bytes).unwrap();
    let profile =
        Profile::load_with(pk.isf.as_bytes(), "synth-proc", &Selection::INTEGRITY).unwrap();
    let k = crate::synth::kernel(&phys, &profile, pk.mem.dtb);
    f(&k)
}

fn spoofing(k: &Kernel<'_, '_>) -> (Vec<String>, Vec<(String, String)>) {
    let r = rows(k, "process_spoofing");
    assert_eq!(r.len(), 1);
    let row = ["pid", "comm", "exe_path", "argv0", "spoofed", "exe_deleted"]
        .iter()
        .map(|c| s(&r[0], c))
        .collect();
    let t = triage_of(k, "process_spoofing")
        .into_iter()
        .map(|(res, what, _)| (res, what))
        .collect();
    (row, t)
}

#[test]
fn process_spoofing_compares_comm_with_exe_and_argv() {
    // A login shell: argv[0] is "-bash", its exe /usr/bin/bash.
    with_proc(
        |_| {},
        |k| {
            let (row, t) = spoofing(k);
            assert_eq!(
                row,
                ["100", "bash", "/usr/bin/bash", "-bash", "false", "false"]
            );
            assert_eq!(t[0].0, "ok", "{t:?}");
        },
    );
    // Renamed after a kernel thread: a finding.
    with_proc(
        |pk| pk.mem.write(proc::BASH + 0x38, b"kworker/0:1\0"),
        |k| {
            let (row, t) = spoofing(k);
            assert_eq!(row[4], "true");
            assert_eq!(t.len(), 1, "{t:?}");
            assert!(t[0].1.contains("name that is not its executable"), "{t:?}");
        },
    );
    // Its executable unlinked (no links left): a finding of its own.
    with_proc(
        |pk| pk.mem.write(proc::BASH_INODE + 0x48, &0u32.to_le_bytes()),
        |k| {
            let (row, t) = spoofing(k);
            assert_eq!(row[2], " /usr/bin/bash (deleted)");
            assert_eq!(row[5], "true");
            assert_eq!(t.len(), 1, "{t:?}");
            assert!(t[0].1.contains("runs a deleted executable"), "{t:?}");
        },
    );
    // A kernel thread borrowing the process' memory: not judged.
    with_proc(
        |pk| {
            pk.mem.write(proc::BASH + 0x38, b"vhost-100\0");
            pk.mem
                .write(proc::BASH + 0x98, &0x0020_0000u32.to_le_bytes());
        },
        |k| {
            let (row, t) = spoofing(k);
            assert_eq!(row[4], "-");
            assert_eq!(t[0].0, "ok", "{t:?}");
        },
    );
    // A renamed process whose command line cannot be read: not checked.
    with_proc(
        |pk| {
            pk.mem.write(proc::BASH + 0x38, b"kworker/0:1\0");
            // mm->arg_start far outside anything mapped.
            pk.mem.write_u64(0x1_3000 + 0x20, 0x1000);
        },
        |k| {
            let (row, t) = spoofing(k);
            assert_eq!(row[4], "-");
            assert_eq!(t.len(), 1, "{t:?}");
            assert_eq!(t[0].0, "not checked", "{t:?}");
        },
    );
}

#[test]
fn spoofing_accepts_scripts_symlinks_and_multi_call_binaries() {
    use super::spoofing::consistent;
    let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // A script: comm is its name, argv[1] its path.
    assert!(consistent(
        "backup.sh",
        "dash",
        &a(&["/bin/sh", "/usr/local/bin/backup.sh"])
    ));
    // A symlink: comm and argv[0] from the link, exe the target.
    assert!(consistent("vi", "vim.basic", &a(&["vi", "x"])));
    assert!(consistent("python3", "python3.11", &a(&["python3"])));
    // Truncated to 15 bytes.
    assert!(consistent("systemd-journal", "systemd-journald", &[]));
    // `sh -c "insmod ..."`: busybox runs the applet in the forked shell.
    assert!(consistent(
        "insmod",
        "busybox",
        &a(&["sh", "-c", "insmod /tmp/lime.ko"])
    ));
    assert!(consistent("sleep", "busybox", &[]));
    assert!(!consistent(
        "kworker/0:1",
        "miner",
        &a(&["./miner", "-o", "pool"])
    ));
    assert!(!consistent("", "bash", &a(&["bash"])));
}

/// Triage's check_syscall findings.
fn syscall_findings(k: &Kernel<'_, '_>) -> Vec<Row> {
    rows(k, "triage")
        .into_iter()
        .filter(|r| s(r, "check") == "check_syscall" && s(r, "result") == "finding")
        .collect()
}

/// An ftrace hook: kill's ftrace site calls the trampoline of the kit's
/// ftrace ops. check_syscall names it by the ops' callback, whose owner is
/// the hidden module, rather than as a call to code nothing owns.
#[test]
fn a_traced_handler_is_named_by_its_ftrace_ops_callback() {
    let plant = Plant {
        ftrace: true,
        traced_entry: true,
        hidden_module: true,
        ..Plant::default()
    };
    with_kernel(plant, None, |k| {
        let hits = syscall_findings(k);
        assert_eq!(hits.len(), 1, "{hits:#?}");
        assert!(
            s(&hits[0], "what").contains("ftrace hook on the entry of __x64_sys_kill"),
            "{hits:#?}"
        );
        assert!(s(&hits[0], "evidence").contains("trampoline"), "{hits:#?}");
        assert_eq!(s(&hits[0], "owner"), "hidden module mshot_testkit");
        assert_eq!(s(&hits[0], "severity"), "high");
    });
    // The same site with the ops' trampoline unknown: a call into module
    // space that only the owner rule can name.
    let plant = Plant {
        traced_entry: true,
        hidden_module: true,
        ..Plant::default()
    };
    with_kernel(plant, None, |k| {
        let hits = syscall_findings(k);
        assert_eq!(hits.len(), 1, "{hits:#?}");
        assert!(
            s(&hits[0], "what").contains("inline hook at the entry of __x64_sys_kill"),
            "{hits:#?}"
        );
        assert_eq!(s(&hits[0], "owner"), "unknown (no module owns it)");
    });
}
