//! Volatility 3 ISF (formats 2.x to 6.x) into the type model.
//!
//! What needs care: anonymous members (`anonymous: true`, named
//! `unnamed_field_N` by dwarf2json or `unnamed_member_N` by btf2json) are
//! flattened recursively with their offsets added, as Volatility's 6.2
//! loader does; `linux_banner.constant_data` becomes the profile's banner.

use super::model::{BaseType, EnumDef, Field, Profile, ProfileFormat, StructDef, Symbol, TypeRef};
use super::raw::{IsfField, IsfStruct, IsfType, RawProfile};
use super::{ProfileError, Selection};
use base64::Engine;
use std::collections::BTreeMap;

const MAX_FLATTEN_DEPTH: u32 = 8;

pub(super) fn convert_type(t: &IsfType, ctx: &str) -> Result<TypeRef, ProfileError> {
    let need_name = || {
        t.name.clone().ok_or_else(|| ProfileError::Malformed {
            expected: format!("a \"name\" in the {} type of {ctx}", t.kind),
            found: "none".into(),
        })
    };
    Ok(match t.kind.as_str() {
        "base" => {
            let n = need_name()?;
            if n == "void" {
                TypeRef::Void
            } else {
                TypeRef::Base(n)
            }
        }
        "pointer" => TypeRef::Pointer(Box::new(match &t.subtype {
            Some(s) => convert_type(s, ctx)?,
            None => TypeRef::Void,
        })),
        "array" => TypeRef::Array {
            count: t.count.unwrap_or(0),
            elem: Box::new(match &t.subtype {
                Some(s) => convert_type(s, ctx)?,
                None => TypeRef::Void,
            }),
        },
        "struct" | "union" | "class" => TypeRef::Struct(need_name()?),
        "enum" => TypeRef::Enum(need_name()?),
        "function" => TypeRef::Function,
        "bitfield" => TypeRef::Bitfield {
            position: t.bit_position.unwrap_or(0),
            length: t.bit_length.unwrap_or(0),
            storage: Box::new(match &t.ty {
                Some(s) => convert_type(s, ctx)?,
                None => TypeRef::Base("unsigned int".into()),
            }),
        },
        other => {
            return Err(ProfileError::Malformed {
                expected: format!(
                    "a type kind (base, pointer, array, struct, union, enum, function, bitfield) in {ctx}"
                ),
                found: format!("\"{other}\""),
            });
        }
    })
}

fn is_anonymous(name: &str, f: &IsfField) -> bool {
    f.anonymous == Some(true)
        || name.starts_with("unnamed_field_")
        || name.starts_with("unnamed_member_")
}

fn flatten_into(
    all: &BTreeMap<String, IsfStruct>,
    owner: &str,
    st: &IsfStruct,
    base: u64,
    depth: u32,
    out: &mut BTreeMap<String, Field>,
) -> Result<(), ProfileError> {
    for (name, f) in st.fields.iter().flatten() {
        let offset = base.saturating_add(f.offset);
        if depth < MAX_FLATTEN_DEPTH
            && is_anonymous(name, f)
            && let Some(inner_name) = f.ty.name.as_deref()
            && let Some(inner) = all.get(inner_name)
        {
            flatten_into(all, owner, inner, offset, depth + 1, out)?;
            continue;
        }
        let ty = convert_type(&f.ty, &format!("{owner}.{name}"))?;
        out.entry(name.clone()).or_insert(Field { offset, ty });
    }
    Ok(())
}

/// Struct names a type refers to (through pointers, arrays, bitfields).
fn struct_names<'t>(t: &'t IsfType, out: &mut Vec<&'t str>) {
    if matches!(t.kind.as_str(), "struct" | "union" | "class")
        && let Some(n) = &t.name
    {
        out.push(n);
    }
    for inner in [&t.subtype, &t.ty].into_iter().flatten() {
        struct_names(inner, out);
    }
}

/// Parses the anonymous types that the kept ones reach through their
/// fields, directly or through other anonymous types; flattening looks up
/// no others.
fn parse_reached(
    types: &mut BTreeMap<String, IsfStruct>,
    mut unnamed: BTreeMap<String, Box<str>>,
) -> Result<(), ProfileError> {
    let mut todo: Vec<String> = types.keys().cloned().collect();
    while let Some(t) = todo.pop() {
        let mut names = Vec::new();
        for f in types
            .get(&t)
            .and_then(|s| s.fields.as_ref())
            .into_iter()
            .flatten()
        {
            struct_names(&f.1.ty, &mut names);
        }
        let names: Vec<String> = names.into_iter().map(str::to_string).collect();
        for n in names {
            if let Some(text) = unnamed.remove(&n) {
                let st: IsfStruct = serde_json::from_str(&text)
                    .map_err(|e| ProfileError::Json(format!("user type {n}: {e}")))?;
                types.insert(n.clone(), st);
                todo.push(n);
            }
        }
    }
    Ok(())
}

pub(super) fn build(raw: RawProfile, name: &str, sel: &Selection) -> Result<Profile, ProfileError> {
    if let Some(fmt) = raw.isf_meta.as_ref().and_then(|m| m.format.as_deref()) {
        let major: u32 = fmt
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if !(2..=8).contains(&major) {
            return Err(ProfileError::Unsupported {
                expected: "ISF format 2.x to 6.x".into(),
                found: format!("format {fmt}"),
            });
        }
    }
    let mut user_types = raw.user_types.unwrap_or_default();
    parse_reached(&mut user_types, raw.unnamed)?;
    let mut structs = BTreeMap::new();
    for (tname, st) in &user_types {
        if !sel.keeps_final_type(tname) {
            continue;
        }
        let mut fields = BTreeMap::new();
        flatten_into(&user_types, tname, st, 0, 0, &mut fields)?;
        structs.insert(
            tname.clone(),
            StructDef {
                size: st.size,
                fields,
            },
        );
    }
    let base_types = raw
        .base_types
        .unwrap_or_default()
        .into_iter()
        .map(|(k, b)| {
            (
                k,
                BaseType {
                    size: b.size,
                    signed: b.signed.unwrap_or(false),
                },
            )
        })
        .collect();
    let enums = raw
        .enums
        .unwrap_or_default()
        .into_iter()
        .map(|(k, e)| {
            (
                k,
                EnumDef {
                    size: e.size,
                    base: e.base,
                    constants: e.constants,
                },
            )
        })
        .collect();
    let mut banner = None;
    let mut symbols = BTreeMap::new();
    for (sname, s) in raw.symbols.unwrap_or_default() {
        if sname == "linux_banner"
            && let Some(data) = &s.constant_data
        {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| ProfileError::Malformed {
                    expected: "base64 constant_data for linux_banner".into(),
                    found: e.to_string(),
                })?;
            banner = Some(bytes);
        }
        let ty = match &s.ty {
            Some(t) => Some(convert_type(t, &format!("symbol {sname}"))?),
            None => None,
        };
        symbols.insert(
            sname,
            Symbol {
                address: s.address,
                ty,
            },
        );
    }
    Ok(Profile {
        name: name.to_string(),
        format: ProfileFormat::Isf,
        base_types,
        structs,
        enums,
        symbols,
        banner,
    })
}
