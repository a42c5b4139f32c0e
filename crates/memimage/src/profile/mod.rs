//! Kernel profiles: Volatility 3 ISF and Rekall JSON, plain, xz or gzip,
//! loaded selectively into one type model ([`Profile`]).
//!
//! Loading the full 38 MB ISF into a DOM costs ~270 ms and ~440 MB; a
//! [`Selection`] keeps only what discovery and the plugins use. The result
//! can be written as a tiny ISF ([`Profile::to_cache_bytes`]) that the
//! caller stores under [`cache_key`]: the core itself does no file I/O.

mod export;
mod isf;
mod layout;
mod model;
mod raw;
mod rekall;
mod xz;

pub use model::{
    BaseType, EnumDef, Field, IntLayout, Profile, ProfileFormat, StructDef, Symbol, TypeRef,
    lp64_base_type,
};

use serde::Deserializer as _;
use sha2::{Digest, Sha256};
use std::io::Read;

/// Errors from loading a profile or looking things up in it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProfileError {
    #[error("cannot decompress profile: expected valid {format} data, found {reason}")]
    Decompress {
        format: &'static str,
        reason: String,
    },
    #[error("malformed profile JSON: {0}")]
    Json(String),
    #[error(
        "not a kernel profile: expected ISF keys (metadata, user_types, symbols) or Rekall keys ($STRUCTS, $CONSTANTS), found {found}"
    )]
    NotAProfile { found: String },
    #[error("unsupported profile: expected {expected}, found {found}")]
    Unsupported { expected: String, found: String },
    #[error("malformed profile: expected {expected}, found {found}")]
    Malformed { expected: String, found: String },
    #[error("profile {profile} has no type {name}")]
    MissingType { profile: String, name: String },
    #[error("profile {profile} has no field {name}")]
    MissingField { profile: String, name: String },
    #[error("profile {profile} has no symbol {name}")]
    MissingSymbol { profile: String, name: String },
}

/// Which types, symbols and enums to keep while loading.
#[derive(Debug, Clone, Copy)]
pub enum Selection {
    /// Everything (for exporting or inspecting a whole profile).
    All,
    Only {
        types: &'static [&'static str],
        symbols: &'static [&'static str],
        enums: &'static [&'static str],
        /// Keep every symbol: the integrity checks name addresses by the
        /// nearest kernel symbol and look handlers up by name.
        all_symbols: bool,
    },
}

/// The types kernel discovery and the built-in plugins read.
pub const PLUGIN_TYPES: &[&str] = &[
    "task_struct",
    "list_head",
    "mm_struct",
    "cred",
    "kuid_t",
    "kgid_t",
    "module",
    "module_layout",
    "module_memory",
    "signal_struct",
    // netstat, maps, memdump, envars, bash (file descriptors,
    // sockets, VMAs and the maple tree, path names).
    "files_struct",
    "fdtable",
    "file",
    "path",
    "dentry",
    "qstr",
    "dentry_operations",
    "inode",
    "atomic_t",
    "super_block",
    "vfsmount",
    "mount",
    "fs_struct",
    "socket_alloc",
    "socket",
    "sock",
    "sock_common",
    "inet_sock",
    "ipv6_pinfo",
    "in6_addr",
    "unix_sock",
    "unix_address",
    "sockaddr_un",
    "nsproxy",
    "net",
    "ns_common",
    "mm_context_t",
    "vm_area_struct",
    "maple_tree",
    "maple_node",
    "maple_range_64",
    "maple_arange_64",
    // Boot time, for wall-clock process start times.
    "timekeeper",
];

/// Bump when the cache layout changes (a selection's change is in its tag).
const CACHE_VERSION: &str = "v9";

impl Selection {
    /// What kernel discovery and the built-in plugins use.
    pub const PLUGINS: Selection = Selection::Only {
        types: PLUGIN_TYPES,
        symbols: &[
            "init_task",
            "tk_core",
            "init_files",
            "linux_banner",
            "modules",
            "init_top_pgt",
            "init_level4_pgt",
            "swapper_pg_dir",
            "init_mm",
            "page_offset_base",
            "phys_base",
            "_text",
            "__pgtable_l5_enabled",
            // AArch64 discovery.
            "kimage_voffset",
            "vabits_actual",
            "memstart_addr",
            "vmcoreinfo_note",
            "linux_proc_banner",
            "socket_file_ops",
            "sockfs_dentry_operations",
            "sockfs_dname",
            "pipefs_dname",
            "anon_inodefs_dname",
            "simple_dname",
            "ns_dname",
        ],
        enums: &["mod_mem_type", "module_state"],
        all_symbols: false,
    };

    /// What the integrity checks (and triage) use: the plugins' types and
    /// theirs, and every symbol.
    pub const INTEGRITY: Selection = Selection::Only {
        types: crate::plugins::INTEGRITY_TYPES,
        symbols: &[],
        enums: &[
            "mod_mem_type",
            "module_state",
            "bpf_prog_type",
            "bpf_link_type",
            "bpf_attach_type",
            "cgroup_bpf_attach_type",
            "netns_bpf_attach_type",
        ],
        all_symbols: true,
    };

    /// A short tag for cache keys: selections are cached apart, and a
    /// selection that changed (a type a new check reads) is not served
    /// from a cache made for the old one.
    pub fn tag(&self) -> String {
        let Selection::Only {
            types,
            symbols,
            enums,
            all_symbols,
        } = self
        else {
            return "all".into();
        };
        let mut h = Sha256::new();
        for list in [*types, *symbols, *enums] {
            for name in list {
                h.update(name.as_bytes());
                h.update([0]);
            }
            h.update([1]);
        }
        let digest = h.finalize();
        let short: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let what = if *all_symbols { "integrity" } else { "plugins" };
        format!("{what}-{short}")
    }

