//! The stream source side of a capture: which method produces the LiME byte
//! stream (LiME over direct-tcpip, zlib-compressed LiME, or /proc/kcore read
//! with dd), the choice between them, and the readers that sit between the
//! wire and the shared writer (wire-byte counting, zlib inflation, the kernel's
//! own digest, a test-only corruption hook).
//!
//! Every source ends in the same `capture::receive_image`, so validation,
//! hashing, the sink and the manifest are one code path whatever produced
//! the bytes.

pub mod kcore;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::target::shell::Shell;
use crate::transport::Session;

/// `--method`: how memory is read on the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// LiME when a module is available and the target accepts it, else /proc/kcore.
    #[default]
    Auto,
    /// Load the LiME kernel module (needs --module).
    Lime,
    /// Read /proc/kcore with dd; nothing is pushed or loaded.
    Kcore,
}

/// The method a capture actually used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Used {
    Lime,
    Kcore,
}

/// Source choices from the command line, validated by `config`.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    pub method: Method,
    /// LiME `compress=1`; mshot inflates as the stream arrives.
    pub compress: bool,
    /// Keep the zlib stream as received instead of the plain image.
    pub store_compressed: bool,
    /// LiME `digest=sha256`, fetched and compared after the image.
    pub digest: bool,
    /// Test hook: flip the byte at this offset of the plain stream.
    pub corrupt_offset: Option<u64>,
}

/// The command line's defaults: `--method auto`, LiME's digest on.
impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            method: Method::Auto,
            compress: false,
            store_compressed: false,
            digest: true,
            corrupt_offset: None,
        }
    }
}

/// Whether a usable LiME module is at hand for this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleAvailability {
    Available { signed: bool },
    Missing(String),
}

/// What the target says about loading modules and reading /proc/kcore.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TargetPolicy {
    /// `kernel.modules_disabled`: no module can load until reboot.
    pub modules_disabled: bool,
    /// `module.sig_enforce`: only signed modules load.
    pub sig_enforce: bool,
    /// The active lockdown mode (`none`, `integrity`, `confidentiality`), if the
    /// kernel has lockdown.
    pub lockdown: Option<String>,
    pub kcore_present: bool,
}

/// One command as root prints all of it, labelled, so a missing file just
/// leaves its value empty.
pub const POLICY_PROBE: &str = "echo modules_disabled=$(cat /proc/sys/kernel/modules_disabled 2>/dev/null); \
echo sig_enforce=$(cat /sys/module/module/parameters/sig_enforce 2>/dev/null); \
echo lockdown=$(cat /sys/kernel/security/lockdown 2>/dev/null); \
if test -e /proc/kcore; then echo kcore=present; else echo kcore=absent; fi";

pub fn parse_policy(text: &str) -> TargetPolicy {
    let mut policy = TargetPolicy::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key {
            "modules_disabled" => policy.modules_disabled = value == "1",
            "sig_enforce" => policy.sig_enforce = value == "Y" || value == "1",
            // "none [integrity] confidentiality": the bracketed word is active.
            "lockdown" => {
                policy.lockdown = value
                    .split_whitespace()
                    .find(|w| w.starts_with('['))
                    .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
            }
            "kcore" => policy.kcore_present = value == "present",
            _ => {}
        }
    }
    policy
}

impl TargetPolicy {
    /// Why an unsigned (or signed) module would be refused, if it would.
    fn module_refusal(&self, signed: bool) -> Option<String> {
        if self.modules_disabled {
            return Some("kernel.modules_disabled=1: the kernel loads no more modules".into());
        }
        if !signed {
            if self.sig_enforce {
                return Some("module.sig_enforce is on and the LiME module is not signed".into());
            }
            if matches!(
                self.lockdown.as_deref(),
                Some("integrity" | "confidentiality")
            ) {
                return Some(format!(
                    "kernel lockdown ({}) refuses unsigned modules",
                    self.lockdown.as_deref().unwrap_or_default()
                ));
            }
        }
        None
    }

    /// Why /proc/kcore cannot serve, if it cannot.
    fn kcore_refusal(&self) -> Option<String> {
        if !self.kcore_present {
            return Some("the kernel has no /proc/kcore (built without CONFIG_PROC_KCORE)".into());
        }
        if self.lockdown.as_deref() == Some("confidentiality") {
            return Some(
                "kernel lockdown in confidentiality mode forbids reading /proc/kcore".into(),
            );
        }
        None
    }
}

/// The method chosen, and why, in words for the user and the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub used: Used,
    pub reason: String,
}

