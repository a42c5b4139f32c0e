//! xz decoding for profiles, fast on a first load.
//!
//! Volatility's ISFs are xz files of several independent blocks (the 6.1
//! ISF: 24 + 13 MiB). liblzma's stream decoder works through them one after
//! the other and checks each block's CRC64 with a table-driven loop (the
//! statically built liblzma has no CLMUL code): 38 MB took ~0.16 s of CPU,
//! most of a first `analyze`. Here the container (headers, index) is read
//! in Rust, each block's LZMA2 data is decoded by liblzma's raw decoder on
//! its own thread straight into its place in the output, and each block is
//! then checked against its stored CRC64 with `crc-fast` (SIMD). Nothing is
//! checked less than by liblzma: every header and the index are CRC32
//! checked, the sizes in headers, index and decoded data must agree, and
//! padding must be zero. Any file this path does not handle (another check
//! type, filters besides LZMA2, several streams, stream padding) or any
//! failure goes through liblzma's own stream decoder, whose error is the one
//! reported.

use crc_fast::CrcAlgorithm;
use liblzma::stream::{Action, Filters, Status, Stream};
use std::ops::Range;
use std::sync::Mutex;

const MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const CHECK_CRC64: u8 = 0x04;
const FILTER_LZMA2: u64 = 0x21;
/// Bigger outputs go through the stream decoder, which grows its buffer as
/// data arrives instead of trusting the index's sizes up front.
const MAX_PARALLEL_OUTPUT: u64 = 1 << 31;

/// Decoded bytes: on the heap, or in an anonymous map backed by huge pages
/// (a 38 MB output otherwise costs ~9,000 page faults, a sixth of the
/// decoding time).
pub enum Output {
    Heap(Vec<u8>),
    Map(memmap2::MmapMut),
}

impl std::ops::Deref for Output {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Output::Heap(v) => v,
            Output::Map(m) => m,
        }
    }
}

impl std::ops::DerefMut for Output {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Output::Heap(v) => v,
            Output::Map(m) => m,
        }
    }
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Output({} bytes)", self.len())
    }
}

/// Zeroed memory for `len` bytes, in huge pages where the system has them.
fn zeroed(len: usize) -> Output {
    match memmap2::MmapOptions::new().len(len).map_anon() {
        Ok(map) => {
            // Only advice: without transparent huge pages it is 4 KiB pages.
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            Output::Map(map)
        }
        // Fresh pages from the allocator: no memset either.
        Err(_) => Output::Heap(vec![0u8; len]),
    }
}

/// Output decoded per step of the first block while its start is searched
/// for a place to hand over.
const STEP: usize = 1 << 20;

/// Where the first block's decoded start may be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cut {
    /// Hand over everything before this offset.
    At(usize),
    /// Not yet: search again from this offset once more is decoded.
    From(usize),
    /// Not in this text.
    Never,
}

/// Work done on decoded text while other parts still decode.
pub(super) struct Hooks<'h, T, H> {
    /// On the last block's output (and its offset) as soon as that block
    /// is done, when there are several blocks.
    pub last: &'h (dyn Fn(&mut [u8], usize) -> Option<T> + Sync),
    /// Asked after each step of the first block, with the text decoded so
    /// far and where to search from.
    pub cut: CutFn<'h>,
    /// On the start of the text that `cut` chose, on its own thread while
    /// the first block decodes on.
    pub first: &'h (dyn Fn(&mut [u8]) -> Option<H> + Sync),
}

/// Decodes a whole xz file.
pub(super) fn decode(input: &[u8]) -> Result<Output, String> {
    let hooks = Hooks::<(), ()> {
        last: &|_, _| None,
        cut: &|_, _| Cut::Never,
        first: &|_| None,
    };
    decode_with(input, &hooks).map(|(out, _, _)| out)
}

/// Decodes a whole xz file, running `hooks` on parts of the text as they
/// are decoded when the blocks decode in parallel (otherwise `None`s).
pub(super) fn decode_with<T: Send, H: Send>(
    input: &[u8],
    hooks: &Hooks<'_, T, H>,
) -> Result<(Output, Option<T>, Option<H>), String> {
    if let Some(blocks) = plan(input)
        && let Ok(done) = decode_blocks(input, &blocks, hooks)
    {
        return Ok(done);
    }
    decode_serial(input).map(|out| (Output::Heap(out), None, None))
}

