//! A small kernel for the integrity checks: kernel text with three
//! system-call handlers and an `x64_sys_call` compare tree, a
//! `sys_call_table`, an IDT, a module list, the sysfs module kset,
//! `mod_tree` bounds, a keyboard notifier chain and one network namespace
//! with a netfilter hook. [`Plant`] adds what a rootkit leaves: a module
//! unlinked from the list (poisoned pointers, still in sysfs) whose code
//! replaces `kill` in the table and in the dispatcher, an IDT gate, a
//! keyboard notifier and a netfilter hook; and, for the newer checks
//! (`checks`), a hidden task, a tainting module and an oops in the log, a
//! `tcp4_seq_ops` member and a terminal's `receive_buf`; a probe on a
//! tracepoint (`tracing`); an eBPF program calling `bpf_probe_write_user`
//! and one hidden from `prog_idr` (`bpf`), one on a cgroup hook that no
//! list shows and an XDP link missing from `link_idr` (`bpf_hooks`); code in module space that no
//! module owns (`modspace`, which also maps module data NX).

mod bpf;
mod bpf_events;
mod bpf_hooks;
mod checks;
mod modspace;
mod tracing;
pub use checks::{HIDDEN_COMM, HIDDEN_PID};

use super::{SynthMemory, ty};
use serde_json::{Value, json};

pub const DIRECT: u64 = 0xffff_8880_0000_0000;
pub const TEXT: u64 = 0xffff_ffff_8100_0000;
const TEXT_PA: u64 = 0x10_0000;
pub const MODULES: u64 = 0xffff_ffff_c000_0000;
const MODULES_PA: u64 = 0x30_0000;

/// Handlers in kernel text (offsets from `TEXT`).
const READ: u64 = 0x100;
const WRITE: u64 = 0x200;
const KILL: u64 = 0x300;
const NI: u64 = 0x400;
const EXC: u64 = 0x500;
const NF_HOOK: u64 = 0x600;
const DISPATCH: u64 = 0x1000;

/// Kernel data (physical; VA = `DIRECT` + PA).
const TABLE: u64 = 0x2_0000;
const TABLE_LEN: u64 = 63;
const IDT: u64 = 0x2_1000;
const MODULES_HEAD: u64 = 0x2_2000;
const KSET: u64 = 0x2_3000;
const KSET_PTR: u64 = 0x2_3800;
const KBD: u64 = 0x2_4000;
const NETNS_HEAD: u64 = 0x2_5000;
pub(super) const NET: u64 = 0x2_6000;
const NF_ENTRIES: u64 = 0x2_7000;
const MOD_TREE: u64 = 0x2_8000;
const INIT_TASK: u64 = 0x2_9000;
const FTRACE_LIST: u64 = 0x2_a000;
const FTRACE_END: u64 = 0x2_a100;
const KPROBES: u64 = 0x2_b000;

/// Module memory (offsets from `MODULES`).
const GOOD: u64 = 0x1000;
const GOOD_TEXT: u64 = 0x1_0000;
const KIT: u64 = 0x2000;
const KIT_TEXT: u64 = 0x2_0000;
const KIT_NOTIFIER: u64 = 0x2800;
const KIT_FTRACE_OPS: u64 = 0x2900;
pub const KIT_NAME: &str = "mshot_testkit";

/// What the rootkit plants (all off: a clean kernel).
#[derive(Debug, Clone, Copy, Default)]
pub struct Plant {
    pub hidden_module: bool,
    pub table_hook: bool,
    pub dispatch_hook: bool,
    pub idt_hook: bool,
    pub keyboard: bool,
    pub netfilter: bool,
    pub ftrace: bool,
    pub hidden_task: bool,
    pub taint: bool,
    pub oops: bool,
    pub afinfo_hook: bool,
    pub tty_hook: bool,
    pub tracepoint: bool,
    pub bpf: bool,
    pub bpf_hidden: bool,
    /// A program on a cgroup hook that neither prog_idr nor the BPF
    /// symbol list shows.
    pub bpf_hook_hidden: bool,
    /// XDP attached by a link that link_idr does not show.
    pub bpf_link_hidden: bool,
    /// `kit_hidden` (needs `bpf_hidden`) on a uprobe PMU event on sshd.
    pub bpf_uprobe: bool,
    pub orphan_code: bool,
    /// kill's ftrace site calls the trampoline of the kit's ftrace ops
    /// (needs `ftrace`): an ftrace hook, as ftrace-based rootkits make.
    pub traced_entry: bool,
}

