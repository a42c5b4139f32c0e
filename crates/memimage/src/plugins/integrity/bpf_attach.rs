//! Where eBPF programs are attached, read from the hooks themselves: the
//! lists each hook runs. A program attached by the older interfaces
//! (`BPF_PROG_ATTACH`, netlink XDP, the perf ioctl, tc's cls_bpf,
//! `SO_ATTACH_BPF`) has no link, so `link_idr` cannot say where it runs;
//! a link's attachment is here too, and one whose link `link_idr` lacks
//! was hidden from it.

use super::bpf_events;
use super::bpf_names::{cgroup_hook, netns_hook};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::tasks::walk_list;
use crate::plugins::util::{array_field, kernel_cstr, lossy, ptr, soft};
use crate::profile::TypeRef;
use std::collections::HashSet;

/// A systemd host has a few hundred cgroups; more than this is a loop.
const MAX_CGROUPS: usize = 100_000;
/// Programs one hook may run (`BPF_MPROG_MAX`, and cgroups' limit).
pub(super) const MAX_PER_HOOK: u64 = 64;
/// Net devices per namespace.
const MAX_DEVICES: usize = 65_536;
const XDP_MODES: [&str; 3] = ["generic", "driver", "offload"];

/// One program attached to one hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attachment {
    pub prog: u64,
    /// The link that attached it, when one did.
    pub link: Option<u64>,
    /// What it is attached to, e.g. `cgroup /system.slice (inet_egress)`.
    pub point: String,
}

/// How many of each hook's holders were looked at.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Looked {
    pub cgroups: usize,
    pub devices: usize,
    pub events: usize,
}

/// Every attachment the hooks hold. A hook the profile lacks is one the
/// kernel lacks (tcx before 6.6, perf programs without CONFIG_BPF_EVENTS);
/// a hook that could not be read is a line of `not_checked`.
pub(crate) fn gather(
    k: &Kernel<'_, '_>,
    not_checked: &mut Vec<String>,
) -> Result<(Vec<Attachment>, Looked), KernelError> {
    let mut out = Vec::new();
    let mut looked = Looked::default();
    let parts: [(&str, Walker); 4] = [
        ("cgroup eBPF attachments", cgroups),
        ("network device eBPF attachments", net_devices),
        ("perf event eBPF attachments", bpf_events::perf_events),
        ("uprobe event eBPF attachments", bpf_events::uprobe_events),
    ];
    for (what, walk) in parts {
        match walk(k, &mut out, &mut looked, not_checked) {
            Ok(()) => {}
            Err(e) if e.is_source_failure() => return Err(e),
            Err(e) => not_checked.push(format!("{what}: {e}")),
        }
    }
    Ok((out, looked))
}

type Walker = fn(
    &Kernel<'_, '_>,
    &mut Vec<Attachment>,
    &mut Looked,
    &mut Vec<String>,
) -> Result<(), KernelError>;

/// Element size of the per-hook list heads: `hlist_head` since 5.19,
/// `list_head` before.
fn head_size(k: &Kernel<'_, '_>, st: &str, field: &str) -> Result<u64, KernelError> {
    let f = k.profile.field(st, field)?;
    Ok(match &f.ty {
        TypeRef::Array { elem, .. } if **elem == TypeRef::Struct("list_head".into()) => 16,
        _ => 8,
    })
}

/// Entries of an `hlist_head` at `head` (node addresses).
fn hlist(k: &Kernel<'_, '_>, head: u64) -> Result<Vec<u64>, KernelError> {
    let mut out = Vec::new();
    let mut node = k.read_u64(head, || format!("hlist head at {head:#x}"))?;
    while node != 0 && out.len() < MAX_PER_HOOK as usize && !out.contains(&node) {
        out.push(node);
        node = k.read_u64(node, || format!("hlist node at {node:#x}"))?;
    }
    Ok(out)
}

