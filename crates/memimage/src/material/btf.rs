//! A reader for BTF, the kernel's compact type format
//! (`/sys/kernel/btf/vmlinux`, include/uapi/linux/btf.h).
//!
//! Layout: a header (magic 0xEB9F, version 1, header length, then offsets
//! and lengths of the type and string sections, both relative to the end of
//! the header); type ids start at 1 (0 is void) in section order. Every
//! length is checked against the bytes present, so a truncated file is an
//! error naming what is missing, never a partial type table.

use std::fmt;

/// Errors from parsing BTF.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF: expected magic 0xeb9f version 1, found {0}")]
    NotBtf(String),
    #[error("truncated BTF: the header announces {expected} bytes, the data has {found}")]
    Truncated { expected: u64, found: u64 },
    #[error("corrupt BTF: type {id} {what}")]
    Corrupt { id: u32, what: String },
    #[error("split BTF (a module's) is not supported: expected the kernel's own vmlinux BTF")]
    Split,
}

/// One BTF type, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    Void,
    Int {
        name: &'a str,
        size: u32,
        /// BTF_INT_SIGNED (1), BTF_INT_CHAR (2), BTF_INT_BOOL (4).
        encoding: u8,
        bits_offset: u8,
        nr_bits: u8,
    },
    Float {
        name: &'a str,
        size: u32,
    },
    Ptr(u32),
    Array {
        elem: u32,
        count: u32,
    },
    Struct {
        name: &'a str,
        size: u32,
        union: bool,
        members: Vec<Member<'a>>,
    },
    Enum {
        name: &'a str,
        size: u32,
        signed: bool,
        values: Vec<(&'a str, i64)>,
    },
    Fwd {
        name: &'a str,
        union: bool,
    },
    Typedef {
        name: &'a str,
        target: u32,
    },
    /// const, volatile, restrict, type_tag: transparent for layouts.
    Modifier(u32),
    Func,
    FuncProto,
    Var {
        name: &'a str,
        ty: u32,
    },
    Datasec {
        name: &'a str,
        vars: Vec<u32>,
    },
    DeclTag,
}

/// A struct or union member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    /// Empty for an anonymous member.
    pub name: &'a str,
    pub ty: u32,
    pub bit_offset: u32,
    /// Non-zero for a bitfield declared with the struct's kind_flag set.
    pub bitfield_size: u8,
}

/// A parsed BTF blob: `types[id - 1]` for ids from 1.
pub struct Btf<'a> {
    types: Vec<Kind<'a>>,
}

impl fmt::Debug for Btf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Btf({} types)", self.types.len())
    }
}

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([
        *s.first()?,
        *s.get(1)?,
        *s.get(2)?,
        *s.get(3)?,
    ]))
}

/// Reads the header; returns (header length, types, strings) sections.
fn sections(data: &[u8]) -> Result<(&[u8], &[u8]), BtfError> {
    let (Some(&m0), Some(&m1), Some(&version)) = (data.first(), data.get(1), data.get(2)) else {
        return Err(BtfError::Truncated {
            expected: HEADER_LEN as u64,
            found: data.len() as u64,
        });
    };
    if u16::from_le_bytes([m0, m1]) != MAGIC || version != 1 {
        return Err(BtfError::NotBtf(format!("{m0:02x} {m1:02x} {version:02x}")));
    }
    let hdr_len = u32_at(data, 4).unwrap_or(0) as usize;
    let field = |i: usize| {
        u32_at(data, 8 + 4 * i).ok_or(BtfError::Truncated {
            expected: HEADER_LEN as u64,
            found: data.len() as u64,
        })
    };
    let (type_off, type_len, str_off, str_len) = (field(0)?, field(1)?, field(2)?, field(3)?);
    if hdr_len < HEADER_LEN {
        return Err(BtfError::NotBtf(format!("header length {hdr_len}")));
    }
    let end = |off: u32, len: u32| hdr_len as u64 + u64::from(off) + u64::from(len);
    let need = end(type_off, type_len).max(end(str_off, str_len));
    if need > data.len() as u64 {
        return Err(BtfError::Truncated {
            expected: need,
            found: data.len() as u64,
        });
    }
    let slice = |off: u32, len: u32| {
        let a = hdr_len + off as usize;
        data.get(a..a + len as usize).unwrap_or_default()
    };
    Ok((slice(type_off, type_len), slice(str_off, str_len)))
}

