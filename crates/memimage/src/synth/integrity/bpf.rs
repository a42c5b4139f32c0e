//! The synthetic kernel's eBPF objects: `prog_idr` holding `sd_devices`
//! (id 1, a cgroup_device program as systemd loads, its JIT image in a
//! pack in module space), `bpf_kallsyms` naming it, and `pack_list`. The
//! plants: `kit_rawtp` (id 2), a raw tracepoint program calling
//! `bpf_probe_write_user`, attached to `sched_process_exec` by link 1 of
//! `link_idr`; and `kit_hidden`, a kprobe program on the BPF symbol list
//! that `prog_idr` does not show. `map_idr` holds a struct_ops map (a BPF
//! TCP congestion control) whose trampoline page is in module space.

use super::{MODULES, Plant, TEXT, d, ty};
use crate::synth::SynthMemory;
use serde_json::{Map, Value, json};

/// Kernel text (offsets from `TEXT`).
const CALL_BASE: u64 = 0xa00;
const WRITE_USER: u64 = 0xa10;
/// Kernel data (physical).
const PROG_IDR: u64 = 0x9_0000;
const LINK_IDR: u64 = 0x9_0040;
const KALLSYMS: u64 = 0x9_0080;
const PACK_LIST: u64 = 0x9_00c0;
const MAP_IDR: u64 = 0x9_0100;
const MAP_NODE: u64 = 0x9_0a00;
const STRUCT_OPS_MAP: u64 = 0x9_9000;
/// The struct_ops map's trampoline page (offset from `MODULES`).
pub(super) const STRUCT_OPS_IMAGE: u64 = 0x2_d000;
const PROG_NODE: u64 = 0x9_0400;
const LINK_NODE: u64 = 0x9_0800;
const PACK: u64 = 0x9_0c00;
const PROGS: u64 = 0x9_1000;
const AUXES: u64 = 0x9_5000;
/// `kit_hidden` (the `bpf_hidden` plant), program 2.
pub(super) const KIT_HIDDEN: u64 = super::DIRECT + PROGS + 0x2000;
const LINK: u64 = 0x9_a000;
const RAW_EVENT_MAP: u64 = 0x9_a100;
/// The JIT pack in module space (offset from `MODULES`), one page.
pub(super) const JIT_PACK: u64 = 0x4_0000;
/// struct bpf_prog_aux.ksym, and bpf_ksym.lnode inside it.
const AUX_KSYM: u64 = 248;
const KSYM_LNODE: u64 = 528;

