//! Reading an ISF by dwarf2json's layout, without parsing what is not used.
//!
//! dwarf2json (and any JSON pretty-printer with two-space indents) puts each
//! top-level member's key on a line of its own, `\n  "KEY": {`, and each
//! entry of those members' maps at `\n    "NAME": `. A JSON string cannot
//! hold a raw newline, so these markers only ever stand between tokens, and
//! in a document laid out that way only at those two depths. Of the 6.1
//! ISF's 38 MB the plugins use a few hundred entries: here the markers are
//! found with SIMD substring search, the names compared with the selection,
//! and only the kept entries' text is parsed by serde_json. The text is
//! consumed as it decodes, so the decoded document is never held whole (a
//! first load used to fault in 38 MB for it).
//!
//! What is parsed must end where the layout says (a `,`, or the closing
//! lines of its member or of the document), and the text before each marker
//! must end as the layout requires; anything else (another layout, a
//! compact document, a Rekall profile, a name with escapes) makes
//! [`Scanner`] give up and the caller parse the whole document with
//! serde_json, whose errors are the ones reported. Entries that are not
//! used are located, not validated.

use super::Selection;
use super::raw::RawProfile;
use assemble::assemble;
use memchr::memmem::Finder;

mod assemble;

const MEMBER: &[u8] = b"\n  \"";
const ENTRY: &[u8] = b"\n    \"";
/// Bytes kept behind the search point: a marker cut by the end of the
/// data, and the end of the text before it, which is checked.
const MARGIN: usize = 16;
/// A name line longer than this is not dwarf2json's.
const MAX_NAME: usize = 4096;

/// Names the selection keeps, bucketed by length for a quick test.
pub(super) struct Names {
    types: Bucketed,
    symbols: Bucketed,
    enums: Bucketed,
    all_symbols: bool,
}