/// The one place that picks the method. `module` comes from whatever found a
/// module for this kernel (a file, or a repository); `policy` from the target.
pub fn decide(
    requested: Method,
    module: &ModuleAvailability,
    policy: &TargetPolicy,
) -> anyhow::Result<Decision> {
    let lime_blocker = match module {
        ModuleAvailability::Missing(why) => Some(why.clone()),
        ModuleAvailability::Available { signed } => policy.module_refusal(*signed),
    };
    match requested {
        Method::Lime => match lime_blocker {
            None => Ok(Decision {
                used: Used::Lime,
                reason: "--method lime".into(),
            }),
            Some(why) => bail!(
                "LiME cannot be used: {why}; try --method kcore (reads /proc/kcore, loads nothing)"
            ),
        },
        Method::Kcore => match policy.kcore_refusal() {
            None => Ok(Decision {
                used: Used::Kcore,
                reason: "--method kcore".into(),
            }),
            Some(why) => bail!("/proc/kcore cannot be used: {why}; try --method lime"),
        },
        Method::Auto => match (lime_blocker, policy.kcore_refusal()) {
            (None, _) => Ok(Decision {
                used: Used::Lime,
                reason: "a LiME module for this kernel is available and the target accepts it"
                    .into(),
            }),
            (Some(why), None) => Ok(Decision {
                used: Used::Kcore,
                reason: format!("LiME cannot be used ({why}), so /proc/kcore is read instead"),
            }),
            (Some(lime), Some(kcore)) => bail!(
                "no way to read memory on this target: LiME cannot be used ({lime}) and {kcore}"
            ),
        },
    }
}

/// Probes the target's policy, decides, records and says which method and why.
pub async fn choose(
    requested: Method,
    module: &ModuleAvailability,
    shell: &Shell<'_>,
    record: &mut SourceRecord,
) -> anyhow::Result<Decision> {
    let out = shell.run_root(POLICY_PROBE, &[], None).await?;
    let policy = parse_policy(&out.stdout_text());
    record.requested = Some(requested);
    record.target_policy = Some(policy.clone());
    let decision = decide(requested, module, &policy)?;
    record.method = Some(decision.used);
    record.reason = decision.reason.clone();
    tracing::info!(
        "{}: method {}: {}",
        shell.host,
        decision.used.name(),
        decision.reason
    );
    Ok(decision)
}

/// After `insmod` failed under `--method auto`: kcore instead, recorded and said.
pub fn fall_back(
    requested: Method,
    insmod_error: &anyhow::Error,
    record: &mut SourceRecord,
) -> Option<Decision> {
    let policy = record.target_policy.clone().unwrap_or_default();
    let decision = fall_back_after_insmod(requested, &format!("{insmod_error:#}"), &policy)?;
    record.method = Some(decision.used);
    record.reason = decision.reason.clone();
    tracing::warn!("method kcore: {}", decision.reason);
    Some(decision)
}

impl Used {
    pub fn name(self) -> &'static str {
        match self {
            Used::Lime => "lime",
            Used::Kcore => "kcore",
        }
    }
}

/// The LiME stream as `receive_image` reads it, and its wire statistics.
pub struct LimeWire {
    pub stream: SourceStream,
    pub stats: Arc<WireStats>,
}

/// Wraps LiME's direct-tcpip stream as the options ask.
pub fn lime_stream(
    channel: russh::Channel<russh::client::Msg>,
    options: &SourceOptions,
) -> LimeWire {
    if !options.compress && options.corrupt_offset.is_none() {
        let stats = WireStats::new(false);
        return LimeWire {
            stream: SourceStream::channel(channel, stats.clone()),
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
            plain: PlainSource::Stream(plain),
            store_wire: store.then(|| stats.clone()),
        },
        stats,
    }
}