/// The cgroup's path from the hierarchy's root, by its kernfs names.
pub(crate) fn cgroup_path(k: &Kernel<'_, '_>, cg: u64) -> Result<String, KernelError> {
    let parent = if k.profile.has_field("kernfs_node", "__parent") {
        "__parent"
    } else {
        "parent"
    };
    let mut parts = Vec::new();
    let mut kn = ptr(k, cg, "cgroup", "kn")?;
    while kn != 0 && parts.len() < 64 {
        let up = ptr(k, kn, "kernfs_node", parent)?;
        if up == 0 {
            break;
        }
        let name = ptr(k, kn, "kernfs_node", "name")?;
        parts.push(lossy(&kernel_cstr(k, name, 256)?));
        kn = up;
    }
    parts.reverse();
    Ok(format!("/{}", parts.join("/")))
}

/// cgroup v2 (the only hierarchy eBPF attaches to): every cgroup's
/// `bpf.progs[hook]`, a list of `bpf_prog_list` with a program or a link.
fn cgroups(
    k: &Kernel<'_, '_>,
    out: &mut Vec<Attachment>,
    looked: &mut Looked,
    notes: &mut Vec<String>,
) -> Result<(), KernelError> {
    let p = k.profile;
    let root = k
        .symbol("cgrp_dfl_root")?
        .wrapping_add(p.offset("cgroup_root", "cgrp")?);
    let css = p.offset("cgroup", "self")?;
    let children = p.offset("cgroup_subsys_state", "children")?;
    let sibling = p.offset("cgroup_subsys_state", "sibling")?;
    let bpf = p.offset("cgroup", "bpf")?;
    let (progs, hooks) = array_field(k, "cgroup_bpf", "progs")?;
    let size = head_size(k, "cgroup_bpf", "progs")?;
    let node = p.offset("bpf_prog_list", "node")?;
    let mut queue = vec![root];
    let mut seen = HashSet::new();
    while let Some(cg) = queue.pop() {
        if !seen.insert(cg) || seen.len() > MAX_CGROUPS {
            continue;
        }
        looked.cgroups += 1;
        let mut heads = vec![0u8; usize::try_from(hooks * size).unwrap_or(0)];
        let at = cg.wrapping_add(bpf + progs);
        if soft(k.read(at, &mut heads, || "cgroup.bpf.progs".into()))?.is_none() {
            notes.push(format!("the eBPF hooks of cgroup {cg:#x}: unreadable"));
            continue;
        }
        for (hook, head) in heads
            .chunks_exact(usize::try_from(size).unwrap_or(8))
            .enumerate()
        {
            let first = head.get(..8).and_then(|b| b.try_into().ok());
            let first = first.map_or(0, u64::from_le_bytes);
            let head_va = at.wrapping_add(hook as u64 * size);
            if first == 0 || first == head_va {
                continue;
            }
            let nodes = if size == 8 {
                hlist(k, head_va)?
            } else {
                walk_list(k, head_va, 0, "cgroup bpf progs")?
            };
            for n in nodes {
                let pl = n.wrapping_sub(node);
                let prog = ptr(k, pl, "bpf_prog_list", "prog")?;
                let link = ptr(k, pl, "bpf_prog_list", "link")?;
                let prog = if prog == 0 && link != 0 {
                    ptr(k, link, "bpf_link", "prog")?
                } else {
                    prog
                };
                if prog == 0 {
                    continue;
                }
                out.push(Attachment {
                    prog,
                    link: (link != 0).then_some(link),
                    point: format!(
                        "cgroup {} ({})",
                        cgroup_path(k, cg).unwrap_or_else(|_| format!("{cg:#x}")),
                        cgroup_hook(k, hook as u64)
                    ),
                });
            }
        }
        let head = cg.wrapping_add(css + children);
        if let Some(kids) = soft(walk_list(k, head, sibling, "cgroup children"))? {
            queue.extend(kids.into_iter().map(|c| c.wrapping_sub(css)));
        }
    }
    Ok(())
}

