//! Writing the type model back out: as a compact ISF (our profile cache,
//! readable by the ISF loader) and as a Rekall profile (round-trip tests,
//! and for people who still use Rekall).

use super::model::{Field, Profile, StructDef, Symbol, TypeRef};
use base64::Engine;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value, json};

/// The same document as [`to_isf`], serialised straight from the model:
/// the cache is written on every first run, and building a `Value` tree of
/// the flattened structs first took several milliseconds.
pub fn to_isf_bytes(p: &Profile) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&IsfDoc(p))
}

struct IsfDoc<'a>(&'a Profile);
struct IsfType<'a>(&'a TypeRef);
struct Entries<I>(std::cell::Cell<Option<I>>);

/// A map serialised from an iterator of (key, value) pairs.
fn entries<K: Serialize, V: Serialize, I: Iterator<Item = (K, V)>>(it: I) -> Entries<I> {
    Entries(std::cell::Cell::new(Some(it)))
}

impl<K: Serialize, V: Serialize, I: Iterator<Item = (K, V)>> Serialize for Entries<I> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.0.take().into_iter().flatten() {
            m.serialize_entry(&k, &v)?;
        }
        m.end()
    }
}

impl Serialize for IsfType<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self.0 {
            TypeRef::Base(n) => {
                m.serialize_entry("kind", "base")?;
                m.serialize_entry("name", n)?;
            }
            TypeRef::Void => {
                m.serialize_entry("kind", "base")?;
                m.serialize_entry("name", "void")?;
            }
            TypeRef::Pointer(t) => {
                m.serialize_entry("kind", "pointer")?;
                m.serialize_entry("subtype", &IsfType(t))?;
            }
            TypeRef::Array { count, elem } => {
                m.serialize_entry("count", count)?;
                m.serialize_entry("kind", "array")?;
                m.serialize_entry("subtype", &IsfType(elem))?;
            }
            TypeRef::Struct(n) => {
                m.serialize_entry("kind", "struct")?;
                m.serialize_entry("name", n)?;
            }
            TypeRef::Enum(n) => {
                m.serialize_entry("kind", "enum")?;
                m.serialize_entry("name", n)?;
            }
            TypeRef::Function => m.serialize_entry("kind", "function")?,
            TypeRef::Bitfield {
                position,
                length,
                storage,
            } => {
                m.serialize_entry("bit_length", length)?;
                m.serialize_entry("bit_position", position)?;
                m.serialize_entry("kind", "bitfield")?;
                m.serialize_entry("type", &IsfType(storage))?;
            }
        }
        m.end()
    }
}

struct FieldOut<'a>(&'a Field);
struct StructOut<'a>(&'a StructDef);
struct SymbolOut<'a> {
    sym: &'a Symbol,
    banner: Option<String>,
}

// Keys in sorted order, as `serde_json::Map` keeps them, so the bytes equal
// those of `to_isf`.
impl Serialize for FieldOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("offset", &self.0.offset)?;
        m.serialize_entry("type", &IsfType(&self.0.ty))?;
        m.end()
    }
}

impl Serialize for StructOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry(
            "fields",
            &entries(self.0.fields.iter().map(|(k, f)| (k, FieldOut(f)))),
        )?;
        m.serialize_entry("kind", "struct")?;
        m.serialize_entry("size", &self.0.size)?;
        m.end()
    }
}

impl Serialize for SymbolOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("address", &self.sym.address)?;
        if let Some(b) = &self.banner {
            m.serialize_entry("constant_data", b)?;
        }
        if let Some(t) = &self.sym.ty {
            m.serialize_entry("type", &IsfType(t))?;
        }
        m.end()
    }
}

impl Serialize for IsfDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let base = entries(p.base_types.iter().map(|(k, b)| {
            (
                k,
                json!({"size": b.size, "signed": b.signed, "kind": "int", "endian": "little"}),
            )
        }));
        let users = entries(p.structs.iter().map(|(k, st)| (k, StructOut(st))));
        let enums = entries(p.enums.iter().map(|(k, e)| {
            (
                k,
                json!({"size": e.size, "base": e.base, "constants": e.constants}),
            )
        }));
        let symbols = entries(p.symbols.iter().map(|(k, sym)| {
            let banner = p
                .banner
                .as_ref()
                .filter(|_| k == "linux_banner")
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b));
            (k, SymbolOut { sym, banner })
        }));
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("base_types", &base)?;
        m.serialize_entry("enums", &enums)?;
        m.serialize_entry(
            "metadata",
            &json!({"format": "6.2.0", "producer": {"name": "mshot", "version": "0.1.0"}}),
        )?;
        m.serialize_entry("symbols", &symbols)?;
        m.serialize_entry("user_types", &users)?;
        m.end()
    }
}

