//! One streaming pass over a profile's JSON that keeps only what the
//! selection asks for.
//!
//! The 6.1 ISF is 38 MB with 10,318 types and 160,838 symbols; plugins need
//! about a dozen of each. Unwanted entries are skipped with `IgnoredAny`
//! (tokenised, never allocated) and map keys are borrowed from the input,
//! so a first load costs one tokenisation pass, not a DOM.

use super::Selection;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

/// A map key borrowed from the input when it has no escapes.
pub(super) struct Key<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Deserialises a JSON object, keeping only entries whose key passes `keep`.
pub(super) struct Selective<T, F> {
    keep: F,
    _t: PhantomData<T>,
}

impl<T, F> Selective<T, F> {
    pub(super) fn new(keep: F) -> Self {
        Self {
            keep,
            _t: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>, F: Fn(&str) -> bool> DeserializeSeed<'de> for Selective<T, F> {
    type Value = BTreeMap<String, T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>, F: Fn(&str) -> bool> Visitor<'de> for Selective<T, F> {
    type Value = BTreeMap<String, T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            if (self.keep)(&k) {
                out.insert(k.into_owned(), map.next_value::<T>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

// ---- ISF ----

#[derive(Deserialize, Debug, Default)]
pub(super) struct IsfMeta {
    pub format: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub(super) struct IsfType {
    pub kind: String,
    pub name: Option<String>,
    pub subtype: Option<Box<IsfType>>,
    pub count: Option<u64>,
    pub bit_position: Option<u32>,
    pub bit_length: Option<u32>,
    #[serde(rename = "type")]
    pub ty: Option<Box<IsfType>>,
}

#[derive(Deserialize, Debug, Clone)]
pub(super) struct IsfField {
    pub offset: u64,
    #[serde(rename = "type")]
    pub ty: IsfType,
    pub anonymous: Option<bool>,
}

#[derive(Deserialize, Debug, Clone)]
pub(super) struct IsfStruct {
    pub size: u64,
    #[serde(default)]
    pub fields: Option<BTreeMap<String, IsfField>>,
}

#[derive(Deserialize, Debug)]
pub(super) struct IsfBase {
    pub size: u64,
    pub signed: Option<bool>,
}

#[derive(Deserialize, Debug)]
pub(super) struct IsfEnum {
    pub size: u64,
    pub base: String,
    pub constants: BTreeMap<String, i64>,
}

#[derive(Deserialize, Debug)]
pub(super) struct IsfSymbol {
    pub address: u64,
    #[serde(rename = "type")]
    pub ty: Option<IsfType>,
    pub constant_data: Option<String>,
}

// ---- Rekall ----

#[derive(Deserialize, Debug)]
pub(super) struct RekallStruct(pub u64, pub BTreeMap<String, (u64, Vec<serde_json::Value>)>);

/// Everything one pass found, in either format.
#[derive(Default, Debug)]
pub(super) struct RawProfile {
    pub isf_meta: Option<IsfMeta>,
    pub base_types: Option<BTreeMap<String, IsfBase>>,
    pub user_types: Option<BTreeMap<String, IsfStruct>>,
    /// Anonymous types (kept for flattening), as text: of the 6.1 ISF's
    /// 2,222 the plugins' types reach a few dozen, and parsing all of them
    /// cost a good part of the first load. Parsed when reached.
    pub unnamed: BTreeMap<String, Box<str>>,
    pub enums: Option<BTreeMap<String, IsfEnum>>,
    pub symbols: Option<BTreeMap<String, IsfSymbol>>,
    pub rk_meta: Option<serde_json::Value>,
    pub rk_constants: Option<BTreeMap<String, u64>>,
    pub rk_structs: Option<BTreeMap<String, RekallStruct>>,
    pub rk_enums: Option<BTreeMap<String, BTreeMap<String, String>>>,
    pub other_keys: Vec<String>,
    /// How many top-level members were read.
    pub members: usize,
}

/// `user_types`: the selected types parsed, anonymous ones kept as text.
struct UserTypes<'s> {
    sel: &'s Selection,
}

type Unnamed = BTreeMap<String, Box<str>>;

impl<'de> DeserializeSeed<'de> for UserTypes<'_> {
    type Value = (BTreeMap<String, IsfStruct>, Unnamed);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for UserTypes<'_> {
    type Value = (BTreeMap<String, IsfStruct>, Unnamed);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut kept, mut unnamed) = (BTreeMap::new(), BTreeMap::new());
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            if self.sel.keeps_final_type(&k) {
                kept.insert(k.into_owned(), map.next_value()?);
            } else if self.sel.keeps_type(&k) {
                let text: Box<serde_json::value::RawValue> = map.next_value()?;
                unnamed.insert(k.into_owned(), text.into());
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok((kept, unnamed))
    }
}

pub(super) struct TopLevel<'s> {
    pub sel: &'s Selection,
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = RawProfile;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object (ISF or Rekall profile)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawProfile, A::Error> {
        let sel = self.sel;
        let keep_type = |n: &str| sel.keeps_type(n);
        let keep_sym = |n: &str| sel.keeps_symbol(n);
        let keep_enum = |n: &str| sel.keeps_enum(n);
        let mut raw = RawProfile::default();
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            raw.members += 1;
            match &*k {
                "metadata" => raw.isf_meta = Some(map.next_value()?),
                "base_types" => {
                    raw.base_types = Some(map.next_value_seed(Selective::new(|_: &str| true))?)
                }
                "user_types" => {
                    let (kept, unnamed) = map.next_value_seed(UserTypes { sel })?;
                    raw.user_types = Some(kept);
                    raw.unnamed = unnamed;
                }
                "enums" => raw.enums = Some(map.next_value_seed(Selective::new(keep_enum))?),
                "symbols" => raw.symbols = Some(map.next_value_seed(Selective::new(keep_sym))?),
                "$METADATA" => raw.rk_meta = Some(map.next_value()?),
                "$CONSTANTS" => {
                    raw.rk_constants = Some(map.next_value_seed(Selective::new(keep_sym))?)
                }
                "$STRUCTS" => {
                    raw.rk_structs = Some(map.next_value_seed(Selective::new(keep_type))?)
                }
                "$ENUMS" => raw.rk_enums = Some(map.next_value_seed(Selective::new(keep_enum))?),
                other => {
                    raw.other_keys.push(other.to_string());
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(raw)
    }
}
