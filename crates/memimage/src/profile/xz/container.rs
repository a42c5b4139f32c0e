//! The xz container: stream header and footer, index and block headers,
//! each checked against its CRC32.

use crc_fast::CrcAlgorithm;
use std::ops::Range;

const MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const CHECK_CRC64: u8 = 0x04;
const FILTER_LZMA2: u64 = 0x21;
/// Bigger outputs go through the stream decoder, which grows its buffer as
/// data arrives instead of trusting the index's sizes up front.
const MAX_PARALLEL_OUTPUT: u64 = 1 << 31;

/// One block, located from the index and its own header.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Block {
    /// The LZMA2 data (after the block header).
    pub(super) data: Range<usize>,
    /// Where its output goes.
    pub(super) out: Range<usize>,
    /// The LZMA2 properties byte (dictionary size).
    pub(super) lzma2_props: u8,
    /// The CRC64 stored after the data.
    pub(super) check: u64,
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

pub(super) fn round4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|n| n & !3)
}

/// Reads the container of a single-stream, CRC64, LZMA2-only file; `None`
/// for anything else or anything malformed.
pub(super) fn plan(f: &[u8]) -> Option<Vec<Block>> {
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