/// Total length (header + sections) announced by a BTF header, if `data`
/// starts with one; used to cut a BTF blob out of memory.
pub fn announced_len(data: &[u8]) -> Option<u64> {
    if data.get(..3)? != [0x9f, 0xeb, 1] {
        return None;
    }
    let hdr_len = u64::from(u32_at(data, 4)?);
    let f = |i: usize| u32_at(data, 8 + 4 * i).map(u64::from);
    Some(hdr_len + (f(0)? + f(1)?).max(f(2)? + f(3)?))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> Option<u32> {
        let v = u32_at(self.b, self.at)?;
        self.at += 4;
        Some(v)
    }
}

impl<'a> Btf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let (tsec, strs) = sections(data)?;
        let name = |id: u32, off: u32| -> Result<&'a str, BtfError> {
            let rest = strs.get(off as usize..).ok_or_else(|| BtfError::Corrupt {
                id,
                what: format!("names string offset {off} past the string section"),
            })?;
            let end = memchr::memchr(0, rest).unwrap_or(rest.len());
            std::str::from_utf8(rest.get(..end).unwrap_or_default()).map_err(|_| {
                BtfError::Corrupt {
                    id,
                    what: format!("has a non-UTF-8 name at string offset {off}"),
                }
            })
        };
        let mut r = Reader { b: tsec, at: 0 };
        let mut types = Vec::with_capacity(tsec.len() / 24);
        while r.at < tsec.len() {
            let id = types.len() as u32 + 1;
            let short = || BtfError::Corrupt {
                id,
                what: "runs past the end of the type section".into(),
            };
            let name_off = r.u32().ok_or_else(short)?;
            let info = r.u32().ok_or_else(short)?;
            let size_type = r.u32().ok_or_else(short)?;
            let vlen = info & 0xffff;
            let kind = (info >> 24) & 0x1f;
            let kflag = info >> 31 == 1;
            let k = match kind {
                1 => {
                    let enc = r.u32().ok_or_else(short)?;
                    Kind::Int {
                        name: name(id, name_off)?,
                        size: size_type,
                        encoding: ((enc >> 24) & 0xf) as u8,
                        bits_offset: ((enc >> 16) & 0xff) as u8,
                        nr_bits: (enc & 0xff) as u8,
                    }
                }
                2 => Kind::Ptr(size_type),
                3 => {
                    let elem = r.u32().ok_or_else(short)?;
                    let _index = r.u32().ok_or_else(short)?;
                    let count = r.u32().ok_or_else(short)?;
                    Kind::Array { elem, count }
                }
                4 | 5 => {
                    let mut members = Vec::with_capacity(vlen as usize);
                    for _ in 0..vlen {
                        let mname = r.u32().ok_or_else(short)?;
                        let ty = r.u32().ok_or_else(short)?;
                        let off = r.u32().ok_or_else(short)?;
                        let (bit_offset, bitfield_size) = if kflag {
                            (off & 0xff_ffff, (off >> 24) as u8)
                        } else {
                            (off, 0)
                        };
                        members.push(Member {
                            name: name(id, mname)?,
                            ty,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    Kind::Struct {
                        name: name(id, name_off)?,
                        size: size_type,
                        union: kind == 5,
                        members,
                    }
                }
                6 | 19 => {
                    let mut values = Vec::with_capacity(vlen as usize);
                    for _ in 0..vlen {
                        let vname = r.u32().ok_or_else(short)?;
                        let lo = r.u32().ok_or_else(short)?;
                        let v = if kind == 19 {
                            let hi = r.u32().ok_or_else(short)?;
                            (u64::from(hi) << 32 | u64::from(lo)) as i64
                        } else if kflag {
                            i64::from(lo as i32)
                        } else {
                            i64::from(lo)
                        };
                        values.push((name(id, vname)?, v));
                    }
                    Kind::Enum {
                        name: name(id, name_off)?,
                        size: size_type,
                        signed: kflag,
                        values,
                    }
                }
                7 => Kind::Fwd {
                    name: name(id, name_off)?,
                    union: kflag,
                },
                8 => Kind::Typedef {
                    name: name(id, name_off)?,
                    target: size_type,
                },
                9..=11 | 18 => Kind::Modifier(size_type),
                12 => Kind::Func,
                13 => {
                    r.at += 8 * vlen as usize;
                    Kind::FuncProto
                }
                14 => {
                    r.u32().ok_or_else(short)?;
                    Kind::Var {
                        name: name(id, name_off)?,
                        ty: size_type,
                    }
                }
                15 => {
                    let mut vars = Vec::with_capacity(vlen as usize);
                    for _ in 0..vlen {
                        vars.push(r.u32().ok_or_else(short)?);
                        r.u32().ok_or_else(short)?;
                        r.u32().ok_or_else(short)?;
                    }
                    Kind::Datasec {
                        name: name(id, name_off)?,
                        vars,
                    }
                }
                16 => Kind::Float {
                    name: name(id, name_off)?,
                    size: size_type,
                },
                17 => {
                    r.u32().ok_or_else(short)?;
                    Kind::DeclTag
                }
                other => {
                    return Err(BtfError::Corrupt {
                        id,
                        what: format!("has unknown kind {other}"),
                    });
                }
            };
            if r.at > tsec.len() {
                return Err(short());
            }
            types.push(k);
        }
        let btf = Btf { types };
        // A reference past the table means split BTF (ids continue a base
        // BTF) or corruption; both would give wrong layouts.
        let n = btf.types.len() as u32;
        for (i, t) in btf.types.iter().enumerate() {
            let refs: Vec<u32> = match t {
                Kind::Ptr(t) | Kind::Modifier(t) | Kind::Typedef { target: t, .. } => vec![*t],
                Kind::Array { elem, .. } => vec![*elem],
                Kind::Struct { members, .. } => members.iter().map(|m| m.ty).collect(),
                _ => Vec::new(),
            };
            if let Some(bad) = refs.into_iter().find(|&r| r > n) {
                return Err(if i == 0 {
                    BtfError::Split
                } else {
                    BtfError::Corrupt {
                        id: i as u32 + 1,
                        what: format!("refers to type {bad}, beyond the {n} types present"),
                    }
                });
            }
        }
        Ok(btf)
    }

    /// The type with this id (0 is void).
    pub fn get(&self, id: u32) -> &Kind<'a> {
        const VOID: Kind<'static> = Kind::Void;
        match id.checked_sub(1) {
            Some(i) => self.types.get(i as usize).unwrap_or(&VOID),
            None => &VOID,
        }
    }

    /// Number of types (ids 1..=len).
    pub fn len(&self) -> u32 {
        self.types.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// Follows typedefs and modifiers to the type that gives the layout.
    pub fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.get(id) {
                Kind::Typedef { target, .. } | Kind::Modifier(target) => id = *target,
                _ => break,
            }
        }
        id
    }

    /// Follows modifiers (const, volatile...) but not typedefs.
    pub fn skip_modifiers(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.get(id) {
                Kind::Modifier(target) => id = *target,
                _ => break,
            }
        }
        id
    }

    /// All types with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Kind<'a>)> {
        self.types
            .iter()
            .enumerate()
            .map(|(i, k)| (i as u32 + 1, k))
    }
}

