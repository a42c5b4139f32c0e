//! A YAML document as a tree of values that each know their line and column.
//!
//! serde-saphyr parses; instead of deserialising straight into structs (which
//! stops at the first problem), we keep a located tree and let `config` walk
//! it, so every problem in a fleet file is reported at once, each with its
//! position.
//!
//! Why serde-saphyr (docs/design/yaml.md): serde_yaml is
//! deprecated; its forks serde_norway and serde_yaml_ng still parse with
//! libyaml machine-translated into unsafe Rust, and serde_yml is archived and
//! unsound up to 0.0.12 (RUSTSEC-2025-0068). serde-saphyr and its parser are
//! `forbid(unsafe_code)`, `Spanned` gives every value's line and column, and
//! its default options make duplicate keys an error and bound aliases.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Line and column, both 1-based (0 when unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float,
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// The YAML type's name, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A syntax error: where, and what (one line).
#[derive(Debug)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document. serde-saphyr's default budgets stop alias
/// bombs, and duplicate keys are an error.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    match serde_saphyr::from_str::<Spanned<Value>>(text) {
        Ok(spanned) => Ok(node(spanned)),
        Err(error) => {
            let pos = error
                .location()
                .map(|l| Pos {
                    line: l.line(),
                    column: l.column(),
                })
                .unwrap_or_default();
            let full = error.without_snippet().to_string();
            Err(SyntaxError {
                pos,
                message: one_line_message(&full),
            })
        }
    }
}

/// serde-saphyr's plain message, without its own "at line L column C" suffix
/// (we print the position in front, compiler style).
fn one_line_message(text: &str) -> String {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or(text);
    let first = first.trim();
    let first = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    let first = match first.find(", set DuplicateKeyPolicy") {
        Some(i) => &first[..i],
        None => first,
    };
    first.trim_start_matches("error: ").to_string()
}

fn node(spanned: Spanned<Value>) -> Node {
    Node {
        pos: Pos {
            line: spanned.referenced.line(),
            column: spanned.referenced.column(),
        },
        value: spanned.value,
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Float)
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(node(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Value>>()? {
            let value = map.next_value::<Spanned<Value>>()?;
            entries.push((node(key), node(value)));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_positions() {
        let doc = parse("hosts:\n  - addr: 10.0.0.1\n    port: 2222\nworkers: auto\n").unwrap();
        let Value::Map(top) = &doc.value else {
            panic!("{doc:?}")
        };
        assert_eq!(top.len(), 2);
        let (key, hosts) = &top[0];
        assert!(matches!(&key.value, Value::Str(s) if s == "hosts"));
        assert_eq!(key.pos, Pos { line: 1, column: 1 });
        let Value::Seq(list) = &hosts.value else {
            panic!()
        };
        let Value::Map(host) = &list[0].value else {
            panic!()
        };
        assert!(matches!(host[1].1.value, Value::Int(2222)));
        assert_eq!(
            host[1].1.pos,
            Pos {
                line: 3,
                column: 11
            }
        );
        assert!(matches!(&top[1].1.value, Value::Str(s) if s == "auto"));
    }

    #[test]
    fn quoted_numbers_stay_strings_and_syntax_errors_are_located() {
        let doc = parse("a: \"22\"\nb: yes\nc: ~\n").unwrap();
        let Value::Map(top) = &doc.value else {
            panic!()
        };
        assert!(matches!(&top[0].1.value, Value::Str(s) if s == "22"));
        assert!(matches!(&top[2].1.value, Value::Null));
        let error = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(error.pos.line >= 2, "{error:?}");
        assert!(!error.message.contains('\n'));
        let error = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(error.pos.line, 2, "{error:?}");
    }
}
