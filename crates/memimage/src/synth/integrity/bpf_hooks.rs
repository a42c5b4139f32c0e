//! The hooks eBPF programs attach to without a link: cgroup v2 with the
//! root and `/system.slice`, whose device hook runs `sd_devices` (as
//! systemd attaches it), and the devices `lo` and `eth0` of the one
//! network namespace. The plants: `kit_cgroup`, a program on the root
//! cgroup's egress that neither `prog_idr` nor the BPF symbol list shows;
//! and an XDP attachment on `eth0` by a link missing from `link_idr`.
//! And two seccomp filters on `sshd` (pid 100), the newest a classic
//! program whose original instructions the kernel kept, the older one not.

use super::bpf::{RETURN_ONE, program, ring};
use super::{NET, Plant, d, ty};
use crate::synth::SynthMemory;
use serde_json::{Map, Value, json};

/// Kernel data (physical).
const CGRP_ROOT: u64 = 0xc_0000;
/// `cgroup_root.cgrp`.
const ROOT: u64 = CGRP_ROOT + 0x10;
const CHILD: u64 = 0xc_0400;
const KN_ROOT: u64 = 0xc_0800;
const KN_CHILD: u64 = 0xc_0840;
const KN_NAMES: u64 = 0xc_0900;
const PL_DEVICE: u64 = 0xc_0a00;
const PL_KIT: u64 = 0xc_0a40;
const DEV_LO: u64 = 0xc_1000;
const DEV_ETH: u64 = 0xc_1400;
const HIDDEN_LINK: u64 = 0xc_2000;
const SECCOMP_NEW: u64 = 0xc_3000;
const SECCOMP_OLD: u64 = 0xc_3100;
/// Classic programs: one page each (prog, aux at 0x400, fprog at 0x800,
/// instructions at 0x900).
const CLASSIC: u64 = 0xc_4000;
/// `sshd`'s task_struct (`checks`), and where its `seccomp` is.
const SSHD: u64 = 0x4_0000;
const TASK_SECCOMP: u64 = 0xe0;
/// `net.dev_base_head`.
pub(super) const NET_DEVICES: u64 = 0x40;
/// Offsets in `cgroup` and `net_device`.
const SIBLING: u64 = 0x20;
const CHILDREN: u64 = 0x30;
const KN: u64 = 0x80;
const BPF_PROGS: u64 = 0x100;
const DEV_LIST: u64 = 0x40;
const XDP_STATE: u64 = 0x100;
/// The cgroup hooks' slots: device (as systemd's), and egress.
const HOOK_DEVICE: u64 = 3;
const HOOK_EGRESS: u64 = 1;
/// `sd_devices`, the first program `bpf::write` makes.
const SD_DEVICES: u64 = 0x9_1000;

pub(super) fn types(t: &mut Map<String, Value>) {
    let vp = json!({"kind": "pointer", "subtype": {"kind": "base", "name": "void"}});
    let st = |n: &str| json!({"kind": "struct", "name": n});
    let arr = |c: u64, e: Value| json!({"kind": "array", "count": c, "subtype": e});
    let list = st("list_head");
    t.insert(
        "cgroup_root".into(),
        ty(0x200, &[("cgrp", 0x10, st("cgroup"))]),
    );
    t.insert(
        "cgroup".into(),
        ty(
            0x200,
            &[
                ("self", 0, st("cgroup_subsys_state")),
                ("kn", KN, vp.clone()),
                ("bpf", BPF_PROGS, st("cgroup_bpf")),
            ],
        ),
    );
    t.insert(
        "cgroup_subsys_state".into(),
        ty(
            0x40,
            &[
                ("sibling", SIBLING, list.clone()),
                ("children", CHILDREN, list.clone()),
            ],
        ),
    );
    t.insert(
        "cgroup_bpf".into(),
        ty(0x20, &[("progs", 0, arr(4, st("hlist_head")))]),
    );
    t.insert("hlist_head".into(), ty(8, &[("first", 0, vp.clone())]));
    t.insert(
        "bpf_prog_list".into(),
        ty(
            0x30,
            &[
                ("node", 0, vp.clone()),
                ("prog", 0x10, vp.clone()),
                ("link", 0x18, vp.clone()),
            ],
        ),
    );
    t.insert(
        "kernfs_node".into(),
        ty(
            0x40,
            &[("parent", 8, vp.clone()), ("name", 0x10, vp.clone())],
        ),
    );
    t.insert(
        "net_device".into(),
        ty(
            0x200,
            &[
                ("name", 0, arr(16, json!({"kind": "base", "name": "char"}))),
                ("dev_list", DEV_LIST, list),
                ("xdp_state", XDP_STATE, arr(3, st("bpf_xdp_entity"))),
            ],
        ),
    );
    t.insert(
        "bpf_xdp_entity".into(),
        ty(16, &[("prog", 0, vp.clone()), ("link", 8, vp.clone())]),
    );
    t.insert("seccomp".into(), ty(16, &[("filter", 8, vp.clone())]));
    t.insert(
        "seccomp_filter".into(),
        ty(
            0xe0,
            &[("prev", 0x90, vp.clone()), ("prog", 0x98, vp.clone())],
        ),
    );
    t.insert(
        "sock_fprog_kern".into(),
        ty(
            16,
            &[
                (
                    "len",
                    0,
                    json!({"kind": "base", "name": "short unsigned int"}),
                ),
                ("filter", 8, vp.clone()),
            ],
        ),
    );
    let field = |t: &mut Map<String, Value>, st: &str, name: &str, off: u64, ty: Value| {
        if let Some(f) = t.get_mut(st).and_then(|s| s.get_mut("fields")) {
            f[name] = json!({"offset": off, "type": ty});
        }
    };
    field(t, "task_struct", "seccomp", TASK_SECCOMP, st("seccomp"));
    field(t, "bpf_prog", "orig_prog", 64, vp);
}

