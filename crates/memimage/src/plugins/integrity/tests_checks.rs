//! The newer checks' rows on `synth::integrity`: what each reads, that a
//! planted item is its only finding, and that a live capture's artefacts
//! are not findings.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::tests::{s, with_kernel};
use crate::kernel::Kernel;
use crate::plugins::{Options, Row, run_plugin};
use crate::synth::integrity::Plant;

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