impl Plant {
    pub fn all() -> Plant {
        Plant {
            hidden_module: true,
            table_hook: true,
            dispatch_hook: true,
            idt_hook: true,
            keyboard: true,
            netfilter: true,
            ftrace: true,
            hidden_task: true,
            taint: true,
            oops: true,
            afinfo_hook: true,
            tty_hook: true,
            tracepoint: true,
            bpf: true,
            bpf_hidden: true,
            bpf_hook_hidden: true,
            bpf_link_hidden: true,
            bpf_uprobe: true,
            orphan_code: true,
            traced_entry: false,
        }
    }
}

pub struct IntegrityKernel {
    pub mem: SynthMemory,
    pub isf: String,
}

fn d(pa: u64) -> u64 {
    DIRECT + pa
}

/// An address in the hidden module's text.
fn kit(off: u64) -> u64 {
    MODULES + KIT_TEXT + off
}

fn isf(drop_symbol: Option<&str>) -> String {
    let base = |n: &str| json!({"kind": "base", "name": n});
    let ptr = |n: &str| json!({"kind": "pointer", "subtype": {"kind": "struct", "name": n}});
    let st = |n: &str| json!({"kind": "struct", "name": n});
    let arr = |c: u64, e: Value| json!({"kind": "array", "count": c, "subtype": e});
    let (u16t, u32t, i32t) = (
        base("short unsigned int"),
        base("unsigned int"),
        base("int"),
    );
    let vp = json!({"kind": "pointer", "subtype": {"kind": "base", "name": "void"}});
    let mut types = json!({
        "list_head": ty(16, &[("next", 0, ptr("list_head")), ("prev", 8, ptr("list_head"))]),
        "module": ty(0x400, &[("list", 8, st("list_head")), ("name", 0x18, arr(56, base("char"))),
            ("mkobj", 0x50, st("module_kobject")), ("mem", 0x100, arr(7, st("module_memory"))),
            ("num_tracepoints", tracing::MODULE_NUM_TRACEPOINTS, u32t.clone()),
            ("tracepoints_ptrs", tracing::MODULE_TRACEPOINTS_PTRS,
                json!({"kind": "pointer", "subtype": i32t.clone()}))]),
        "module_memory": ty(0x38, &[("base", 0, vp.clone()), ("size", 8, u32t.clone())]),
        "module_kobject": ty(0x60, &[("kobj", 0, st("kobject")), ("mod", 0x40, ptr("module"))]),
        "kobject": ty(0x40, &[("name", 0, vp.clone()), ("entry", 8, st("list_head"))]),
        "kset": ty(0x60, &[("list", 0, st("list_head"))]),
        "mod_tree_root": ty(0x40, &[("root", 0, st("latch_tree_root")),
            ("addr_min", 0x30, vp.clone()), ("addr_max", 0x38, vp.clone())]),
        "latch_tree_root": ty(0x28, &[("tree", 8, arr(2, st("rb_root")))]),
        "rb_root": ty(8, &[("rb_node", 0, ptr("rb_node"))]),
        "rb_node": ty(0x18, &[("rb_right", 8, ptr("rb_node")), ("rb_left", 0x10, ptr("rb_node"))]),
        "mod_tree_node": ty(0x38, &[("mod", 0, ptr("module")), ("node", 8, st("latch_tree_node"))]),
        "latch_tree_node": ty(0x30, &[("node", 0, arr(2, st("rb_node")))]),
        "atomic_notifier_head": ty(0x10, &[("head", 8, ptr("notifier_block"))]),
        "notifier_block": ty(0x18, &[("notifier_call", 0, vp.clone()), ("next", 8, ptr("notifier_block")),
            ("priority", 0x10, i32t)]),
        "net": ty(0x1000, &[("list", 0x10, st("list_head")), ("ns", 0x80, st("ns_common")),
            ("dev_base_head", bpf_hooks::NET_DEVICES, st("list_head")),
            ("nf", 0x200, st("netns_nf"))]),
        "ns_common": ty(0x18, &[("inum", 0x10, u32t)]),
        "netns_nf": ty(0x50, &[("hooks_ipv4", 0, arr(5, vp.clone())), ("hooks_ipv6", 0x28, arr(5, vp.clone()))]),
        "nf_hook_entries": ty(8, &[("num_hook_entries", 0, u16t), ("hooks", 8, arr(0, st("nf_hook_entry")))]),
        "nf_hook_entry": ty(16, &[("hook", 0, vp.clone()), ("priv", 8, vp.clone())]),
        "ftrace_ops": ty(0xb8, &[("func", 0, vp.clone()), ("next", 8, ptr("ftrace_ops")),
            ("func_hash", 0x58, ptr("ftrace_ops_hash")), ("trampoline", 0x90, vp.clone()),
            ("trampoline_size", 0x98, base("long unsigned int"))]),
        "ftrace_ops_hash": ty(0x30, &[("filter_hash", 8, ptr("ftrace_hash"))]),
        "ftrace_hash": ty(0x30, &[("size_bits", 0, base("long unsigned int")), ("buckets", 8, vp.clone())]),
        "ftrace_func_entry": ty(0x20, &[("ip", 0x10, base("long unsigned int"))]),
        "kprobe": ty(0x80, &[("hlist", 0, vp.clone()), ("addr", 0x28, vp.clone()),
            ("pre_handler", 0x40, vp.clone()), ("post_handler", 0x48, vp)]),
    });
    if let Some(t) = types.as_object_mut() {
        checks::types(t);
        tracing::types(t);
        bpf::types(t);
        bpf_hooks::types(t);
        bpf_events::types(t);
        modspace::types(t);
    }
    let mut symbols = serde_json::Map::new();
    let mut sym = |n: &str, a: u64| {
        if Some(n) != drop_symbol {
            symbols.insert(n.into(), json!({"address": a}));
        }
    };
    sym("_stext", TEXT);
    sym("_etext", TEXT + 0x1_0000);
    sym("__x64_sys_read", TEXT + READ);
    sym("__x64_sys_write", TEXT + WRITE);
    sym("__x64_sys_kill", TEXT + KILL);
    sym("__x64_sys_ni_syscall", TEXT + NI);
    sym("asm_exc_divide_error", TEXT + EXC);
    sym("apparmor_ip_postroute", TEXT + NF_HOOK);
    sym("x64_sys_call", TEXT + DISPATCH);
    sym("__pfx_x64_sys_call_end", TEXT + DISPATCH + 0x100);
    sym("sys_call_table", d(TABLE));
    sym("vdso_mapping", d(TABLE + TABLE_LEN * 8));
    sym("idt_table", d(IDT));
    sym("modules", d(MODULES_HEAD));
    sym("module_kset", d(KSET_PTR));
    sym("mod_tree", d(MOD_TREE));
    sym("keyboard_notifier_list", d(KBD));
    sym("net_namespace_list", d(NETNS_HEAD));
    sym("init_task", d(INIT_TASK));
    sym("ftrace_ops_list", d(FTRACE_LIST));
    sym("ftrace_list_end", d(FTRACE_END));
    sym("kprobe_table", d(KPROBES));
    checks::symbols(&mut sym);
    tracing::symbols(&mut sym);
    bpf::symbols(&mut sym);
    bpf_hooks::symbols(&mut sym);
    bpf_events::symbols(&mut sym);
    modspace::symbols(&mut sym);
    json!({
        "metadata": {"format": "6.2.0"},
        "base_types": super::base_types(),
        "user_types": types,
        "enums": {},
        "symbols": symbols,
    })
    .to_string()
}