fn isf_type(t: &TypeRef) -> Value {
    match t {
        TypeRef::Base(n) => json!({"kind": "base", "name": n}),
        TypeRef::Void => json!({"kind": "base", "name": "void"}),
        TypeRef::Pointer(s) => json!({"kind": "pointer", "subtype": isf_type(s)}),
        TypeRef::Array { count, elem } => {
            json!({"kind": "array", "count": count, "subtype": isf_type(elem)})
        }
        TypeRef::Struct(n) => json!({"kind": "struct", "name": n}),
        TypeRef::Enum(n) => json!({"kind": "enum", "name": n}),
        TypeRef::Function => json!({"kind": "function"}),
        TypeRef::Bitfield {
            position,
            length,
            storage,
        } => json!({
            "kind": "bitfield", "bit_position": position, "bit_length": length, "type": isf_type(storage)
        }),
    }
}

/// The profile as a minimal ISF 6.2 document.
pub fn to_isf(p: &Profile) -> Value {
    let base: Map<String, Value> = p
        .base_types
        .iter()
        .map(|(k, b)| {
            (
                k.clone(),
                json!({"size": b.size, "signed": b.signed, "kind": "int", "endian": "little"}),
            )
        })
        .collect();
    let users: Map<String, Value> = p
        .structs
        .iter()
        .map(|(k, s)| {
            let fields: Map<String, Value> = s
                .fields
                .iter()
                .map(|(f, fd)| {
                    (
                        f.clone(),
                        json!({"offset": fd.offset, "type": isf_type(&fd.ty)}),
                    )
                })
                .collect();
            (
                k.clone(),
                json!({"kind": "struct", "size": s.size, "fields": fields}),
            )
        })
        .collect();
    let enums: Map<String, Value> = p
        .enums
        .iter()
        .map(|(k, e)| {
            (
                k.clone(),
                json!({"size": e.size, "base": e.base, "constants": e.constants}),
            )
        })
        .collect();
    let symbols: Map<String, Value> = p
        .symbols
        .iter()
        .map(|(k, s)| {
            let mut o = Map::new();
            o.insert("address".into(), json!(s.address));
            if let Some(t) = &s.ty {
                o.insert("type".into(), isf_type(t));
            }
            if k == "linux_banner"
                && let Some(b) = &p.banner
            {
                o.insert(
                    "constant_data".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(b)),
                );
            }
            (k.clone(), Value::Object(o))
        })
        .collect();
    json!({
        "metadata": {"format": "6.2.0", "producer": {"name": "mshot", "version": "0.1.0"}},
        "base_types": base, "user_types": users, "enums": enums, "symbols": symbols,
    })
}

fn rekall_type(t: &TypeRef) -> Value {
    match t {
        TypeRef::Base(n) => json!([n]),
        TypeRef::Void => json!(["Void"]),
        TypeRef::Struct(n) => json!([n]),
        TypeRef::Function => json!(["Function"]),
        TypeRef::Pointer(s) => json!(["Pointer", rekall_target(s)]),
        TypeRef::Array { count, elem } => {
            let mut a = rekall_target(elem);
            if let Value::Object(m) = &mut a {
                m.insert("count".into(), json!(count));
            }
            json!(["Array", a])
        }
        TypeRef::Enum(n) => json!(["Enumeration", {"enum_name": n, "target": "unsigned int"}]),
        TypeRef::Bitfield {
            position,
            length,
            storage,
        } => {
            let mut a = rekall_target(storage);
            if let Value::Object(m) = &mut a {
                m.insert("start_bit".into(), json!(position));
                m.insert("end_bit".into(), json!(position + length));
            }
            json!(["BitField", a])
        }
    }
}

fn rekall_target(t: &TypeRef) -> Value {
    let d = rekall_type(t);
    let name = d.get(0).cloned().unwrap_or(Value::Null);
    match d.get(1) {
        Some(args) => json!({"target": name, "target_args": args}),
        None => json!({"target": name}),
    }
}

/// The profile in Rekall's JSON layout (anonymous members already flat).
pub fn to_rekall(p: &Profile) -> Value {
    let structs: Map<String, Value> = p
        .structs
        .iter()
        .map(|(k, s)| {
            let fields: Map<String, Value> = s
                .fields
                .iter()
                .map(|(f, fd)| (f.clone(), json!([fd.offset, rekall_type(&fd.ty)])))
                .collect();
            (k.clone(), json!([s.size, fields]))
        })
        .collect();
    let constants: Map<String, Value> = p
        .symbols
        .iter()
        .map(|(k, s)| (k.clone(), json!(s.address & 0xffff_ffff_ffff)))
        .collect();
    let enums: Map<String, Value> = p
        .enums
        .iter()
        .map(|(k, e)| {
            let m: Map<String, Value> = e
                .constants
                .iter()
                .map(|(n, v)| (v.to_string(), json!(n)))
                .collect();
            (k.clone(), Value::Object(m))
        })
        .collect();
    json!({
        "$METADATA": {"ProfileClass": "Linux", "Type": "Profile", "arch": "AMD64"},
        "$CONSTANTS": constants, "$STRUCTS": structs, "$ENUMS": enums,
    })
}
