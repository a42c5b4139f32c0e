//! Writers for LiME and AVML images: used by the tests and the fuzz corpus
//! to build synthetic captures, and usable by tools that convert images.

use super::{AVML_VERSION, LIME_MAGIC, LIME_VERSION};
use std::io::Write;

fn header(magic: u32, version: u32, start: u64, len: usize) -> [u8; 32] {
    let mut h = [0u8; 32];
    let end = start + (len as u64).saturating_sub(1);
    for (dst, src) in h.iter_mut().zip(
        magic
            .to_le_bytes()
            .into_iter()
            .chain(version.to_le_bytes())
            .chain(start.to_le_bytes())
            .chain(end.to_le_bytes()),
    ) {
        *dst = src;
    }
    h
}

/// A LiME (version 1) image of the given `(start, bytes)` ranges.
pub fn lime_image(ranges: &[(u64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (start, bytes) in ranges {
        out.extend_from_slice(&header(LIME_MAGIC, LIME_VERSION, *start, bytes.len()));
        out.extend_from_slice(bytes);
    }
    out
}

/// An AVML compressed (version 2) image of the given ranges.
pub fn avml_image(ranges: &[(u64, &[u8])]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for (start, bytes) in ranges {
        out.extend_from_slice(&header(LIME_MAGIC, AVML_VERSION, *start, bytes.len()));
        let mut enc = snap::write::FrameEncoder::new(Vec::new());
        enc.write_all(bytes)?;
        let stream = enc
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        out.extend_from_slice(&stream);
        out.extend_from_slice(&(stream.len() as u64).to_le_bytes());
    }
    Ok(out)
}