struct Bucketed(Vec<Vec<&'static [u8]>>);

impl Bucketed {
    fn new(names: &[&'static str]) -> Bucketed {
        let mut by_len: Vec<Vec<&'static [u8]>> = Vec::new();
        for n in names {
            if by_len.len() <= n.len() {
                by_len.resize(n.len() + 1, Vec::new());
            }
            if let Some(bucket) = by_len.get_mut(n.len()) {
                bucket.push(n.as_bytes());
            }
        }
        Bucketed(by_len)
    }

    fn contains(&self, name: &[u8]) -> bool {
        self.0.get(name.len()).is_some_and(|b| b.contains(&name))
    }
}

impl Names {
    /// `None` for [`Selection::All`], which keeps everything anyway.
    pub(super) fn new(sel: &Selection) -> Option<Names> {
        match sel {
            Selection::All => None,
            Selection::Only {
                types,
                symbols,
                enums,
                all_symbols,
            } => Some(Names {
                types: Bucketed::new(types),
                symbols: Bucketed::new(symbols),
                enums: Bucketed::new(enums),
                all_symbols: *all_symbols,
            }),
        }
    }

    fn unnamed(name: &[u8]) -> bool {
        name.starts_with(b"unnamed") || name.starts_with(b"__unnamed")
    }

    fn keeps(&self, member: Member, name: &[u8]) -> bool {
        match member {
            Member::Metadata => name == b"format",
            Member::BaseTypes => true,
            Member::UserTypes => self.types.contains(name) || Self::unnamed(name),
            Member::Enums => self.enums.contains(name),
            Member::Symbols => self.all_symbols || self.symbols.contains(name),
            // Not yet known (a later xz block's start): whatever any
            // member could keep; a member that keeps all is refused later.
            Member::Unknown => {
                self.keeps(Member::Metadata, name)
                    || self.keeps(Member::UserTypes, name)
                    || self.keeps(Member::Enums, name)
                    || self.keeps(Member::Symbols, name)
            }
            Member::Other => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Member {
    Unknown,
    Metadata,
    BaseTypes,
    UserTypes,
    Enums,
    Symbols,
    /// A key ISF does not have: the whole document is parsed instead.
    Other,
}

impl Member {
    fn of(key: &[u8]) -> Member {
        match key {
            b"metadata" => Member::Metadata,
            b"base_types" => Member::BaseTypes,
            b"user_types" => Member::UserTypes,
            b"enums" => Member::Enums,
            b"symbols" => Member::Symbols,
            _ => Member::Other,
        }
    }
}

/// What a scan found, in document order.
#[derive(Debug)]
enum Mark {
    /// A top-level member begins.
    Member(Member),
    /// A kept entry: its name, its text from the marker's indent on, and
    /// whether the document ends with it.
    Entry {
        name: String,
        text: Vec<u8>,
        last: bool,
    },
    /// Entries were skipped before the member was known.
    SkippedUnknown,
}

/// The marker being read.
struct Open {
    /// Where its `\n` is in the buffer.
    at: usize,
    member: bool,
    /// Its name, once the name's line has arrived.
    name: Option<(String, bool)>,
    /// Whether it was kept or skipped before its member was known.
    unknown: bool,
}

/// Scans one xz block's text (or a whole document) as it arrives.
pub(super) struct Scanner<'n> {
    names: &'n Names,
    buf: Vec<u8>,
    /// Text before the first marker, once that marker is found.
    prefix: Option<Vec<u8>>,
    open: Option<Open>,
    /// No marker starts in `buf[..searched]` after `open`'s.
    searched: usize,
    member: Member,
    marks: Vec<Mark>,
    entry: Finder<'static>,
    member_finder: Finder<'static>,
    /// Whether the first marker was a member's, once found.
    first_is_member: Option<bool>,
    /// Set when the text is not laid out as expected.
    failed: bool,
}

impl<'n> Scanner<'n> {
    /// `first` is true for the text that starts the document.
    pub(super) fn new(names: &'n Names, first: bool) -> Scanner<'n> {
        Scanner {
            names,
            buf: Vec::new(),
            prefix: None,
            open: None,
            searched: 0,
            member: if first {
                Member::Other
            } else {
                Member::Unknown
            },
            marks: Vec::new(),
            entry: Finder::new(ENTRY),
            member_finder: Finder::new(MEMBER),
            first_is_member: None,
            failed: false,
        }
    }

    /// Takes in what was appended to the buffer.
    fn scan(&mut self) {
        if self.failed {
            self.buf.clear();
            return;
        }
        if !self.find_marks() {
            self.failed = true;
            self.buf.clear();
            return;
        }
        self.compact();
    }

    /// Appends text (for the start of the next block, see [`join`]).
    fn feed(&mut self, text: &[u8]) {
        self.buf.extend_from_slice(text);
        self.scan();
    }

    fn find_marks(&mut self) -> bool {
        loop {
            if let Some(open) = &mut self.open
                && open.name.is_none()
            {
                let start = open.at + if open.member { MEMBER } else { ENTRY }.len();
                let rest = self.buf.get(start..).unwrap_or_default();
                let Some(end) = memchr::memchr(b'"', rest) else {
                    return rest.len() <= MAX_NAME;
                };
                // A key on one line, without escapes, and a colon after it.
                let name = rest.get(..end).unwrap_or_default();
                if name.iter().any(|&c| c == b'\\' || c < 0x20) {
                    return false;
                }
                match rest.get(end + 1) {
                    Some(b':') => {}
                    Some(_) => return false,
                    None => return true, // the colon has not arrived yet
                }
                let keep = if open.member {
                    let m = Member::of(name);
                    if m == Member::Other {
                        return false;
                    }
                    self.member = m;
                    self.marks.push(Mark::Member(m));
                    true
                } else if self.member == Member::Other {
                    return false; // an entry before the document's first member
                } else {
                    self.names.keeps(self.member, name)
                };
                // Only a kept name is needed as text (most are skipped).
                let name = if keep {
                    match std::str::from_utf8(name) {
                        Ok(name) => name.to_string(),
                        Err(_) => return false,
                    }
                } else {
                    String::new()
                };
                open.name = Some((name, keep));
                open.unknown = self.member == Member::Unknown;
            }
            let from = match &self.open {
                Some(o) => self.searched.max(o.at + 1),
                None => self.searched,
            };
            let Some((at, member)) = self.next_marker(from) else {
                self.searched = self.buf.len().saturating_sub(ENTRY.len() - 1).max(from);
                return true;
            };
            if !self.close_open(at, member) {
                return false;
            }
            self.open = Some(Open {
                at,
                member,
                name: None,
                unknown: false,
            });
            self.searched = at + 1;
        }
    }

    /// The first marker at or after `from`: its position and whether it
    /// is a member's. A member's key line ends with `{` right before its
    /// first entry, so member markers are searched for only in the text
    /// before an entry that follows a `{`, and after the last entry.
    fn next_marker(&self, from: usize) -> Option<(usize, bool)> {
        let rest = self.buf.get(from..).unwrap_or_default();
        let member_in = |text: &[u8]| self.member_finder.find(text).map(|m| (from + m, true));
        match self.entry.find(rest) {
            Some(e)
                if rest
                    .get(..e)
                    .unwrap_or_default()
                    .trim_ascii_end()
                    .ends_with(b"{") =>
            {
                member_in(rest.get(..e).unwrap_or_default()).or(Some((from + e, false)))
            }
            Some(e) => Some((from + e, false)),
            None => member_in(rest),
        }
    }

    /// Notes entries skipped before their member was known (once for a
    /// run of them: a block can skip a hundred thousand).
    fn skipped_unknown(&mut self) {
        if !matches!(self.marks.last(), Some(Mark::SkippedUnknown)) {
            self.marks.push(Mark::SkippedUnknown);
        }
    }

    /// Ends the open marker's text just before a marker at `next`.
    fn close_open(&mut self, next: usize, next_is_member: bool) -> bool {
        let before = self.buf.get(..next).unwrap_or_default().trim_ascii_end();
        let Some(open) = self.open.take() else {
            if self.prefix.is_some() {
                return false;
            }
            self.prefix = Some(self.buf.get(..next).unwrap_or_default().to_vec());
            self.first_is_member = Some(next_is_member);
            return true;
        };
        // The text before a marker ends as the layout has it: an entry
        // with `,`, a member's last entry with its member's `}` and `,` (a
        // member's key line is checked whole below).
        let ok = if open.member {
            true
        } else if next_is_member {
            before
                .strip_suffix(b",")
                .is_some_and(|b| b.trim_ascii_end().ends_with(b"\n  }"))
        } else {
            before.ends_with(b",") && !before.ends_with(b"\n  },")
        };
        if !ok {
            return false;
        }
        let Some((name, keep)) = open.name else {
            return false;
        };
        if open.member {
            // A member's key line opens its map: entries follow, or it is
            // empty and the next member follows.
            let line = self
                .buf
                .get(open.at + 1..next)
                .unwrap_or_default()
                .trim_ascii_end();
            let key = format!("  \"{name}\": {{");
            let expected = if next_is_member {
                format!("{key}}},")
            } else {
                key
            };
            return line == expected.as_bytes();
        }
        if keep {
            let text = self.buf.get(open.at + 1..next).unwrap_or_default().to_vec();
            self.marks.push(Mark::Entry {
                name,
                text,
                last: false,
            });
        } else if !keep && open.unknown {
            self.skipped_unknown();
        }
        true
    }

    /// Drops what is no longer needed from the front of the buffer.
    fn compact(&mut self) {
        let Some(open) = &self.open else {
            return; // all of it is the prefix so far
        };
        let drop = match &open.name {
            // Only the end of a skipped entry's text is checked.
            Some((_, false)) => self.searched.saturating_sub(MARGIN),
            // A name not read yet, a member's key line, an entry kept whole.
            _ => open.at,
        };
        if drop == 0 {
            return;
        }
        self.buf.drain(..drop);
        self.searched -= drop;
        if let Some(o) = &mut self.open {
            o.at = o.at.saturating_sub(drop);
        }
    }

    /// Ends the scan: the open marker's text runs to the end of the data,
    /// which must close its member and the document.
    fn finish(&mut self) -> bool {
        if self.failed {
            return false;
        }
        let Some(Open {
            at,
            member: false,
            name: Some((name, keep)),
            unknown,
        }) = self.open.take()
        else {
            return false;
        };
        if keep {
            let text = self.buf.get(at + 1..).unwrap_or_default().to_vec();
            self.marks.push(Mark::Entry {
                name,
                text,
                last: true,
            });
        } else if unknown {
            self.skipped_unknown();
        }
        self.buf.trim_ascii_end().ends_with(b"\n  }\n}")
    }
}

impl super::xz::Sink for Scanner<'_> {
    fn feed(&mut self, text: &[u8]) -> bool {
        Scanner::feed(self, text);
        !self.failed
    }
}

/// Reads a whole document (not compressed, or already decoded) by its
/// layout, a step at a time so the copy stays in cache.
pub(super) fn read_text(text: &[u8], names: &Names) -> Option<RawProfile> {
    let mut scanner = Scanner::new(names, true);
    for step in text.chunks(STEP) {
        scanner.feed(step);
        if scanner.failed {
            return None;
        }
    }
    join(vec![scanner], names)
}

/// Reads an xz file by its layout as its blocks decode; `None` for
/// another container or layout (the caller then decodes and parses it
/// whole, and reports its errors).
pub(super) fn read_xz(bytes: &[u8], names: &Names) -> Option<RawProfile> {
    let scans = super::xz::decode_into(bytes, &|i| Scanner::new(names, i == 0))?.ok()?;
    join(scans, names)
}

const STEP: usize = 256 << 10;

/// Joins the scans of consecutive blocks (the first one starting the
/// document) into one profile; `None` if the text is not laid out as
/// expected.
pub(super) fn join(scans: Vec<Scanner<'_>>, names: &Names) -> Option<RawProfile> {
    let mut scans = scans.into_iter();
    let mut current = scans.next()?;
    if current.failed || current.prefix.as_deref() != Some(b"{") {
        return None;
    }
    let mut marks = Vec::new();
    for mut next in scans {
        if next.failed {
            return None;
        }
        // A block with no marker is all the middle of one entry.
        let Some(prefix) = next.prefix.take() else {
            current.feed(&next.buf);
            continue;
        };
        // The next block's text before its first marker ends the current
        // block's last entry (and may hold a marker cut in two); that
        // first marker follows right after it.
        current.feed(&prefix);
        let end = current.buf.len();
        if current.failed || !current.close_open(end, next.first_is_member?) {
            return None;
        }
        marks.append(&mut current.marks);
        // The next block's first entries belong to the member the current
        // block ended in.
        if next.member == Member::Unknown {
            next.member = current.member;
        }
        current = next;
    }
    if !current.finish() {
        return None;
    }
    marks.append(&mut current.marks);
    assemble(marks, names)
}
