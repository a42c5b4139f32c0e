//! Channels as streams: a direct-tcpip channel to an address as the target
//! sees it (LiME on the target's loopback), as russh's data packets or a
//! byte stream; and a remote command's stdin and stdout as one stream.

use bytes::Bytes;
use russh::ChannelMsg;
use russh::client::Msg;
use tokio::io::{AsyncRead, AsyncWrite};

pub struct Tunnel(russh::Channel<Msg>);

impl Tunnel {
    pub(super) fn new(channel: russh::Channel<Msg>) -> Self {
        Tunnel(channel)
    }

    /// The next data packet; `None` once the other end has finished.
    /// Passing russh's own buffers on saves a copy of every byte.
    pub async fn packet(&mut self) -> Option<Bytes> {
        loop {
            match self.0.wait().await {
                Some(ChannelMsg::Data { data }) if !data.is_empty() => return Some(data),
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return None,
                // Window adjustments, stderr-like data: not the stream.
                Some(_) => {}
            }
        }
    }

    /// The channel as a byte stream.
    pub fn into_stream(self) -> impl AsyncRead + AsyncWrite + Send + Unpin + 'static {
        self.0.into_stream()
    }

    pub async fn close(self) {
        let _ = self.0.close().await;
    }

    /// Closes without waiting, on the runtime when there is one: the
    /// target's sshd then drops its connection to the listener (LiME needs
    /// that before it can unload).
    pub fn close_in_background(self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.close());
        }
    }
}

/// A remote command's stdin and stdout as one byte stream.
pub struct ExecStream(pub(super) russh::ChannelStream<Msg>);

impl AsyncRead for ExecStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ExecStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
