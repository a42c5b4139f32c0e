//! xz decoding for profiles, fast on a first load.
//!
//! Volatility's ISFs are xz files of several independent blocks (the 6.1
//! ISF: 24 + 13 MiB). liblzma's stream decoder works through them one after
//! the other and checks each block's CRC64 with a table-driven loop (the
//! statically built liblzma has no CLMUL code): 38 MB took ~0.16 s of CPU,
//! most of a first `analyze`. Here the container (headers, index) is read
//! in Rust, each block's LZMA2 data is decoded by liblzma's raw decoder on
//! its own thread, and each block is checked against its stored CRC64 with
//! `crc-fast` (SIMD). [`decode`] writes every block into its place in one
//! output; [`decode_into`] hands each block's text a step at a time to a
//! [`Sink`] (the layout reader), so the text is never held whole, and
//! balances the sinks' work between threads. Nothing is
//! checked less than by liblzma: every header and the index are CRC32
//! checked, the sizes in headers, index and decoded data must agree, and
//! padding must be zero. Any file this path does not handle (another check
//! type, filters besides LZMA2, several streams, stream padding) or any
//! failure goes through liblzma's own stream decoder, whose error is the one
//! reported.

use crc_fast::CrcAlgorithm;
use liblzma::stream::{Action, Filters, Status, Stream};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

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

/// Output decoded per step when streaming into a [`Sink`].
const STEP: usize = 256 << 10;

