//! Byte-stream layers between the wire and `receive`: wire-byte counting
//! (and the tap of the zlib bytes kept with --store-compressed), zlib
//! inflation, the test-only corruption hook, a remote command's stdout; and
//! `StreamSource`, which reads any of them as pieces.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::pipeline::Source;

/// How much of the stream one hand-off to the writer thread carries at most.
pub(crate) const BATCH: usize = 256 << 10;

/// Any byte stream as pieces: each read's bytes, sliced from one buffer
/// rather than copied.
pub struct StreamSource {
    stream: ByteStream,
    buffer: BytesMut,
}

impl StreamSource {
    pub fn new(stream: ByteStream) -> Self {
        StreamSource {
            stream,
            buffer: BytesMut::new(),
        }
    }
}

impl Source for StreamSource {
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        reserve(&mut self.buffer);
        let n = self.stream.read_buf(&mut self.buffer).await?;
        Ok((n > 0).then(|| self.buffer.split().freeze()))
    }

    fn next_if_ready(&mut self) -> Option<std::io::Result<Option<Bytes>>> {
        reserve(&mut self.buffer);
        read_if_ready(&mut self.stream, &mut self.buffer)
            .map(|read| read.map(|n| (n > 0).then(|| self.buffer.split().freeze())))
    }
}

/// Room for one more read: small reads into the rest of a buffer keep the
/// pieces of a batch in one allocation.
fn reserve(buffer: &mut BytesMut) {
    if buffer.capacity() - buffer.len() < 64 * 1024 {
        buffer.reserve(BATCH);
    }
}

/// One read that does not wait: `None` when nothing has arrived yet. The
/// no-op waker is fine because the caller's next read awaits and registers
/// the real one; `read_buf` is cancel-safe, so dropping it loses nothing.
fn read_if_ready(
    stream: &mut (impl tokio::io::AsyncRead + Unpin + ?Sized),
    buffer: &mut BytesMut,
) -> Option<std::io::Result<usize>> {
    use std::future::Future;
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    let mut read = std::pin::pin!(stream.read_buf(buffer));
    match read.as_mut().poll(&mut context) {
        std::task::Poll::Ready(result) => Some(result),
        std::task::Poll::Pending => None,
    }
}

/// Counts (and for compressed streams hashes) the bytes as they come off the wire.
pub struct WireCounter<R> {
    inner: R,
    counter: Arc<WireStats>,
}

#[derive(Default)]
pub struct WireStats {
    bytes: AtomicU64,
    hasher: std::sync::Mutex<Option<Sha256>>,
    /// Wire bytes not yet taken, kept only when they are what gets stored.
    tap: Option<std::sync::Mutex<bytes::BytesMut>>,
}

