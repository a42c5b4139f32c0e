//! The synthetic kernel's tracepoints: the kernel's table
//! (`__start___tracepoints_ptrs`, 32-bit offsets from each entry, as
//! x86-64 stores them) with `sched_switch`, probed by the kernel's own
//! `trace_event_raw_event_sched_switch`, and `sched_process_exec`; the
//! e1000 module's own `e1000_xmit`, probed by kernel text. With the plant,
//! the hidden module's code is a second probe on `sched_process_exec`.

use super::{GOOD, MODULES, MODULES_PA, Plant, TEXT, d, kit, ty};
use crate::synth::SynthMemory;
use serde_json::{Map, Value, json};

/// Kernel text (offsets from `TEXT`).
const TRACE_SCHED_SWITCH: u64 = 0x900;
const BPF_TRACE_XMIT: u64 = 0x910;
/// Kernel data (physical).
const TP_PTRS: u64 = 0x8_0000;
const TP_SWITCH: u64 = 0x8_0100;
pub(super) const TP_EXEC: u64 = 0x8_0200;
const TP_NAMES: u64 = 0x8_0400;
const FUNCS_SWITCH: u64 = 0x8_0800;
const FUNCS_EXEC: u64 = 0x8_0900;
const FUNCS_XMIT: u64 = 0x8_0a00;
/// The e1000 module's tracepoint and table (offsets from its struct).
const MOD_TP: u64 = 0x800;
const MOD_TP_PTRS: u64 = 0x900;
const MOD_TP_NAME: u64 = 0x980;
/// The probe's offset in the hidden module's text.
pub(super) const KIT_PROBE: u64 = 0x80;
/// What each probe passes as `data` (a trace_event_file, say).
const DATA: u64 = 0x8_0f00;

/// `struct module`'s tracepoint fields sit at these offsets.
pub(super) const MODULE_NUM_TRACEPOINTS: u64 = 0x200;
pub(super) const MODULE_TRACEPOINTS_PTRS: u64 = 0x208;

pub(super) fn types(t: &mut Map<String, Value>) {
    let vp = json!({"kind": "pointer", "subtype": {"kind": "base", "name": "void"}});
    let int = json!({"kind": "base", "name": "int"});
    t.insert(
        "tracepoint".into(),
        ty(72, &[("name", 0, vp.clone()), ("funcs", 64, vp.clone())]),
    );
    t.insert(
        "tracepoint_func".into(),
        ty(
            24,
            &[("func", 0, vp.clone()), ("data", 8, vp), ("prio", 16, int)],
        ),
    );
}

pub(super) fn symbols(sym: &mut dyn FnMut(&str, u64)) {
    sym("__start___tracepoints_ptrs", d(TP_PTRS));
    sym("__stop___tracepoints_ptrs", d(TP_PTRS + 8));
    sym(
        "trace_event_raw_event_sched_switch",
        TEXT + TRACE_SCHED_SWITCH,
    );
    sym("__bpf_trace_e1000_xmit", TEXT + BPF_TRACE_XMIT);
}

fn rel32(from: u64, to: u64) -> [u8; 4] {
    (to.wrapping_sub(from) as i64 as i32).to_le_bytes()
}

/// A tracepoint at `va` (physical `pa`) named by the string at `name`.
fn tracepoint(m: &mut SynthMemory, pa: u64, name: u64, funcs: u64) {
    m.write_u64(pa, name);
    m.write_u64(pa + 64, funcs);
}

fn probe(m: &mut SynthMemory, pa: u64, func: u64, prio: i32) {
    m.write_u64(pa, func);
    m.write_u64(pa + 8, d(DATA));
    m.write(pa + 16, &prio.to_le_bytes());
}

pub(super) fn write(m: &mut SynthMemory, plant: &Plant) {
    for h in [TRACE_SCHED_SWITCH, BPF_TRACE_XMIT] {
        m.write(h + 0x10_0000, &[0xc3]);
    }
    m.write(TP_PTRS, &rel32(d(TP_PTRS), d(TP_SWITCH)));
    m.write(TP_PTRS + 4, &rel32(d(TP_PTRS + 4), d(TP_EXEC)));
    m.write(TP_NAMES, b"sched_switch\0");
    m.write(TP_NAMES + 0x20, b"sched_process_exec\0");
    tracepoint(m, TP_SWITCH, d(TP_NAMES), d(FUNCS_SWITCH));
    probe(m, FUNCS_SWITCH, TEXT + TRACE_SCHED_SWITCH, 10);
    if plant.tracepoint {
        tracepoint(m, TP_EXEC, d(TP_NAMES + 0x20), d(FUNCS_EXEC));
        probe(m, FUNCS_EXEC, kit(KIT_PROBE), 10);
    } else {
        tracepoint(m, TP_EXEC, d(TP_NAMES + 0x20), 0);
    }
    // The e1000 module: one tracepoint of its own, in its data region.
    let at = |off: u64| MODULES_PA + GOOD + off;
    let va = |off: u64| MODULES + GOOD + off;
    m.write(at(MODULE_NUM_TRACEPOINTS), &1u32.to_le_bytes());
    m.write_u64(at(MODULE_TRACEPOINTS_PTRS), va(MOD_TP_PTRS));
    m.write(at(MOD_TP_PTRS), &rel32(va(MOD_TP_PTRS), va(MOD_TP)));
    m.write(at(MOD_TP_NAME), b"e1000_xmit\0");
    tracepoint(m, at(MOD_TP), va(MOD_TP_NAME), d(FUNCS_XMIT));
    probe(m, FUNCS_XMIT, TEXT + BPF_TRACE_XMIT, 0);
}
