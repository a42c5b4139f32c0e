//! The kernel's eBPF objects, read once for the checks that need them:
//! programs from `prog_idr` (what `bpftool prog` lists) and from the BPF
//! symbol list `bpf_kallsyms` (what the kernel runs and names in
//! /proc/kallsyms), links from `link_idr` with what each attaches to (which
//! `bpf_prog` does not record), what the hooks themselves hold
//! (`bpf_attach`), the JIT's memory (`pack_list`, and each symbol's
//! range), the processes holding a program or link open, and every open
//! socket's filter.

use super::Symbols;
use super::bpf_attach::{self, Attachment, Looked, cgroup_path};
use super::bpf_holders::{SocketFilter, descriptors};
use super::bpf_names::{attach_type, link_type, prog_type};
use super::xarray;
use crate::kernel::{Kernel, KernelError};
use crate::plugins::tasks::walk_list;
use crate::plugins::util::{array_field, kernel_cstr, lossy, ptr, uint};
use std::collections::{BTreeMap, HashMap};

/// Instructions a program may have (BPF_COMPLEXITY_LIMIT_INSNS is 1M).
const MAX_INSNS: u64 = 1 << 20;
/// A pack or image longer than this is not one.
const MAX_IMAGE: u64 = 64 << 20;
const NAME_MAX: usize = 128;

/// One program.
#[derive(Debug, Clone, Default)]
pub(crate) struct Program {
    pub addr: u64,
    pub id: u64,
    pub kind: String,
    pub name: String,
    pub tag: String,
    /// Nanoseconds since boot.
    pub load_time: Option<u64>,
    /// The JIT image `[start, end)`, when the program is JIT-compiled.
    pub image: Option<(u64, u64)>,
    /// `expected_attach_type` (fentry, fmod_ret, lsm_mac, ...).
    pub expected_attach: String,
    pub expected_attach_raw: u64,
    /// The kernel function a tracing or LSM program attaches to.
    pub attach_func: Option<String>,
    /// Helpers the program calls, by kernel symbol.
    pub helpers: Vec<String>,
    /// The verifier saw `bpf_override_return`.
    pub kprobe_override: bool,
    /// A subprogram of another program (its own image, no id).
    pub is_func: bool,
    /// References held (0: being freed).
    pub refcnt: u64,
    pub in_idr: bool,
    pub in_kallsyms: bool,
}

/// One link: a program attached somewhere.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub addr: u64,
    pub id: u64,
    pub kind: String,
    pub prog: u64,
    pub attach: String,
}

/// Everything the eBPF walk found.
#[derive(Debug, Default)]
pub(crate) struct Bpf {
    pub programs: Vec<Program>,
    pub links: Vec<Link>,
    /// What the hooks hold, links' attachments included, and the eBPF
    /// socket filters.
    pub attachments: Vec<Attachment>,
    /// Every open socket's filter, classic or eBPF.
    pub socket_filters: Vec<SocketFilter>,
    /// Why the open descriptors could not be walked, when they could not.
    pub sockets_unread: Option<String>,
    pub looked: Looked,
    /// Every symbol of `bpf_kallsyms`: `(start, end, name)`.
    pub ksyms: Vec<(u64, u64, String)>,
    /// The JIT's packs (`[start, end)`), shared by many programs.
    pub packs: Vec<(u64, u64)>,
    /// Trampoline pages of struct_ops maps (not on the symbol list before
    /// 6.12): `(start, end, what)`.
    pub struct_ops: Vec<(u64, u64, String)>,
    /// Program or link address to the processes holding it open.
    pub holders: HashMap<u64, Vec<String>>,
    pub not_checked: Vec<String>,
}

impl Bpf {
    /// `BPF program ID (name)` for the program at `addr`, or `... through
    /// link N` for a link to one (a raw tracepoint's probe data is the
    /// program before 6.10, its link since).
    pub(crate) fn describe(&self, addr: u64) -> Option<String> {
        let prog = |a: u64| self.programs.iter().find(|p| p.addr == a);
        if let Some(p) = prog(addr) {
            return Some(format!("BPF program {} ({})", p.id, p.name));
        }
        let l = self.links.iter().find(|l| l.addr == addr)?;
        let p = prog(l.prog)?;
        Some(format!(
            "BPF program {} ({}) through link {}",
            p.id, p.name, l.id
        ))
    }

