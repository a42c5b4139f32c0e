//! Module inventory from four views that a rootkit must fool separately:
//! the `modules` list, the sysfs `module_kset`, `mod_tree` (the latched
//! rb-tree of module memory regions the kernel looks addresses up in,
//! which `list_del` does not touch), and `struct module`s carved from
//! module memory by their self-reference (`mkobj.mod == &module`, as
//! Volatility 3's hidden_modules). `list_del` leaves the poison values in
//! a hidden module's own list pointers: evidence of its own.

use super::{Context, Finding, Report, Severity};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::memdump::for_each_mapped;
use crate::plugins::tasks::{walk_list, walk_rbtree};
use crate::plugins::util::{lossy, ptr, uint};
use crate::plugins::{Row, Value};

/// `LIST_POISON1`/`2` on x86-64 (POISON_POINTER_DELTA 0xdead000000000000).
const LIST_POISON1: u64 = 0xdead_0000_0000_0100;
const LIST_POISON2: u64 = 0xdead_0000_0000_0122;
/// Carving reads at most this much module memory.
const MAX_CARVE_BYTES: u64 = 1 << 31;
/// ITS thunk pages a module may have.
const MAX_ITS_PAGES: u64 = 1024;
/// Bounds on a believable module (Volatility's are of the same order).
const MAX_TEXT: u64 = 64 << 20;
const MAX_CORE: u64 = 128 << 20;

/// One module, however it was found.
#[derive(Debug, Clone)]
pub(crate) struct Module {
    pub addr: u64,
    pub name: String,
    /// Memory regions `[start, end)`: `mem[]` (6.4+) or core/init layouts.
    pub regions: Vec<(u64, u64)>,
    pub text_size: u64,
    pub in_list: bool,
    pub in_sysfs: bool,
    /// In `mod_tree`.
    pub in_tree: bool,
    pub carved: bool,
    /// Its own list pointers hold `list_del`'s poison.
    pub poisoned: bool,
}

/// Every module the three views found, deduplicated by address.
#[derive(Debug, Default)]
pub(crate) struct Inventory {
    pub modules: Vec<Module>,
    /// Views that could not be read, with the reason.
    pub not_checked: Vec<String>,
}

impl Inventory {
    pub(crate) fn gather(k: &Kernel<'_, '_>) -> Result<Self, KernelError> {
        let mut inv = Inventory::default();
        let p = k.profile;
        let list_off = p.offset("module", "list")?;
        for m in walk_list(k, k.symbol("modules")?, list_off, "modules")? {
            if let Some(module) = read_module(k, m)? {
                inv.add(module, |e| e.in_list = true);
            }
        }
        match sysfs_modules(k) {
            Ok(ms) => {
                for m in ms {
                    if let Some(module) = read_module(k, m)? {
                        inv.add(module, |e| e.in_sysfs = true);
                    }
                }
            }
            Err(e) => inv.not_checked.push(format!("sysfs module kset: {e}")),
        }
        match tree_modules(k) {
            Ok(ms) => {
                for m in ms {
                    if let Some(module) = read_module(k, m)? {
                        inv.add(module, |e| e.in_tree = true);
                    }
                }
            }
            Err(e) => inv.not_checked.push(format!("mod_tree: {e}")),
        }
        match carve(k) {
            Ok(ms) => {
                for module in ms {
                    inv.add(module, |e| e.carved = true);
                }
            }
            Err(e) => inv.not_checked.push(format!("carving module memory: {e}")),
        }
        Ok(inv)
    }

    fn add(&mut self, module: Module, mark: impl Fn(&mut Module)) {
        if let Some(e) = self.modules.iter_mut().find(|e| e.addr == module.addr) {
            mark(e);
        } else {
            let mut m = module;
            mark(&mut m);
            self.modules.push(m);
        }
    }

    /// The module one of whose regions holds `addr`.
    pub(crate) fn owner_of(&self, addr: u64) -> Option<&Module> {
        self.modules
            .iter()
            .find(|m| m.regions.iter().any(|&(s, e)| addr >= s && addr < e))
    }

