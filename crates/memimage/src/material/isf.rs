//! BTF + kallsyms + banner → a Volatility 3 ISF (format 6.2.0) document.
//!
//! The same document serves both consumers: `mshot analyze` loads a
//! selection of it through the ordinary ISF loader, and `mshot profile
//! export` writes all of it for Volatility 3. Conventions follow
//! dwarf2json so both loaders treat it like a DWARF-built ISF:
//! anonymous members are `unnamed_field_N` with `anonymous: true`; an
//! anonymous struct reached through a typedef takes the typedef's name
//! (`kuid_t`); bitfields keep a bit position below 8 with the whole bytes
//! moved into the offset. BTF carries no types for most global variables,
//! so the few the plugins and Volatility read get theirs from
//! [`SYMBOL_TYPES`].

use super::btf::{Btf, Kind};
use super::kallsyms::Kallsyms;
use crate::profile::Selection;
use base64::Engine;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Global variables and the struct or base type they have (BTF only has
/// types for per-CPU variables); `*NAME` is a pointer to struct NAME.
pub const SYMBOL_TYPES: &[(&str, &str)] = &[
    ("init_task", "task_struct"),
    ("init_files", "files_struct"),
    ("init_mm", "mm_struct"),
    ("init_fs", "fs_struct"),
    ("init_cred", "cred"),
    ("init_nsproxy", "nsproxy"),
    ("init_pid_ns", "pid_namespace"),
    ("init_uts_ns", "uts_namespace"),
    ("init_net", "net"),
    ("init_signals", "signal_struct"),
    ("init_sighand", "sighand_struct"),
    ("modules", "list_head"),
    ("net_namespace_list", "list_head"),
    ("super_blocks", "list_head"),
    ("socket_file_ops", "file_operations"),
    ("sockfs_dentry_operations", "dentry_operations"),
    ("pipefifo_fops", "file_operations"),
    ("tcp_hashinfo", "inet_hashinfo"),
    ("mod_tree", "mod_tree_root"),
    // The eBPF walk's (Volatility's linux.ebpf reads prog_idr).
    ("prog_idr", "idr"),
    ("link_idr", "idr"),
    ("map_idr", "idr"),
    ("bpf_kallsyms", "list_head"),
    ("pack_list", "list_head"),
    // What Volatility's integrity plugins read by symbol.
    ("module_kset", "*kset"),
    ("keyboard_notifier_list", "atomic_notifier_head"),
    ("ftrace_ops_list", "*ftrace_ops"),
    ("ftrace_list_end", "ftrace_ops"),
    ("page_offset_base", "long unsigned int"),
    ("vmemmap_base", "long unsigned int"),
    ("vmalloc_base", "long unsigned int"),
    ("phys_base", "long unsigned int"),
    ("max_pfn", "long unsigned int"),
    ("jiffies", "long unsigned int"),
    ("__pgtable_l5_enabled", "unsigned int"),
];

/// Section bounds the linker script defines, `char[]` in dwarf2json's ISF
/// (Volatility reads `_text` by symbol to place module addresses).
const LINKER_MARKS: &[&str] = &[
    "_text",
    "_stext",
    "_etext",
    "_sinittext",
    "_einittext",
    "_end",
];

/// The kernel's tracepoint table, `tracepoint_ptr_t[]`: BTF has the typedef
/// (an `int` offset with `CONFIG_HAVE_ARCH_PREL32_RELOCATIONS`, else a
/// pointer), and Volatility's linux.tracing.tracepoints reads the type.
const TRACEPOINT_TABLE: &[&str] = &["__start___tracepoints_ptrs", "__stop___tracepoints_ptrs"];

/// Arrays of structs whose length is a macro, not in BTF (`taint_flags`,
/// which Volatility's lsmod reads). The count is `TAINT_FLAGS_COUNT` for
/// the kernel versions we know it for, else the gap to the next symbol
/// divided by the element size (which may overcount: kallsyms omits some
/// objects).
const ARRAY_SYMBOL_TYPES: &[(&str, &str)] = &[("taint_flags", "taint_flag")];

/// `TAINT_FLAGS_COUNT` by kernel version (include/linux/panic.h): 19 from
/// 6.0 (TAINT_TEST) until 6.15 adds TAINT_FWCTL.
fn taint_flags_count(banner: Option<&[u8]>) -> Option<u64> {
    let b = std::str::from_utf8(banner?).ok()?;
    let release = b.strip_prefix("Linux version ")?.split(' ').next()?;
    let mut it = release.split(['.', '-', '+']);
    let major: u32 = it.next()?.parse().ok()?;
    let minor: u32 = it.next()?.parse().ok()?;
    match (major, minor) {
        (6, 0..=14) => Some(19),
        (6, _) => Some(20),
        _ => None,
    }
}

/// Variables whose type is an anonymous struct, found by its member names
/// (`static struct { seqcount_raw_spinlock_t seq; struct timekeeper
/// timekeeper; } tk_core`, which Volatility reads for boot time).
const ANONYMOUS_SYMBOL_TYPES: &[(&str, &[&str])] = &[("tk_core", &["seq", "timekeeper"])];

const MAX_DEPTH: u32 = 64;

pub(super) struct Converter<'b, 'a> {
    btf: &'b Btf<'a>,
    /// ISF name of every struct, union and enum id.
    names: HashMap<u32, String>,
    /// Typedef names of named structs, unions and enums (`spinlock_t` for
    /// `struct spinlock`): fields use them, as dwarf2json does, and they
    /// become user types or enums of their own.
    aliases: BTreeMap<String, u32>,
}

impl<'b, 'a> Converter<'b, 'a> {
    pub(super) fn new(btf: &'b Btf<'a>) -> Self {
        // Anonymous types named by a typedef take its name (first wins).
        let mut typedef_of: HashMap<u32, &str> = HashMap::new();
        for (_, k) in btf.iter() {
            if let Kind::Typedef { name, target } = k {
                typedef_of.entry(*target).or_insert(name);
            }
        }
        let mut names = HashMap::new();
        for (id, k) in btf.iter() {
            let (name, kind) = match k {
                Kind::Struct { name, union, .. } => {
                    (*name, if *union { "union" } else { "struct" })
                }
                Kind::Enum { name, .. } => (*name, "enum"),
                _ => continue,
            };
            let n = if !name.is_empty() {
                name.to_string()
            } else if let Some(t) = typedef_of.get(&id) {
                (*t).to_string()
            } else {
                format!("unnamed_{kind}_{id}")
            };
            names.insert(id, n);
        }
        let taken: HashSet<&str> = names.values().map(String::as_str).collect();
        let mut aliases = BTreeMap::new();
        for (_, k) in btf.iter() {
            if let Kind::Typedef { name, target } = k {
                let t = btf.skip_modifiers(*target);
                if let Some(n) = names.get(&t)
                    && n != name
                    && !taken.contains(name)
                {
                    aliases.entry(name.to_string()).or_insert(t);
                }
            }
        }
        Converter {
            btf,
            names,
            aliases,
        }
    }

    fn name(&self, id: u32) -> String {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("unnamed_{id}"))
    }

    /// The ISF type descriptor of a BTF type.
    pub(super) fn desc(&self, id: u32, depth: u32) -> Value {
        if depth > MAX_DEPTH {
            return json!({"kind": "base", "name": "void"});
        }
        match self.btf.get(id) {
            Kind::Void => json!({"kind": "base", "name": "void"}),
            Kind::Int { name, .. } | Kind::Float { name, .. } => {
                json!({"kind": "base", "name": name})
            }
            Kind::Ptr(t) => json!({"kind": "pointer", "subtype": self.desc(*t, depth + 1)}),
            Kind::Array { elem, count } => {
                json!({"kind": "array", "count": count, "subtype": self.desc(*elem, depth + 1)})
            }
            Kind::Struct { union, .. } => {
                json!({"kind": if *union { "union" } else { "struct" }, "name": self.name(id)})
            }
            Kind::Enum { .. } => json!({"kind": "enum", "name": self.name(id)}),
            Kind::Fwd { name, union } => {
                json!({"kind": if *union { "union" } else { "struct" }, "name": name})
            }
            Kind::Typedef { name, target } => match self.aliases.get(*name) {
                Some(t) => match self.btf.get(*t) {
                    Kind::Enum { .. } => json!({"kind": "enum", "name": name}),
                    Kind::Struct { union: true, .. } => json!({"kind": "union", "name": name}),
                    _ => json!({"kind": "struct", "name": name}),
                },
                None => self.desc(*target, depth + 1),
            },
            Kind::Modifier(target) => self.desc(*target, depth + 1),
            Kind::Func | Kind::FuncProto => json!({"kind": "function"}),
            Kind::Var { .. } | Kind::Datasec { .. } | Kind::DeclTag => {
                json!({"kind": "base", "name": "void"})
            }
        }
    }

    /// `{kind, size, fields}` of a struct or union id.
    fn user_type(&self, id: u32) -> Option<Value> {
        let Kind::Struct {
            size,
            union,
            members,
            ..
        } = self.btf.get(id)
        else {
            return None;
        };
        let mut fields = Map::new();
        let mut unnamed = 0;
        for m in members {
            let mut offset = m.bit_offset / 8;
            let mut position = m.bit_offset % 8;
            let storage = self.btf.resolve(m.ty);
            let bits = if m.bitfield_size > 0 {
                Some(u32::from(m.bitfield_size))
            } else if let Kind::Int {
                size,
                bits_offset,
                nr_bits,
                ..
            } = self.btf.get(storage)
                && u64::from(*nr_bits) != u64::from(*size) * 8
            {
                // Old-style BTF bitfield: the int itself carries the bits.
                let at = m.bit_offset.saturating_add(u32::from(*bits_offset));
                offset = at / 8;
                position = at % 8;
                Some(u32::from(*nr_bits))
            } else {
                None
            };
            let ty = match bits {
                Some(len) => json!({
                    "kind": "bitfield", "bit_position": position, "bit_length": len,
                    "type": self.desc(m.ty, 0),
                }),
                None => self.desc(m.ty, 0),
            };
            let mut f = Map::new();
            f.insert("type".into(), ty);
            f.insert("offset".into(), json!(offset));
            let name = if m.name.is_empty() {
                f.insert("anonymous".into(), json!(true));
                let n = format!("unnamed_field_{unnamed}");
                unnamed += 1;
                n
            } else {
                m.name.to_string()
            };
            fields.insert(name, Value::Object(f));
        }
        Some(json!({
            "kind": if *union { "union" } else { "struct" },
            "size": size,
            "fields": fields,
        }))
    }

    /// Anonymous struct/union ids embedded (as anonymous members) in `id`.
    fn anonymous_members(&self, id: u32) -> Vec<u32> {
        match self.btf.get(id) {
            Kind::Struct { members, .. } => members
                .iter()
                .filter(|m| m.name.is_empty())
                .map(|m| self.btf.resolve(m.ty))
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn enum_base(size: u32, signed: bool) -> &'static str {
    match (size, signed) {
        (1, false) => "unsigned char",
        (1, true) => "signed char",
        (2, false) => "short unsigned int",
        (2, true) => "short int",
        (8, false) => "long unsigned int",
        (8, true) => "long int",
        (_, false) => "unsigned int",
        (_, true) => "int",
    }
}

/// What goes into the document besides BTF.
pub(super) struct Inputs<'k, 'a> {
    pub kallsyms: &'k Kallsyms<'a>,
    /// `linux_banner` as the kernel holds it, including "\n" and the NUL.
    pub banner: Option<&'k [u8]>,
}

pub(super) fn build(btf: &Btf<'_>, inputs: &Inputs<'_, '_>, sel: &Selection) -> Value {
    let conv = Converter::new(btf);

    // Base types: every int and float, plus the two Volatility expects.
    let mut base = Map::new();
    for (_, k) in btf.iter() {
        let (name, size, kind, signed) = match k {
            Kind::Int {
                name,
                size,
                encoding,
                ..
            } => {
                let kind = if encoding & 4 != 0 || *name == "_Bool" {
                    "bool"
                } else if encoding & 2 != 0 || name.contains("char") {
                    "char"
                } else {
                    "int"
                };
                let signed = encoding & 1 != 0 || (*name == "char");
                (*name, *size, kind, signed)
            }
            Kind::Float { name, size } => (*name, *size, "float", true),
            _ => continue,
        };
        base.entry(name.to_string()).or_insert_with(
            || json!({"size": size, "signed": signed, "kind": kind, "endian": "little"}),
        );
    }
    base.insert(
        "pointer".into(),
        json!({"size": 8, "signed": false, "kind": "int", "endian": "little"}),
    );
    base.insert(
        "void".into(),
        json!({"size": 0, "signed": false, "kind": "void", "endian": "little"}),
    );
    for (size, signed) in [
        (1, false),
        (1, true),
        (2, false),
        (2, true),
        (4, false),
        (4, true),
        (8, false),
        (8, true),
    ] {
        base.entry(enum_base(size, signed).to_string())
            .or_insert_with(|| json!({"size": size, "signed": signed, "kind": if size == 1 { "char" } else { "int" }, "endian": "little"}));
    }

    // User types: the selected named ones and the anonymous ones they embed.
    // Where two BTF types share a name, the first with members wins.
    let mut chosen: BTreeMap<String, u32> = BTreeMap::new();
    let mut todo: Vec<u32> = Vec::new();
    for (id, k) in btf.iter() {
        if let Kind::Struct { name, members, .. } = k {
            let n = conv.name(id);
            let anonymous = name.is_empty() && n.starts_with("unnamed_");
            let wanted = match sel {
                Selection::All => true,
                Selection::Only { .. } => !anonymous && sel.keeps_final_type(&n),
            };
            if !wanted {
                continue;
            }
            let replace = match chosen.get(&n) {
                None => true,
                // A later definition with members beats an empty one.
                Some(prev) => {
                    matches!(btf.get(*prev), Kind::Struct { members: pm, .. } if pm.is_empty())
                        && !members.is_empty()
                }
            };
            if replace {
                chosen.insert(n, id);
                todo.push(id);
            }
        }
    }
    while let Some(id) = todo.pop() {
        for inner in conv.anonymous_members(id) {
            let n = conv.name(inner);
            if let std::collections::btree_map::Entry::Vacant(e) = chosen.entry(n) {
                e.insert(inner);
                todo.push(inner);
            }
        }
    }
    let mut users: Map<String, Value> = chosen
        .iter()
        .filter_map(|(n, id)| Some((n.clone(), conv.user_type(*id)?)))
        .collect();
    for (alias, id) in &conv.aliases {
        if sel.keeps_final_type(alias) && !users.contains_key(alias) {
            let Some(t) = conv.user_type(*id) else {
                continue;
            };
            users.insert(alias.clone(), t);
            for inner in conv.anonymous_members(*id) {
                let n = conv.name(inner);
                if !users.contains_key(&n)
                    && let Some(t) = conv.user_type(inner)
                {
                    users.insert(n, t);
                }
            }
        }
    }

    let mut enums = Map::new();
    for (id, k) in btf.iter() {
        if let Kind::Enum {
            size,
            signed,
            values,
            ..
        } = k
        {
            let constants: Map<String, Value> = values
                .iter()
                .map(|(c, v)| (c.to_string(), json!(v)))
                .collect();
            let e =
                json!({"size": size, "base": enum_base(*size, *signed), "constants": constants});
            let n = conv.name(id);
            let aliases = conv
                .aliases
                .iter()
                .filter(|(_, t)| **t == id)
                .map(|(a, _)| a.clone());
            for n in std::iter::once(n).chain(aliases) {
                if sel.keeps_enum(&n) && !enums.contains_key(&n) {
                    enums.insert(n, e.clone());
                }
            }
        }
    }

    // Symbols: kallsyms addresses (made link-time), typed where we know.
    let mut var_types: HashMap<&str, u32> = HashMap::new();
    for (_, k) in btf.iter() {
        if let Kind::Var { name, ty } = k {
            var_types.entry(name).or_insert(*ty);
        }
    }
    let struct_names = struct_names(btf);
    let tracepoint_ptr = btf.iter().find_map(|(_, k)| match k {
        Kind::Typedef { name, target } if *name == "tracepoint_ptr_t" => {
            Some(conv.desc(*target, 0))
        }
        _ => None,
    });
    let all_symbols = inputs.kallsyms.link_symbols();
    let mut addresses: Vec<u64> = all_symbols.iter().map(|(_, a)| *a).collect();
    addresses.sort_unstable();
    addresses.dedup();
    let gap_after = |a: u64| -> Option<u64> {
        let i = addresses.partition_point(|&x| x <= a);
        addresses.get(i).map(|n| n - a)
    };
    let mut symbols = Map::new();
    for (name, addr) in all_symbols {
        if !sel.keeps_symbol(name) {
            continue;
        }
        let mut s = Map::new();
        s.insert("address".into(), json!(addr));
        if name == "linux_banner"
            && let Some(b) = inputs.banner
        {
            s.insert(
                "type".into(),
                json!({"kind": "array", "count": b.len(), "subtype": {"kind": "base", "name": "char"}}),
            );
            s.insert(
                "constant_data".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(b)),
            );
        } else if LINKER_MARKS.contains(&name) && base.contains_key("char") {
            s.insert(
                "type".into(),
                json!({"kind": "array", "count": 0, "subtype": {"kind": "base", "name": "char"}}),
            );
        } else if TRACEPOINT_TABLE.contains(&name)
            && let Some(elem) = &tracepoint_ptr
        {
            s.insert(
                "type".into(),
                json!({"kind": "array", "count": 0, "subtype": elem}),
            );
        } else if let Some((_, t)) = SYMBOL_TYPES.iter().find(|(n, _)| *n == name) {
            if let Some(target) = t.strip_prefix('*') {
                if struct_names.contains(target) {
                    s.insert(
                        "type".into(),
                        json!({"kind": "pointer", "subtype": {"kind": "struct", "name": target}}),
                    );
                }
            } else if base.contains_key(*t) {
                s.insert("type".into(), json!({"kind": "base", "name": t}));
            } else if struct_names.contains(t) {
                s.insert("type".into(), json!({"kind": "struct", "name": t}));
            }
        } else if let Some((_, elem)) = ARRAY_SYMBOL_TYPES.iter().find(|(n, _)| *n == name)
            && let Some(size) = users.get(*elem).and_then(|t| t["size"].as_u64())
            && size > 0
            && let Some(count) =
                taint_flags_count(inputs.banner).or_else(|| gap_after(addr).map(|g| g / size))
            && count > 0
            && count < 4096
        {
            s.insert(
                "type".into(),
                json!({"kind": "array", "count": count, "subtype": {"kind": "struct", "name": elem}}),
            );
        } else if let Some(t) = var_types.get(name) {
            s.insert("type".into(), conv.desc(*t, 0));
        } else if let Some((_, shape)) = ANONYMOUS_SYMBOL_TYPES.iter().find(|(n, _)| *n == name)
            && let Some((id, _)) = btf.iter().find(|(_, k)| {
                matches!(k, Kind::Struct { name, members, .. } if name.is_empty()
                    && members.iter().map(|m| m.name).eq(shape.iter().copied()))
            })
            && users.contains_key(&conv.name(id))
        {
            s.insert(
                "type".into(),
                json!({"kind": "struct", "name": conv.name(id)}),
            );
        }
        symbols.insert(name.to_string(), Value::Object(s));
    }

    json!({
        "metadata": {
            "format": "6.2.0",
            "producer": {"name": "mshot", "version": env!("CARGO_PKG_VERSION")},
        },
        "base_types": base,
        "user_types": users,
        "enums": enums,
        "symbols": symbols,
    })
}

/// Names of all named structs and unions in the BTF.
fn struct_names<'a>(btf: &Btf<'a>) -> HashSet<&'a str> {
    btf.iter()
        .filter_map(|(_, k)| match k {
            Kind::Struct { name, .. } if !name.is_empty() => Some(*name),
            _ => None,
        })
        .collect()
}
