//! The synthetic kernel's module space as the kernel maps it: module data
//! pages NX, module text and the BPF pack executable, and executable
//! pages that a clean kernel has too and that no module owns: an ftrace
//! trampoline (a copy of `ftrace_regs_caller`), another one known only by
//! its ops (`kprobe_ftrace_ops`, off the ops list), a kprobe instruction
//! slot page (on `kprobe_insn_slots`), a struct_ops map's trampoline page
//! and a page of `int3` fill. The plant:
//! code in module space that nothing owns.

use super::bpf::STRUCT_OPS_IMAGE;
use super::{GOOD_TEXT, KIT_TEXT, MODULES, MODULES_PA, Plant, TEXT, d, ty};
use crate::synth::SynthMemory;
use serde_json::{Map, Value, json};

/// Kernel text (offset from `TEXT`): `ftrace_regs_caller`, its first
/// rip-relative load 0x20 bytes in.
const REGS_CALLER: u64 = 0xb00;
/// Kernel data (physical): `kprobe_insn_slots` and its one page's struct.
const INSN_SLOTS: u64 = 0xa_0000;
const INSN_PAGE: u64 = 0xa_0100;
const KPROBE_OPS: u64 = 0xa_0200;
/// Module space (offsets from `MODULES`).
const TRAMPOLINE: u64 = 0x2_9000;
const SLOTS: u64 = 0x2_a000;
const FILL: u64 = 0x2_b000;
const OPS_TRAMPOLINE: u64 = 0x2_c000;
pub const ORPHAN: u64 = 0x2_8000;
/// The kit's ftrace ops' trampoline (`Plant::traced_entry`).
pub const KIT_TRAMPOLINE: u64 = 0x2_d000;
/// How module space is mapped (`build` maps 0..0x3_0000).
const MAPPED: u64 = 0x3_0000;

/// The start of `ftrace_regs_caller`: pushfq, push %rbp, ...
const CALLER_CODE: [u8; 32] = [
    0x9c, 0x55, 0xff, 0x74, 0x24, 0x10, 0x55, 0x48, 0x89, 0xe5, 0xff, 0x74, 0x24, 0x18, 0x55, 0x48,
    0x89, 0xe5, 0x48, 0x81, 0xec, 0xa8, 0x00, 0x00, 0x00, 0x48, 0x89, 0x44, 0x24, 0x50, 0x48, 0x89,
];
/// What the orphan page holds: push %rbp; mov %rsp,%rbp; xor %eax,%eax;
/// pop %rbp; ret.
const ORPHAN_CODE: [u8; 8] = [0x55, 0x48, 0x89, 0xe5, 0x31, 0xc0, 0x5d, 0xc3];

pub(super) fn types(t: &mut Map<String, Value>) {
    let vp = json!({"kind": "pointer", "subtype": {"kind": "base", "name": "void"}});
    let list = json!({"kind": "struct", "name": "list_head"});
    t.insert(
        "kprobe_insn_cache".into(),
        ty(88, &[("pages", 56, list.clone())]),
    );
    t.insert(
        "kprobe_insn_page".into(),
        ty(40, &[("list", 0, list), ("insns", 16, vp)]),
    );
}

pub(super) fn symbols(sym: &mut dyn FnMut(&str, u64)) {
    sym("ftrace_regs_caller", TEXT + REGS_CALLER);
    sym("ftrace_regs_caller_op_ptr", TEXT + REGS_CALLER + 0x20);
    sym("kprobe_insn_slots", d(INSN_SLOTS));
    sym("kprobe_ftrace_ops", d(KPROBE_OPS));
    sym("_end", TEXT + 0x20_0000);
}

/// Whether any plant puts code in the hidden module's text.
fn kit_code(p: &Plant) -> bool {
    p.hidden_module
        || p.table_hook
        || p.dispatch_hook
        || p.idt_hook
        || p.keyboard
        || p.netfilter
        || p.ftrace
        || p.afinfo_hook
        || p.tty_hook
        || p.tracepoint
}

pub(super) fn write(m: &mut SynthMemory, plant: &Plant) {
    m.write(REGS_CALLER + 0x10_0000, &CALLER_CODE);
    let at = |off: u64| MODULES_PA + off;
    m.write(at(TRAMPOLINE), &CALLER_CODE);
    m.write(at(TRAMPOLINE + 0x20), &[0x48, 0x8b, 0x15]);
    m.write(at(SLOTS), &[0x55, 0xe9, 0, 0, 0, 0]);
    m.write(at(FILL), &[0xcc; 0x1000]);
    m.write(at(OPS_TRAMPOLINE), &[0x55, 0x48, 0x89, 0xe5, 0xc3]);
    m.write(at(STRUCT_OPS_IMAGE), &[0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3]);
    m.write_u64(KPROBE_OPS + 0x90, MODULES + OPS_TRAMPOLINE);
    m.write_u64(KPROBE_OPS + 0x98, 0x100);
    // kprobe_insn_slots.pages: one page.
    let head = INSN_SLOTS + 56;
    m.write_u64(head, d(INSN_PAGE));
    m.write_u64(head + 8, d(INSN_PAGE));
    m.write_u64(INSN_PAGE, d(head));
    m.write_u64(INSN_PAGE + 8, d(head));
    m.write_u64(INSN_PAGE + 16, MODULES + SLOTS);
    if plant.orphan_code {
        m.write(at(ORPHAN), &ORPHAN_CODE);
    }
    // Everything else in module space is data: NX.
    let mut exec = vec![
        GOOD_TEXT,
        TRAMPOLINE,
        SLOTS,
        FILL,
        OPS_TRAMPOLINE,
        STRUCT_OPS_IMAGE,
    ];
    if kit_code(plant) {
        exec.push(KIT_TEXT);
    }
    if plant.orphan_code {
        exec.push(ORPHAN);
    }
    if plant.traced_entry {
        m.write(at(KIT_TRAMPOLINE), &[0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3]);
        exec.push(KIT_TRAMPOLINE);
    }
    for off in (0..MAPPED).step_by(0x1000) {
        if !exec.contains(&off) {
            m.set_nx(MODULES + off);
        }
    }
}