/// liblzma's single-threaded stream decoder (with its own checks), writing
/// into the vector's spare capacity so the output is not zero-filled first.
fn decode_serial(input: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = Stream::new_stream_decoder(u64::MAX, 0).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(input.len().saturating_mul(20));
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(1 << 20));
        }
        let consumed = usize::try_from(stream.total_in()).unwrap_or(usize::MAX);
        let rest = input.get(consumed..).unwrap_or_default();
        match stream
            .process_vec(rest, &mut out, Action::Finish)
            .map_err(|e| e.to_string())?
        {
            Status::StreamEnd => return Ok(out),
            // No progress with room for output: the input ended early.
            Status::MemNeeded => return Err("the file is truncated".into()),
            Status::Ok | Status::GetCheck => {}
        }
    }
}

/// One block, located from the index and its own header.
#[derive(Debug, PartialEq, Eq)]
struct Block {
    /// The LZMA2 data (after the block header).
    data: Range<usize>,
    /// Where its output goes.
    out: Range<usize>,
    /// The LZMA2 properties byte (dictionary size).
    lzma2_props: u8,
    /// The CRC64 stored after the data.
    check: u64,
}

fn crc32(bytes: &[u8]) -> u32 {
    // CRC-32/ISO-HDLC is 32 bits wide, so the cast keeps every bit.
    crc_fast::checksum(CrcAlgorithm::Crc32IsoHdlc, bytes) as u32
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// xz's variable-length integer (7 bits a byte, at most 9 bytes).
fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A zero in the last byte of a longer encoding is not canonical.
            return (i == 0 || byte != 0).then_some(v);
        }
    }
    None
}

fn round4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|n| n & !3)
}

/// Reads the container of a single-stream, CRC64, LZMA2-only file; `None`
/// for anything else or anything malformed.
fn plan(f: &[u8]) -> Option<Vec<Block>> {
    let len = f.len();
    if len < 32 || !f.starts_with(MAGIC) || !f.ends_with(b"YZ") {
        return None;
    }
    let flags = f.get(6..8)?;
    if flags != [0, CHECK_CRC64] || le32(f, 8)? != crc32(flags) {
        return None;
    }
    let footer = len - 12;
    if f.get(footer + 8..footer + 10)? != flags
        || le32(f, footer)? != crc32(f.get(footer + 4..footer + 10)?)
    {
        return None;
    }
    let index_size = usize::try_from(le32(f, footer + 4)?)
        .ok()?
        .checked_add(1)?
        .checked_mul(4)?;
    let index_start = footer.checked_sub(index_size).filter(|&s| s >= 12)?;
    let index = f.get(index_start..footer)?;
    let crc_at = index_size - 4;
    if index.first() != Some(&0) || le32(index, crc_at)? != crc32(index.get(..crc_at)?) {
        return None;
    }
    let mut pos = 1;
    let count = varint(index, &mut pos)?;
    let mut records = Vec::new();
    for _ in 0..count {
        let unpadded = usize::try_from(varint(index, &mut pos)?).ok()?;
        let uncompressed = varint(index, &mut pos)?;
        if pos > crc_at {
            return None;
        }
        records.push((unpadded, uncompressed));
    }
    if round4(pos)? != crc_at || index.get(pos..crc_at)?.iter().any(|&b| b != 0) {
        return None;
    }
    let mut blocks = Vec::with_capacity(records.len());
    let (mut at, mut out_at) = (12usize, 0u64);
    for (unpadded, uncompressed) in records {
        let block = f.get(at..index_start)?;
        let header_size = (usize::from(*block.first()?) + 1) * 4;
        let header = block.get(..header_size)?;
        let body = header_size - 4;
        let bflags = *header.get(1)?;
        if *header.first()? == 0 || le32(header, body)? != crc32(header.get(..body)?) {
            return None;
        }
        // One filter (LZMA2), no reserved bits.
        if bflags & 0x3f != 0 {
            return None;
        }
        let mut p = 2;
        let compressed = unpadded.checked_sub(header_size + 8)?;
        if bflags & 0x40 != 0 && varint(header, &mut p)? != u64::try_from(compressed).ok()? {
            return None;
        }
        if bflags & 0x80 != 0 && varint(header, &mut p)? != uncompressed {
            return None;
        }
        if varint(header, &mut p)? != FILTER_LZMA2 || varint(header, &mut p)? != 1 {
            return None;
        }
        let lzma2_props = *header.get(p)?;
        p += 1;
        if p > body || header.get(p..body)?.iter().any(|&b| b != 0) {
            return None;
        }
        let data_end = header_size + compressed;
        let check_at = round4(data_end)?;
        if block.get(data_end..check_at)?.iter().any(|&b| b != 0) {
            return None;
        }
        let check = u64::from_le_bytes(block.get(check_at..check_at + 8)?.try_into().ok()?);
        let out_end = out_at.checked_add(uncompressed)?;
        blocks.push(Block {
            data: at + header_size..at + data_end,
            out: usize::try_from(out_at).ok()?..usize::try_from(out_end).ok()?,
            lzma2_props,
            check,
        });
        at += check_at + 8;
        out_at = out_end;
    }
    (at == index_start && out_at <= MAX_PARALLEL_OUTPUT).then_some(blocks)
}

