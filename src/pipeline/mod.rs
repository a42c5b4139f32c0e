//! The capture pipeline: a `Source` gives the target's memory as a plain
//! LiME stream, `receive` validates and hashes it, and a `Sink` stores it.
//! Every source (LiME over direct-tcpip, inflated LiME, /proc/kcore framed
//! locally) ends in `receive`, so validation, hashing, storage and the
//! manifest are one code path whatever produced the bytes.

pub mod lime;
mod receive;
pub mod sink;
pub mod source;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

pub use receive::{Received, receive};
use source::WireStats;

/// Where the plain LiME stream comes from, as pieces of bytes.
pub trait Source: Send {
    /// The next piece; `None` at the end of the stream.
    fn next(&mut self) -> impl Future<Output = std::io::Result<Option<Bytes>>> + Send;

    /// Like `next`, but `None` at once when nothing has arrived yet, so that
    /// one hand-off to the writer can carry all that is already here.
    fn next_if_ready(&mut self) -> Option<std::io::Result<Option<Bytes>>>;
}

/// Where the validated stream goes. Called on the writer thread, so a sink
/// may block (the S3 side waits for a free part slot).
pub trait Sink: Send + 'static {
    fn write(&mut self, data: Bytes) -> anyhow::Result<()>;

    /// The stream is whole and valid: flush what is buffered (the last S3
    /// part). Committing (final names, completing the upload) is the
    /// caller's, once it also knows the digest agrees.
    fn end_of_stream(&mut self) -> anyhow::Result<()>;
}

/// What `receive` reads: the plain stream, and, when the compressed stream
/// is what gets stored, the tap that hands over the wire bytes.
pub struct SourceStream<S> {
    pub plain: S,
    pub store_wire: Option<Arc<WireStats>>,
}

impl<S: Source> SourceStream<S> {
    pub fn new(plain: S) -> Self {
        SourceStream {
            plain,
            store_wire: None,
        }
    }
}
