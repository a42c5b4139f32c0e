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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_escapes_and_newlines() {
        assert_eq!(one_line("a\x1b[31mb\nc\u{202E}d"), "a?[31mb c?d");
        assert_eq!(one_line(&"x".repeat(500)).len(), 300);
    }
}