    /// Who holds the program open, directly or through a link to it.
    pub(crate) fn holders_of(&self, prog: u64) -> Vec<String> {
        let mut out: Vec<String> = self.holders.get(&prog).cloned().unwrap_or_default();
        for l in self.links.iter().filter(|l| l.prog == prog) {
            out.extend(self.holders.get(&l.addr).cloned().unwrap_or_default());
        }
        out.sort();
        out.dedup();
        out
    }

    pub(crate) fn gather(
        k: &Kernel<'_, '_>,
        syms: Option<&Symbols<'_>>,
    ) -> Result<Bpf, KernelError> {
        let mut b = Bpf::default();
        let p = k.profile;
        let idr_head = |sym: &str| -> Result<u64, KernelError> {
            Ok(k.symbol(sym)?
                .wrapping_add(p.offset("idr", "idr_rt")?)
                .wrapping_add(p.offset("xarray", "xa_head")?))
        };
        let mut by_addr: BTreeMap<u64, Program> = BTreeMap::new();
        for (id, prog) in xarray::entries(k, idr_head("prog_idr")?, "prog_idr")? {
            match read_program(k, prog, syms) {
                Ok(None) => b.not_checked.push(format!(
                    "prog_idr entry {id} at {prog:#x}: not a bpf_prog (its aux does not point back)"
                )),
                Ok(Some(mut pr)) => {
                    pr.in_idr = true;
                    if pr.id != id {
                        b.not_checked.push(format!(
                            "prog_idr entry {id}: the program says id {}",
                            pr.id
                        ));
                    }
                    by_addr.insert(prog, pr);
                }
                Err(e) if e.is_source_failure() => return Err(e),
                Err(KernelError::Profile(e)) => return Err(e.into()),
                Err(e) => b.not_checked.push(format!("eBPF program {id}: {e}")),
            }
        }
        match ksyms(k) {
            Ok(list) => {
                for (start, end, name, prog) in list {
                    if let Some(prog) = prog {
                        if let Some(pr) = by_addr.get_mut(&prog) {
                            pr.in_kallsyms = true;
                        } else if let Ok(Some(mut pr)) = read_program(k, prog, syms) {
                            pr.in_kallsyms = true;
                            by_addr.insert(prog, pr);
                        }
                    }
                    b.ksyms.push((start, end, name));
                }
            }
            Err(e) if e.is_source_failure() => return Err(e),
            Err(e) => b.not_checked.push(format!("the BPF symbol list: {e}")),
        }
        match soft_links(k, idr_head("link_idr")) {
            Ok(links) => b.links = links,
            Err(e) if e.is_source_failure() => return Err(e),
            Err(e) => b.not_checked.push(format!("link_idr: {e}")),
        }
        (b.attachments, b.looked) = bpf_attach::gather(k, &mut b.not_checked)?;
        // Every descriptor of every process, for who holds a program and
        // which sockets filter through one (on a live source each table
        // is a remote read).
        match descriptors(k) {
            Ok(d) => (b.holders, b.socket_filters) = d,
            Err(e) if e.is_source_failure() => return Err(e),
            Err(e) => {
                let why = format!("open descriptors (holders, socket filters): {e}");
                b.not_checked.push(why.clone());
                b.sockets_unread = Some(why);
            }
        }
        b.attachments
            .extend(b.socket_filters.iter().map(|f| Attachment {
                prog: f.prog,
                link: None,
                point: format!(
                    "socket filter on {} socket, fd {} of process {} ({})",
                    f.socket, f.fd, f.pid, f.comm
                ),
            }));
        // A program only a link or a hook reaches is one too; a classic
        // one (a socket or seccomp filter, no id) is not an eBPF program.
        let reached = b.links.iter().map(|l| l.prog);
        for prog in reached.chain(b.attachments.iter().map(|a| a.prog)) {
            if !by_addr.contains_key(&prog)
                && let Ok(Some(pr)) = read_program(k, prog, syms)
                && !pr.is_classic()
            {
                by_addr.insert(prog, pr);
            }
        }
        b.programs = by_addr.into_values().collect();
        b.packs = packs(k).unwrap_or_default();
        match idr_head("map_idr").and_then(|h| struct_ops(k, h)) {
            Ok(v) => b.struct_ops = v,
            Err(e) if e.is_source_failure() => return Err(e),
            Err(e) => b.not_checked.push(format!("map_idr: {e}")),
        }
        Ok(b)
    }
}

