//! The synthetic kernel's parts for the task, log and operation-table
//! checks: tasks and the PID table (psscan), the printk ring (kmsg), a
//! serial terminal (tty_check) and `tcp4_seq_ops` (check_afinfo).
//!
//! Tasks (all with real_parent = init_task): `sshd` (pid 100) in the list
//! and the PID table; `sleep` (101) only in the PID table and started after
//! every listed task, as a task forked after the list was copied looks; `cron` (99) dead; with the plant,
//! `kitd` (4242) in neither, its list pointers poisoned by `list_del`.

use super::{INIT_TASK, KIT_TEXT, MODULES, Plant, TEXT, d, ty};
use crate::synth::SynthMemory;
use serde_json::{Map, Value, json};

pub const HIDDEN_PID: u32 = 4242;
pub const HIDDEN_COMM: &str = "kitd";

/// Kernel text (offsets from `TEXT`) and data (physical).
const N_TTY: u64 = 0x700;
const SEQ: u64 = 0x800;
const SCHED: u64 = 0x2_a000;
const LISTED: u64 = 0x4_0000;
const FORKED: u64 = 0x4_1000;
const DEAD: u64 = 0x4_2000;
const HIDDEN: u64 = 0x4_3000;
const PID_NS: u64 = 0x4_8000;
const XA_TOP: u64 = 0x4_9000;
const XA_LEAF: u64 = 0x4_9400;
const PIDS: u64 = 0x4_a000;
const PRB: u64 = 0x5_0000;
const DESCS: u64 = 0x5_1000;
const INFOS: u64 = 0x5_2000;
const DATA: u64 = 0x5_3000;
const DATA_BITS: u64 = 9;
const TTY_DRIVERS: u64 = 0x6_0000;
const SEQ_OPS: u64 = 0x7_0000;

/// The types these parts use; `task_struct` replaces the base one.
pub(super) fn types(t: &mut Map<String, Value>) {
    let base = |n: &str| json!({"kind": "base", "name": n});
    let st = |n: &str| json!({"kind": "struct", "name": n});
    let arr = |c: u64, e: Value| json!({"kind": "array", "count": c, "subtype": e});
    let bits = |pos: u32, len: u32| {
        json!({"kind": "bitfield", "bit_position": pos, "bit_length": len,
            "type": base("unsigned char")})
    };
    let vp = json!({"kind": "pointer", "subtype": {"kind": "base", "name": "void"}});
    let (u8t, u16t, u32t, i32t, u64t) = (
        base("unsigned char"),
        base("short unsigned int"),
        base("unsigned int"),
        base("int"),
        base("long unsigned int"),
    );
    let add = |t: &mut Map<String, Value>, n: &str, v: Value| {
        t.insert(n.into(), v);
    };
    add(
        t,
        "task_struct",
        ty(
            0x100,
            &[
                ("__state", 8, u32t.clone()),
                ("tasks", 0x10, st("list_head")),
                ("pid", 0x20, i32t.clone()),
                ("tgid", 0x24, i32t.clone()),
                ("comm", 0x38, arr(16, base("char"))),
                ("cred", 0x48, vp.clone()),
                ("mm", 0x58, vp.clone()),
                ("sched_class", 0x60, vp.clone()),
                ("exit_state", 0x68, i32t.clone()),
                ("parent", 0x70, vp.clone()),
                ("real_parent", 0x78, vp.clone()),
                ("start_boottime", 0x80, u64t.clone()),
                ("thread_group", 0x88, st("list_head")),
                ("pid_links", 0xa0, arr(4, st("list_head"))),
            ],
        ),
    );
    add(t, "pid_namespace", ty(0x88, &[("idr", 0, st("idr"))]));
    add(t, "idr", ty(0x18, &[("idr_rt", 0, st("xarray"))]));
    add(t, "xarray", ty(0x10, &[("xa_head", 8, vp.clone())]));
    add(
        t,
        "xa_node",
        ty(
            0x240,
            &[
                ("shift", 0, u8t.clone()),
                ("slots", 40, arr(64, vp.clone())),
            ],
        ),
    );
    add(t, "pid", ty(0x60, &[("tasks", 16, arr(4, vp.clone()))]));
    add(
        t,
        "printk_ringbuffer",
        ty(
            88,
            &[
                ("desc_ring", 0, st("prb_desc_ring")),
                ("text_data_ring", 48, st("prb_data_ring")),
            ],
        ),
    );
    add(
        t,
        "prb_desc_ring",
        ty(
            48,
            &[
                ("count_bits", 0, u32t.clone()),
                ("descs", 8, vp.clone()),
                ("infos", 16, vp.clone()),
                ("head_id", 24, u64t.clone()),
                ("tail_id", 32, u64t.clone()),
            ],
        ),
    );
    add(
        t,
        "prb_data_ring",
        ty(
            32,
            &[("size_bits", 0, u32t.clone()), ("data", 8, vp.clone())],
        ),
    );
    add(
        t,
        "prb_desc",
        ty(
            24,
            &[
                ("state_var", 0, u64t.clone()),
                ("text_blk_lpos", 8, arr(2, u64t.clone())),
            ],
        ),
    );
    add(
        t,
        "printk_info",
        ty(
            88,
            &[
                ("seq", 0, u64t.clone()),
                ("ts_nsec", 8, u64t),
                ("text_len", 16, u16t),
                ("facility", 18, u8t),
                ("flags", 19, bits(0, 5)),
                ("level", 19, bits(5, 3)),
                ("caller_id", 20, u32t.clone()),
                ("dev_info", 24, st("dev_printk_info")),
            ],
        ),
    );
    add(
        t,
        "dev_printk_info",
        ty(
            64,
            &[
                ("subsystem", 0, arr(16, base("char"))),
                ("device", 16, arr(48, base("char"))),
            ],
        ),
    );
    add(
        t,
        "tty_driver",
        ty(
            0x40,
            &[
                ("num", 0x10, u32t),
                ("ttys", 0x18, vp.clone()),
                ("tty_drivers", 0x20, st("list_head")),
            ],
        ),
    );
    add(
        t,
        "tty_struct",
        ty(
            0x80,
            &[
                ("ldisc", 8, vp.clone()),
                ("name", 0x20, arr(64, base("char"))),
            ],
        ),
    );
    add(t, "tty_ldisc", ty(16, &[("ops", 0, vp.clone())]));
    add(
        t,
        "tty_ldisc_ops",
        ty(0x40, &[("receive_buf", 0x10, vp.clone())]),
    );
    add(
        t,
        "seq_operations",
        ty(
            32,
            &[
                ("start", 0, vp.clone()),
                ("stop", 8, vp.clone()),
                ("next", 16, vp.clone()),
                ("show", 24, vp),
            ],
        ),
    );
    add(t, "tcp_seq_afinfo", ty(2, &[("family", 0, i32t)]));
}

