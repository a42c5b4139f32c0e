//! Building the profile from the marks of a scan, parsing only the kept
//! entries.

use super::{Mark, Member, Names};
use crate::profile::raw::{IsfBase, IsfEnum, IsfMeta, IsfStruct, IsfSymbol, RawProfile};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// Builds the profile from the marks, parsing each kept entry.
pub(super) fn assemble(marks: Vec<Mark>, names: &Names) -> Option<RawProfile> {
    let mut raw = RawProfile::default();
    let mut member = Member::Unknown;
    let mut base: BTreeMap<String, IsfBase> = BTreeMap::new();
    let mut types = BTreeMap::new();
    let mut enums = BTreeMap::new();
    let mut symbols = BTreeMap::new();
    let mut format = None;
    for mark in marks {
        match mark {
            Mark::Member(m) => {
                raw.members += 1;
                member = m;
                // A member read again replaces the earlier one, as in one pass.
                match m {
                    Member::Metadata => format = Some(None),
                    Member::BaseTypes => base.clear(),
                    Member::UserTypes => {
                        types.clear();
                        raw.unnamed.clear();
                    }
                    Member::Enums => enums.clear(),
                    Member::Symbols => symbols.clear(),
                    Member::Unknown | Member::Other => return None,
                }
                set_present(&mut raw, m);
            }
            // Skipped before its member was known: fine unless that member
            // keeps every entry.
            Mark::SkippedUnknown
                if member == Member::BaseTypes
                    || (member == Member::Symbols && names.all_symbols) =>
            {
                return None;
            }
            Mark::SkippedUnknown => {}
            // Kept before its member was known, by what any member keeps.
            Mark::Entry { name, .. } if !names.keeps(member, name.as_bytes()) => {}
            Mark::Entry { name, text, last } => {
                let value = value_text(&text, &name, last)?;
                match member {
                    Member::Metadata => {
                        format = Some(Some(serde_json::from_slice::<String>(value).ok()?))
                    }
                    Member::BaseTypes => {
                        base.insert(name, parse::<IsfBase>(value)?);
                    }
                    Member::UserTypes if Names::unnamed(name.as_bytes()) => {
                        // Parsed only if a kept type reaches it (isf.rs).
                        raw.unnamed
                            .insert(name, std::str::from_utf8(value).ok()?.into());
                    }
                    Member::UserTypes => {
                        types.insert(name, parse::<IsfStruct>(value)?);
                    }
                    Member::Enums => {
                        enums.insert(name, parse::<IsfEnum>(value)?);
                    }
                    Member::Symbols => {
                        symbols.insert(name, parse::<IsfSymbol>(value)?);
                    }
                    Member::Unknown | Member::Other => return None,
                }
            }
        }
    }
    if raw.isf_meta.is_some() {
        raw.isf_meta = Some(IsfMeta {
            format: format.flatten(),
        });
    }
    if raw.base_types.is_some() {
        raw.base_types = Some(base);
    }
    if raw.user_types.is_some() {
        raw.user_types = Some(types);
    }
    if raw.enums.is_some() {
        raw.enums = Some(enums);
    }
    if raw.symbols.is_some() {
        raw.symbols = Some(symbols);
    }
    Some(raw)
}

fn set_present(raw: &mut RawProfile, m: Member) {
    match m {
        Member::Metadata => raw.isf_meta = Some(IsfMeta::default()),
        Member::BaseTypes => raw.base_types = Some(BTreeMap::new()),
        Member::UserTypes => raw.user_types = Some(BTreeMap::new()),
        Member::Enums => raw.enums = Some(BTreeMap::new()),
        Member::Symbols => raw.symbols = Some(BTreeMap::new()),
        Member::Unknown | Member::Other => {}
    }
}

fn parse<T: DeserializeOwned>(value: &[u8]) -> Option<T> {
    serde_json::from_slice(value).ok()
}

/// The value in an entry's text (`    "NAME": VALUE` and what closes it):
/// a `,`, or its member's `}` and `,`, or at the very end the member's and
/// the document's `}`.
fn value_text<'t>(text: &'t [u8], name: &str, last: bool) -> Option<&'t [u8]> {
    let head_len = 4 + 1 + name.len() + 1;
    if text.get(..4) != Some(b"    ") || text.get(4) != Some(&b'"') {
        return None;
    }
    let after = text.get(head_len..)?;
    let colon = after.iter().position(|c| !c.is_ascii_whitespace())?;
    if after.get(colon) != Some(&b':') {
        return None;
    }
    let mut v = after.get(colon + 1..)?.trim_ascii_end();
    if last {
        v = v.strip_suffix(b"\n}")?.trim_ascii_end();
        v = v.strip_suffix(b"\n  }")?;
    } else if let Some(s) = v.strip_suffix(b",") {
        v = s.trim_ascii_end();
        if let Some(s) = v.strip_suffix(b"\n  }") {
            v = s;
        }
    } else {
        return None;
    }
    Some(v)
}
