//! Text that comes from a remote host is untrusted: strip control characters
//! (terminal escapes, bidi overrides) before it reaches a terminal or a log (fd's habit).

/// One printable line: control and bidi-override characters become `?`,
/// newlines become spaces, and the result is capped at 300 characters.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(300));
    for c in text.chars().take(300) {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => out.push('?'),
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => out.push('?'),
            c => out.push(c),
        }
    }
    out.trim().to_string()
}

/// An error chain on one line, without a cause repeated by its context
/// ("connection refused: connection refused").
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for part in error.chain().map(|c| c.to_string()) {
        if line.contains(&part) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&part);
    }
    line
}

/// `text` as part of a file name or an object key: ASCII letters, digits,
/// `.`, `-` and `_` are kept, anything else becomes `_`.
pub fn file_name_part(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') => c,
            _ => '_',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = anyhow::Error::new(io).context(format!(
            "cannot connect to h: {}",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
        ));
        let line = error_chain(&e);
        assert_eq!(line.matches("refused").count(), 1, "{line}");
    }

    #[test]
    fn strips_escapes_and_newlines() {
        assert_eq!(one_line("a\x1b[31mb\nc\u{202E}d"), "a?[31mb c?d");
        assert_eq!(one_line(&"x".repeat(500)).len(), 300);
    }
}