/// Decodes the blocks on up to one thread per core, each into its own part
/// of the output, and checks each one's CRC64.
fn decode_blocks<T: Send, H: Send>(
    f: &[u8],
    blocks: &[Block],
    hooks: &Hooks<'_, T, H>,
) -> Result<(Output, Option<T>, Option<H>), String> {
    let total = blocks.last().map_or(0, |b| b.out.end);
    let mut out = zeroed(total);
    let mut parts = Vec::with_capacity(blocks.len());
    let mut rest = &mut out[..];
    for b in blocks {
        let (part, tail) = rest.split_at_mut(b.out.len());
        parts.push((b, part));
        rest = tail;
    }
    let queue = Mutex::new(parts.into_iter().enumerate());
    let early = Mutex::new(None);
    let head = Mutex::new(None);
    let last_index = blocks.len() - 1;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(blocks.len());
    std::thread::scope(|s| {
        // The start of the text, parsed beside the decoding; a thread that
        // cannot be started leaves it to this one.
        let slot = &head;
        let hand_over = move |start| {
            let run = move || {
                let r = (hooks.first)(start);
                if let Ok(mut slot) = slot.lock() {
                    *slot = r;
                }
            };
            std::thread::Builder::new().spawn_scoped(s, run).is_ok()
        };
        let (queue, early) = (&queue, &early);
        // Copied to each thread (it holds only references).
        let work = move || -> Result<(), String> {
            loop {
                let next = queue.lock().map_err(|e| e.to_string())?.next();
                let Some((index, (block, part))) = next else {
                    return Ok(());
                };
                if index == 0 {
                    decode_block(f, block, part, Some((hooks.cut, &hand_over)))?;
                    continue;
                }
                decode_block(f, block, part, None)?;
                if index == last_index {
                    let r = (hooks.last)(part, block.out.start);
                    *early.lock().map_err(|e| e.to_string())? = r;
                }
            }
        };
        // A thread that cannot be started leaves its share to the others.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(s, work).ok())
            .collect();
        let mut result = work();
        for h in helpers {
            let r = h
                .join()
                .unwrap_or_else(|_| Err("decoder thread failed".into()));
            result = result.and(r);
        }
        result
    })?;
    let early = early.into_inner().map_err(|e| e.to_string())?;
    let head = head.into_inner().map_err(|e| e.to_string())?;
    Ok((out, early, head))
}

/// Names where to cut the decoded text (see [`Hooks::cut`]).
type CutFn<'f> = &'f (dyn Fn(&[u8], usize) -> Cut + Sync);

/// Hands a decoded start of the text to another thread; false if no
/// thread could be started.
type HandOver<'o, 'f> = &'f (dyn Fn(&'o mut [u8]) -> bool + Sync);

