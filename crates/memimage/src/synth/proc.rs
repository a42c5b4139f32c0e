//! A small kernel with one user process, for the process and network
//! plugins: a bash task with files (a TCP/IPv4, a UDP/IPv6 and a UNIX
//! socket), a file-backed text region with a path through a mount, heap,
//! stack and vDSO regions, history entries on the heap, an environment and
//! a login shell's command line (`-bash -i`), /usr/bin/bash as `exe_file`.
//! Its VMAs are in a maple tree, or (`maple == false`) in a `vm_next`
//! list. Every kernel object is in the direct map (VA = `DIRECT` + PA),
//! symbols are runtime addresses, so the kernel needs no KASLR search.

use super::{SynthMemory, ty};
use serde_json::{Value, json};

pub const DIRECT: u64 = 0xffff_8880_0000_0000;
pub const INIT_TASK: u64 = 0x1_0000;
pub const BASH: u64 = 0x1_1000;
pub const HEAP: u64 = 0x60_0000;
pub const STACK: u64 = 0x7ffd_0000_0000;
pub const VDSO: u64 = 0x7ffd_0001_0000;
pub const SOCKET_FILE_OPS: u64 = 0x7_0000;
pub const NETNS: u32 = 4_026_531_840;
/// The inode of /usr/bin/bash, bash's executable.
pub const BASH_INODE: u64 = 0x1_8000;

pub struct ProcKernel {
    pub mem: SynthMemory,
    pub isf: String,
}

fn d(pa: u64) -> u64 {
    DIRECT + pa
}

fn base(n: &str) -> Value {
    json!({"kind": "base", "name": n})
}
fn ptr(n: &str) -> Value {
    json!({"kind": "pointer", "subtype": {"kind": "struct", "name": n}})
}
fn st(n: &str) -> Value {
    json!({"kind": "struct", "name": n})
}
fn arr(count: u64, elem: Value) -> Value {
    json!({"kind": "array", "count": count, "subtype": elem})
}