/// Decodes a whole xz file: blocks in parallel when [`plan`] handles the
/// container, else liblzma's stream decoder.
pub(super) fn decode(input: &[u8]) -> Result<Output, String> {
    if let Some(blocks) = plan(input)
        && let Ok(out) = decode_blocks(input, &blocks)
    {
        return Ok(out);
    }
    decode_serial(input).map(Output::Heap)
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
fn decode_blocks(f: &[u8], blocks: &[Block]) -> Result<Output, String> {
    let total = blocks.last().map_or(0, |b| b.out.end);
    let mut out = zeroed(total);
    let mut parts = Vec::with_capacity(blocks.len());
    let mut rest = &mut out[..];
    for b in blocks {
        let (part, tail) = rest.split_at_mut(b.out.len());
        parts.push((b, part));
        rest = tail;
    }
    let queue = Mutex::new(parts.into_iter());
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(blocks.len());
    std::thread::scope(|s| {
        let queue = &queue;
        let work = move || -> Result<(), String> {
            loop {
                let next = queue.lock().map_err(|e| e.to_string())?.next();
                let Some((block, part)) = next else {
                    return Ok(());
                };
                decode_block(f, block, part)?;
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
    Ok(out)
}

/// A block's LZMA2 data and liblzma's raw decoder for it.
fn raw_decoder<'f>(f: &'f [u8], block: &Block) -> Result<(&'f [u8], Stream), String> {
    let data = f.get(block.data.clone()).ok_or("block outside the file")?;
    let mut filters = Filters::new();
    filters
        .lzma2_properties(&[block.lzma2_props])
        .map_err(|e| e.to_string())?;
    let stream = Stream::new_raw_decoder(&filters).map_err(|e| e.to_string())?;
    Ok((data, stream))
}

/// Decodes one block into `out` and checks its CRC64.
fn decode_block(f: &[u8], block: &Block, out: &mut [u8]) -> Result<(), String> {
    let (data, mut stream) = raw_decoder(f, block)?;
    match stream
        .process(data, out, Action::Finish)
        .map_err(|e| e.to_string())?
    {
        Status::StreamEnd => {}
        // liblzma's "no progress": data or output space ran out.
        _ => return Err("block data ends early or is too long".into()),
    }
    if stream.total_in() != data.len() as u64 || stream.total_out() != out.len() as u64 {
        return Err("block sizes differ from the index".into());
    }
    if crc_fast::checksum(CrcAlgorithm::Crc64Xz, out) != block.check {
        return Err("block CRC64 mismatch".into());
    }
    Ok(())
}

/// Takes decoded text a step at a time (see [`decode_into`]).
pub(super) trait Sink: Send {
    /// Takes in the next decoded text; false stops all decoding.
    fn feed(&mut self, text: &[u8]) -> bool;
}

/// One block's decoded steps on their way to its sink. Any thread may feed
/// them (in order: it holds the sink while it takes them from the queue),
/// so the other threads take that work off the thread decoding the first,
/// longest block, which is what a first load waits for (the 6.1 ISF's first
/// `analyze`: 82 ms became 78 ms, both cores busy to the end).
struct Lane<S> {
    sink: Mutex<S>,
    queue: Mutex<VecDeque<Vec<u8>>>,
    decoded: AtomicBool,
}

/// Steps the first block's thread may leave queued for the other threads
/// before it feeds them itself (each is [`STEP`] long).
const BACKLOG: usize = 8;

/// Decodes each block into a sink of its own, a step at a time, blocks in
/// parallel (up to one thread per core), and checks each block's CRC64;
/// the decoded text is never held whole. `None` when the container is not
/// one [`plan`] handles; an error when decoding failed or a sink said stop.
pub(super) fn decode_into<S: Sink>(
    f: &[u8],
    make: &(dyn Fn(usize) -> S + Sync),
) -> Option<Result<Vec<S>, String>> {
    let blocks = plan(f)?;
    let lanes: Vec<Lane<S>> = (0..blocks.len())
        .map(|i| Lane {
            sink: Mutex::new(make(i)),
            queue: Mutex::new(VecDeque::new()),
            decoded: AtomicBool::new(false),
        })
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(blocks.len());
    let shared = Shared {
        threads,
        stop: AtomicBool::new(false),
        helping: AtomicUsize::new(0),
        free: Mutex::new(Vec::new()),
        wake: (Mutex::new(()), Condvar::new()),
    };
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let work = || {
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let (Some(block), Some(lane)) = (blocks.get(index), lanes.get(index)) else {
                break;
            };
            let result = stream_block(f, (index, block), &lanes, &shared);
            lane.decoded.store(true, Ordering::Release);
            shared.notify();
            if let Err(e) = result {
                shared.stop.store(true, Ordering::Relaxed);
                if let Ok(mut errors) = errors.lock() {
                    errors.push(e);
                }
            }
        }
        help(&lanes, &shared);
    };
    std::thread::scope(|s| {
        // A thread that cannot be started leaves its share to the others.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(s, work).ok())
            .collect();
        work();
        for h in helpers {
            let _ = h.join();
        }
    });
    if let Some(e) = errors.into_inner().ok().and_then(|e| e.into_iter().next()) {
        return Some(Err(e));
    }
    if shared.stop.load(Ordering::Relaxed) {
        return Some(Err("the text is not laid out as expected".into()));
    }
    Some(
        lanes
            .into_iter()
            .map(|l| l.sink.into_inner().map_err(|e| e.to_string()))
            .collect(),
    )
}

struct Shared {
    threads: usize,
    stop: AtomicBool,
    /// Threads with no block left to decode, feeding others' steps.
    helping: AtomicUsize,
    /// Spent step buffers, to decode into again (they stay in cache).
    free: Mutex<Vec<Vec<u8>>>,
    wake: (Mutex<()>, Condvar),
}

impl Shared {
    fn notify(&self) {
        if self.helping.load(Ordering::Relaxed) > 0 {
            self.wake.1.notify_all();
        }
    }
}

/// Feeds a lane's queued steps to its sink; false if another thread holds
/// the sink (and `wait` is false) or there was nothing to feed.
fn drain<S: Sink>(lane: &Lane<S>, shared: &Shared, wait: bool) -> bool {
    let sink = if wait {
        lane.sink.lock().ok()
    } else {
        lane.sink.try_lock().ok()
    };
    let Some(mut sink) = sink else {
        return false;
    };
    let mut fed = false;
    loop {
        let step = lane.queue.lock().ok().and_then(|mut q| q.pop_front());
        let Some(mut step) = step else {
            return fed;
        };
        fed = true;
        if !shared.stop.load(Ordering::Relaxed) && !sink.feed(&step) {
            shared.stop.store(true, Ordering::Relaxed);
        }
        step.clear();
        if let Ok(mut free) = shared.free.lock() {
            free.push(step);
        }
    }
}

/// What a thread with no block left to decode does: feed the steps the
/// others decode until every block is decoded and fed.
fn help<S: Sink>(lanes: &[Lane<S>], shared: &Shared) {
    shared.helping.fetch_add(1, Ordering::Relaxed);
    loop {
        let mut fed = false;
        for lane in lanes {
            fed |= drain(lane, shared, false);
        }
        let finished = lanes.iter().all(|l| {
            l.decoded.load(Ordering::Acquire) && l.queue.lock().map_or(true, |q| q.is_empty())
        });
        if finished {
            break;
        }
        if !fed && let Ok(guard) = shared.wake.0.lock() {
            // Woken when a step or a block is done; the timeout covers a
            // wake-up sent just before this wait.
            let _ = shared.wake.1.wait_timeout(guard, Duration::from_millis(1));
        }
    }
    shared.helping.fetch_sub(1, Ordering::Relaxed);
    // Whatever a sink held when its decoder finished is fed by now; a lane
    // whose sink was busy at the last look is drained here.
    for lane in lanes {
        drain(lane, shared, true);
    }
}

fn stream_block<S: Sink>(
    f: &[u8],
    (index, block): (usize, &Block),
    lanes: &[Lane<S>],
    shared: &Shared,
) -> Result<(), String> {
    let lane = lanes.get(index).ok_or("no lane for the block")?;
    let (data, mut stream) = raw_decoder(f, block)?;
    let mut crc = crc_fast::Digest::new(CrcAlgorithm::Crc64Xz);
    let expected = block.out.len();
    let mut total = 0usize;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Err("stopped".into());
        }
        let mut buf = shared
            .free
            .lock()
            .ok()
            .and_then(|mut f| f.pop())
            .unwrap_or_default();
        // The step ends past the block's end, so a block longer than its
        // index says is caught below.
        buf.reserve(STEP.min(expected - total + 1));
        let done_in = usize::try_from(stream.total_in()).map_err(|e| e.to_string())?;
        let status = stream
            .process_vec(
                data.get(done_in..).unwrap_or_default(),
                &mut buf,
                Action::Finish,
            )
            .map_err(|e| e.to_string())?;
        crc.update(&buf);
        total += buf.len();
        if total > expected {
            return Err("block longer than the index says".into());
        }
        let queued = {
            let mut queue = lane.queue.lock().map_err(|e| e.to_string())?;
            queue.push_back(buf);
            queue.len()
        };
        // The first block is the longest: while other threads decode the
        // rest they also feed its steps, so its own thread only decodes
        // (unless they fall behind). Other threads feed everything queued.
        if index == 0 && shared.threads > 1 {
            if queued > BACKLOG {
                drain(lane, shared, false);
            }
            shared.notify();
        } else {
            for lane in lanes {
                drain(lane, shared, false);
            }
        }
        match status {
            Status::StreamEnd => break,
            Status::MemNeeded => return Err("block data ends early or is too long".into()),
            Status::Ok | Status::GetCheck => {}
        }
    }
    if stream.total_in() != data.len() as u64 || total != expected {
        return Err("block sizes differ from the index".into());
    }
    if crc.finalize() != block.check {
        return Err("block CRC64 mismatch".into());
    }
    // What is still queued goes with this thread (it waits for a helper
    // that is feeding this lane).
    drain(lane, shared, true);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
pub(crate) mod tests {
    use super::*;
    use liblzma::stream::Check;

    /// Several blocks (a full flush ends one), like `xz -T` writes, but
    /// without sizes in the block headers; the fixture ISF has them.
    pub(crate) fn multi_block(data: &[u8], block_size: usize, check: Check) -> Vec<u8> {
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

    fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] % 7 + b'a')
            .collect()
    }

    /// Collects what it is fed; refuses after `limit` bytes.
    #[derive(Debug)]
    struct Collect {
        text: Vec<u8>,
        limit: usize,
    }

    impl Sink for Collect {
        fn feed(&mut self, text: &[u8]) -> bool {
            self.text.extend_from_slice(text);
            self.text.len() <= self.limit
        }
    }

    #[test]
    fn streamed_blocks_reach_their_sinks_in_order_and_are_checked() {
        let data = sample(3 << 20);
        let xz = multi_block(&data, 1 << 20, Check::Crc64);
        let collect = |limit| {
            move |_| Collect {
                text: Vec::new(),
                limit,
            }
        };
        let sinks = decode_into(&xz, &collect(usize::MAX)).unwrap().unwrap();
        assert_eq!(sinks.len(), 3);
        let joined: Vec<u8> = sinks.into_iter().flat_map(|s| s.text).collect();
        assert_eq!(joined, data);
        // A sink that stops, a damaged block: errors, and every thread ends.
        assert!(decode_into(&xz, &collect(100_000)).unwrap().is_err());
        let blocks = plan(&xz).unwrap();
        let mut bad = xz.clone();
        bad[round4(blocks[1].data.end).unwrap()] ^= 1;
        let err = decode_into(&bad, &collect(usize::MAX))
            .unwrap()
            .unwrap_err();
        assert!(err.contains("CRC64"), "{err}");
        // Not a container this path reads.
        let crc32 = multi_block(&data[..1000], 300, Check::Crc32);
        assert!(decode_into(&crc32, &collect(usize::MAX)).is_none());
    }

    #[test]
    fn parallel_blocks_match_the_input() {
        let data = sample(3 << 20);
        let xz = multi_block(&data, 1 << 20, Check::Crc64);
        let blocks = plan(&xz).unwrap();
        assert_eq!(blocks.len(), 3);
        assert_eq!(*decode_blocks(&xz, &blocks).unwrap(), *data);
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
        assert!(decode_blocks(&xz, &blocks).unwrap_err().contains("CRC64"));
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
