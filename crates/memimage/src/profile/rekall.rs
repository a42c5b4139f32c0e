//! Rekall JSON profiles (`$METADATA`, `$CONSTANTS`, `$STRUCTS`, `$ENUMS`)
//! into the same type model as ISF.
//!
//! Differences bridged here: no base-type table (LP64 sizes are assumed),
//! untyped symbols, no banner, enums stored value → name, positional type
//! descriptors (`["Pointer", {"target": ...}]`), and anonymous members
//! named `u1`, `u2`… pointing at `__unnamed_*` types, which we flatten.

use super::model::{EnumDef, Field, Profile, ProfileFormat, StructDef, Symbol, TypeRef};
use super::raw::{RawProfile, RekallStruct};
use super::{ProfileError, Selection};
use serde_json::Value;
use std::collections::BTreeMap;

fn malformed(ctx: &str, found: &Value) -> ProfileError {
    let mut f = found.to_string();
    f.truncate(80);
    ProfileError::Malformed {
        expected: format!("a Rekall type descriptor [name, {{args}}] in {ctx}"),
        found: f,
    }
}

fn target(
    args: Option<&Value>,
    structs: &BTreeMap<String, RekallStruct>,
    ctx: &str,
) -> Result<TypeRef, ProfileError> {
    let name = args
        .and_then(|a| a.get("target"))
        .and_then(Value::as_str)
        .unwrap_or("Void");
    let sub = args.and_then(|a| a.get("target_args"));
    named(name, sub.filter(|v| !v.is_null()), structs, ctx)
}

fn named(
    name: &str,
    args: Option<&Value>,
    structs: &BTreeMap<String, RekallStruct>,
    ctx: &str,
) -> Result<TypeRef, ProfileError> {
    Ok(match name {
        "Pointer" => TypeRef::Pointer(Box::new(target(args, structs, ctx)?)),
        "Array" => TypeRef::Array {
            count: args
                .and_then(|a| a.get("count"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
            elem: Box::new(target(args, structs, ctx)?),
        },
        "BitField" => {
            let start = args
                .and_then(|a| a.get("start_bit"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let end = args
                .and_then(|a| a.get("end_bit"))
                .and_then(Value::as_u64)
                .unwrap_or(start);
            TypeRef::Bitfield {
                position: u32::try_from(start).unwrap_or(0),
                length: u32::try_from(end.saturating_sub(start)).unwrap_or(0),
                storage: Box::new(target(args, structs, ctx)?),
            }
        }
        "Enumeration" => match args
            .and_then(|a| a.get("enum_name"))
            .and_then(Value::as_str)
        {
            Some(e) => TypeRef::Enum(e.to_string()),
            None => target(args, structs, ctx)?,
        },
        "Void" | "void" => TypeRef::Void,
        "Function" => TypeRef::Function,
        "String" | "UnicodeString" => TypeRef::Array {
            count: args
                .and_then(|a| a.get("length"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
            elem: Box::new(TypeRef::Base("char".into())),
        },
        n if structs.contains_key(n) => TypeRef::Struct(n.to_string()),
        n => TypeRef::Base(n.to_string()),
    })
}

fn descriptor(
    desc: &[Value],
    structs: &BTreeMap<String, RekallStruct>,
    ctx: &str,
) -> Result<TypeRef, ProfileError> {
    let Some(Value::String(name)) = desc.first() else {
        return Err(malformed(ctx, &Value::Array(desc.to_vec())));
    };
    named(name, desc.get(1), structs, ctx)
}

fn is_anonymous(field: &str, ty: &TypeRef) -> bool {
    let numbered_u = field
        .strip_prefix('u')
        .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()));
    matches!(ty, TypeRef::Struct(n) if n.starts_with("__unnamed") || (numbered_u && n.contains("unnamed")))
}

fn flatten(
    structs: &BTreeMap<String, RekallStruct>,
    owner: &str,
    st: &RekallStruct,
    base: u64,
    depth: u32,
    out: &mut BTreeMap<String, Field>,
) -> Result<(), ProfileError> {
    for (name, (off, desc)) in &st.1 {
        let ctx = format!("{owner}.{name}");
        let ty = descriptor(desc, structs, &ctx)?;
        let offset = base.saturating_add(*off);
        if depth < 8
            && is_anonymous(name, &ty)
            && let TypeRef::Struct(inner) = &ty
            && let Some(inner_st) = structs.get(inner)
        {
            flatten(structs, owner, inner_st, offset, depth + 1, out)?;
            continue;
        }
        out.entry(name.clone()).or_insert(Field { offset, ty });
    }
    Ok(())
}

pub(super) fn build(raw: RawProfile, name: &str, sel: &Selection) -> Result<Profile, ProfileError> {
    let rk_structs = raw.rk_structs.unwrap_or_default();
    let mut structs = BTreeMap::new();
    for (tname, st) in &rk_structs {
        if !sel.keeps_final_type(tname) {
            continue;
        }
        let mut fields = BTreeMap::new();
        flatten(&rk_structs, tname, st, 0, 0, &mut fields)?;
        structs.insert(tname.clone(), StructDef { size: st.0, fields });
    }
    let mut enums = BTreeMap::new();
    for (ename, values) in raw.rk_enums.unwrap_or_default() {
        let mut constants = BTreeMap::new();
        for (v, n) in values {
            let v: i64 = v.parse().map_err(|_| ProfileError::Malformed {
                expected: format!("integer keys in $ENUMS.{ename}"),
                found: format!("\"{v}\""),
            })?;
            constants.insert(n, v);
        }
        enums.insert(
            ename,
            EnumDef {
                size: 4,
                base: "unsigned int".into(),
                constants,
            },
        );
    }
    let symbols = raw
        .rk_constants
        .unwrap_or_default()
        .into_iter()
        .map(|(k, a)| {
            // Rekall masks addresses to 48 bits; restore the kernel half.
            let address = if a >> 47 == 1 {
                a | 0xffff_0000_0000_0000
            } else {
                a
            };
            (k, Symbol { address, ty: None })
        })
        .collect();
    Ok(Profile {
        name: name.to_string(),
        format: ProfileFormat::Rekall,
        base_types: BTreeMap::new(),
        structs,
        enums,
        symbols,
        banner: None,
    })
}