/// Records how the image crossed the wire and what was stored.
pub fn record_stored(options: &SourceOptions, stats: &WireStats, record: &mut SourceRecord) {
    record.wire_bytes = stats.bytes();
    record.compressed = options.compress;
    record.test_corrupt_offset = options.corrupt_offset;
    if options.compress && options.store_compressed {
        record.stored_as = "zlib".into();
        record.stored_bytes = Some(stats.bytes());
        record.stored_sha256 = stats.sha256();
    } else {
        record.stored_as = "plain".into();
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
    let matches = lime == computed;
    record.digest = Some(DigestRecord {
        algorithm: "sha256".into(),
        lime: lime.clone(),
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

/// After `insmod` itself failed under `--method auto`: kcore instead, if it can.
pub fn fall_back_after_insmod(
    requested: Method,
    insmod_error: &str,
    policy: &TargetPolicy,
) -> Option<Decision> {
    if requested != Method::Auto || policy.kcore_refusal().is_some() {
        return None;
    }
    Some(Decision {
        used: Used::Kcore,
        reason: format!(
            "insmod refused the LiME module ({insmod_error}), so /proc/kcore is read instead"
        ),
    })
}

/// A module file signed for the kernel's keyring ends with this marker.
pub fn module_is_signed(bytes: &[u8]) -> bool {
    bytes.ends_with(b"~Module signature appended~\n")
}

/// The manifest's record of the source: method, why, wire vs image bytes, digest.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SourceRecord {
    pub method: Option<Used>,
    pub requested: Option<Method>,
    pub reason: String,
    pub target_policy: Option<TargetPolicy>,
    /// Bytes that crossed the SSH connection for the image.
    pub wire_bytes: u64,
    pub compressed: bool,
    /// "plain" (the LiME image) or "zlib" (the stream as LiME sent it).
    pub stored_as: String,
    /// SHA-256 of the stored file when that is the compressed stream.
    pub stored_sha256: Option<String>,
    pub stored_bytes: Option<u64>,
    pub digest: Option<DigestRecord>,
    pub kcore: Option<crate::pipeline::source::kcore::KcoreRecord>,
    /// Set only when the test hook altered the received stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_corrupt_offset: Option<u64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DigestRecord {
    pub algorithm: String,
    /// What LiME computed in the kernel, over the plain image.
    pub lime: String,
    /// What mshot computed over what it received (after inflation).
    pub mshot: String,
    pub matches: bool,
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

/// What `capture::receive_image` reads: the plain LiME stream, and, when the
/// compressed stream is what gets stored, the tap that hands over the wire bytes.
pub struct SourceStream {
    pub plain: PlainSource,
    pub store_wire: Option<Arc<WireStats>>,
}

impl SourceStream {
    pub fn plain(stream: ByteStream) -> Self {
        SourceStream {
            plain: PlainSource::Stream(stream),
            store_wire: None,
        }
    }

    /// An uncompressed stream read straight off its SSH channel.
    pub fn channel(channel: russh::Channel<russh::client::Msg>, stats: Arc<WireStats>) -> Self {
        SourceStream {
            plain: PlainSource::Channel(ChannelChunks::new(channel, stats)),
            store_wire: None,
        }
    }
}

/// Where the plain LiME stream comes from.
pub enum PlainSource {
    /// Any byte stream (inflated LiME, kcore framing, test hooks), read into
    /// mshot's own buffers.
    Stream(ByteStream),
    /// LiME's uncompressed stream as the SSH channel delivers it.
    Channel(ChannelChunks),
}

/// The data packets of a channel, as russh decoded them. Passing these
/// buffers on saves a copy of every byte and a fresh buffer per batch, a
/// tenth of the capture's CPU.
pub struct ChannelChunks {
    channel: Option<russh::Channel<russh::client::Msg>>,
    stats: Arc<WireStats>,
}

impl ChannelChunks {
    pub fn new(channel: russh::Channel<russh::client::Msg>, stats: Arc<WireStats>) -> Self {
        ChannelChunks {
            channel: Some(channel),
            stats,
        }
    }

    /// The next data packet; `None` once the channel is at its end.
    pub async fn next(&mut self) -> Option<bytes::Bytes> {
        let channel = self.channel.as_mut()?;
        loop {
            match channel.wait().await {
                Some(russh::ChannelMsg::Data { data }) if !data.is_empty() => {
                    self.stats
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    return Some(data);
                }
                Some(russh::ChannelMsg::Eof | russh::ChannelMsg::Close) | None => {
                    self.close();
                    return None;
                }
                // Window adjustments, stderr-like data: not the stream.
                Some(_) => {}
            }
        }
    }

    /// Like `next`, but `None` at once when nothing has arrived yet. The
    /// no-op waker is fine because the caller's next `next` awaits and
    /// registers the real one; the channel's receive is cancel-safe.
    pub fn next_if_ready(&mut self) -> Option<Option<bytes::Bytes>> {
        use std::future::Future;
        let mut context = Context::from_waker(std::task::Waker::noop());
        let mut next = std::pin::pin!(self.next());
        match next.as_mut().poll(&mut context) {
            Poll::Ready(chunk) => Some(chunk),
            Poll::Pending => None,
        }
    }

    /// Closes the channel without waiting; the target's sshd then drops its
    /// connection to LiME, which LiME needs before the module can unload.
    fn close(&mut self) {
        if let Some(channel) = self.channel.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = channel.close().await;
            });
        }
    }
}

impl Drop for ChannelChunks {
    fn drop(&mut self) {
        self.close();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn policy(text: &str) -> TargetPolicy {
        parse_policy(text)
    }

    #[test]
    fn policy_probe_output() {
        let p = policy(
            "modules_disabled=0\nsig_enforce=N\nlockdown=none [integrity] confidentiality\nkcore=present\n",
        );
        assert_eq!(
            p,
            TargetPolicy {
                modules_disabled: false,
                sig_enforce: false,
                lockdown: Some("integrity".into()),
                kcore_present: true
            }
        );
        let p = policy("modules_disabled=1\nsig_enforce=Y\nlockdown=\nkcore=absent\n");
        assert!(p.modules_disabled && p.sig_enforce && !p.kcore_present);
        assert_eq!(p.lockdown, None);
    }

    #[test]
    fn auto_prefers_lime_and_falls_back_to_kcore() {
        let open = policy("kcore=present");
        let unsigned = ModuleAvailability::Available { signed: false };
        let d = decide(Method::Auto, &unsigned, &open).unwrap();
        assert_eq!(d.used, Used::Lime);

        let enforcing = policy("sig_enforce=Y\nkcore=present");
        let d = decide(Method::Auto, &unsigned, &enforcing).unwrap();
        assert_eq!(d.used, Used::Kcore);
        assert!(d.reason.contains("sig_enforce"), "{}", d.reason);
        // A signed module may still load under sig_enforce.
        let signed = ModuleAvailability::Available { signed: true };
        assert_eq!(
            decide(Method::Auto, &signed, &enforcing).unwrap().used,
            Used::Lime
        );

        let disabled = policy("modules_disabled=1\nkcore=present");
        let d = decide(Method::Auto, &signed, &disabled).unwrap();
        assert_eq!(d.used, Used::Kcore);
        assert!(d.reason.contains("modules_disabled"), "{}", d.reason);

        let missing = ModuleAvailability::Missing("no LiME module for 6.1.0-99-amd64".into());
        let d = decide(Method::Auto, &missing, &open).unwrap();
        assert_eq!(d.used, Used::Kcore);
        assert!(d.reason.contains("6.1.0-99"), "{}", d.reason);
    }

    #[test]
    fn explains_when_nothing_works() {
        let locked = policy("lockdown=none integrity [confidentiality]\nkcore=present");
        let unsigned = ModuleAvailability::Available { signed: false };
        let e = decide(Method::Auto, &unsigned, &locked)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("confidentiality") && e.contains("unsigned"),
            "{e}"
        );
        let e = decide(Method::Kcore, &unsigned, &policy("kcore=absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CONFIG_PROC_KCORE"), "{e}");
        let e = decide(
            Method::Lime,
            &ModuleAvailability::Missing("--module not given".into()),
            &policy("kcore=present"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--module not given") && e.contains("kcore"),
            "{e}"
        );
        assert!(fall_back_after_insmod(Method::Lime, "x", &policy("kcore=present")).is_none());
        assert_eq!(
            fall_back_after_insmod(Method::Auto, "Key was rejected", &policy("kcore=present"))
                .unwrap()
                .used,
            Used::Kcore
        );
    }

    #[test]
    fn signature_marker() {
        assert!(module_is_signed(b"\x7fELF...~Module signature appended~\n"));
        assert!(!module_is_signed(b"\x7fELF..."));
    }

    #[test]
    fn digests() {
        let hex64 = "ab".repeat(32);
        assert_eq!(
            parse_digest(hex64.to_uppercase().as_bytes()).unwrap(),
            hex64
        );
        assert_eq!(
            parse_digest(format!("{hex64}\n").as_bytes()).unwrap(),
            hex64
        );
        assert!(parse_digest(b"").is_err());
        assert!(parse_digest(&b"zz".repeat(32)).is_err());
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    async fn read_all(mut r: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn inflates_counts_and_refuses_damage() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i / 7) as u8).collect();
        let packed = zlib(&data);
        let stats = WireStats::new(true);
        let plain = plain_stream(
            Box::new(std::io::Cursor::new(packed.clone())),
            true,
            stats.clone(),
            None,
        );
        assert_eq!(read_all(plain).await.unwrap(), data);
        assert_eq!(stats.bytes(), packed.len() as u64);
        assert_eq!(
            stats.sha256().unwrap(),
            hex::encode(Sha256::digest(&packed))
        );

        let truncated = &packed[..packed.len() - 10];
        let e = read_all(Inflate::new(std::io::Cursor::new(truncated.to_vec())))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("ended before"), "{e}");

        let mut trailing = packed.clone();
        trailing.extend_from_slice(b"junk");
        let e = read_all(Inflate::new(std::io::Cursor::new(trailing)))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("after the end"), "{e}");

        let mut garbled = packed;
        garbled[1] ^= 0xff;
        assert!(
            read_all(Inflate::new(std::io::Cursor::new(garbled)))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn corrupts_exactly_one_byte() {
        let data = vec![0u8; 100_000];
        let out = read_all(CorruptAt::new(std::io::Cursor::new(data.clone()), 70_000))
            .await
            .unwrap();
        let diffs: Vec<usize> = (0..data.len()).filter(|&i| data[i] != out[i]).collect();
        assert_eq!(diffs, [70_000]);
    }
}
