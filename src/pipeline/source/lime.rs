//! LiME over direct-tcpip: the stream (as the channel delivers it, or
//! inflated), its arguments, and the digest LiME offers after the image.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::SourceOptions;
use super::stream::{ByteStream, StreamSource, WireStats, plain_stream};
use crate::pipeline::{Source, SourceStream};
use crate::record::{DigestRecord, SourceRecord};
use crate::transport::{Session, Tunnel};

/// LiME's stream as `receive` reads it: the channel's own packets when
/// uncompressed, else a byte stream (inflated, or with the test hook).
pub enum LimeSource {
    Channel(ChannelChunks),
    Stream(StreamSource),
}

impl Source for LimeSource {
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        match self {
            LimeSource::Channel(chunks) => chunks.next().await,
            LimeSource::Stream(stream) => stream.next().await,
        }
    }

    fn next_if_ready(&mut self) -> Option<std::io::Result<Option<Bytes>>> {
        match self {
            LimeSource::Channel(chunks) => chunks.next_if_ready(),
            LimeSource::Stream(stream) => stream.next_if_ready(),
        }
    }
}

/// The LiME stream as `receive` reads it, and its wire statistics.
pub struct LimeWire {
    pub stream: SourceStream<LimeSource>,
    pub stats: Arc<WireStats>,
}

/// Wraps LiME's direct-tcpip stream as the options ask.
pub fn lime_stream(channel: Tunnel, options: &SourceOptions) -> LimeWire {
    if !options.compress && options.corrupt_offset.is_none() {
        let stats = WireStats::new(false);
        let chunks = ChannelChunks::new(channel, stats.clone());
        return LimeWire {
            stream: SourceStream::new(LimeSource::Channel(chunks)),
            stats,
        };
    }
    let wire: ByteStream = Box::new(channel.into_stream());
    let store = options.compress && options.store_compressed;
    let stats = if store {
        WireStats::tapped()
    } else {
        WireStats::new(false)
    };
    let plain = plain_stream(
        wire,
        options.compress,
        stats.clone(),
        options.corrupt_offset,
    );
    LimeWire {
        stream: SourceStream {
            plain: LimeSource::Stream(StreamSource::new(plain)),
            store_wire: store.then(|| stats.clone()),
        },
        stats,
    }
}

/// Fetches LiME's digest and compares it with what mshot hashed; a mismatch
/// fails the capture, and the manifest keeps both values.
pub async fn check_lime_digest(
    session: &Session,
    port: u16,
    computed: &str,
    record: &mut SourceRecord,
) -> anyhow::Result<()> {
    let lime = fetch_lime_digest(session, port).await?;
    compare_digest(&lime, computed, record)
}

/// Holds LiME's digest against mshot's; a mismatch is an error and the
/// record keeps both values either way.
pub fn compare_digest(lime: &str, computed: &str, record: &mut SourceRecord) -> anyhow::Result<()> {
    let matches = lime == computed;
    record.digest = Some(DigestRecord {
        algorithm: "sha256".into(),
        lime: lime.to_string(),
        mshot: computed.to_string(),
        matches,
    });
    if !matches {
        bail!(
            "DIGEST MISMATCH: LiME hashed the image in the kernel as SHA-256 {lime}, but the bytes received hash to {computed}; the transfer altered the image, which was not kept"
        );
    }
    tracing::info!("LiME's own SHA-256 matches the received image");
    Ok(())
}

/// LiME's uncompressed stream as the channel's own packets, counted.
/// Dropping it closes the channel, which LiME needs before it can unload.
pub struct ChannelChunks {
    tunnel: Option<Tunnel>,
    stats: Arc<WireStats>,
}

impl ChannelChunks {
    pub fn new(tunnel: Tunnel, stats: Arc<WireStats>) -> Self {
        ChannelChunks {
            tunnel: Some(tunnel),
            stats,
        }
    }

    /// The next data packet; `None` once the channel is at its end.
    async fn packet(&mut self) -> Option<Bytes> {
        let packet = self.tunnel.as_mut()?.packet().await;
        match &packet {
            Some(data) => self.stats.count(data.len()),
            None => self.close(),
        }
        packet
    }

    fn close(&mut self) {
        if let Some(tunnel) = self.tunnel.take() {
            tunnel.close_in_background();
        }
    }
}

impl Source for ChannelChunks {
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        Ok(self.packet().await)
    }

    /// The no-op waker is fine because the caller's next `next` awaits and
    /// registers the real one; the channel's receive is cancel-safe.
    fn next_if_ready(&mut self) -> Option<std::io::Result<Option<Bytes>>> {
        use std::future::Future;
        let mut context = Context::from_waker(std::task::Waker::noop());
        let mut packet = std::pin::pin!(self.packet());
        match packet.as_mut().poll(&mut context) {
            Poll::Ready(chunk) => Some(Ok(chunk)),
            Poll::Pending => None,
        }
    }
}

impl Drop for ChannelChunks {
    fn drop(&mut self) {
        self.close();
    }
}

/// LiME's arguments beyond the base ones: compression and digest.
pub fn lime_extra_arguments(options: &SourceOptions) -> String {
    let mut extra = String::new();
    if options.compress {
        extra.push_str(" compress=1");
    }
    if options.digest {
        extra.push_str(" digest=sha256");
    }
    extra
}

/// Fetches the digest LiME offers after the image: it listens again on the
/// same port (on loopback) and sends 64 hex characters on a second connection.
pub async fn fetch_lime_digest(session: &Session, port: u16) -> anyhow::Result<String> {
    // LiME reopens its listener only after it has finished the image and the
    // hash; until then the channel open is refused. An open can also land in
    // the image listener's backlog just before LiME releases it, and then
    // closes without a byte: that is a retry too, not an empty digest.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let channel = match session.open_tcp("127.0.0.1", port).await {
            Ok(channel) => channel,
            Err(e) if Instant::now() > deadline => {
                bail!("LiME offered no digest on 127.0.0.1:{port} within 60 s: {e}")
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut stream = channel.into_stream();
        let mut text = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(60),
            (&mut stream).take(256).read_to_end(&mut text),
        )
        .await;
        match read {
            Ok(Ok(_)) if text.is_empty() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Ok(_)) => return parse_digest(&text),
            Ok(Err(e)) => bail!("reading LiME's digest failed: {e}"),
            Err(_) => bail!("LiME's digest connection stayed silent for 60 s"),
        }
    }
}

pub fn parse_digest(text: &[u8]) -> anyhow::Result<String> {
    let text = String::from_utf8_lossy(text);
    let digest = text.trim().to_ascii_lowercase();
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(anyhow!(
            "LiME's digest is not a SHA-256 in hex: {:?}",
            crate::util::sanitize::one_line(&text)
        ));
    }
    Ok(digest)
}
