//! Trace events' eBPF programs: an empty `ftrace_events` and an empty
//! `uprobes_tree`, as on a host with no programs on events. The plant
//! (`bpf_uprobe`, with `bpf_hidden`): `kit_hidden` runs on a uprobe PMU
//! event on `/usr/sbin/sshd+0x4f2a0`, reached only through the probed
//! file's uprobe in `uprobes_tree` (as an eBPF credential stealer's).

use super::bpf::KIT_HIDDEN;
use super::{Plant, TEXT, d, ty};
use crate::synth::SynthMemory;
use serde_json::{Map, Value, json};

/// `uprobe_dispatcher` (offset from `TEXT`; no code needed).
const DISPATCHER: u64 = 0xa20;
/// Kernel data (physical).
const FTRACE_EVENTS: u64 = 0xd_0000;
const UPROBES_TREE: u64 = 0xd_0010;
const UPROBE: u64 = 0xd_0100;
const TRACE_UPROBE: u64 = 0xd_0200;
const PROBE_EVENT: u64 = 0xd_0400;
const PROG_ARRAY: u64 = 0xd_0600;
const FILENAME: u64 = 0xd_0700;
/// Offsets: `trace_uprobe.consumer` and `.tp`, `trace_probe_event.call`
/// and `.probes`, `trace_event_call.class` and `.prog_array`.
const TU_CONSUMER: u64 = 0x30;
const TU_TP: u64 = 0x90;
const TPE_CALL: u64 = 0x20;
const TPE_PROBES: u64 = 0xb0;
const CALL_CLASS: u64 = 0x10;
const CALL_PROG_ARRAY: u64 = 0x40;
pub(crate) const SSHD_OFFSET: u64 = 0x4f2a0;

pub(super) fn types(t: &mut Map<String, Value>) {
    let vp = json!({"kind": "pointer", "subtype": {"kind": "base", "name": "void"}});
    let st = |n: &str| json!({"kind": "struct", "name": n});
    let u64t = json!({"kind": "base", "name": "long unsigned int"});
    let items = json!({"kind": "array", "count": 0, "subtype": st("bpf_prog_array_item")});
    let entries: [(&str, Value); 8] = [
        (
            "trace_event_call",
            ty(
                0x80,
                &[
                    ("list", 0, st("list_head")),
                    ("class", CALL_CLASS, vp.clone()),
                    ("name", 0x18, vp.clone()),
                    ("prog_array", CALL_PROG_ARRAY, vp.clone()),
                ],
            ),
        ),
        (
            "trace_probe_event",
            ty(
                0x100,
                &[
                    ("class", 8, vp.clone()),
                    ("call", TPE_CALL, st("trace_event_call")),
                    ("probes", TPE_PROBES, st("list_head")),
                ],
            ),
        ),
        (
            "trace_probe",
            ty(
                0x40,
                &[("list", 0, st("list_head")), ("event", 0x10, vp.clone())],
            ),
        ),
        (
            "trace_uprobe",
            ty(
                0x100,
                &[
                    ("consumer", TU_CONSUMER, st("uprobe_consumer")),
                    ("filename", 0x70, vp.clone()),
                    ("offset", 0x78, u64t.clone()),
                    ("tp", TU_TP, st("trace_probe")),
                ],
            ),
        ),
        (
            "uprobe_consumer",
            ty(
                0x20,
                &[
                    ("handler", 0, vp.clone()),
                    ("ret_handler", 8, vp.clone()),
                    ("next", 0x18, vp.clone()),
                ],
            ),
        ),
        (
            "uprobe",
            ty(
                0x100,
                &[
                    ("rb_node", 0, st("rb_node")),
                    ("consumers", 0x40, vp.clone()),
                ],
            ),
        ),
        ("bpf_prog_array", ty(0x10, &[("items", 0x10, items)])),
        ("bpf_prog_array_item", ty(0x10, &[("prog", 0, vp)])),
    ];
    for (name, def) in entries {
        t.insert(name.into(), def);
    }
}

pub(super) fn symbols(sym: &mut dyn FnMut(&str, u64)) {
    sym("ftrace_events", d(FTRACE_EVENTS));
    sym("uprobes_tree", d(UPROBES_TREE));
    sym("uprobe_dispatcher", TEXT + DISPATCHER);
}

pub(super) fn write(m: &mut SynthMemory, plant: &Plant) {
    m.write_u64(FTRACE_EVENTS, d(FTRACE_EVENTS));
    m.write_u64(FTRACE_EVENTS + 8, d(FTRACE_EVENTS));
    if !plant.bpf_uprobe {
        return;
    }
    // One uprobe (the tree's root, no children), its one consumer a
    // trace_uprobe's.
    m.write_u64(UPROBES_TREE, d(UPROBE));
    let consumer = TRACE_UPROBE + TU_CONSUMER;
    m.write_u64(UPROBE + 0x40, d(consumer));
    m.write_u64(consumer, TEXT + DISPATCHER);
    m.write(FILENAME, b"/usr/sbin/sshd\0");
    m.write_u64(TRACE_UPROBE + 0x70, d(FILENAME));
    m.write_u64(TRACE_UPROBE + 0x78, SSHD_OFFSET);
    // Its trace_probe on the event's probe list; the event's own class.
    let tp = TRACE_UPROBE + TU_TP;
    let call = PROBE_EVENT + TPE_CALL;
    m.write_u64(tp + 0x10, d(PROBE_EVENT));
    super::bpf::ring(m, &[PROBE_EVENT + TPE_PROBES, tp]);
    m.write_u64(call + CALL_CLASS, d(PROBE_EVENT + 8));
    m.write_u64(call + CALL_PROG_ARRAY, d(PROG_ARRAY));
    m.write_u64(PROG_ARRAY + 0x10, KIT_HIDDEN);
}
