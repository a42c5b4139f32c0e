//! The receive path through in-memory sources and sinks: what a capture
//! does with a whole stream, a cut one, a short range, a failing sink, a
//! stalled target and a digest that disagrees.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::lime::header_bytes;
use super::source::compare_digest;
use super::{Sink, Source, SourceStream, receive};
use crate::record::{PhysRange, SourceRecord};
use crate::util::progress::CaptureProgress;

/// Pieces handed out in order; an `Err` is a failed read.
struct MemorySource {
    pieces: VecDeque<std::io::Result<Bytes>>,
    /// After the pieces: wait forever (a target that went quiet) rather than end.
    stall: bool,
}

impl MemorySource {
    /// `data` cut into pieces of `size` bytes.
    fn new(data: &[u8], size: usize) -> Self {
        MemorySource {
            pieces: data
                .chunks(size)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect(),
            stall: false,
        }
    }
}

impl Source for MemorySource {
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        match self.pieces.pop_front() {
            Some(piece) => piece.map(Some),
            None if self.stall => std::future::pending().await,
            None => Ok(None),
        }
    }

    fn next_if_ready(&mut self) -> Option<std::io::Result<Option<Bytes>>> {
        match self.pieces.pop_front() {
            Some(piece) => Some(piece.map(Some)),
            None if self.stall => None,
            None => Some(Ok(None)),
        }
    }
}

/// What a sink saw, shared with the test after the sink moved into `receive`.
#[derive(Default)]
struct Seen {
    bytes: Vec<u8>,
    ends: usize,
}

struct MemorySink {
    seen: Arc<Mutex<Seen>>,
    /// Refuse the write that would take the total past this many bytes.
    fail_after: Option<usize>,
}

impl MemorySink {
    fn new(fail_after: Option<usize>) -> (Self, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink = MemorySink {
            seen: seen.clone(),
            fail_after,
        };
        (sink, seen)
    }
}

impl Sink for MemorySink {
    fn write(&mut self, data: Bytes) -> anyhow::Result<()> {
        let mut seen = self.seen.lock().unwrap();
        if self
            .fail_after
            .is_some_and(|limit| seen.bytes.len() + data.len() > limit)
        {
            anyhow::bail!("part 3 was refused by the store");
        }
        seen.bytes.extend_from_slice(&data);
        Ok(())
    }

    fn end_of_stream(&mut self) -> anyhow::Result<()> {
        self.seen.lock().unwrap().ends += 1;
        Ok(())
    }
}

/// A LiME image of `ranges`, each filled with bytes that depend on the offset.
fn image(ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(start, end) in ranges {
        out.extend_from_slice(&header_bytes(PhysRange { start, end }));
        out.extend((start..=end).map(|a| (a * 7 + (a >> 8)) as u8));
    }
    out
}

const RANGES: &[(u64, u64)] = &[(0x1000, 0x9_ffff), (0x10_0000, 0x17_ffff)];

fn run<S: Source>(source: S, sink: MemorySink) -> anyhow::Result<(super::Received, MemorySink)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let progress = CaptureProgress::new("memory");
    runtime.block_on(receive(
        SourceStream::new(source),
        sink,
        Duration::from_millis(300),
        &progress,
    ))
}

#[test]
fn a_whole_stream_is_hashed_validated_and_stored_byte_for_byte() {
    let data = image(RANGES);
    // Odd piece sizes: headers and ranges split anywhere.
    let (sink, seen) = MemorySink::new(None);
    let (received, _) = run(MemorySource::new(&data, 4093), sink).unwrap();
    let expected: Vec<PhysRange> = RANGES
        .iter()
        .map(|&(start, end)| PhysRange { start, end })
        .collect();
    assert_eq!(received.bytes, data.len() as u64);
    assert_eq!(received.sha256, hex::encode(Sha256::digest(&data)));
    assert_eq!(received.ranges, expected);
    received.check_expected(&expected, "memory").unwrap();
    let seen = seen.lock().unwrap();
    assert!(
        seen.bytes == data,
        "the sink holds other bytes than were sent"
    );
    assert_eq!(seen.ends, 1);
}

#[test]
fn a_cut_stream_fails_and_the_sink_never_hears_the_end() {
    let data = image(RANGES);
    let mut source = MemorySource::new(&data[..data.len() / 2], 65536);
    source.pieces.push_back(Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by peer",
    )));
    let (sink, seen) = MemorySink::new(None);
    let e = run(source, sink).err().unwrap().to_string();
    assert!(
        e.contains("the capture stream failed") && e.contains("reset"),
        "{e}"
    );
    assert_eq!(seen.lock().unwrap().ends, 0);
}

#[test]
fn a_stream_that_ends_inside_its_last_range_is_not_an_image() {
    let data = image(RANGES);
    let (sink, seen) = MemorySink::new(None);
    let short = &data[..data.len() - 100];
    let e = run(MemorySource::new(short, 65536), sink).err().unwrap();
    let e = format!("{e:#}");
    assert!(e.contains("incomplete"), "{e}");
    assert_eq!(seen.lock().unwrap().ends, 0);
}

#[test]
fn a_sink_error_mid_stream_stops_the_capture_with_the_sinks_reason() {
    let data = image(RANGES);
    let (sink, seen) = MemorySink::new(Some(data.len() / 3));
    let e = run(MemorySource::new(&data, 65536), sink).err().unwrap();
    assert!(e.to_string().contains("part 3 was refused"), "{e:#}");
    let seen = seen.lock().unwrap();
    assert!(seen.bytes.len() <= data.len() / 3);
    assert_eq!(seen.ends, 0);
}

#[test]
fn a_target_that_goes_quiet_is_a_stall_not_a_hang() {
    let data = image(RANGES);
    let mut source = MemorySource::new(&data[..10_000], 4096);
    source.stall = true;
    let (sink, _) = MemorySink::new(None);
    let e = run(source, sink).err().unwrap().to_string();
    assert!(e.contains("stalled"), "{e}");
}

#[test]
fn ranges_other_than_iomem_lists_are_refused_after_a_valid_stream() {
    let data = image(RANGES);
    let (sink, _) = MemorySink::new(None);
    let (received, _) = run(MemorySource::new(&data, 65536), sink).unwrap();
    let fewer = [PhysRange {
        start: 0x1000,
        end: 0x9_ffff,
    }];
    let e = received.check_expected(&fewer, "LiME").err().unwrap();
    assert!(e.to_string().contains("not kept"), "{e}");
}

#[test]
fn a_digest_that_disagrees_fails_and_both_values_are_recorded() {
    let data = image(RANGES);
    let (sink, _) = MemorySink::new(None);
    let (received, _) = run(MemorySource::new(&data, 65536), sink).unwrap();
    let mut record = SourceRecord::default();
    compare_digest(&received.sha256, &received.sha256, &mut record).unwrap();
    assert!(record.digest.as_ref().unwrap().matches);
    let other = hex::encode(Sha256::digest(b"another image"));
    let e = compare_digest(&other, &received.sha256, &mut record)
        .err()
        .unwrap();
    assert!(e.to_string().contains("DIGEST MISMATCH"), "{e}");
    let digest = record.digest.unwrap();
    assert!(!digest.matches);
    assert_eq!((digest.lime, digest.mshot), (other, received.sha256));
}