fn soft_links(
    k: &Kernel<'_, '_>,
    head: Result<u64, KernelError>,
) -> Result<Vec<Link>, KernelError> {
    let mut out = Vec::new();
    for (id, link) in xarray::entries(k, head?, "link_idr")? {
        let kind_raw = uint(k, link, "bpf_link", "type")?;
        let prog = ptr(k, link, "bpf_link", "prog")?;
        let kind = link_type(k, kind_raw);
        let attach = attach_point(k, link, &kind).unwrap_or_else(|_| "-".into());
        out.push(Link {
            addr: link,
            id,
            kind,
            prog,
            attach,
        });
    }
    Ok(out)
}

/// A C string field, `-` when absent.
fn string_at(k: &Kernel<'_, '_>, at: u64) -> Result<String, KernelError> {
    if at == 0 {
        return Ok("-".into());
    }
    Ok(lossy(&kernel_cstr(k, at, NAME_MAX)?))
}

/// What a link attaches to, by its type's container (`struct bpf_link`
/// is each one's first member).
fn attach_point(k: &Kernel<'_, '_>, link: u64, kind: &str) -> Result<String, KernelError> {
    let p = k.profile;
    Ok(match kind {
        "raw_tracepoint" => {
            let btp = ptr(k, link, "bpf_raw_tp_link", "btp")?;
            let tp = ptr(k, btp, "bpf_raw_event_map", "tp")?;
            format!(
                "tracepoint {}",
                string_at(k, ptr(k, tp, "tracepoint", "name")?)?
            )
        }
        "tracing" => {
            let at = uint(k, link, "bpf_tracing_link", "attach_type")?;
            let prog = ptr(k, link, "bpf_link", "prog")?;
            let aux = ptr(k, prog, "bpf_prog", "aux")?;
            let func = string_at(k, ptr(k, aux, "bpf_prog_aux", "attach_func_name")?)?;
            format!("{} {func}", attach_type(k, at))
        }
        "cgroup" => {
            let at = uint(k, link, "bpf_cgroup_link", "type")?;
            let cg = ptr(k, link, "bpf_cgroup_link", "cgroup")?;
            format!("{} cgroup {}", attach_type(k, at), cgroup_path(k, cg)?)
        }
        "netns" => {
            let at = uint(k, link, "bpf_netns_link", "type")?;
            let net = ptr(k, link, "bpf_netns_link", "net")?;
            let inum = k.vm.read_uint(
                net.wrapping_add(p.offset("net", "ns")? + p.offset("ns_common", "inum")?),
                4,
            );
            format!(
                "{} net namespace {}",
                attach_type(k, at),
                inum.map_or_else(|_| "?".into(), |n| n.to_string())
            )
        }
        "xdp" => device(k, ptr(k, link, "bpf_xdp_link", "dev")?, "xdp")?,
        "tcx" => device(k, ptr(k, link, "tcx_link", "dev")?, "tcx")?,
        "netkit" => device(k, ptr(k, link, "netkit_link", "dev")?, "netkit")?,
        "perf_event" => {
            let file = ptr(k, link, "bpf_perf_link", "perf_file")?;
            let event = ptr(k, file, "file", "private_data")?;
            let call = ptr(k, event, "perf_event", "tp_event")?;
            if call == 0 {
                "perf event".into()
            } else if let Some(uprobe) = super::bpf_events::uprobe_event_label(k, call) {
                format!("perf event {uprobe}")
            } else {
                format!("perf event {}", event_name(k, call)?)
            }
        }
        _ => "-".into(),
    })
}

fn device(k: &Kernel<'_, '_>, dev: u64, what: &str) -> Result<String, KernelError> {
    let off = k.profile.offset("net_device", "name")?;
    let mut name = [0u8; 16];
    k.read(dev.wrapping_add(off), &mut name, || {
        "net_device.name".into()
    })?;
    let end = memchr::memchr(0, &name).unwrap_or(16);
    Ok(format!(
        "{what} on {}",
        lossy(name.get(..end).unwrap_or_default())
    ))
}

/// A trace event's name: `call->tp->name` for tracepoints, `call->name`
/// for kprobe and uprobe events (one union; a tracepoint's first word is
/// a pointer to its name, a name's first bytes are text).
pub(crate) fn event_name(k: &Kernel<'_, '_>, call: u64) -> Result<String, KernelError> {
    let u = ptr(k, call, "trace_event_call", "name")?;
    if let Ok(name) = ptr(k, u, "tracepoint", "name")
        && let Ok(s) = kernel_cstr(k, name, NAME_MAX)
        && !s.is_empty()
        && s.iter().all(u8::is_ascii_graphic)
    {
        return Ok(lossy(&s));
    }
    string_at(k, u)
}

