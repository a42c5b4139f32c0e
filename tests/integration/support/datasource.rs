/*!
A TCP "data source": a listener that serves a known stream of bytes to the
first connection, then closes it, for streaming tests and benchmarks.

The bytes are [`pattern`]: a function of the offset that never repeats in
practice, so a reader can check any chunk where it stands, and a lost,
doubled or reordered chunk shows. Or they are a file's.
*/

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::netns::NetNs;

/// The deterministic byte stream.
pub mod pattern {
    /// The 8 bytes at offset `8 * index` (little-endian): SplitMix64.
    pub fn word(index: u64) -> u64 {
        let mut z = index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf` with the stream's bytes from `offset` on.
    pub fn fill(offset: u64, buf: &mut [u8]) {
        let mut pos = offset;
        let mut done = 0;
        while done < buf.len() {
            let bytes = word(pos / 8).to_le_bytes();
            let start = (pos % 8) as usize;
            let n = (8 - start).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&bytes[start..start + n]);
            done += n;
            pos += n as u64;
        }
    }

    /// The first `len` bytes of the stream.
    pub fn bytes(len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        fill(0, &mut v);
        v
    }

    /// The offset of the first byte of `buf` that is not the stream's byte
    /// at `offset + i`, or `None` when all match.
    pub fn first_mismatch(offset: u64, buf: &[u8]) -> Option<u64> {
        let mut expected = [0u8; 4096];
        let mut done = 0;
        for chunk in buf.chunks(expected.len()) {
            let want = &mut expected[..chunk.len()];
            fill(offset + done as u64, want);
            if let Some(i) = chunk.iter().zip(want.iter()).position(|(a, b)| a != b) {
                return Some(offset + (done + i) as u64);
            }
            done += chunk.len();
        }
        None
    }
}

/// What a [`DataSource`] serves.
#[derive(Clone, Debug)]
pub enum Content {
    /// The first `n` bytes of [`pattern`].
    Pattern(u64),
    /// A file's bytes.
    File(PathBuf),
}

/// A listener serving [`Content`] to its first connection, on a thread of
/// its own. Dropping it stops the listener if nobody came.
#[derive(Debug)]
pub struct DataSource {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<u64>>>,
}

impl DataSource {
    /// `len` pattern bytes on 127.0.0.1, on a free port.
    pub fn pattern(len: u64) -> anyhow::Result<DataSource> {
        Self::serve(
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
            Content::Pattern(len),
        )
    }

    /// A file's bytes on 127.0.0.1, on a free port.
    pub fn file(path: impl Into<PathBuf>) -> anyhow::Result<DataSource> {
        let path = path.into();
        anyhow::ensure!(path.is_file(), "{} is not a file", path.display());
        Self::serve(
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
            Content::File(path),
        )
    }

    /// Serves `content` on `ip` (port chosen freely) inside `ns`: e.g. on
    /// 127.0.0.1 of a jump chain's target, reachable only through it.
    pub fn bind_in(ns: &NetNs, ip: IpAddr, content: Content) -> anyhow::Result<DataSource> {
        let listener = ns.run(|| TcpListener::bind((ip, 0)))??;
        Self::serve(listener, content)
    }

    /// Serves `content` on an already bound listener.
    pub fn serve(listener: TcpListener, content: Content) -> anyhow::Result<DataSource> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("datasource-{}", addr.port()))
            .spawn(move || serve_first(listener, content, &stop2))?;
        Ok(DataSource {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Waits until the first connection was served; returns how many bytes
    /// were sent. Fails if writing failed (the reader left early) or if no
    /// connection was served within `timeout`.
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        let thread = self.thread.take().expect("waited once");
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                self.stop.store(true, Ordering::Relaxed);
                let _ = thread.join();
                bail!(
                    "data source on {} served nobody within {timeout:?}",
                    self.addr
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match thread.join() {
            Ok(result) => result.with_context(|| format!("data source on {}", self.addr)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for DataSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_first(listener: TcpListener, content: Content, stop: &AtomicBool) -> io::Result<u64> {
    let stream = loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(0);
        }
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e),
        }
    };
    drop(listener);
    stream.set_nonblocking(false)?;
    let sent = match content {
        Content::Pattern(len) => send_pattern(&stream, len)?,
        Content::File(path) => io::copy(&mut std::fs::File::open(path)?, &mut &stream)?,
    };
    // The reader sends nothing, so closing now loses nothing: it sees every
    // byte, then the end. (Waiting for the reader to close first would wait
    // for whoever holds the other end of a forward.)
    stream.shutdown(Shutdown::Write)?;
    Ok(sent)
}

fn send_pattern(mut stream: &TcpStream, len: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(buf.len() as u64) as usize;
        pattern::fill(sent, &mut buf[..n]);
        stream.write_all(&buf[..n])?;
        sent += n as u64;
    }
    Ok(sent)
}
