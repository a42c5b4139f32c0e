//! A direct-tcpip channel to an address as the target sees it (LiME on the
//! target's loopback): its data packets as russh decoded them, or a byte
//! stream, and a close that does not wait.

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