fn rel32(from_next: u64, to: u64) -> [u8; 4] {
    (to.wrapping_sub(from_next) as i64 as i32).to_le_bytes()
}

/// `x64_sys_call`: per number, `cmp esi, NR; jne next; jmp HANDLER`, then
/// the default `jmp ni`.
fn dispatcher(cases: &[(u32, u64)], ni: u64) -> Vec<u8> {
    let mut code = vec![0x0f, 0x1f, 0x44, 0x00, 0x00];
    for &(nr, target) in cases {
        code.extend([0x81, 0xfe]);
        code.extend(nr.to_le_bytes());
        code.extend([0x0f, 0x85, 0x05, 0x00, 0x00, 0x00]);
        let next = TEXT + DISPATCH + code.len() as u64 + 5;
        code.push(0xe9);
        code.extend(rel32(next, target));
    }
    let next = TEXT + DISPATCH + code.len() as u64 + 5;
    code.push(0xe9);
    code.extend(rel32(next, ni));
    code
}

/// Where each synthetic module keeps its `mod_tree_node` (offset in its
/// struct); the tree's rb_node for tree 0 is 8 bytes in.
const MTN: u64 = 0x300;

/// Writes a module: struct at `m` (module-space offset), one text region.
fn module(mem: &mut SynthMemory, m: u64, name: &str, text: u64, list: (u64, u64)) {
    let pa = MODULES_PA + m;
    mem.write_u64(pa + 8, list.0);
    mem.write_u64(pa + 0x10, list.1);
    mem.write(pa + 0x18, name.as_bytes());
    mem.write_u64(pa + 0x50 + 0x40, MODULES + m); // mkobj.mod
    mem.write_u64(pa + 0x100, MODULES + text);
    mem.write(pa + 0x108, &0x1000u32.to_le_bytes());
    mem.write_u64(pa + 0x100 + 0x38, MODULES + m - (m & 0xfff)); // data region
    mem.write(pa + 0x108 + 0x38, &0x1000u32.to_le_bytes());
    mem.write_u64(pa + MTN, MODULES + m); // mod_tree_node.mod
}