/// Reads the program at `prog`; `None` when its `aux` does not point back
/// at it (not a program).
pub(crate) fn read_program(
    k: &Kernel<'_, '_>,
    prog: u64,
    syms: Option<&Symbols<'_>>,
) -> Result<Option<Program>, KernelError> {
    let p = k.profile;
    let aux = ptr(k, prog, "bpf_prog", "aux")?;
    if ptr(k, aux, "bpf_prog_aux", "prog")? != prog {
        return Ok(None);
    }
    let mut tag = [0u8; 8];
    k.read(
        prog.wrapping_add(p.offset("bpf_prog", "tag")?),
        &mut tag,
        || "bpf_prog.tag".into(),
    )?;
    let (name_off, name_len) = array_field(k, "bpf_prog_aux", "name")?;
    let mut name = vec![0u8; usize::try_from(name_len.clamp(1, 64)).unwrap_or(16)];
    k.read(aux.wrapping_add(name_off), &mut name, || {
        "bpf_prog_aux.name".into()
    })?;
    let end = memchr::memchr(0, &name).unwrap_or(name.len());
    name.truncate(end);
    let flag = |f: &str| uint(k, prog, "bpf_prog", f).is_ok_and(|v| v != 0);
    let image = if flag("jited") {
        let start = ptr(k, prog, "bpf_prog", "bpf_func")?;
        let len = uint(k, prog, "bpf_prog", "jited_len")?;
        (start != 0 && len <= MAX_IMAGE).then(|| (start, start.saturating_add(len)))
    } else {
        None
    };
    let attach_raw = uint(k, prog, "bpf_prog", "expected_attach_type").unwrap_or(0);
    let attach_func = match ptr(k, aux, "bpf_prog_aux", "attach_func_name") {
        Ok(0) | Err(_) => None,
        Ok(at) => kernel_cstr(k, at, NAME_MAX).ok().map(|s| lossy(&s)),
    };
    Ok(Some(Program {
        addr: prog,
        id: uint(k, aux, "bpf_prog_aux", "id")?,
        kind: prog_type(k, uint(k, prog, "bpf_prog", "type")?),
        name: lossy(&name),
        tag: tag.iter().map(|b| format!("{b:02x}")).collect(),
        load_time: uint(k, aux, "bpf_prog_aux", "load_time").ok(),
        image,
        expected_attach: attach_type(k, attach_raw),
        expected_attach_raw: attach_raw,
        attach_func,
        helpers: helpers(k, prog, syms).unwrap_or_default(),
        kprobe_override: flag("kprobe_override"),
        is_func: flag("is_func"),
        // An atomic64_t: its counter is its only member.
        refcnt: p
            .offset("bpf_prog_aux", "refcnt")
            .ok()
            .and_then(|o| k.vm.read_u64(aux.wrapping_add(o)).ok())
            .unwrap_or(1),
        in_idr: false,
        in_kallsyms: false,
    }))
}