/// A tiny BTF for tests: int, struct s { int a; int b:3; }, pointer to s.
#[cfg(test)]
pub(crate) fn tests_sample() -> Vec<u8> {
    tests::sample()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    pub(super) fn sample() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0".to_vec();
        let mut t = Vec::new();
        let w = |t: &mut Vec<u8>, v: u32| t.extend_from_slice(&v.to_le_bytes());
        // 1: int, 4 bytes, signed, 32 bits
        w(&mut t, 1);
        w(&mut t, 1 << 24);
        w(&mut t, 4);
        w(&mut t, 1 << 24 | 32);
        // 2: struct s (kind_flag: bitfield sizes in offsets), 2 members, size 8
        w(&mut t, 5);
        w(&mut t, 1 << 31 | 4 << 24 | 2);
        w(&mut t, 8);
        w(&mut t, 7);
        w(&mut t, 1);
        w(&mut t, 0);
        w(&mut t, 9);
        w(&mut t, 1);
        w(&mut t, 3 << 24 | 35);
        // 3: pointer to 2
        w(&mut t, 0);
        w(&mut t, 2 << 24);
        w(&mut t, 2);
        let mut b = Vec::new();
        b.extend_from_slice(&[0x9f, 0xeb, 1, 0]);
        w(&mut b, 24);
        w(&mut b, 0);
        w(&mut b, t.len() as u32);
        w(&mut b, t.len() as u32);
        w(&mut b, strings.len() as u32);
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn parses_a_small_blob() {
        let b = sample();
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(btf.len(), 3);
        match btf.get(2) {
            Kind::Struct { name, members, .. } => {
                assert_eq!(*name, "s");
                assert_eq!(members[1].bit_offset, 35);
                assert_eq!(members[1].bitfield_size, 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(btf.resolve(3), 3);
        assert_eq!(announced_len(&b), Some(b.len() as u64));
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let b = sample();
        for cut in [0, 5, 20, 30, b.len() - 1] {
            assert!(
                matches!(
                    Btf::parse(&b[..cut]),
                    Err(BtfError::Truncated { .. } | BtfError::NotBtf(_))
                ),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            Btf::parse(b"hello world, not btf at all"),
            Err(BtfError::NotBtf(_))
        ));
        // A member pointing past the table.
        let mut bad = b.clone();
        bad[24 + 16 + 16] = 99;
        assert!(matches!(Btf::parse(&bad), Err(BtfError::Corrupt { .. })));
    }
}