pub(super) fn symbols(sym: &mut dyn FnMut(&str, u64)) {
    sym("idle_sched_class", d(SCHED));
    sym("fair_sched_class", d(SCHED + 0xd0));
    sym("init_pid_ns", d(PID_NS));
    sym("prb", d(PRB));
    sym("tty_drivers", d(TTY_DRIVERS));
    sym("tcp4_seq_ops", d(SEQ_OPS));
    sym("n_tty_receive_buf", TEXT + N_TTY);
    for (i, n) in [
        "tcp_seq_start",
        "tcp_seq_stop",
        "tcp_seq_next",
        "tcp4_seq_show",
    ]
    .iter()
    .enumerate()
    {
        sym(n, TEXT + SEQ + 0x10 * i as u64);
    }
}

fn kit(off: u64) -> u64 {
    MODULES + KIT_TEXT + off
}

/// One task: `tasks` links as given, its own empty thread group.
fn task(m: &mut SynthMemory, at: u64, pid: u32, comm: &str, links: (u64, u64), dead: bool) {
    m.write_u64(at + 0x10, links.0);
    m.write_u64(at + 0x18, links.1);
    m.write(at + 0x20, &pid.to_le_bytes());
    m.write(at + 0x24, &pid.to_le_bytes());
    m.write(at + 0x38, comm.as_bytes());
    let class = if pid == 0 { SCHED } else { SCHED + 0xd0 };
    m.write_u64(at + 0x60, d(class));
    if dead {
        m.write(at + 8, &0x80u32.to_le_bytes());
        m.write(at + 0x68, &0x10u32.to_le_bytes());
    }
    m.write_u64(at + 0x70, d(INIT_TASK));
    m.write_u64(at + 0x78, d(INIT_TASK));
    m.write_u64(at + 0x88, d(at) + 0x88);
    m.write_u64(at + 0x90, d(at) + 0x88);
}

fn tasks(m: &mut SynthMemory, plant: &Plant) {
    let ring = |t: u64| d(t) + 0x10;
    task(
        m,
        INIT_TASK,
        0,
        "swapper/0",
        (ring(LISTED), ring(LISTED)),
        false,
    );
    task(
        m,
        LISTED,
        100,
        "sshd",
        (ring(INIT_TASK), ring(INIT_TASK)),
        false,
    );
    // A fork the list copy missed: it links to where it would be.
    task(
        m,
        FORKED,
        101,
        "sleep",
        (ring(INIT_TASK), ring(LISTED)),
        false,
    );
    task(
        m,
        DEAD,
        99,
        "cron",
        (ring(INIT_TASK), ring(INIT_TASK)),
        true,
    );
    // Started (ns since boot): the fork after every listed task.
    m.write_u64(LISTED + 0x80, 1_000_000_000);
    m.write_u64(FORKED + 0x80, 5_000_000_000);
    if plant.hidden_task {
        let poison = (0xdead_0000_0000_0100, 0xdead_0000_0000_0122);
        task(m, HIDDEN, HIDDEN_PID, HIDDEN_COMM, poison, false);
    }
    // The PID table: a node of shift 6 whose slot 1 is a leaf node holding
    // pids 100 and 101 (slots 36, 37); each pid's PIDTYPE_PID chain is its
    // task's `pid_links[0]`.
    m.write_u64(PID_NS + 8, d(XA_TOP) | 2);
    m.write(XA_TOP, &[6]);
    m.write_u64(XA_TOP + 40 + 8, d(XA_LEAF) | 2);
    for (i, (nr, t)) in [(100u64, LISTED), (101, FORKED)].into_iter().enumerate() {
        let pid = PIDS + 0x100 * i as u64;
        m.write_u64(XA_LEAF + 40 + 8 * (nr - 64), d(pid));
        m.write_u64(pid + 16, d(t) + 0xa0);
    }
}