/// The helpers the program calls: after the verifier, a helper call
/// (`BPF_JMP | BPF_CALL`, source register 0) holds the helper's address
/// minus `__bpf_call_base`. Named by kernel symbol, each once.
fn helpers(
    k: &Kernel<'_, '_>,
    prog: u64,
    syms: Option<&Symbols<'_>>,
) -> Result<Vec<String>, KernelError> {
    let p = k.profile;
    let base = k.symbol("__bpf_call_base")?;
    let len = uint(k, prog, "bpf_prog", "len")?;
    let pages = uint(k, prog, "bpf_prog", "pages")?;
    let off = p
        .offset("bpf_prog", "insnsi")
        .or_else(|_| p.struct_def("bpf_prog").map(|s| s.size))?;
    if len == 0 || len > MAX_INSNS || off + len * 8 > pages.max(1) * 0x1000 {
        return Ok(Vec::new());
    }
    let mut insns = vec![0u8; usize::try_from(len * 8).unwrap_or(0)];
    k.read(prog.wrapping_add(off), &mut insns, || {
        format!("instructions of bpf_prog {prog:#x}")
    })?;
    let mut out: Vec<String> = Vec::new();
    for i in insns.chunks_exact(8) {
        let (code, regs) = (i.first().copied(), i.get(1).copied());
        if code != Some(0x85) || regs.map(|r| r >> 4) != Some(0) {
            continue;
        }
        let imm = i32::from_le_bytes(
            i.get(4..8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 4]),
        );
        let target = base.wrapping_add_signed(i64::from(imm));
        let name = syms
            .and_then(|s| s.name(target))
            .map_or_else(|| format!("{target:#x}"), |(n, _)| n.to_string());
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// `bpf_kallsyms`: `(start, end, name, the program when it is one)`.
#[allow(clippy::type_complexity)]
fn ksyms(k: &Kernel<'_, '_>) -> Result<Vec<(u64, u64, String, Option<u64>)>, KernelError> {
    let p = k.profile;
    let lnode = p.offset("bpf_ksym", "lnode")?;
    let (name_off, _) = array_field(k, "bpf_ksym", "name")?;
    let ksym_in_aux = p.offset("bpf_prog_aux", "ksym")?;
    let mut out = Vec::new();
    for ks in walk_list(k, k.symbol("bpf_kallsyms")?, lnode, "bpf_kallsyms")? {
        let start = uint(k, ks, "bpf_ksym", "start")?;
        let end = uint(k, ks, "bpf_ksym", "end")?;
        let name = kernel_cstr(k, ks.wrapping_add(name_off), NAME_MAX)
            .map(|s| lossy(&s))
            .unwrap_or_default();
        let is_prog = uint(k, ks, "bpf_ksym", "prog").is_ok_and(|v| v != 0);
        let prog = if is_prog {
            ptr(k, ks.wrapping_sub(ksym_in_aux), "bpf_prog_aux", "prog").ok()
        } else {
            None
        };
        if end > start && end - start <= MAX_IMAGE {
            out.push((start, end, name, prog));
        }
    }
    Ok(out)
}

/// `BPF_MAP_TYPE_STRUCT_OPS` (UAPI).
const STRUCT_OPS_MAP: u64 = 26;
/// Trampoline pages a struct_ops map may have.
const MAX_IMAGE_PAGES: u64 = 64;

/// The trampoline pages of every struct_ops map of `map_idr`: its `image`
/// (before 6.8) or its `image_pages` (since).
fn struct_ops(k: &Kernel<'_, '_>, head: u64) -> Result<Vec<(u64, u64, String)>, KernelError> {
    let p = k.profile;
    let mut out = Vec::new();
    for (id, map) in xarray::entries(k, head, "map_idr")? {
        if uint(k, map, "bpf_map", "map_type").ok() != Some(STRUCT_OPS_MAP) {
            continue;
        }
        let (name_off, _) = array_field(k, "bpf_map", "name")?;
        let mut name = [0u8; 16];
        let _ = k.read(map.wrapping_add(name_off), &mut name, || {
            "bpf_map.name".into()
        });
        let end = memchr::memchr(0, &name).unwrap_or(16);
        let what = format!(
            "BPF struct_ops map {id} ({})",
            lossy(name.get(..end).unwrap_or_default())
        );
        let mut pages = Vec::new();
        if p.has_field("bpf_struct_ops_map", "image") {
            pages.push(ptr(k, map, "bpf_struct_ops_map", "image")?);
        } else if let Ok((off, n)) = array_field(k, "bpf_struct_ops_map", "image_pages") {
            for i in 0..n.min(MAX_IMAGE_PAGES) {
                pages.push(k.read_u64(map.wrapping_add(off + i * 8), || {
                    "bpf_struct_ops_map.image_pages".into()
                })?);
            }
        }
        for page in pages.into_iter().filter(|&a| a != 0) {
            out.push((page, page.saturating_add(0x1000), what.clone()));
        }
    }
    Ok(out)
}

/// The JIT's packs: each `bpf_prog_pack.ptr` to the end of its mapping
/// (the vmalloc guard page after it).
fn packs(k: &Kernel<'_, '_>) -> Result<Vec<(u64, u64)>, KernelError> {
    let head = k.symbol("pack_list")?;
    let list = k.profile.offset("bpf_prog_pack", "list")?;
    let mut out = Vec::new();
    for pack in walk_list(k, head, list, "pack_list")? {
        let start = ptr(k, pack, "bpf_prog_pack", "ptr")?;
        let mut end = start;
        while end - start < MAX_IMAGE && k.vm.translate(end).is_ok() {
            end += 0x1000;
        }
        if end > start {
            out.push((start, end));
        }
    }
    Ok(out)
}

impl Program {
    /// A classic BPF program (a socket or seccomp filter, translated):
    /// `BPF_PROG_TYPE_UNSPEC`, as the kernel's `bpf_prog_was_classic`.
    pub(crate) fn is_classic(&self) -> bool {
        self.kind == "unspec"
    }
}