/// Every network namespace's own hooks (flow dissector, sk_lookup) and
/// every device's XDP, tcx and tc classifier programs.
fn net_devices(
    k: &Kernel<'_, '_>,
    out: &mut Vec<Attachment>,
    looked: &mut Looked,
    notes: &mut Vec<String>,
) -> Result<(), KernelError> {
    let p = k.profile;
    let nets = walk_list(
        k,
        k.symbol("net_namespace_list")?,
        p.offset("net", "list")?,
        "net_namespace_list",
    )?;
    let dev_list = p.offset("net_device", "dev_list")?;
    for net in nets {
        let inum = p
            .offset("net", "ns")
            .and_then(|ns| Ok(ns + p.offset("ns_common", "inum")?))
            .ok()
            .and_then(|o| k.vm.read_uint(net.wrapping_add(o), 4).ok())
            .map_or_else(|| "?".to_string(), |n| n.to_string());
        if let Ok((off, n)) = array_field(k, "netns_bpf", "progs") {
            let base = net.wrapping_add(p.offset("net", "bpf")? + off);
            for hook in 0..n.min(8) {
                let Some(prog) = soft(k.read_u64(base + hook * 8, || "netns_bpf.progs".into()))?
                else {
                    continue;
                };
                if prog != 0 {
                    out.push(Attachment {
                        prog,
                        link: None,
                        point: format!("{} in net namespace {inum}", netns_hook(k, hook)),
                    });
                }
            }
        }
        let head = net.wrapping_add(p.offset("net", "dev_base_head")?);
        let Some(devs) = soft(walk_list(k, head, dev_list, "net_device list"))? else {
            notes.push(format!("the devices of net namespace {inum}: unreadable"));
            continue;
        };
        for dev in devs.into_iter().take(MAX_DEVICES) {
            looked.devices += 1;
            let name = format!("{} (net namespace {inum})", device_name(k, dev)?);
            if soft(device(k, dev, &name, out))?.is_none() {
                notes.push(format!("the eBPF hooks of {name}: unreadable"));
            }
        }
    }
    Ok(())
}

fn device_name(k: &Kernel<'_, '_>, dev: u64) -> Result<String, KernelError> {
    let mut name = [0u8; 16];
    let off = k.profile.offset("net_device", "name")?;
    k.read(dev.wrapping_add(off), &mut name, || {
        "net_device.name".into()
    })?;
    let end = memchr::memchr(0, &name).unwrap_or(16);
    Ok(lossy(name.get(..end).unwrap_or_default()))
}

fn device(
    k: &Kernel<'_, '_>,
    dev: u64,
    name: &str,
    out: &mut Vec<Attachment>,
) -> Result<(), KernelError> {
    let p = k.profile;
    if let Ok((off, modes)) = array_field(k, "net_device", "xdp_state") {
        let size = p.struct_def("bpf_xdp_entity")?.size;
        for (mode, label) in XDP_MODES.iter().enumerate().take(modes as usize) {
            let e = dev.wrapping_add(off + mode as u64 * size);
            let prog = ptr(k, e, "bpf_xdp_entity", "prog")?;
            let link = ptr(k, e, "bpf_xdp_entity", "link")?;
            if prog != 0 {
                out.push(Attachment {
                    prog,
                    link: (link != 0).then_some(link),
                    point: format!("xdp ({label}) on {name}"),
                });
            }
        }
    } else if p.has_field("net_device", "xdp_prog") {
        let prog = ptr(k, dev, "net_device", "xdp_prog")?;
        (prog != 0).then(|| {
            out.push(Attachment {
                prog,
                link: None,
                point: format!("xdp (generic) on {name}"),
            })
        });
    }
    for dir in ["ingress", "egress"] {
        let tcx = format!("tcx_{dir}");
        let miniq = format!("miniq_{dir}");
        if p.has_field("net_device", &tcx) {
            let entry = ptr(k, dev, "net_device", &tcx)?;
            if entry != 0 {
                tcx_entry(k, entry, &format!("{tcx} on {name}"), out)?;
                let bundle = ptr(k, entry, "bpf_mprog_entry", "parent")?;
                let tcx = bundle.wrapping_sub(p.offset("tcx_entry", "bundle")?);
                let q = ptr(k, tcx, "tcx_entry", "miniq")?;
                cls_bpf(k, q, &format!("tc {dir} classifier on {name}"), out)?;
            }
        } else if p.has_field("net_device", &miniq) {
            let q = ptr(k, dev, "net_device", &miniq)?;
            cls_bpf(k, q, &format!("tc {dir} classifier on {name}"), out)?;
        }
    }
    Ok(())
}