/// The log records, each `(ns, level, text)`.
fn records(plant: &Plant) -> Vec<(u64, u8, &'static str)> {
    let mut r = vec![
        (0, 5, "Linux version 6.1.0-synth"),
        (
            13_003_615_000,
            4,
            "lime: loading out-of-tree module taints kernel.",
        ),
    ];
    if plant.taint {
        r.insert(
            1,
            (
                9_000_000_000,
                4,
                "mshot_testkit: loading out-of-tree module taints kernel.",
            ),
        );
    }
    if plant.oops {
        r.push((
            21_000_000_000,
            1,
            "BUG: kernel NULL pointer dereference, address: 0000000000000000\nOops: 0000 [#1] PREEMPT SMP NOPTI",
        ));
    }
    r
}

/// The printk ring: 8 descriptors, a 512-byte data ring whose second
/// block wraps to its start (its `begin` stays at the end, as the kernel
/// leaves it).
fn kernel_log(m: &mut SynthMemory, plant: &Plant) {
    let recs = records(plant);
    m.write_u64(PRB, d(PRB + 0x100));
    let rb = PRB + 0x100;
    m.write(rb, &3u32.to_le_bytes());
    m.write_u64(rb + 8, d(DESCS));
    m.write_u64(rb + 16, d(INFOS));
    m.write_u64(rb + 24, recs.len() as u64 - 1);
    m.write_u64(rb + 32, 0);
    m.write(rb + 48, &(DATA_BITS as u32).to_le_bytes());
    m.write_u64(rb + 56, d(DATA));
    let size = 1u64 << DATA_BITS;
    let mut lpos = size - 48;
    for (id, (ns, level, text)) in recs.into_iter().enumerate() {
        let id = id as u64;
        let len = (8 + text.len() as u64).next_multiple_of(8);
        let (begin, at) = if lpos % size + len > size {
            (lpos, lpos.next_multiple_of(size))
        } else {
            (lpos, lpos)
        };
        let next = at + len;
        m.write_u64(DATA + at % size, id);
        m.write(DATA + at % size + 8, text.as_bytes());
        let desc = DESCS + 24 * id;
        m.write_u64(desc, (2 << 62) | id);
        m.write_u64(desc + 8, begin);
        m.write_u64(desc + 16, next);
        let info = INFOS + 88 * id;
        m.write_u64(info, id);
        m.write_u64(info + 8, ns);
        m.write(info + 16, &(text.len() as u16).to_le_bytes());
        m.write(info + 19, &[level << 5]);
        m.write(info + 20, &1u32.to_le_bytes());
        lpos = next;
    }
}

pub(super) fn write(m: &mut SynthMemory, plant: &Plant) {
    tasks(m, plant);
    kernel_log(m, plant);
    let text = |off: u64| off + 0x10_0000;
    for h in [N_TTY, SEQ, SEQ + 0x10, SEQ + 0x20, SEQ + 0x30] {
        m.write(text(h), &[0xc3]);
    }
    // One serial driver with two slots, one of them open.
    let (drv, ttys, tty, ldisc, ops) = (
        TTY_DRIVERS + 0x100,
        TTY_DRIVERS + 0x400,
        TTY_DRIVERS + 0x1000,
        TTY_DRIVERS + 0x2000,
        TTY_DRIVERS + 0x2100,
    );
    m.write_u64(TTY_DRIVERS, d(drv) + 0x20);
    m.write_u64(TTY_DRIVERS + 8, d(drv) + 0x20);
    m.write_u64(drv + 0x20, d(TTY_DRIVERS));
    m.write_u64(drv + 0x28, d(TTY_DRIVERS));
    m.write(drv + 0x10, &2u32.to_le_bytes());
    m.write_u64(drv + 0x18, d(ttys));
    m.write_u64(ttys, d(tty));
    m.write_u64(tty + 8, d(ldisc));
    m.write(tty + 0x20, b"ttyS0");
    m.write_u64(ldisc, d(ops));
    let recv = if plant.tty_hook {
        kit(0x60)
    } else {
        TEXT + N_TTY
    };
    m.write_u64(ops + 0x10, recv);
    for i in 0..4 {
        let h = if plant.afinfo_hook && i == 3 {
            kit(0x70)
        } else {
            TEXT + SEQ + 0x10 * i
        };
        m.write_u64(SEQ_OPS + 8 * i, h);
    }
}