pub(super) fn types(t: &mut Map<String, Value>) {
    let base = |n: &str| json!({"kind": "base", "name": n});
    let vp = json!({"kind": "pointer", "subtype": {"kind": "base", "name": "void"}});
    let arr = |c: u64, e: Value| json!({"kind": "array", "count": c, "subtype": e});
    let bit = |pos: u32| {
        json!({"kind": "bitfield", "bit_position": pos, "bit_length": 1,
            "type": base("unsigned char")})
    };
    let en = |n: &str| json!({"kind": "enum", "name": n});
    let (u16t, u32t, u64t) = (
        base("short unsigned int"),
        base("unsigned int"),
        base("long unsigned int"),
    );
    t.insert(
        "bpf_prog".into(),
        ty(
            72,
            &[
                ("pages", 0, u16t),
                ("jited", 2, bit(0)),
                ("is_func", 2, bit(6)),
                ("kprobe_override", 3, bit(1)),
                ("type", 4, en("bpf_prog_type")),
                ("expected_attach_type", 8, en("bpf_attach_type")),
                ("len", 12, u32t.clone()),
                ("jited_len", 16, u32t.clone()),
                ("tag", 20, arr(8, base("unsigned char"))),
                ("bpf_func", 48, vp.clone()),
                ("aux", 56, vp.clone()),
                ("insnsi", 72, arr(0, base("unsigned char"))),
            ],
        ),
    );
    t.insert(
        "bpf_prog_aux".into(),
        ty(
            1080,
            &[
                ("refcnt", 0, u64t.clone()),
                ("id", 32, u32t.clone()),
                ("attach_func_name", 192, vp.clone()),
                (
                    "ksym",
                    AUX_KSYM,
                    json!({"kind": "struct", "name": "bpf_ksym"}),
                ),
                ("prog", 904, vp.clone()),
                ("load_time", 920, u64t.clone()),
                ("name", 952, arr(16, base("char"))),
            ],
        ),
    );
    t.insert(
        "bpf_ksym".into(),
        ty(
            600,
            &[
                ("start", 0, u64t.clone()),
                ("end", 8, u64t.clone()),
                ("name", 16, arr(512, base("char"))),
                (
                    "lnode",
                    KSYM_LNODE,
                    json!({"kind": "struct", "name": "list_head"}),
                ),
                ("prog", 592, base("_Bool")),
            ],
        ),
    );
    t.insert(
        "bpf_link".into(),
        ty(
            64,
            &[
                ("refcnt", 0, u64t.clone()),
                ("id", 8, u32t),
                ("type", 12, en("bpf_link_type")),
                ("prog", 24, vp.clone()),
            ],
        ),
    );
    t.insert(
        "bpf_map".into(),
        ty(
            256,
            &[
                ("map_type", 24, en("bpf_map_type")),
                ("id", 68, base("unsigned int")),
                ("name", 104, arr(16, base("char"))),
            ],
        ),
    );
    t.insert(
        "bpf_struct_ops_map".into(),
        ty(448, &[("image", 320, vp.clone())]),
    );
    t.insert("bpf_raw_tp_link".into(), ty(72, &[("btp", 64, vp.clone())]));
    t.insert("bpf_raw_event_map".into(), ty(32, &[("tp", 0, vp.clone())]));
    t.insert(
        "bpf_prog_pack".into(),
        ty(
            32,
            &[
                ("list", 0, json!({"kind": "struct", "name": "list_head"})),
                ("ptr", 16, vp),
            ],
        ),
    );
}

pub(super) fn symbols(sym: &mut dyn FnMut(&str, u64)) {
    sym("prog_idr", d(PROG_IDR));
    sym("link_idr", d(LINK_IDR));
    sym("bpf_kallsyms", d(KALLSYMS));
    sym("pack_list", d(PACK_LIST));
    sym("map_idr", d(MAP_IDR));
    sym("__bpf_call_base", TEXT + CALL_BASE);
    sym("bpf_probe_write_user", TEXT + WRITE_USER);
}

/// A program: `(n, id, type, name, instructions, jited image offset in the
/// pack)`; returns its address.
pub(super) fn program(
    m: &mut SynthMemory,
    n: u64,
    id: u32,
    kind: u32,
    name: &str,
    insns: &[u64],
) -> u64 {
    let prog = PROGS + n * 0x1000;
    let aux = AUXES + n * 0x1000;
    m.write(prog, &1u16.to_le_bytes());
    m.write(prog + 2, &[1]);
    m.write(prog + 4, &kind.to_le_bytes());
    m.write(prog + 12, &(insns.len() as u32).to_le_bytes());
    m.write(prog + 16, &0x40u32.to_le_bytes());
    m.write(prog + 20, &[0xa0 + n as u8, 1, 2, 3, 4, 5, 6, 7]);
    let image = MODULES + JIT_PACK + 0x40 + n * 0x100;
    m.write_u64(prog + 48, image);
    m.write_u64(prog + 56, d(aux));
    for (i, w) in insns.iter().enumerate() {
        m.write_u64(prog + 72 + 8 * i as u64, *w);
    }
    m.write_u64(aux, 1);
    m.write(aux + 32, &id.to_le_bytes());
    m.write_u64(aux + AUX_KSYM, image);
    m.write_u64(aux + AUX_KSYM + 8, image + 0x40);
    m.write(
        aux + AUX_KSYM + 16,
        format!("bpf_prog_{n}_{name}\0").as_bytes(),
    );
    m.write(aux + AUX_KSYM + 592, &[1]);
    m.write_u64(aux + 904, d(prog));
    m.write_u64(aux + 920, 7_000_000_000);
    m.write(aux + 952, name.as_bytes());
    d(prog)
}

