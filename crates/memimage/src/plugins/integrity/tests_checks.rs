//! The newer checks' rows on `synth::integrity`: what each reads, that a
//! planted item is its only finding, and that a live capture's artefacts
//! are not findings.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::tests::{s, with_kernel};
use crate::kernel::Kernel;
use crate::plugins::{Options, Row, run_plugin};
use crate::synth::integrity::{HIDDEN_COMM, HIDDEN_PID, Plant};

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
