//! The receive path that every source ends in.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};

use super::lime::LimeValidator;
use super::source::BATCH;
use super::{Sink, Source, SourceStream};
use crate::record::{self, PhysRange};
use crate::util::progress::CaptureProgress;

/// What a complete, valid image came to.
pub struct Received {
    pub bytes: u64,
    pub sha256: String,
    pub ranges: Vec<PhysRange>,
}

impl Received {
    /// The manifest's record of this image, stored at `path`.
    pub fn image_record(&self, path: &Path) -> record::ImageRecord {
        record::ImageRecord {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes: self.bytes,
            sha256: self.sha256.clone(),
            ranges: self.ranges.iter().map(record::RangeRecord::from).collect(),
        }
    }
}

impl Received {
    /// Refuses an image that is not exactly the `expected` ranges (and so
    /// their byte count): a source that skipped or added memory.
    pub fn check_expected(&self, expected: &[PhysRange], source: &str) -> anyhow::Result<()> {
        let expected_bytes = crate::target::lime_image_size(expected);
        if self.ranges != expected {
            anyhow::bail!(
                "{source} sent ranges {} but /proc/iomem lists System RAM {}; the image was not kept",
                describe_ranges(&self.ranges),
                describe_ranges(expected)
            );
        }
        if self.bytes != expected_bytes {
            anyhow::bail!(
                "{source} gave {} bytes, expected {expected_bytes}; the image was not kept",
                self.bytes
            );
        }
        Ok(())
    }
}

fn describe_ranges(ranges: &[PhysRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{:#x}-{:#x}", r.start, r.end))
        .collect::<Vec<_>>()
        .join(",")
}

/// One batch of the stream: `plain` is validated and hashed, and goes to the
/// sink too unless `store` holds the compressed stream to keep instead.
pub struct Chunk {
    pub plain: Vec<bytes::Bytes>,
    pub store: Option<bytes::Bytes>,
}

/// The one receive path of every source: reads the plain stream, hashes it
/// here as each batch passes, and hands the batches to a writer thread that
/// validates the LiME framing and feeds the sink, so decryption and hashing
/// use both cores. The sink comes back only with a complete, valid image.
pub async fn receive<S: Source, K: Sink>(
    source: SourceStream<S>,
    sink: K,
    idle_timeout: Duration,
    progress: &CaptureProgress,
) -> anyhow::Result<(Received, K)> {
    let SourceStream {
        plain: mut reader,
        store_wire,
    } = source;
    // Batches are up to BATCH long: 16 of them queue at most 4 MiB.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Chunk>(16);
    let writer = tokio::task::spawn_blocking(move || write_image(receiver, sink));
    // SHA-256 of the plain stream, here as each batch passes: handing every
    // batch to a hashing thread of its own cost more CPU in wake-ups than
    // the hashing it moved (benches/tunnel.sh, two cores).
    let mut sha256 = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    // A read error ends the loop with the error; the writer is then stopped
    // in one place below.
    let read: anyhow::Result<()> = 'read: loop {
        let first = match tokio::time::timeout(idle_timeout, reader.next()).await {
            Ok(Ok(piece)) => piece,
            Ok(Err(e)) => break 'read Err(anyhow!("the capture stream failed: {e}")),
            Err(_) => {
                break 'read Err(anyhow!(
                    "the target sent nothing for {} s; the capture stream stalled",
                    idle_timeout.as_secs()
                ));
            }
        };
        let mut eof = first.is_none();
        let mut pieces: Vec<bytes::Bytes> = first.into_iter().collect();
        let mut length: usize = pieces.iter().map(|p| p.len()).sum();
        // Take along what has already arrived, up to BATCH: one hand-off per
        // 32 KiB SSH packet costs the writer thread a wake-up each.
        while !eof && length < BATCH {
            match reader.next_if_ready() {
                Some(Ok(Some(piece))) => {
                    length += piece.len();
                    pieces.push(piece);
                }
                Some(Ok(None)) => eof = true,
                Some(Err(e)) => break 'read Err(anyhow!("the capture stream failed: {e}")),
                None => break,
            }
        }
        if length > 0 {
            for piece in &pieces {
                sha256.update(piece);
            }
            progress.add_bytes(length as u64);
            let store = store_wire.as_ref().map(|wire| wire.take());
            if sender
                .send(Chunk {
                    plain: pieces,
                    store,
                })
                .await
                .is_err()
            {
                break 'read Ok(()); // the writer stopped: its error says why
            }
        }
        if eof {
            // The end of a compressed stream (its checksum) yields no plain bytes.
            if let Some(wire) = &store_wire {
                let rest = wire.take();
                if !rest.is_empty() {
                    let _ = sender
                        .send(Chunk {
                            plain: Vec::new(),
                            store: Some(rest),
                        })
                        .await;
                }
            }
            break 'read Ok(());
        }
    };
    if let Err(error) = read {
        drop(sender);
        let _ = writer.await;
        return Err(error);
    }
    drop(sender);
    drop(reader);
    let (result, sink) = writer.await.context("image writer thread")?;
    match result {
        Ok((bytes, ranges)) => {
            let received = Received {
                bytes,
                sha256: hex::encode(sha256.finish()),
                ranges,
            };
            Ok((received, sink))
        }
        Err(error) => Err(error),
    }
}

/// Validates and writes the batches; the byte count and the ranges of a
/// complete image, or why it is not one.
fn write_image<K: Sink>(
    mut receiver: tokio::sync::mpsc::Receiver<Chunk>,
    mut sink: K,
) -> (anyhow::Result<(u64, Vec<PhysRange>)>, K) {
    let mut validator = LimeValidator::new();
    let mut failure = None;
    'chunks: while let Some(Chunk { plain, store }) = receiver.blocking_recv() {
        for piece in &plain {
            if let Err(e) = validator.feed(piece) {
                failure = Some(anyhow!("the stream is not a valid LiME image: {e}"));
                break 'chunks;
            }
        }
        let stored = match store {
            Some(wire) => vec![wire],
            None => plain,
        };
        for piece in stored {
            if let Err(e) = sink.write(piece) {
                failure = Some(e);
                break 'chunks;
            }
        }
    }
    if let Some(error) = failure {
        return (Err(error), sink);
    }
    let result = validator
        .finish()
        .map(|ranges| (validator.bytes_seen(), ranges))
        .map_err(|e| anyhow!("the capture is incomplete, image not kept: {e}"))
        .and_then(|image| sink.end_of_stream().map(|()| image));
    (result, sink)
}