impl WireStats {
    pub fn new(hash: bool) -> Arc<WireStats> {
        Arc::new(WireStats {
            bytes: AtomicU64::new(0),
            hasher: std::sync::Mutex::new(hash.then(Sha256::new)),
            tap: None,
        })
    }
    /// Also keeps the wire bytes for `take`: for --store-compressed.
    pub fn tapped() -> Arc<WireStats> {
        Arc::new(WireStats {
            bytes: AtomicU64::new(0),
            hasher: std::sync::Mutex::new(Some(Sha256::new())),
            tap: Some(std::sync::Mutex::new(bytes::BytesMut::new())),
        })
    }
    /// The wire bytes received since the last call.
    pub fn take(&self) -> bytes::Bytes {
        match &self.tap {
            Some(tap) => tap
                .lock()
                .map(|mut b| b.split().freeze())
                .unwrap_or_default(),
            None => bytes::Bytes::new(),
        }
    }
    /// Counts `n` bytes that arrived without passing a `WireCounter`.
    pub fn count(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    pub fn sha256(&self) -> Option<String> {
        let mut slot = self.hasher.lock().ok()?;
        slot.take().map(|h| hex::encode(h.finalize()))
    }
}

impl<R> WireCounter<R> {
    pub fn new(inner: R, counter: Arc<WireStats>) -> Self {
        WireCounter { inner, counter }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for WireCounter<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let fresh = &buf.filled()[before..];
        self.counter
            .bytes
            .fetch_add(fresh.len() as u64, Ordering::Relaxed);
        if let Ok(mut slot) = self.counter.hasher.lock()
            && let Some(hasher) = slot.as_mut()
        {
            hasher.update(fresh);
        }
        if let Some(tap) = &self.counter.tap
            && let Ok(mut kept) = tap.lock()
        {
            kept.extend_from_slice(fresh);
        }
        Poll::Ready(Ok(()))
    }
}

/// Inflates a zlib stream (LiME `compress=1`) as it arrives. Refuses a
/// stream that ends early or carries bytes after its end.
pub struct Inflate<R> {
    inner: R,
    decoder: flate2::Decompress,
    input: Box<[u8]>,
    pos: usize,
    len: usize,
    inner_eof: bool,
    done: bool,
}

impl<R> Inflate<R> {
    pub fn new(inner: R) -> Self {
        Inflate {
            inner,
            decoder: flate2::Decompress::new(true),
            input: vec![0u8; 256 * 1024].into_boxed_slice(),
            pos: 0,
            len: 0,
            inner_eof: false,
            done: false,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Inflate<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.done {
                // Anything after the end of the zlib stream is not LiME's.
                if this.pos < this.len {
                    return Poll::Ready(Err(std::io::Error::other(
                        "data after the end of the compressed stream",
                    )));
                }
                if !this.inner_eof {
                    let mut probe = [0u8; 1];
                    let mut rb = ReadBuf::new(&mut probe);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    if !rb.filled().is_empty() {
                        return Poll::Ready(Err(std::io::Error::other(
                            "data after the end of the compressed stream",
                        )));
                    }
                    this.inner_eof = true;
                }
                return Poll::Ready(Ok(()));
            }
            if this.pos == this.len && !this.inner_eof {
                let mut rb = ReadBuf::new(&mut this.input);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                this.len = rb.filled().len();
                this.pos = 0;
                if this.len == 0 {
                    this.inner_eof = true;
                }
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let (in_before, out_before) = (this.decoder.total_in(), this.decoder.total_out());
            let out = buf.initialize_unfilled();
            let status = this
                .decoder
                .decompress(
                    &this.input[this.pos..this.len],
                    out,
                    flate2::FlushDecompress::None,
                )
                .map_err(|e| std::io::Error::other(format!("corrupt compressed stream: {e}")))?;
            let consumed = (this.decoder.total_in() - in_before) as usize;
            let produced = (this.decoder.total_out() - out_before) as usize;
            this.pos += consumed;
            buf.advance(produced);
            if status == flate2::Status::StreamEnd {
                this.done = true;
            }
            if produced > 0 {
                return Poll::Ready(Ok(()));
            }
            if consumed == 0 && this.pos < this.len && !this.done {
                return Poll::Ready(Err(std::io::Error::other(
                    "the compressed stream makes no progress",
                )));
            }
            if this.inner_eof && consumed == 0 && !this.done {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the compressed stream ended before its end marker",
                )));
            }
        }
    }
}

/// Test hook (`--test-corrupt-offset`, hidden): flips one byte of the received
/// plain LiME stream, so a test can prove that a digest mismatch is caught. A
/// hidden flag rather than a debug-only switch because CI tests release
/// builds; it is safe there because `config` accepts it only together with
/// LiME's digest, whose comparison then fails, so a corrupted image is never kept.
pub struct CorruptAt<R> {
    inner: R,
    offset: u64,
    seen: u64,
}

impl<R> CorruptAt<R> {
    pub fn new(inner: R, offset: u64) -> Self {
        CorruptAt {
            inner,
            offset,
            seen: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CorruptAt<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        let (seen, offset) = (self.seen, self.offset);
        if offset >= seen && offset < seen + n {
            let at = before + (offset - seen) as usize;
            buf.filled_mut()[at] ^= 0x01;
        }
        self.seen += n;
        Poll::Ready(Ok(()))
    }
}

/// The stdout of a remote command, chunk by chunk, as a byte stream.
pub struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl ChunkReader {
    pub fn new(chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Self {
        ChunkReader {
            chunks,
            current: bytes::Bytes::new(),
        }
    }
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.current.is_empty() {
            match ready!(self.chunks.poll_recv(cx)) {
                Some(chunk) => self.current = chunk,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.current.len().min(buf.remaining());
        let chunk = self.current.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

/// A boxed byte stream that feeds `capture::receive_image`.
pub type ByteStream = Box<dyn AsyncRead + Send + Unpin>;

/// Wraps the raw wire stream as the options ask: count, inflate, corrupt (tests).
pub fn plain_stream(
    wire: ByteStream,
    compressed: bool,
    stats: Arc<WireStats>,
    corrupt_offset: Option<u64>,
) -> ByteStream {
    let counted = WireCounter::new(wire, stats);
    let plain: ByteStream = if compressed {
        Box::new(Inflate::new(counted))
    } else {
        Box::new(counted)
    };
    match corrupt_offset {
        Some(offset) => {
            tracing::warn!("test hook: flipping the byte at offset {offset} of the received image");
            Box::new(CorruptAt::new(plain, offset))
        }
        None => plain,
    }
}
