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
use std::sync::Mutex;

mod container;
mod sink;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
pub(crate) mod tests;

use container::{Block, plan};
pub(super) use sink::{Sink, decode_into};

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