    pub(crate) fn keeps_type(&self, n: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Only { types, .. } => {
                types.contains(&n) || n.starts_with("unnamed") || n.starts_with("__unnamed")
            }
        }
    }

    pub(crate) fn keeps_final_type(&self, n: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Only { types, .. } => types.contains(&n),
        }
    }

    pub(crate) fn keeps_symbol(&self, n: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Only {
                symbols,
                all_symbols,
                ..
            } => *all_symbols || symbols.contains(&n),
        }
    }

    pub(crate) fn keeps_enum(&self, n: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Only { enums, .. } => enums.contains(&n),
        }
    }
}

const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];

/// A profile's bytes after [`decompress`].
#[derive(Debug)]
pub enum Decompressed<'a> {
    /// The input was not compressed.
    Plain(&'a [u8]),
    Decoded(xz::Output),
}

impl std::ops::Deref for Decompressed<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Decompressed::Plain(b) => b,
            Decompressed::Decoded(o) => o,
        }
    }
}

/// Decompresses xz or gzip by magic bytes; anything else is returned as is.
pub fn decompress(bytes: &[u8]) -> Result<Decompressed<'_>, ProfileError> {
    if bytes.starts_with(XZ_MAGIC) {
        xz::decode(bytes)
            .map(Decompressed::Decoded)
            .map_err(|reason| ProfileError::Decompress {
                format: "xz",
                reason,
            })
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(bytes.len() * 8);
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| ProfileError::Decompress {
                format: "gzip",
                reason: e.to_string(),
            })?;
        Ok(Decompressed::Decoded(xz::Output::Heap(out)))
    } else if bytes.starts_with(b"BZh") {
        Err(ProfileError::Unsupported {
            expected: "a .json, .json.xz or .json.gz profile".into(),
            found: "bzip2 data".into(),
        })
    } else {
        Ok(Decompressed::Plain(bytes))
    }
}

/// One pass over a whole profile document.
fn parse(data: &[u8], sel: &Selection) -> Result<raw::RawProfile, ProfileError> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let raw = de
        .deserialize_map(raw::TopLevel { sel })
        .map_err(|e| ProfileError::Json(e.to_string()))?;
    de.end().map_err(|e| ProfileError::Json(e.to_string()))?;
    Ok(raw)
}

/// Cache key of a profile file's raw bytes (compressed or not).
pub fn cache_key(raw: &[u8]) -> String {
    let digest = Sha256::digest(raw);
    let mut s = String::with_capacity(70);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('-');
    s.push_str(CACHE_VERSION);
    s
}

/// The model from what a pass found, in whichever format it is.
fn build(raw: raw::RawProfile, name: &str, sel: &Selection) -> Result<Profile, ProfileError> {
    if raw.user_types.is_some() && raw.symbols.is_some() {
        isf::build(raw, name, sel)
    } else if raw.rk_structs.is_some() {
        rekall::build(raw, name, sel)
    } else {
        let mut keys: Vec<&str> = raw.other_keys.iter().map(String::as_str).collect();
        keys.extend(raw.isf_meta.as_ref().map(|_| "metadata"));
        keys.extend(raw.user_types.as_ref().map(|_| "user_types"));
        keys.extend(raw.symbols.as_ref().map(|_| "symbols"));
        keys.truncate(8);
        Err(ProfileError::NotAProfile {
            found: if keys.is_empty() {
                "no keys".into()
            } else {
                format!("keys {}", keys.join(", "))
            },
        })
    }
}

impl Profile {
    /// Loads a profile (ISF or Rekall, plain/xz/gzip) keeping what the
    /// built-in plugins need.
    pub fn load(bytes: &[u8], name: &str) -> Result<Profile, ProfileError> {
        Self::load_with(bytes, name, &Selection::PLUGINS)
    }

    pub fn load_with(bytes: &[u8], name: &str, sel: &Selection) -> Result<Profile, ProfileError> {
        // A laid-out ISF is read by its layout while it decodes; anything
        // else, or anything that does not build, is parsed whole, so
        // errors are the whole parse's.
        if let Some(names) = layout::Names::new(sel) {
            let by_layout = if bytes.starts_with(XZ_MAGIC) {
                layout::read_xz(bytes, &names)
            } else if bytes.starts_with(b"{\n  \"") {
                layout::read_text(bytes, &names)
            } else {
                None
            };
            if let Some(Ok(profile)) = by_layout.map(|raw| build(raw, name, sel)) {
                return Ok(profile);
            }
        }
        build(parse(&decompress(bytes)?, sel)?, name, sel)
    }

    /// A compact ISF holding just this profile's (selected) content.
    pub fn to_cache_bytes(&self) -> Vec<u8> {
        export::to_isf_bytes(self).unwrap_or_default()
    }

    /// Reads bytes written by [`Profile::to_cache_bytes`].
    pub fn from_cache_bytes(bytes: &[u8], name: &str) -> Result<Profile, ProfileError> {
        Self::load_with(bytes, name, &Selection::All)
    }

    /// The profile as an ISF JSON document.
    pub fn to_isf_json(&self) -> serde_json::Value {
        export::to_isf(self)
    }

    /// The profile as a Rekall JSON profile.
    pub fn to_rekall_json(&self) -> serde_json::Value {
        export::to_rekall(self)
    }
}

#[cfg(test)]
mod tests;
