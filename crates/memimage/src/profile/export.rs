//! Writing the type model back out: as a compact ISF (our profile cache,
//! readable by the ISF loader) and as a Rekall profile (round-trip tests,
//! and for people who still use Rekall).

use super::model::{Profile, TypeRef};
use base64::Engine;
use serde_json::{Map, Value, json};

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