/// Builds the kernel; `drop_symbol` leaves one symbol out of the profile.
pub fn build(plant: Plant, drop_symbol: Option<&str>) -> IntegrityKernel {
    let mut m = SynthMemory::new(0x40_0000, 0x40_0000, false);
    for pa in (0..0x20_0000).step_by(0x20_0000) {
        m.map(d(pa), pa, 0x20_0000);
    }
    m.map_range(TEXT, TEXT_PA, 0x1_0000);
    m.map_range(MODULES, MODULES_PA, 0x3_0000);
    m.map_range(MODULES + bpf::JIT_PACK, MODULES_PA + bpf::JIT_PACK, 0x1000);
    let text = |off: u64| TEXT_PA + off;
    for h in [READ, WRITE, KILL, NI, EXC, NF_HOOK] {
        m.write(text(h), &[0x0f, 0x1f, 0x44, 0x00, 0x00, 0xc3]);
    }
    m.write(MODULES_PA + KIT_TEXT, &[0xc3; 0x200]);
    if plant.traced_entry {
        // kill's ftrace site calls the trampoline page.
        let rel = (MODULES + modspace::KIT_TRAMPOLINE).wrapping_sub(TEXT + KILL + 5) as u32;
        let mut call = vec![0xe8];
        call.extend_from_slice(&rel.to_le_bytes());
        m.write(text(KILL), &call);
    }
    let kill_target = if plant.dispatch_hook {
        kit(0x10)
    } else {
        TEXT + KILL
    };
    let code = dispatcher(
        &[(0, TEXT + READ), (1, TEXT + WRITE), (62, kill_target)],
        TEXT + NI,
    );
    m.write(text(DISPATCH), &code);
    for nr in 0..TABLE_LEN {
        let h = match nr {
            0 => TEXT + READ,
            1 => TEXT + WRITE,
            62 if plant.table_hook => kit(0x20),
            62 => TEXT + KILL,
            _ => TEXT + NI,
        };
        m.write_u64(TABLE + nr * 8, h);
    }
    for v in 0..256u64 {
        let h = if plant.idt_hook && v == 3 {
            kit(0x30)
        } else {
            TEXT + EXC
        };
        let g = IDT + v * 16;
        m.write(g, &(h as u16).to_le_bytes());
        m.write(g + 2, &0x10u16.to_le_bytes());
        m.write(g + 4, &0x8e00u16.to_le_bytes());
        m.write(g + 6, &((h >> 16) as u16).to_le_bytes());
        m.write(g + 8, &((h >> 32) as u32).to_le_bytes());
    }
    // The module list holds the good module only.
    let head = d(MODULES_HEAD);
    let good_list = MODULES + GOOD + 8;
    m.write_u64(MODULES_HEAD, good_list);
    m.write_u64(MODULES_HEAD + 8, good_list);
    module(&mut m, GOOD, "e1000", GOOD_TEXT, (head, head));
    // sysfs: both modules' kobjects in the kset.
    m.write_u64(KSET_PTR, d(KSET));
    let entry = |mm: u64| MODULES + mm + 0x50 + 8;
    let mut kobjs = vec![entry(GOOD)];
    if plant.hidden_module {
        let poison = (0xdead_0000_0000_0100, 0xdead_0000_0000_0122);
        module(&mut m, KIT, KIT_NAME, KIT_TEXT, poison);
        kobjs.push(entry(KIT));
    }
    let ring: Vec<u64> = std::iter::once(d(KSET)).chain(kobjs).collect();
    let n = ring.len();
    for (i, &node) in ring.iter().enumerate() {
        let next = ring.get((i + 1) % n).copied().unwrap_or(node);
        let prev = ring.get((i + n - 1) % n).copied().unwrap_or(node);
        let pa = if node >= MODULES {
            node - MODULES + MODULES_PA
        } else {
            node - DIRECT
        };
        m.write_u64(pa, next);
        m.write_u64(pa + 8, prev);
    }
    // mod_tree: the good module's node at the root, the hidden one's (a
    // list_del leaves it there) its right child.
    m.write_u64(MOD_TREE + 8, MODULES + GOOD + MTN + 8);
    if plant.hidden_module {
        m.write_u64(MODULES_PA + GOOD + MTN + 8 + 8, MODULES + KIT + MTN + 8);
    }
    m.write_u64(MOD_TREE + 0x30, MODULES);
    m.write_u64(MOD_TREE + 0x38, MODULES + 0x3_0000);
    if plant.keyboard {
        m.write_u64(KBD + 8, MODULES + KIT_NOTIFIER);
        m.write_u64(MODULES_PA + KIT_NOTIFIER, kit(0x40));
    }
    // One network namespace with a hook array for IPv4 POST_ROUTING.
    m.write_u64(NETNS_HEAD, d(NET) + 0x10);
    m.write_u64(NETNS_HEAD + 8, d(NET) + 0x10);
    m.write_u64(NET + 0x10, d(NETNS_HEAD));
    m.write_u64(NET + 0x18, d(NETNS_HEAD));
    m.write(NET + 0x90, &4_026_531_840u32.to_le_bytes());
    m.write_u64(NET + 0x200 + 4 * 8, d(NF_ENTRIES));
    let hooks: Vec<u64> = std::iter::once(TEXT + NF_HOOK)
        .chain(plant.netfilter.then(|| kit(0x50)))
        .collect();
    m.write(NF_ENTRIES, &(hooks.len() as u16).to_le_bytes());
    for (i, h) in hooks.iter().enumerate() {
        m.write_u64(NF_ENTRIES + 8 + 16 * i as u64, *h);
    }
    // ftrace: the list ends at ftrace_list_end, or first holds the kit's
    // ops (no filter: it traces everything); kprobe_table stays empty.
    let first = if plant.ftrace {
        m.write_u64(MODULES_PA + KIT_FTRACE_OPS, kit(0x60));
        m.write_u64(MODULES_PA + KIT_FTRACE_OPS + 8, d(FTRACE_END));
        if plant.traced_entry {
            let trampoline = MODULES + modspace::KIT_TRAMPOLINE;
            m.write_u64(MODULES_PA + KIT_FTRACE_OPS + 0x90, trampoline);
            m.write_u64(MODULES_PA + KIT_FTRACE_OPS + 0x98, 0x100);
        }
        MODULES + KIT_FTRACE_OPS
    } else {
        d(FTRACE_END)
    };
    m.write_u64(FTRACE_LIST, first);
    checks::write(&mut m, &plant);
    tracing::write(&mut m, &plant);
    bpf::write(&mut m, &plant, d(tracing::TP_EXEC));
    bpf_hooks::write(&mut m, &plant);
    bpf_events::write(&mut m, &plant);
    modspace::write(&mut m, &plant);
    IntegrityKernel {
        mem: m,
        isf: isf(drop_symbol),
    }
}
