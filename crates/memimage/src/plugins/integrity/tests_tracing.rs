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