/// A tcx hook's programs (`fp_items`, up to the first empty one), each
/// with its link from the bundle's matching `cp_items` slot.
fn tcx_entry(
    k: &Kernel<'_, '_>,
    entry: u64,
    point: &str,
    out: &mut Vec<Attachment>,
) -> Result<(), KernelError> {
    let p = k.profile;
    let (fp, n) = array_field(k, "bpf_mprog_entry", "fp_items")?;
    let fp_size = p.struct_def("bpf_mprog_fp")?.size.max(8);
    let bundle = ptr(k, entry, "bpf_mprog_entry", "parent")?;
    let (cp, _) = array_field(k, "bpf_mprog_bundle", "cp_items")?;
    let cp_size = p.struct_def("bpf_mprog_cp")?.size.max(8);
    for i in 0..n.min(MAX_PER_HOOK) {
        let prog = ptr(
            k,
            entry.wrapping_add(fp + i * fp_size),
            "bpf_mprog_fp",
            "prog",
        )?;
        if prog == 0 {
            break;
        }
        let link = ptr(
            k,
            bundle.wrapping_add(cp + i * cp_size),
            "bpf_mprog_cp",
            "link",
        )?;
        out.push(Attachment {
            prog,
            link: (link != 0).then_some(link),
            point: point.to_string(),
        });
    }
    Ok(())
}

/// tc's BPF classifier on a device's ingress or egress: the `mini_Qdisc`'s
/// filter chain, and in each `bpf` classifier its list of programs.
/// cls_bpf's types are its module's, in neither vmlinux's BTF nor its
/// DWARF; their leading members have not moved since 4.x
/// (`cls_bpf_head { list_head plist; ...}`, `cls_bpf_prog { bpf_prog
/// *filter; list_head link; ...}`), and what is read there must be a
/// program whose `aux` points back at it.
fn cls_bpf(
    k: &Kernel<'_, '_>,
    miniq: u64,
    point: &str,
    out: &mut Vec<Attachment>,
) -> Result<(), KernelError> {
    if miniq == 0 {
        return Ok(());
    }
    let (kind_off, _) = array_field(k, "tcf_proto_ops", "kind")?;
    let mut tp = ptr(k, miniq, "mini_Qdisc", "filter_list")?;
    let mut seen = HashSet::new();
    while tp != 0 && seen.insert(tp) && seen.len() <= MAX_PER_HOOK as usize {
        let ops = ptr(k, tp, "tcf_proto", "ops")?;
        let kind = kernel_cstr(k, ops.wrapping_add(kind_off), 16)?;
        if kind == b"bpf" {
            let head = ptr(k, tp, "tcf_proto", "root")?;
            for entry in walk_list(k, head, 8, "cls_bpf programs")? {
                let prog = k.read_u64(entry, || "cls_bpf_prog.filter".into())?;
                if is_program(k, prog) {
                    out.push(Attachment {
                        prog,
                        link: None,
                        point: point.to_string(),
                    });
                }
            }
        }
        tp = ptr(k, tp, "tcf_proto", "next")?;
    }
    Ok(())
}

fn is_program(k: &Kernel<'_, '_>, prog: u64) -> bool {
    prog != 0
        && ptr(k, prog, "bpf_prog", "aux")
            .and_then(|aux| ptr(k, aux, "bpf_prog_aux", "prog"))
            .is_ok_and(|back| back == prog)
}
