//! Parsing a decoded ISF in pieces on several threads, some of them while
//! xz blocks are still being decoded: the members before `symbols` (the
//! head) as soon as the first block has decoded past them, the last
//! block's piece of `symbols` as soon as that block is done.
//!
//! dwarf2json indents by two spaces and writes `symbols` (26 of the 6.1
//! ISF's 38 MB) last, so `,\n  "symbols":` marks where the other members
//! end and `,\n    "` where one symbol entry ends. A cut turns such a `,\n`
//! into `}{`, and the final `}` of the document becomes a space: the text
//! before the first cut is then `{...}` (the other members) and each piece
//! of `symbols` is `{...}` (a map of entries). If every part parses as a
//! whole, non-empty object, the original is exactly one object with those
//! members and entries in order (a cut in the wrong place leaves some part
//! unbalanced), so the result equals a single pass. Otherwise every byte is
//! put back and the caller parses the whole, and reports its errors.

use super::raw::{IsfSymbol, RawProfile, Selective};
use super::xz::Cut;
use super::{Selection, parse};
use serde::de::DeserializeSeed;
use std::collections::BTreeMap;

const MARK: &[u8] = b"\n  \"symbols\":";
const ENTRY: &[u8] = b",\n    \"";

type Symbols = BTreeMap<String, IsfSymbol>;

/// A piece of `symbols` cut from the end of the text, parsed early.
#[derive(Debug)]
pub(super) struct Tail {
    /// Where its `,\n` became `}{`.
    cut: usize,
    /// Where the document's final `}` became a space.
    close: usize,
    symbols: Option<Symbols>,
}

impl Tail {
    fn shift(mut self, by: usize) -> Tail {
        self.cut += by;
        self.close += by;
        self
    }
}

/// Cuts the last piece of `symbols` out of `region`, the end of the text
/// (the last xz block), and parses it. `base` is the region's offset.
pub(super) fn tail(region: &mut [u8], base: usize, sel: &Selection) -> Option<Tail> {
    let close = region.iter().rposition(|b| !b.is_ascii_whitespace())?;
    let cut = memchr::memmem::find(region, ENTRY).filter(|&c| c < close)?;
    if region.get(close) != Some(&b'}') {
        return None;
    }
    set(region, cut, b"}{")?;
    set(region, close, b" ")?;
    let symbols = region.get(cut + 1..).and_then(|p| piece(p, sel));
    Some(
        Tail {
            cut,
            close,
            symbols,
        }
        .shift(base),
    )
}

/// Where the decoded start of the text (`prefix`, searched from `from`)
/// may be handed over: just after the `,` that ends the first entry of
/// `symbols`, so the head can be parsed while the rest decodes.
pub(super) fn head_cut(prefix: &[u8], from: usize) -> Cut {
    let Some(mark) = prefix
        .get(from..)
        .and_then(|p| memchr::memmem::find(p, MARK))
        .map(|m| m + from)
    else {
        return Cut::From(prefix.len().saturating_sub(MARK.len()));
    };
    if mark == 0 || prefix.get(mark - 1) != Some(&b',') {
        return Cut::Never;
    }
    let after = mark + MARK.len();
    let Some(open) = prefix
        .get(after..)
        .and_then(|p| p.iter().position(|b| !b.is_ascii_whitespace()))
        .map(|p| after + p)
    else {
        return Cut::From(mark);
    };
    if prefix.get(open) != Some(&b'{') {
        return Cut::Never;
    }
    match prefix
        .get(open..)
        .and_then(|p| memchr::memmem::find(p, ENTRY))
    {
        Some(c) => Cut::At(open + c + 1),
        None => Cut::From(mark),
    }
}

/// The head and the first entry of `symbols`, parsed from the start of the
/// text that [`head_cut`] chose.
#[derive(Debug)]
pub(super) struct Head {
    /// Where `,\n  "symbols":` begins (its `,` became `}`).
    mark: usize,
    /// The `,` after the first entry (became `}`); the `\n` after it is
    /// the first byte not handed over.
    cut: usize,
    others: Option<RawProfile>,
    first: Option<Symbols>,
}