    /// Modules the list does not show but another view does.
    pub(crate) fn hidden(&self) -> impl Iterator<Item = &Module> {
        self.modules.iter().filter(|m| !m.in_list)
    }
}

/// Reads a module's name and regions; `None` when its memory is gone.
fn read_module(k: &Kernel<'_, '_>, m: u64) -> Result<Option<Module>, KernelError> {
    let p = k.profile;
    let name_f = p.field("module", "name")?;
    let mut name = vec![0u8; 56];
    if k.vm.read(m.wrapping_add(name_f.offset), &mut name).is_err() {
        return Ok(None);
    }
    let end = memchr::memchr(0, &name).unwrap_or(name.len());
    name.truncate(end);
    let (mut regions, text_size) = match regions(k, m) {
        Ok(r) => r,
        Err(KernelError::Memory { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    regions.extend(its_pages(k, m));
    let list = m.wrapping_add(p.offset("module", "list")?);
    let poisoned = k.vm.read_u64(list).ok() == Some(LIST_POISON1)
        && k.vm.read_u64(list.wrapping_add(8)).ok() == Some(LIST_POISON2);
    Ok(Some(Module {
        addr: m,
        name: lossy(&name),
        regions,
        text_size,
        in_list: false,
        in_sysfs: false,
        in_tree: false,
        carved: false,
        poisoned,
    }))
}

/// `[start, end)` of every non-empty region, and the core text size.
fn regions(k: &Kernel<'_, '_>, m: u64) -> Result<(Vec<(u64, u64)>, u64), KernelError> {
    let p = k.profile;
    let mut out = Vec::new();
    let mut push = |base: u64, size: u64| {
        if base != 0 && size != 0 {
            out.push((base, base.saturating_add(size)));
        }
    };
    let text;
    if p.has_field("module", "mem") {
        let mem = m.wrapping_add(p.offset("module", "mem")?);
        let elem = p.struct_def("module_memory")?.size;
        let count = p
            .enum_value("mod_mem_type", "MOD_MEM_NUM_TYPES")
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(7)
            .min(16);
        let base_off = p.offset("module_memory", "base")?;
        let mut first_size = 0;
        for i in 0..count {
            let at = mem.wrapping_add(i * elem);
            let base = k.read_u64(at.wrapping_add(base_off), || format!("module {m:#x} mem"))?;
            let size = u64::try_from(k.read_int(at, "module_memory", "size")?).unwrap_or(0);
            if i == 0 {
                first_size = size;
            }
            push(base, size);
        }
        text = first_size;
    } else if p.has_field("module", "core_layout") {
        let base_off = p.offset("module_layout", "base")?;
        let mut core_text = 0;
        for (f, is_core) in [("core_layout", true), ("init_layout", false)] {
            let at = m.wrapping_add(p.offset("module", f)?);
            let base = k.read_u64(at.wrapping_add(base_off), || format!("module {m:#x} {f}"))?;
            let size = u64::try_from(k.read_int(at, "module_layout", "size")?).unwrap_or(0);
            if is_core {
                core_text =
                    u64::try_from(k.read_int(at, "module_layout", "text_size")?).unwrap_or(0);
            }
            push(base, size);
        }
        text = core_text;
    } else {
        return Err(KernelError::Profile(
            crate::profile::ProfileError::MissingField {
                profile: p.name.clone(),
                name: "module.mem or module.core_layout".into(),
            },
        ));
    }
    Ok((out, text))
}

/// The module's ITS thunk pages (`its_page_array`, on CPUs affected by
/// indirect target selection): executable module-space pages it owns
/// outside its regions.
fn its_pages(k: &Kernel<'_, '_>, m: u64) -> Vec<(u64, u64)> {
    let n = uint(k, m, "module", "its_num_pages").unwrap_or(0);
    let arr = ptr(k, m, "module", "its_page_array").unwrap_or(0);
    if n == 0 || n > MAX_ITS_PAGES || arr == 0 {
        return Vec::new();
    }
    (0..n)
        .filter_map(|i| k.vm.read_u64(arr.wrapping_add(i * 8)).ok())
        .filter(|&p| p != 0)
        .map(|p| (p, p.saturating_add(0x1000)))
        .collect()
}

/// Modules that `mod_tree` holds: its first tree (`root.tree[0]`, an
/// rb-tree of `mod_tree_node`s, one per module memory region), each
/// node's `mod`.
fn tree_modules(k: &Kernel<'_, '_>) -> Result<Vec<u64>, KernelError> {
    let p = k.profile;
    let root = k
        .symbol("mod_tree")?
        .wrapping_add(p.offset("mod_tree_root", "root")?)
        .wrapping_add(p.offset("latch_tree_root", "tree")?);
    // rb_node[0] of a latch_tree_node is the first tree's.
    let node_in_mtn = p.offset("mod_tree_node", "node")? + p.offset("latch_tree_node", "node")?;
    let mod_off = p.offset("mod_tree_node", "mod")?;
    let mut out = Vec::new();
    for n in walk_rbtree(k, root, "mod_tree")? {
        let mtn = n.wrapping_sub(node_in_mtn);
        let m = k.read_u64(mtn.wrapping_add(mod_off), || {
            format!("mod_tree node {n:#x}")
        })?;
        if m != 0 && !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// Modules that sysfs lists: `module_kset->list` of `module_kobject`s whose
/// `mod` is set (built-in modules with parameters have none).
fn sysfs_modules(k: &Kernel<'_, '_>) -> Result<Vec<u64>, KernelError> {
    let p = k.profile;
    let kset = k.read_u64(k.symbol("module_kset")?, || "module_kset".into())?;
    let head = kset.wrapping_add(p.offset("kset", "list")?);
    let entry = p.offset("kobject", "entry")?;
    let kobj = p.offset("module_kobject", "kobj")?;
    let mut out = Vec::new();
    for obj in walk_list(k, head, entry, "module_kset")? {
        let mk = obj.wrapping_sub(kobj);
        if let Ok(m) = ptr(k, mk, "module_kobject", "mod")
            && m != 0
        {
            out.push(m);
        }
    }
    Ok(out)
}

/// Module-space bounds: `mod_tree` (5.19+) or `module_addr_min/max`.
fn module_bounds(k: &Kernel<'_, '_>) -> Result<(u64, u64), KernelError> {
    if let Ok(t) = k.symbol("mod_tree") {
        let lo = ptr(k, t, "mod_tree_root", "addr_min")?;
        let hi = ptr(k, t, "mod_tree_root", "addr_max")?;
        return Ok((lo, hi));
    }
    let (Ok(lo), Ok(hi)) = (k.symbol("module_addr_min"), k.symbol("module_addr_max")) else {
        return Err(KernelError::Profile(
            crate::profile::ProfileError::MissingSymbol {
                profile: k.profile.name.clone(),
                name: "mod_tree (or module_addr_min and module_addr_max)".into(),
            },
        ));
    };
    let lo = k.read_u64(lo, || "module_addr_min".into())?;
    let hi = k.read_u64(hi, || "module_addr_max".into())?;
    Ok((lo, hi))
}

/// Carves `struct module`s from mapped module memory: a pointer-aligned
/// word equal to its own address minus the offset of `mkobj.mod` marks a
/// candidate, then the whole structure must look like a live module.
fn carve(k: &Kernel<'_, '_>) -> Result<Vec<Module>, KernelError> {
    let p = k.profile;
    let d = p
        .offset("module", "mkobj")?
        .wrapping_add(p.offset("module_kobject", "mod")?);
    let size = p.struct_def("module")?.size;
    let (lo, hi) = module_bounds(k)?;
    if hi <= lo || hi - lo > MAX_CARVE_BYTES {
        return Ok(Vec::new());
    }
    let mut candidates = Vec::new();
    for_each_mapped(
        k,
        k.dtb,
        lo,
        hi.saturating_add(d),
        MAX_CARVE_BYTES,
        |va, bytes| {
            for (i, w) in bytes.chunks_exact(8).enumerate() {
                let x = va + 8 * i as u64;
                let v = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
                if v == x.wrapping_sub(d) && v >= lo {
                    candidates.push(v);
                }
            }
        },
    );
    let mut out = Vec::new();
    for m in candidates {
        let mut last = [0u8; 1];
        if k.vm
            .read(m.wrapping_add(size.saturating_sub(1)), &mut last)
            .is_err()
        {
            continue;
        }
        let Some(module) = read_module(k, m)? else {
            continue;
        };
        let core: u64 = module.regions.iter().map(|(s, e)| e - s).sum();
        let name_ok = !module.name.is_empty()
            && module
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if name_ok && module.text_size > 0 && module.text_size <= MAX_TEXT && core <= MAX_CORE {
            out.push(module);
        }
    }
    Ok(out)
}

fn module_row(m: &Module) -> Row {
    let (base, end) = m.regions.first().copied().unwrap_or((0, 0));
    Row {
        fields: vec![
            ("name", Value::Str(m.name.clone())),
            ("offset", Value::UInt(m.addr)),
            ("text_start", Value::UInt(base)),
            ("text_end", Value::UInt(end)),
            ("in_list", Value::Str(m.in_list.to_string())),
            ("in_sysfs", Value::Str(m.in_sysfs.to_string())),
            ("in_mod_tree", Value::Str(m.in_tree.to_string())),
            ("carved", Value::Str(m.carved.to_string())),
            ("list_poisoned", Value::Str(m.poisoned.to_string())),
        ],
    }
}

fn hidden_finding(check: &'static str, m: &Module) -> Finding {
    let mut evidence = Vec::new();
    if m.in_sysfs {
        evidence.push("in /sys/module".to_string());
    }
    if m.in_tree {
        evidence.push("in mod_tree".into());
    }
    if m.carved {
        evidence.push("struct module carved from module memory".into());
    }
    if m.poisoned {
        evidence.push("its list pointers hold list_del poison".into());
    }
    Finding {
        severity: Severity::High,
        check,
        what: format!("module {} is hidden from the module list", m.name),
        evidence: format!("struct module at {:#x}: {}", m.addr, evidence.join(", ")),
        owner: format!("hidden module {}", m.name),
    }
}

fn inventory_report<'c>(cx: &'c Context<'_>) -> Result<(&'c Inventory, Report), KernelError> {
    let inv = cx.inventory()?;
    let report = Report {
        not_checked: inv.not_checked.clone(),
        ..Report::default()
    };
    Ok((inv, report))
}

/// hidden_modules: modules carved or in `mod_tree` that the list does
/// not show.
pub(crate) fn hidden_modules(_k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    let (inv, mut r) = inventory_report(cx)?;
    r.not_checked
        .retain(|n| n.starts_with("carving") || n.starts_with("mod_tree"));
    let carved = inv.modules.iter().filter(|m| m.carved).count();
    let tree = inv.modules.iter().filter(|m| m.in_tree).count();
    r.examined = format!("{carved} modules carved from module memory, {tree} in mod_tree");
    for m in inv.hidden().filter(|m| m.carved || m.in_tree) {
        r.rows.push(module_row(m));
        r.findings.push(hidden_finding("hidden_modules", m));
    }
    Ok(r)
}

/// check_modules: modules in sysfs that the list does not show.
pub(crate) fn check_modules(_k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    let (inv, mut r) = inventory_report(cx)?;
    r.not_checked.retain(|n| n.starts_with("sysfs"));
    let sysfs = inv.modules.iter().filter(|m| m.in_sysfs).count();
    r.examined = format!("{sysfs} modules in sysfs");
    for m in inv.hidden().filter(|m| m.in_sysfs) {
        r.rows.push(module_row(m));
        r.findings.push(hidden_finding("check_modules", m));
    }
    Ok(r)
}

/// modxview: every module with the views that show it.
pub(crate) fn modxview(_k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    let (inv, mut r) = inventory_report(cx)?;
    r.rows = inv.modules.iter().map(module_row).collect();
    r.examined = format!("{} modules", r.rows.len());
    Ok(r)
}