fn isf(maple: bool) -> String {
    let (u8t, u16t, u32t, i32t, u64t, i64t) = (
        base("unsigned char"),
        base("short unsigned int"),
        base("unsigned int"),
        base("int"),
        base("long unsigned int"),
        base("long long int"),
    );
    let vp = json!({"kind": "pointer", "subtype": {"kind": "base", "name": "void"}});
    let mut mm = vec![
        ("pgd", 0x10, vp.clone()),
        ("arg_start", 0x20, u64t.clone()),
        ("arg_end", 0x28, u64t.clone()),
        ("start_brk", 0x30, u64t.clone()),
        ("brk", 0x38, u64t.clone()),
        ("start_stack", 0x40, u64t.clone()),
        ("env_start", 0x48, u64t.clone()),
        ("env_end", 0x50, u64t.clone()),
        ("context", 0x60, st("mm_context_t")),
        ("exe_file", 0x90, ptr("file")),
    ];
    let mut vma = vec![
        ("vm_start", 0, u64t.clone()),
        ("vm_end", 8, u64t.clone()),
        ("vm_flags", 0x20, u64t.clone()),
        ("vm_pgoff", 0x68, u64t.clone()),
        ("vm_file", 0x70, ptr("file")),
    ];
    if maple {
        mm.push(("mm_mt", 0x100, st("maple_tree")));
    } else {
        mm.push(("mmap", 0x100, ptr("vm_area_struct")));
        vma.push(("vm_next", 0x10, ptr("vm_area_struct")));
    }
    let types = json!({
        "list_head": ty(16, &[("next", 0, ptr("list_head")), ("prev", 8, ptr("list_head"))]),
        "task_struct": ty(0x200, &[
            ("tasks", 0x10, st("list_head")), ("pid", 0x20, i32t.clone()),
            ("tgid", 0x24, i32t.clone()), ("parent", 0x28, ptr("task_struct")),
            ("real_parent", 0x30, ptr("task_struct")),
            ("comm", 0x38, arr(16, base("char"))), ("cred", 0x48, ptr("cred")),
            ("real_cred", 0x50, ptr("cred")), ("mm", 0x58, ptr("mm_struct")),
            ("files", 0x60, ptr("files_struct")), ("start_boottime", 0x68, u64t.clone()),
            ("thread_group", 0x70, st("list_head")), ("signal", 0x80, vp.clone()),
            ("fs", 0x88, ptr("fs_struct")), ("nsproxy", 0x90, ptr("nsproxy")),
            ("flags", 0x98, u32t.clone()),
        ]),
        "cred": ty(0x20, &[("uid", 4, u32t.clone()), ("gid", 8, u32t.clone()),
            ("euid", 0x14, u32t.clone()), ("egid", 0x18, u32t.clone())]),
        "mm_struct": ty(0x200, &mm),
        "mm_context_t": ty(0x20, &[("vdso", 8, vp.clone())]),
        "maple_tree": ty(0x18, &[("ma_root", 8, vp.clone()), ("ma_flags", 0x10, u32t.clone())]),
        "maple_node": ty(256, &[("slot", 8, arr(31, vp.clone())),
            ("mr64", 0, st("maple_range_64")), ("ma64", 0, st("maple_arange_64"))]),
        "maple_range_64": ty(256, &[("pivot", 8, arr(15, u64t.clone())), ("slot", 128, arr(16, vp.clone()))]),
        "maple_arange_64": ty(248, &[("pivot", 8, arr(9, u64t.clone())), ("slot", 80, arr(10, vp.clone()))]),
        "vm_area_struct": ty(0x98, &vma),
        "file": ty(0xe8, &[("f_path", 0x10, st("path")), ("f_inode", 0x20, ptr("inode")),
            ("f_op", 0x28, vp.clone())]),
        "path": ty(16, &[("mnt", 0, ptr("vfsmount")), ("dentry", 8, ptr("dentry"))]),
        "dentry": ty(0xc0, &[("d_parent", 0x18, ptr("dentry")), ("d_name", 0x20, st("qstr")),
            ("d_inode", 0x30, ptr("inode")), ("d_op", 0x60, ptr("dentry_operations"))]),
        "qstr": ty(16, &[("len", 4, u32t.clone()), ("name", 8, vp.clone())]),
        "dentry_operations": ty(0x80, &[("d_dname", 0x48, vp.clone())]),
        "inode": ty(0x278, &[("i_sb", 0x28, ptr("super_block")), ("i_ino", 0x40, u64t.clone()),
            ("i_nlink", 0x48, u32t.clone()), ("i_size", 0x50, i64t),
            ("i_count", 0x158, st("atomic_t"))]),
        "atomic_t": ty(4, &[("counter", 0, i32t.clone())]),
        "super_block": ty(0x100, &[("s_dev", 0x10, u32t.clone())]),
        "vfsmount": ty(0x20, &[("mnt_root", 0, ptr("dentry"))]),
        "mount": ty(0x140, &[("mnt_parent", 0x10, ptr("mount")),
            ("mnt_mountpoint", 0x18, ptr("dentry")), ("mnt", 0x20, st("vfsmount"))]),
        "fs_struct": ty(0x38, &[("root", 0x18, st("path"))]),
        "files_struct": ty(0x2c0, &[("fdt", 0x20, ptr("fdtable"))]),
        "fdtable": ty(0x38, &[("max_fds", 0, u32t.clone()), ("fd", 8, vp.clone())]),
        "socket_alloc": ty(0x300, &[("socket", 0, st("socket")), ("vfs_inode", 0x80, st("inode"))]),
        "socket": ty(0x80, &[("state", 0, json!({"kind": "enum", "name": "unnamed_state"})),
            ("type", 4, base("short int")), ("file", 0x10, ptr("file")), ("sk", 0x18, ptr("sock"))]),
        "sock": ty(0x308, &[("__sk_common", 0, st("sock_common")), ("sk_type", 0x202, u16t.clone()),
            ("sk_protocol", 0x204, u16t.clone()), ("sk_socket", 0x270, ptr("socket"))]),
        "sock_common": ty(0x88, &[("skc_daddr", 0, u32t.clone()), ("skc_rcv_saddr", 4, u32t.clone()),
            ("skc_portpair", 0xc, u32t.clone()), ("skc_dport", 0xc, u16t.clone()),
            ("skc_num", 0xe, u16t.clone()), ("skc_family", 0x10, u16t.clone()),
            ("skc_state", 0x12, u8t), ("skc_v6_daddr", 0x38, st("in6_addr")),
            ("skc_v6_rcv_saddr", 0x48, st("in6_addr"))]),
        "in6_addr": ty(16, &[]),
        "inet_sock": ty(0x3e0, &[("sk", 0, st("sock")), ("pinet6", 0x308, ptr("ipv6_pinfo")),
            ("inet_sport", 0x324, u16t)]),
        "ipv6_pinfo": ty(0xa0, &[("saddr", 0, st("in6_addr"))]),
        "unix_sock": ty(0x400, &[("sk", 0, st("sock")), ("addr", 0x308, ptr("unix_address")),
            ("peer", 0x360, ptr("sock"))]),
        "unix_address": ty(8, &[("len", 4, i32t), ("name", 8, arr(0, st("sockaddr_un")))]),
        "sockaddr_un": ty(110, &[("sun_path", 2, arr(108, base("char")))]),
        "nsproxy": ty(0x48, &[("net_ns", 0x28, ptr("net"))]),
        "net": ty(0x1000, &[("ns", 0x80, st("ns_common"))]),
        "ns_common": ty(0x18, &[("inum", 0x10, u32t)]),
    });
    json!({
        "metadata": {"format": "6.2.0"},
        "base_types": super::base_types(),
        "user_types": types,
        "enums": {},
        "symbols": {
            "init_task": {"address": d(INIT_TASK)},
            "socket_file_ops": {"address": d(SOCKET_FILE_OPS)}
        }
    })
    .to_string()
}

