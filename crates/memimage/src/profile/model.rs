//! The one type model that both ISF and Rekall profiles load into.
//!
//! Plugins ask it for field offsets, symbol addresses and integer widths;
//! they never learn which profile format it came from. Anonymous members
//! are already flattened here, so `mm_struct.pgd` is a plain field even
//! though DWARF nests it in an unnamed struct.

use super::ProfileError;
use std::collections::BTreeMap;

/// A type descriptor, as fields and symbols reference types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeRef {
    Base(String),
    Pointer(Box<TypeRef>),
    Array {
        count: u64,
        elem: Box<TypeRef>,
    },
    /// A struct, union or class, by name.
    Struct(String),
    Enum(String),
    Bitfield {
        position: u32,
        length: u32,
        storage: Box<TypeRef>,
    },
    Function,
    Void,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub offset: u64,
    pub ty: TypeRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StructDef {
    pub size: u64,
    pub fields: BTreeMap<String, Field>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseType {
    pub size: u64,
    pub signed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnumDef {
    pub size: u64,
    pub base: String,
    pub constants: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// Unrelocated link-time virtual address.
    pub address: u64,
    pub ty: Option<TypeRef>,
}

/// Which source format a profile was read from (for messages only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileFormat {
    Isf,
    Rekall,
}

/// A kernel profile: types, enums, symbols and the banner it was built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub format: ProfileFormat,
    pub base_types: BTreeMap<String, BaseType>,
    pub structs: BTreeMap<String, StructDef>,
    pub enums: BTreeMap<String, EnumDef>,
    pub symbols: BTreeMap<String, Symbol>,
    /// `linux_banner` bytes as built, with the trailing "\n\0" when known.
    pub banner: Option<Vec<u8>>,
}

/// Size and signedness of common C base types, for profiles (Rekall) that
/// carry no base-type table, assuming LP64.
pub fn lp64_base_type(name: &str) -> Option<BaseType> {
    let signed = !name.contains("unsigned") && name != "_Bool" && name != "bool";
    let size = if name == "pointer" {
        8
    } else if name.contains("__int128") {
        16
    } else if name.contains("char") || name.contains("_Bool") || name == "bool" {
        1
    } else if name.contains("short") {
        2
    } else if name.contains("long") || name == "double" || name == "ssizetype" || name == "sizetype"
    {
        8
    } else if name.contains("int") || name == "float" || name == "unsigned" || name == "signed" {
        4
    } else if name == "void" {
        0
    } else {
        return None;
    };
    Some(BaseType { size, signed })
}

impl Profile {
    pub fn struct_def(&self, name: &str) -> Result<&StructDef, ProfileError> {
        self.structs
            .get(name)
            .ok_or_else(|| ProfileError::MissingType {
                profile: self.name.clone(),
                name: name.to_string(),
            })
    }

    pub fn has_field(&self, st: &str, field: &str) -> bool {
        self.structs
            .get(st)
            .is_some_and(|s| s.fields.contains_key(field))
    }

    pub fn field(&self, st: &str, field: &str) -> Result<&Field, ProfileError> {
        self.struct_def(st)?
            .fields
            .get(field)
            .ok_or_else(|| ProfileError::MissingField {
                profile: self.name.clone(),
                name: format!("{st}.{field}"),
            })
    }

    pub fn offset(&self, st: &str, field: &str) -> Result<u64, ProfileError> {
        self.field(st, field).map(|f| f.offset)
    }

    pub fn symbol(&self, name: &str) -> Result<u64, ProfileError> {
        self.symbols
            .get(name)
            .map(|s| s.address)
            .ok_or_else(|| ProfileError::MissingSymbol {
                profile: self.name.clone(),
                name: name.to_string(),
            })
    }

    pub fn base_type(&self, name: &str) -> Option<BaseType> {
        self.base_types
            .get(name)
            .copied()
            .or_else(|| lp64_base_type(name))
    }

    /// Byte size of a type, if it is known.
    pub fn type_size(&self, ty: &TypeRef) -> Option<u64> {
        match ty {
            TypeRef::Base(n) => self.base_type(n).map(|b| b.size),
            TypeRef::Pointer(_) => Some(self.base_type("pointer").map_or(8, |b| b.size)),
            TypeRef::Array { count, elem } => self.type_size(elem).map(|s| s * count),
            TypeRef::Struct(n) => self.structs.get(n).map(|s| s.size),
            TypeRef::Enum(n) => self.enums.get(n).map(|e| e.size),
            TypeRef::Bitfield { storage, .. } => self.type_size(storage),
            TypeRef::Function | TypeRef::Void => None,
        }
    }

    /// How to read a type as an integer: (size, signed, bitfield), looking
    /// through single-member wrappers such as `kuid_t { val }`.
    pub fn int_layout(&self, ty: &TypeRef) -> Option<IntLayout> {
        match ty {
            TypeRef::Base(n) => self.base_type(n).map(|b| IntLayout {
                size: b.size,
                signed: b.signed,
                bits: None,
            }),
            TypeRef::Pointer(_) => Some(IntLayout {
                size: 8,
                signed: false,
                bits: None,
            }),
            TypeRef::Enum(n) => {
                let e = self.enums.get(n)?;
                let signed = self.base_type(&e.base).is_some_and(|b| b.signed);
                Some(IntLayout {
                    size: e.size,
                    signed,
                    bits: None,
                })
            }
            TypeRef::Struct(n) => {
                let s = self.structs.get(n)?;
                let mut it = s.fields.values();
                match (it.next(), it.next()) {
                    (Some(f), None) if f.offset == 0 => self.int_layout(&f.ty),
                    _ => None,
                }
            }
            TypeRef::Bitfield {
                position,
                length,
                storage,
            } => {
                let inner = self.int_layout(storage)?;
                Some(IntLayout {
                    bits: Some((*position, *length)),
                    ..inner
                })
            }
            TypeRef::Array { .. } | TypeRef::Function | TypeRef::Void => None,
        }
    }

    pub fn enum_value(&self, name: &str, constant: &str) -> Option<i64> {
        self.enums.get(name)?.constants.get(constant).copied()
    }
}

/// Integer read recipe for a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntLayout {
    pub size: u64,
    pub signed: bool,
    /// (bit position, bit length) for bitfields.
    pub bits: Option<(u32, u32)>,
}

impl IntLayout {
    /// Decodes `raw` (the little-endian storage value) into an integer.
    pub fn decode(&self, raw: u64) -> i128 {
        let (v, width) = match self.bits {
            Some((pos, len)) => {
                let len = len.min(64);
                let mask = if len >= 64 {
                    u64::MAX
                } else {
                    (1u64 << len) - 1
                };
                ((raw >> pos.min(63)) & mask, len)
            }
            None => (raw, (self.size.min(8) * 8) as u32),
        };
        if self.signed && width > 0 && width < 64 && v >> (width - 1) & 1 == 1 {
            i128::from(v) - (1i128 << width)
        } else if self.signed && width == 64 {
            i128::from(v as i64)
        } else {
            i128::from(v)
        }
    }
}