/// A circular list through `nodes` (`list_head` addresses, physical).
pub(super) fn ring(m: &mut SynthMemory, nodes: &[u64]) {
    let n = nodes.len();
    for (i, &node) in nodes.iter().enumerate() {
        let next = nodes.get((i + 1) % n).copied().unwrap_or(node);
        let prev = nodes.get((i + n - 1) % n).copied().unwrap_or(node);
        m.write_u64(node, d(next));
        m.write_u64(node + 8, d(prev));
    }
}

/// A one-node xarray at `node` holding `entries` by index.
fn xarray(m: &mut SynthMemory, head: u64, node: u64, entries: &[(u64, u64)]) {
    if entries.is_empty() {
        return;
    }
    m.write_u64(head + 8, d(node) | 2);
    for (i, e) in entries {
        m.write_u64(node + 40 + 8 * i, *e);
    }
}

/// `mov r0, 1; exit`.
pub(super) const RETURN_ONE: [u64; 2] = [0x0000_0001_0000_00b7, 0x95];

pub(super) fn write(m: &mut SynthMemory, plant: &Plant, exec_tracepoint: u64) {
    m.write(CALL_BASE + 0x10_0000, &[0xc3]);
    m.write(WRITE_USER + 0x10_0000, &[0xc3]);
    let mut idr = vec![(1, program(m, 0, 1, 15, "sd_devices", &RETURN_ONE))];
    let mut ksyms = vec![AUXES + AUX_KSYM + KSYM_LNODE];
    if plant.bpf {
        // call bpf_probe_write_user (imm: its offset from __bpf_call_base).
        let call = 0x85 | (WRITE_USER - CALL_BASE) << 32;
        let kit = program(m, 1, 2, 17, "kit_rawtp", &[call, RETURN_ONE[0], 0x95]);
        idr.push((2, kit));
        ksyms.push(AUXES + 0x1000 + AUX_KSYM + KSYM_LNODE);
        m.write_u64(LINK, 1);
        m.write(LINK + 8, &1u32.to_le_bytes());
        m.write(LINK + 12, &1u32.to_le_bytes());
        m.write_u64(LINK + 24, kit);
        m.write_u64(LINK + 64, d(RAW_EVENT_MAP));
        m.write_u64(RAW_EVENT_MAP, exec_tracepoint);
        xarray(m, LINK_IDR, LINK_NODE, &[(1, d(LINK))]);
    }
    if plant.bpf_hidden {
        program(m, 2, 3, 2, "kit_hidden", &RETURN_ONE);
        ksyms.push(AUXES + 0x2000 + AUX_KSYM + KSYM_LNODE);
    }
    xarray(m, PROG_IDR, PROG_NODE, &idr);
    // bpf_kallsyms: a ring through each program's aux.ksym.lnode.
    let nodes: Vec<u64> = std::iter::once(KALLSYMS).chain(ksyms).collect();
    ring(m, &nodes);
    // A struct_ops map (type 26) and its trampoline page.
    m.write(STRUCT_OPS_MAP + 24, &26u32.to_le_bytes());
    m.write(STRUCT_OPS_MAP + 68, &1u32.to_le_bytes());
    m.write(STRUCT_OPS_MAP + 104, b"tcp_ca");
    m.write_u64(STRUCT_OPS_MAP + 320, MODULES + STRUCT_OPS_IMAGE);
    xarray(m, MAP_IDR, MAP_NODE, &[(1, d(STRUCT_OPS_MAP))]);
    // One pack, holding every image.
    m.write_u64(PACK_LIST, d(PACK));
    m.write_u64(PACK_LIST + 8, d(PACK));
    m.write_u64(PACK, d(PACK_LIST));
    m.write_u64(PACK + 8, d(PACK_LIST));
    m.write_u64(PACK + 16, MODULES + JIT_PACK);
}
