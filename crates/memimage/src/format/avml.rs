//! AVML's compressed LiME variant: each range's bytes are a snappy frame
//! stream (chunks of at most 64 KiB uncompressed) followed by the stream's
//! length as a little-endian u64.
//!
//! We index chunk boundaries once at parse time (cheap: only the 4-byte
//! chunk headers are read) and decompress single chunks on demand, so a
//! compressed image is never inflated whole into RAM.

use super::FormatError;

/// "AVML" read as a little-endian u32 (older AVML releases write it).
pub const AVML_MAGIC: u32 = 0x4C4D_5641;
pub const AVML_VERSION: u32 = 2;
const MAX_CHUNK: usize = 65536;

#[derive(Debug)]
struct Chunk {
    /// Uncompressed offset of the chunk inside the range.
    uoff: u64,
    /// Chunk data after the 4-byte CRC.
    data_start: usize,
    data_len: usize,
    compressed: bool,
    ulen: usize,
}

#[derive(Debug)]
pub(super) struct SnappyRange<'a> {
    data: &'a [u8],
    chunks: Vec<Chunk>,
}

fn err(range_start: u64, reason: impl Into<String>) -> FormatError {
    FormatError::Compressed {
        range_start,
        reason: reason.into(),
    }
}

impl<'a> SnappyRange<'a> {
    /// Indexes the stream at `body`; returns the range and the number of
    /// file bytes it takes, trailing size included.
    pub(super) fn index(
        data: &'a [u8],
        body: usize,
        start: u64,
        len: u64,
    ) -> Result<(Self, usize), FormatError> {
        let mut chunks = Vec::new();
        let mut pos = body;
        let mut uoff = 0u64;
        while uoff < len {
            let hdr = data
                .get(pos..pos + 4)
                .ok_or_else(|| FormatError::Truncated {
                    header_offset: body.saturating_sub(32),
                    expected: len,
                    found: uoff,
                })?;
            let kind = hdr.first().copied().unwrap_or(0);
            let clen = usize::from(hdr.get(1).copied().unwrap_or(0))
                | usize::from(hdr.get(2).copied().unwrap_or(0)) << 8
                | usize::from(hdr.get(3).copied().unwrap_or(0)) << 16;
            let cstart = pos + 4;
            let payload = data.get(cstart..cstart + clen).ok_or_else(|| {
                err(
                    start,
                    format!("chunk at file offset {pos:#x} runs past the end"),
                )
            })?;
            match kind {
                0x00 | 0x01 => {
                    let body = payload
                        .get(4..)
                        .ok_or_else(|| err(start, "chunk shorter than its CRC"))?;
                    let ulen = if kind == 0x00 {
                        snap::raw::decompress_len(body).map_err(|e| err(start, e.to_string()))?
                    } else {
                        body.len()
                    };
                    if ulen > MAX_CHUNK {
                        return Err(err(start, format!("chunk of {ulen} bytes exceeds 64 KiB")));
                    }
                    chunks.push(Chunk {
                        uoff,
                        data_start: cstart + 4,
                        data_len: body.len(),
                        compressed: kind == 0x00,
                        ulen,
                    });
                    uoff += ulen as u64;
                }
                0x80..=0xff => {}
                k => {
                    return Err(err(
                        start,
                        format!("reserved unskippable chunk type {k:#x}"),
                    ));
                }
            }
            pos = cstart + clen;
        }
        if uoff != len {
            return Err(err(
                start,
                format!("stream holds {uoff} bytes, header says {len}"),
            ));
        }
        // Skip padding chunks, then the trailing u64 stream size.
        let trailer = data
            .get(pos..pos + 8)
            .ok_or_else(|| FormatError::Truncated {
                header_offset: body.saturating_sub(32),
                expected: 8,
                found: (data.len().saturating_sub(pos)) as u64,
            })?;
        let mut b = [0u8; 8];
        b.copy_from_slice(trailer);
        let declared = u64::from_le_bytes(b);
        if declared != (pos - body) as u64 {
            return Err(err(
                start,
                format!(
                    "trailing size {declared} differs from the stream length {}",
                    pos - body
                ),
            ));
        }
        Ok((Self { data, chunks }, pos + 8 - body))
    }

    fn chunk_bytes(&self, range_start: u64, i: usize) -> Result<Vec<u8>, FormatError> {
        let c = self
            .chunks
            .get(i)
            .ok_or_else(|| err(range_start, "chunk index out of range"))?;
        let src = self
            .data
            .get(c.data_start..c.data_start + c.data_len)
            .ok_or_else(|| err(range_start, "chunk out of bounds"))?;
        if c.compressed {
            let mut out = vec![0u8; c.ulen];
            snap::raw::Decoder::new()
                .decompress(src, &mut out)
                .map_err(|e| err(range_start, e.to_string()))?;
            Ok(out)
        } else {
            Ok(src.to_vec())
        }
    }

    pub(super) fn read(
        &self,
        range_idx: usize,
        range_start: u64,
        mut off: u64,
        dst: &mut [u8],
        cache: &mut Option<(usize, usize, Vec<u8>)>,
    ) -> Result<(), FormatError> {
        let mut done = 0;
        while done < dst.len() {
            let i = self
                .chunks
                .partition_point(|c| c.uoff + c.ulen as u64 <= off);
            let hit = matches!(cache, Some((r, c, _)) if *r == range_idx && *c == i);
            if !hit {
                *cache = Some((range_idx, i, self.chunk_bytes(range_start, i)?));
            }
            let (uoff, bytes) = match (self.chunks.get(i), cache.as_ref()) {
                (Some(c), Some((_, _, b))) => (c.uoff, b),
                _ => {
                    return Err(FormatError::Absent {
                        addr: range_start + off,
                    });
                }
            };
            let in_chunk = usize::try_from(off - uoff).unwrap_or(usize::MAX);
            let n = (dst.len() - done).min(bytes.len().saturating_sub(in_chunk));
            if n == 0 {
                return Err(FormatError::Absent {
                    addr: range_start + off,
                });
            }
            let src = bytes.get(in_chunk..in_chunk + n).unwrap_or_default();
            if let Some(d) = dst.get_mut(done..done + n) {
                d.copy_from_slice(src);
            }
            done += n;
            off += n as u64;
        }
        Ok(())
    }

    pub(super) fn for_each_chunk(
        &self,
        range_start: u64,
        f: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), FormatError> {
        for (i, c) in self.chunks.iter().enumerate() {
            let bytes = self.chunk_bytes(range_start, i)?;
            if !f(range_start + c.uoff, &bytes) {
                break;
            }
        }
        Ok(())
    }
}