/// Parses the head of `start` (the text up to and including the `,` after
/// the first entry of `symbols`). `None`, with nothing changed, when it
/// does not have that shape.
pub(super) fn head(start: &mut [u8], sel: &Selection) -> Option<Head> {
    let cut = start.len().checked_sub(1)?;
    let mark = memchr::memmem::find(start, MARK).filter(|&m| m > 0 && m < cut)?;
    let after = mark + MARK.len();
    let open = after
        + start
            .get(after..)?
            .iter()
            .position(|b| !b.is_ascii_whitespace())?;
    if start.get(mark - 1) != Some(&b',') || start.get(cut) != Some(&b',') || open >= cut {
        return None;
    }
    set(start, mark - 1, b"}")?;
    set(start, cut, b"}")?;
    let start = &*start;
    let others = start.get(..mark).and_then(|h| parse(h, sel).ok());
    let first = start.get(open..=cut).and_then(|p| piece(p, sel));
    Some(Head {
        mark,
        cut,
        others,
        first,
    })
}

fn set(data: &mut [u8], at: usize, bytes: &[u8]) -> Option<()> {
    data.get_mut(at..at + bytes.len())?.copy_from_slice(bytes);
    Some(())
}

/// One piece `{ "name": {...}, ... }` of the symbols map.
fn piece(text: &[u8], sel: &Selection) -> Option<Symbols> {
    // Not empty: `{` then an entry's key.
    let first = text.get(1..)?.iter().find(|b| !b.is_ascii_whitespace());
    if text.first() != Some(&b'{') || first != Some(&b'"') {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    let map = Selective::new(|n: &str| sel.keeps_symbol(n))
        .deserialize(&mut de)
        .ok()?;
    de.end().ok()?;
    Some(map)
}

/// Parses `data` in parts (see the module comment), with `tail` already
/// cut and parsed if the decoder did that. `None`, with every byte as it
/// was, when the text does not split that way.
pub(super) fn parse_split(
    data: &mut [u8],
    head: Option<Head>,
    tail: Option<Tail>,
    sel: &Selection,
) -> Option<RawProfile> {
    let mut undo: Vec<(usize, u8)> = Vec::new();
    if let Some(t) = &tail {
        undo.extend([(t.cut, b','), (t.cut + 1, b'\n'), (t.close, b'}')]);
    }
    if let Some(h) = &head {
        undo.extend([(h.mark - 1, b','), (h.cut, b',')]);
    }
    let result = match head {
        Some(h) => parse_after_head(data, h, tail, sel, &mut undo),
        None => cut_and_parse(data, tail, sel, &mut undo),
    };
    if result.is_none() {
        for (at, b) in undo {
            if let Some(slot) = data.get_mut(at) {
                *slot = b;
            }
        }
    }
    result
}

/// The symbols between the head's cut and the tail (or the end), in two
/// pieces on two threads, joined to what was parsed early.
fn parse_after_head(
    data: &mut [u8],
    head: Head,
    tail: Option<Tail>,
    sel: &Selection,
    undo: &mut Vec<(usize, u8)>,
) -> Option<RawProfile> {
    let start = head.cut + 1;
    let (end, tail_symbols) = symbols_end(data, tail, start, undo)?;
    let others = head.others.filter(|o| o.members > 0)?;
    let mut symbols = head.first?;
    // The `\n` after the head's cut opens the next piece.
    undo.push((start, data.get(start).copied()?));
    set(data, start, b"{")?;
    let mid = cut_halfway(data, start, end, undo)?;
    let data = &*data;
    let (first, second) = match mid {
        Some(c) => (data.get(start..=c)?, data.get(c + 1..end)?),
        None => (data.get(start..end)?, &[][..]),
    };
    let parse_two = || (!second.is_empty()).then(|| piece(second, sel));
    let (one, two) = std::thread::scope(|s| {
        // A piece whose thread cannot be started is parsed here.
        let two = std::thread::Builder::new().spawn_scoped(s, parse_two);
        let one = piece(first, sel);
        let two = match two {
            Ok(h) => h.join().ok().flatten(),
            Err(_) => parse_two(),
        };
        (one, two)
    });
    symbols.extend(one?);
    joined(others, symbols, mid.map(|_| two.flatten()), tail_symbols)
}

fn cut_and_parse(
    data: &mut [u8],
    tail: Option<Tail>,
    sel: &Selection,
    undo: &mut Vec<(usize, u8)>,
) -> Option<RawProfile> {
    let mark = memchr::memmem::find(data, MARK).filter(|&at| at > 0)?;
    if data.get(mark - 1) != Some(&b',') {
        return None;
    }
    let after = mark + MARK.len();
    let open = after
        + data
            .get(after..)?
            .iter()
            .position(|b| !b.is_ascii_whitespace())?;
    if data.get(open) != Some(&b'{') {
        return None;
    }
    let (end, tail_symbols) = symbols_end(data, tail, open, undo)?;
    set(data, mark - 1, b"}")?;
    undo.push((mark - 1, b','));
    // One more cut halfway, so the symbols before the tail are two pieces.
    let mid = cut_halfway(data, open, end, undo)?;
    let data = &*data;
    let head = data.get(..mark)?;
    let (first, second) = match mid {
        Some(c) => (data.get(open..=c)?, data.get(c + 1..end)?),
        None => (data.get(open..end)?, &[][..]),
    };
    let parse_one = || piece(first, sel);
    let parse_two = || (!second.is_empty()).then(|| piece(second, sel));
    let (others, one, two) = std::thread::scope(|s| {
        // A piece whose thread cannot be started is parsed here.
        let one = std::thread::Builder::new().spawn_scoped(s, parse_one);
        let two = std::thread::Builder::new().spawn_scoped(s, parse_two);
        let others = parse(head, sel).ok();
        let one = match one {
            Ok(h) => h.join().ok().flatten(),
            Err(_) => parse_one(),
        };
        let two = match two {
            Ok(h) => h.join().ok().flatten(),
            Err(_) => parse_two(),
        };
        (others, one, two)
    });
    let others = others.filter(|o| o.members > 0)?;
    joined(others, one?, mid.map(|_| two.flatten()), tail_symbols)
}

/// Where the pieces parsed here end: at the tail's cut (the tail's symbols
/// come with it), or at the document's final `}`, which becomes a space.
fn symbols_end(
    data: &mut [u8],
    tail: Option<Tail>,
    start: usize,
    undo: &mut Vec<(usize, u8)>,
) -> Option<(usize, Option<Symbols>)> {
    match tail {
        Some(t) if t.cut > start => Some((t.cut + 1, Some(t.symbols?))),
        Some(_) => None,
        None => {
            let close = data.iter().rposition(|b| !b.is_ascii_whitespace())?;
            if data.get(close) != Some(&b'}') || close <= start {
                return None;
            }
            set(data, close, b" ")?;
            undo.push((close, b'}'));
            Some((data.len(), None))
        }
    }
}

/// Cuts `data[start..end]` at the first entry past its middle, if any, so
/// it parses as two pieces; `None` only when the text is too short to cut.
fn cut_halfway(
    data: &mut [u8],
    start: usize,
    end: usize,
    undo: &mut Vec<(usize, u8)>,
) -> Option<Option<usize>> {
    let half = start + (end - start) / 2;
    let mid = memchr::memmem::find(data.get(half..end)?, ENTRY)
        .map(|c| half + c)
        .filter(|&c| c + 1 < end);
    if let Some(c) = mid {
        set(data, c, b"}{")?;
        undo.extend([(c, b','), (c + 1, b'\n')]);
    }
    Some(mid)
}

/// The other sections with every piece of symbols joined in: the first
/// piece, the second when there was a cut (`None` inside when it failed to
/// parse), and the tail's.
fn joined(
    others: RawProfile,
    mut symbols: Symbols,
    second: Option<Option<Symbols>>,
    tail: Option<Symbols>,
) -> Option<RawProfile> {
    if let Some(two) = second {
        symbols.extend(two?);
    }
    if let Some(t) = tail {
        symbols.extend(t);
    }
    Some(others.then(RawProfile {
        symbols: Some(symbols),
        members: 1,
        ..RawProfile::default()
    }))
}