/// Decodes one block into `out` and checks its CRC64. With `split`, the
/// block decodes a step at a time until the cut function names a place;
/// the text before it is handed over (its CRC64 already summed, as it may
/// be changed there) and decoding goes on into the rest.
fn decode_block<'o>(
    f: &[u8],
    block: &Block,
    out: &'o mut [u8],
    split: Option<(CutFn<'_>, HandOver<'o, '_>)>,
) -> Result<(), String> {
    let data = f.get(block.data.clone()).ok_or("block outside the file")?;
    let mut filters = Filters::new();
    filters
        .lzma2_properties(&[block.lzma2_props])
        .map_err(|e| e.to_string())?;
    let mut stream = Stream::new_raw_decoder(&filters).map_err(|e| e.to_string())?;
    let len = out.len();
    let mut crc = crc_fast::Digest::new(CrcAlgorithm::Crc64Xz);
    // `rest` starts at block offset `base`; the bytes before it are in `crc`.
    let mut rest = out;
    let mut base = 0usize;
    let mut search = split.map(|_| 0usize);
    loop {
        let done_in = usize::try_from(stream.total_in()).map_err(|e| e.to_string())?;
        let done_out = usize::try_from(stream.total_out()).map_err(|e| e.to_string())?;
        let input = data.get(done_in..).unwrap_or_default();
        let at = done_out - base;
        let end = match search {
            Some(_) => at.saturating_add(STEP).min(rest.len()),
            None => rest.len(),
        };
        let output = rest.get_mut(at..end).unwrap_or_default();
        let status = stream
            .process(input, output, Action::Finish)
            .map_err(|e| e.to_string())?;
        if let (Some(from), Some((cut, hand_over))) = (search, split) {
            let decoded = usize::try_from(stream.total_out()).map_err(|e| e.to_string())? - base;
            search = match cut(rest.get(..decoded).unwrap_or_default(), from) {
                Cut::From(next) => Some(next),
                Cut::Never => None,
                Cut::At(d) if d > 0 && d <= decoded => {
                    crc.update(rest.get(..d).unwrap_or_default());
                    let (start, tail) = std::mem::take(&mut rest).split_at_mut(d);
                    // Without a thread the serial decoder takes over.
                    if !hand_over(start) {
                        return Err("cannot start a parser thread".into());
                    }
                    rest = tail;
                    base = d;
                    None
                }
                Cut::At(_) => None,
            };
        }
        match status {
            Status::StreamEnd => break,
            // liblzma's "no progress": data or output space ran out.
            Status::MemNeeded => return Err("block data ends early or is too long".into()),
            Status::Ok | Status::GetCheck => {}
        }
    }
    if stream.total_in() != data.len() as u64 || stream.total_out() != len as u64 {
        return Err("block sizes differ from the index".into());
    }
    crc.update(rest);
    if crc.finalize() != block.check {
        return Err("block CRC64 mismatch".into());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use liblzma::stream::Check;

    /// Several blocks (a full flush ends one), like `xz -T` writes, but
    /// without sizes in the block headers; the fixture ISF has them.
    fn multi_block(data: &[u8], block_size: usize, check: Check) -> Vec<u8> {
        let mut enc = Stream::new_easy_encoder(1, check).unwrap();
        let mut out = Vec::with_capacity(data.len() + 1024);
        for chunk in data.chunks(block_size) {
            let mut at = 0;
            loop {
                if out.len() == out.capacity() {
                    out.reserve(1 << 16);
                }
                let before = enc.total_in();
                let st = enc
                    .process_vec(&chunk[at..], &mut out, Action::FullFlush)
                    .unwrap();
                at += (enc.total_in() - before) as usize;
                if st == Status::StreamEnd && at == chunk.len() {
                    break;
                }
            }
        }
        loop {
            out.reserve(1 << 16);
            if enc.process_vec(&[], &mut out, Action::Finish).unwrap() == Status::StreamEnd {
                return out;
            }
        }
    }

    const NO_HOOKS: Hooks<'static, (), ()> = Hooks {
        last: &|_, _| None,
        cut: &|_, _| Cut::Never,
        first: &|_| None,
    };

    #[test]
    fn a_start_handed_over_is_checked_before_it_is_changed() {
        let data = sample(3 << 20);
        let xz = multi_block(&data, 2 << 20, Check::Crc64);
        let blocks = plan(&xz).unwrap();
        // Asked once per step until it names a place; the handed-over
        // start is overwritten there, after its CRC64 was summed.
        let asked = Mutex::new(Vec::new());
        let cut = |prefix: &[u8], from: usize| {
            asked.lock().unwrap().push((prefix.len(), from));
            if prefix.len() < 2 * STEP {
                Cut::From(prefix.len())
            } else {
                Cut::At(STEP + 5)
            }
        };
        let first = |start: &mut [u8]| {
            let n = start.len();
            start.fill(b'#');
            Some(n)
        };
        let hooks = Hooks {
            last: &|part: &mut [u8], at: usize| Some((part.len(), at)),
            cut: &cut,
            first: &first,
        };
        let (out, last, head) = decode_blocks(&xz, &blocks, &hooks).unwrap();
        assert_eq!(head, Some(STEP + 5));
        assert_eq!(last, Some((1 << 20, 2 << 20)));
        assert!(out[..STEP + 5].iter().all(|&b| b == b'#'));
        assert_eq!(out[STEP + 5..], data[STEP + 5..]);
        assert_eq!(*asked.lock().unwrap(), [(STEP, 0), (2 * STEP, STEP)]);
        // A damaged first block is still refused.
        let mut bad = xz.clone();
        let check_at = round4(blocks[0].data.end).unwrap();
        bad[check_at] ^= 1;
        let blocks = plan(&bad).unwrap();
        assert!(
            decode_blocks(&bad, &blocks, &hooks)
                .unwrap_err()
                .contains("CRC64")
        );
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] % 7 + b'a')
            .collect()
    }

    #[test]
    fn parallel_blocks_match_the_input() {
        let data = sample(3 << 20);
        let xz = multi_block(&data, 1 << 20, Check::Crc64);
        let blocks = plan(&xz).unwrap();
        assert_eq!(blocks.len(), 3);
        assert_eq!(*decode_blocks(&xz, &blocks, &NO_HOOKS).unwrap().0, *data);
        assert_eq!(*decode(&xz).unwrap(), *data);
    }

    #[test]
    fn a_flipped_bit_is_an_error_or_decodes_the_same() {
        let data = sample(300_000);
        let xz = multi_block(&data, 100_000, Check::Crc64);
        assert!(plan(&xz).is_some());
        let mut errors = 0;
        for at in (0..xz.len()).step_by(97).chain(xz.len() - 64..xz.len()) {
            let mut bad = xz.clone();
            bad[at] ^= 0x10;
            match decode(&bad) {
                Ok(out) => assert_eq!(*out, *data, "flip at {at} decoded to other data"),
                Err(_) => errors += 1,
            }
        }
        assert!(errors > 0);
    }

    #[test]
    fn a_wrong_check_is_caught_by_the_parallel_path() {
        let data = sample(200_000);
        let mut xz = multi_block(&data, 100_000, Check::Crc64);
        let blocks = plan(&xz).unwrap();
        let check_at = round4(blocks[0].data.end).unwrap();
        xz[check_at] ^= 1;
        let blocks = plan(&xz).unwrap();
        assert!(
            decode_blocks(&xz, &blocks, &NO_HOOKS)
                .unwrap_err()
                .contains("CRC64")
        );
        assert!(decode(&xz).is_err());
    }

    #[test]
    fn other_shapes_go_through_the_stream_decoder() {
        let data = sample(100_000);
        let mut one = Vec::new();
        std::io::Write::write_all(&mut liblzma::write::XzEncoder::new(&mut one, 6), &data).unwrap();
        assert_eq!(plan(&one).map(|b| b.len()), Some(1));
        assert_eq!(*decode(&one).unwrap(), *data);
        let crc32 = multi_block(&data, 30_000, Check::Crc32);
        assert!(plan(&crc32).is_none());
        assert_eq!(*decode(&crc32).unwrap(), *data);
        assert!(decode(&one[..one.len() - 1]).is_err());
        let mut padded = one.clone();
        padded.extend_from_slice(&[0; 4]);
        assert!(plan(&padded).is_none());
        assert_eq!(*decode(&padded).unwrap(), *data);
    }
}
