//! Scalar values: strings, booleans, integers in a range and paths, each
//! reported at its own position when it is not what its key needs.

use std::path::PathBuf;

use super::Checker;
use crate::fleet::yaml::{Node, Value};

impl Checker {
    /// Reports "WHAT must be EXPECTED, found KIND" at `node`; `None` for the caller to return.
    pub(super) fn wrong_kind<T>(&mut self, node: &Node, what: &str, expected: &str) -> Option<T> {
        self.error(
            node.pos,
            format!("{what} must be {expected}, found {}", node.value.kind()),
        );
        None
    }

    pub(super) fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Str(_) => {
                self.error(node.pos, format!("{what} is empty"));
                None
            }
            // A bare number is a fine host name or file name (10.0.0.5 is a string already).
            Value::Int(i) => Some(i.to_string()),
            _ => self.wrong_kind(node, what, "a string"),
        }
    }

    pub(super) fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            _ => self.wrong_kind(node, what, "true or false"),
        }
    }

    pub(super) fn integer(
        &mut self,
        node: &Node,
        what: &str,
        min: i128,
        max: i128,
    ) -> Option<i128> {
        match &node.value {
            Value::Int(i) if (min..=max).contains(i) => Some(*i),
            Value::Int(i) => {
                self.error(
                    node.pos,
                    format!("{what} must be between {min} and {max}, found {i}"),
                );
                None
            }
            Value::Str(s) if s.trim().parse::<i128>().is_ok() => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be an integer, found the string {s:?}; write it without quotes"
                    ),
                );
                None
            }
            _ => self.wrong_kind(node, what, "an integer"),
        }
    }

    /// A path: `~/` expands to $HOME, relative paths are relative to the fleet file.
    pub(super) fn path(&mut self, node: &Node, what: &str) -> Option<PathBuf> {
        let text = self.string(node, what)?;
        if let Some(rest) = text.strip_prefix("~/") {
            return match std::env::var_os("HOME") {
                Some(home) => Some(PathBuf::from(home).join(rest)),
                None => {
                    self.error(
                        node.pos,
                        format!("{what} starts with ~ but HOME is not set"),
                    );
                    None
                }
            };
        }
        let path = PathBuf::from(&text);
        Some(if path.is_absolute() {
            path
        } else {
            self.base.join(path)
        })
    }
}

/// A wrong value as an error names it: a string as written, anything else by its kind.
pub(super) fn found(value: &Value) -> String {
    match value {
        Value::Str(text) => format!("{text:?}"),
        other => other.kind().to_string(),
    }
}