/// The kernel's own page tables map the first 4 MiB at `DIRECT`; the
/// bash process gets a second address space.
pub fn build(maple: bool) -> ProcKernel {
    let mut m = SynthMemory::new(0x40_0000, 0x40_0000, false);
    for pa in (0..0x40_0000).step_by(0x20_0000) {
        m.map(d(pa), pa, 0x20_0000);
    }
    let w64 = |m: &mut SynthMemory, pa: u64, v: u64| m.write_u64(pa, v);
    let w32 = |m: &mut SynthMemory, pa: u64, v: u32| m.write(pa, &v.to_le_bytes());
    let w16 = |m: &mut SynthMemory, pa: u64, v: u16| m.write(pa, &v.to_le_bytes());
    // Tasks: init_task <-> bash in the tasks ring, each its own thread group.
    for (t, pid, comm, next) in [
        (INIT_TASK, 0u32, "swapper/0", BASH),
        (BASH, 100, "bash", INIT_TASK),
    ] {
        w64(&mut m, t + 0x10, d(next) + 0x10);
        w64(&mut m, t + 0x18, d(next) + 0x10);
        w32(&mut m, t + 0x20, pid);
        w32(&mut m, t + 0x24, pid);
        w64(&mut m, t + 0x28, d(INIT_TASK));
        w64(&mut m, t + 0x30, d(INIT_TASK)); // real_parent
        w64(&mut m, t + 0x80, d(0x1_2800)); // signal
        m.write(t + 0x38, comm.as_bytes());
        w64(&mut m, t + 0x48, d(0x1_2000));
        w64(&mut m, t + 0x70, d(t) + 0x70);
        w64(&mut m, t + 0x78, d(t) + 0x70);
    }
    let (mm, files, fs, nsproxy) = (0x1_3000u64, 0x1_4000u64, 0x1_5000u64, 0x1_6000u64);
    w64(&mut m, BASH + 0x58, d(mm));
    w64(&mut m, BASH + 0x60, d(files));
    w64(&mut m, BASH + 0x88, d(fs));
    w64(&mut m, BASH + 0x90, d(nsproxy));
    w64(&mut m, nsproxy + 0x28, d(0x1_6100));
    w32(&mut m, 0x1_6100 + 0x80 + 0x10, NETNS);

    // Paths: "/" (root dentry of the only mount), /usr/bin/bash.
    let (mnt, root, usr, bin, bash_d) = (
        0x1_7000u64,
        0x1_7200u64,
        0x1_7300u64,
        0x1_7400u64,
        0x1_7500u64,
    );
    w64(&mut m, mnt + 0x10, d(mnt)); // mnt_parent = itself
    w64(&mut m, mnt + 0x20, d(root)); // mnt.mnt_root
    let vfsmnt = d(mnt) + 0x20;
    w64(&mut m, fs + 0x18, vfsmnt);
    w64(&mut m, fs + 0x20, d(root));
    let names = 0x1_7800u64;
    for (i, (de, parent, name)) in [
        (root, root, "/"),
        (usr, root, "usr"),
        (bin, usr, "bin"),
        (bash_d, bin, "bash"),
    ]
    .into_iter()
    .enumerate()
    {
        let n = names + 0x20 * i as u64;
        m.write(n, name.as_bytes());
        w64(&mut m, de + 0x18, d(parent));
        w32(&mut m, de + 0x20 + 4, name.len() as u32);
        w64(&mut m, de + 0x20 + 8, d(n));
    }
    let (inode, sb) = (BASH_INODE, 0x1_8400u64);
    w64(&mut m, bash_d + 0x30, d(inode));
    w64(&mut m, inode + 0x28, d(sb));
    w64(&mut m, inode + 0x40, 42);
    w32(&mut m, inode + 0x48, 1);
    w64(&mut m, inode + 0x50, 0x10_0000);
    w32(&mut m, inode + 0x158, 1);
    w32(&mut m, sb + 0x10, (8 << 20) | 1);
    let text_file = 0x1_8800u64;
    w64(&mut m, text_file + 0x10, vfsmnt);
    w64(&mut m, text_file + 0x18, d(bash_d));
    w64(&mut m, text_file + 0x20, d(inode));
    w64(&mut m, mm + 0x90, d(text_file));

    // Address space: heap pages 0 and 1 mapped, page 2 not; stack; vDSO.
    let proot = m.new_root();
    w64(&mut m, mm + 0x10, d(proot));
    m.map_in(proot, HEAP, 0x20_0000, 0x1000);
    m.map_in(proot, HEAP + 0x1000, 0x20_1000, 0x1000);
    m.map_in(proot, STACK, 0x20_4000, 0x1000);
    m.map_in(proot, STACK + 0x1000, 0x20_5000, 0x1000);
    m.map_in(proot, VDSO, 0x20_6000, 0x1000);
    w64(&mut m, mm + 0x30, HEAP);
    w64(&mut m, mm + 0x38, HEAP + 0x3000);
    w64(&mut m, mm + 0x40, STACK + 0x1800);
    let env = b"HOME=/root\0LANG=C.UTF-8\0";
    m.write(0x20_5000, env);
    w64(&mut m, mm + 0x48, STACK + 0x1000);
    w64(&mut m, mm + 0x50, STACK + 0x1000 + env.len() as u64);
    w64(&mut m, mm + 0x60 + 8, VDSO);
    let argv = b"-bash\0-i\0";
    m.write(0x20_4f00, argv);
    w64(&mut m, mm + 0x20, STACK + 0xf00);
    w64(&mut m, mm + 0x28, STACK + 0xf00 + argv.len() as u64);
    // History: HIST_ENTRY {line, timestamp, data} at heap+0x300 and +0x318,
    // a decoy with a short timestamp at +0x330.
    let h = 0x20_0000u64;
    m.write(h + 0x100, b"#1700000000\0");
    m.write(h + 0x120, b"#1600000000\0");
    m.write(h + 0x140, b"#12\0");
    m.write(h + 0x200, b"ls -la /root\0");
    m.write(h + 0x220, b"echo older\0");
    for (at, line, ts) in [
        (0x300u64, 0x200u64, 0x100u64),
        (0x318, 0x220, 0x120),
        (0x330, 0x200, 0x140),
    ] {
        w64(&mut m, h + at, HEAP + line);
        w64(&mut m, h + at + 8, HEAP + ts);
    }

    // VMAs: text (file), heap, stack, vDSO, and one smeared (odd length).
    let vmas: Vec<(u64, u64, u64, u64, u64)> = vec![
        (0x40_0000, 0x40_2000, 0x5, 1, d(text_file)),
        (HEAP, HEAP + 0x3000, 0x3, 0, 0),
        (0x70_0000, 0x70_0123, 0x3, 0, 0),
        (STACK, STACK + 0x2000, 0x3, 0, 0),
        (VDSO, VDSO + 0x1000, 0x5, 0, 0),
    ];
    let vma_pa = |i: usize| 0x2_1000 + 0x100 * i as u64;
    for (i, &(s, e, fl, pg, file)) in vmas.iter().enumerate() {
        let v = vma_pa(i);
        w64(&mut m, v, s);
        w64(&mut m, v + 8, e);
        w64(&mut m, v + 0x20, fl);
        w64(&mut m, v + 0x68, pg);
        w64(&mut m, v + 0x70, file);
    }
    let tree = mm + 0x100;
    if maple {
        // Root arange64 node with two leaf64 children and one child whose
        // parent word is wrong (ignored, with the VMA it holds).
        let (a, b, c, bad) = (0x2_0000u64, 0x2_0100u64, 0x2_0200u64, 0x2_0300u64);
        let enode = |pa: u64, t: u64| d(pa) | (t << 3) | 0x6;
        w64(&mut m, tree + 8, enode(a, 3));
        w32(&mut m, tree + 0x10, 2 << 2);
        w64(&mut m, a, (d(tree) & !0xff) | 1);
        w64(&mut m, a + 80, enode(b, 1));
        w64(&mut m, a + 88, enode(c, 1));
        w64(&mut m, a + 96, enode(bad, 1));
        for (node, slots) in [
            (b, vec![d(vma_pa(0)), 0x406, d(vma_pa(1))]),
            (c, vec![d(vma_pa(2)), d(vma_pa(3)), d(vma_pa(4))]),
        ] {
            w64(&mut m, node, d(a) | 0x10);
            for (i, s) in slots.into_iter().enumerate() {
                w64(&mut m, node + 128 + 8 * i as u64, s);
            }
        }
        w64(&mut m, bad, d(0x3_0000));
        w64(&mut m, bad + 128, d(vma_pa(0)));
    } else {
        w64(&mut m, tree, d(vma_pa(0)));
        for i in 0..vmas.len() {
            // The last one points back at the first: a cycle to stop at.
            let next = if i + 1 < vmas.len() {
                vma_pa(i + 1)
            } else {
                vma_pa(0)
            };
            w64(&mut m, vma_pa(i) + 0x10, d(next));
        }
    }

    // Descriptors: 0 the bash binary, 1 TCP/IPv4, 2 UDP/IPv6, 3 UNIX,
    // 7 a pointer into nothing.
    let (fdt, fdarr) = (files + 0x100, files + 0x200);
    w64(&mut m, files + 0x20, d(fdt));
    w32(&mut m, fdt, 8);
    w64(&mut m, fdt + 8, d(fdarr));
    w64(&mut m, fdarr, d(text_file));
    w64(&mut m, fdarr + 7 * 8, DIRECT + 0x3f_fff0_0000);
    // sock(file at F, socket_alloc at A, sock at S, inode number)
    let sock = |m: &mut SynthMemory, fd: u64, f: u64, a: u64, s: u64, ino: u64, state: u32| {
        w64(m, fdarr + fd * 8, d(f));
        w64(m, f + 0x28, d(SOCKET_FILE_OPS));
        w64(m, f + 0x18, d(f + 0x100)); // f_path.dentry
        w64(m, f + 0x100 + 0x30, d(a) + 0x80); // d_inode = &vfs_inode
        w64(m, a + 0x80 + 0x40, ino);
        w32(m, a, state);
        w64(m, a + 0x18, d(s));
        w64(m, s + 0x270, d(a));
    };
    // TCP 10.0.0.1:22 -> 10.0.0.2:50000, established.
    let s4 = 0x3_1000u64;
    sock(&mut m, 1, 0x3_0000, 0x3_0400, s4, 5001, 3);
    w16(&mut m, s4 + 0x10, 2);
    w16(&mut m, s4 + 0x202, 1);
    w16(&mut m, s4 + 0x204, 6);
    m.write(s4 + 0x12, &[1]);
    m.write(s4 + 4, &[10, 0, 0, 1]);
    m.write(s4, &[10, 0, 0, 2]);
    m.write(s4 + 0x324, &22u16.to_be_bytes());
    m.write(s4 + 0xc, &50000u16.to_be_bytes());
    // UDP [::1]:53, unconnected.
    let s6 = 0x3_3000u64;
    sock(&mut m, 2, 0x3_2000, 0x3_2400, s6, 5002, 1);
    w16(&mut m, s6 + 0x10, 10);
    w16(&mut m, s6 + 0x202, 2);
    w16(&mut m, s6 + 0x204, 17);
    w64(&mut m, s6 + 0x308, d(0x3_4000));
    m.write(0x3_4000 + 15, &[1]);
    m.write(s6 + 0x324, &53u16.to_be_bytes());
    // UNIX stream listening on /run/x.sock; its peer is abstract "@abs".
    let su = 0x3_6000u64;
    sock(&mut m, 3, 0x3_5000, 0x3_5400, su, 5003, 1);
    w16(&mut m, su + 0x10, 1);
    w16(&mut m, su + 0x202, 1);
    m.write(su + 0x12, &[10]);
    w64(&mut m, su + 0x308, d(0x3_7000));
    m.write(0x3_7000 + 8 + 2, b"/run/x.sock\0");
    let peer = 0x3_8000u64;
    w64(&mut m, su + 0x360, d(peer));
    w64(&mut m, peer + 0x308, d(0x3_7100));
    m.write(0x3_7100 + 8 + 2, b"\0abs\0");
    w64(&mut m, peer + 0x270, d(0x3_9000));
    w64(&mut m, 0x3_9000 + 0x80 + 0x40, 5004);

    ProcKernel {
        mem: m,
        isf: isf(maple),
    }
}