/// A classic program (type 0) at page `n` of `CLASSIC`, its original
/// instructions kept when given.
fn classic(m: &mut SynthMemory, n: u64, insns: Option<&[[u8; 8]]>) -> u64 {
    let prog = CLASSIC + n * 0x1000;
    m.write_u64(prog + 56, d(prog + 0x400));
    m.write_u64(prog + 0x400 + 904, d(prog));
    if let Some(insns) = insns {
        m.write_u64(prog + 64, d(prog + 0x800));
        m.write(prog + 0x800, &(insns.len() as u16).to_le_bytes());
        m.write_u64(prog + 0x808, d(prog + 0x900));
        m.write(prog + 0x900, &insns.concat());
    }
    d(prog)
}

pub(super) fn symbols(sym: &mut dyn FnMut(&str, u64)) {
    sym("cgrp_dfl_root", d(CGRP_ROOT));
}

/// Hooks `prog` into a cgroup's slot by a `bpf_prog_list` at `pl`.
fn attach(m: &mut SynthMemory, cgroup: u64, hook: u64, pl: u64, prog: u64) {
    m.write_u64(cgroup + BPF_PROGS + hook * 8, d(pl));
    m.write_u64(pl + 0x10, prog);
}

pub(super) fn write(m: &mut SynthMemory, plant: &Plant) {
    // The root's kernfs node has no parent; the child's name is its path.
    m.write_u64(KN_CHILD + 8, d(KN_ROOT));
    m.write_u64(KN_ROOT + 0x10, d(KN_NAMES));
    m.write(KN_NAMES + 0x20, b"system.slice\0");
    m.write_u64(KN_CHILD + 0x10, d(KN_NAMES + 0x20));
    m.write_u64(ROOT + KN, d(KN_ROOT));
    m.write_u64(CHILD + KN, d(KN_CHILD));
    ring(m, &[ROOT + CHILDREN, CHILD + SIBLING]);
    ring(m, &[CHILD + CHILDREN]);
    attach(m, CHILD, HOOK_DEVICE, PL_DEVICE, d(SD_DEVICES));
    if plant.bpf_hook_hidden {
        let kit = program(m, 3, 4, 8, "kit_cgroup", &RETURN_ONE);
        attach(m, ROOT, HOOK_EGRESS, PL_KIT, kit);
    }
    // sshd's two seccomp layers: check the architecture, then allow.
    let newest = classic(
        m,
        0,
        Some(&[
            [0x20, 0, 0, 0, 4, 0, 0, 0],
            [0x15, 0, 0, 1, 0x3e, 0, 0, 0xc0],
            [0x06, 0, 0, 0, 0, 0, 0xff, 0x7f],
            [0x06, 0, 0, 0, 0, 0, 0, 0],
        ]),
    );
    m.write_u64(SECCOMP_NEW + 0x98, newest);
    m.write_u64(SECCOMP_NEW + 0x90, d(SECCOMP_OLD));
    let older = classic(m, 1, None);
    m.write_u64(SECCOMP_OLD + 0x98, older);
    m.write_u64(SSHD + TASK_SECCOMP + 8, d(SECCOMP_NEW));
    // lo and eth0 on the namespace's device list.
    m.write(DEV_LO, b"lo\0");
    m.write(DEV_ETH, b"eth0\0");
    ring(
        m,
        &[NET + NET_DEVICES, DEV_LO + DEV_LIST, DEV_ETH + DEV_LIST],
    );
    if plant.bpf_link_hidden {
        // Driver-mode XDP by an xdp link (type 6) that link_idr lacks.
        m.write_u64(HIDDEN_LINK, 1);
        m.write(HIDDEN_LINK + 8, &9u32.to_le_bytes());
        m.write(HIDDEN_LINK + 12, &6u32.to_le_bytes());
        m.write_u64(HIDDEN_LINK + 24, d(SD_DEVICES));
        m.write_u64(DEV_ETH + XDP_STATE + 16, d(SD_DEVICES));
        m.write_u64(DEV_ETH + XDP_STATE + 24, d(HIDDEN_LINK));
    }
}
