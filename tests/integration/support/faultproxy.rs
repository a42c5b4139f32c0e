/*!
A TCP proxy on loopback that forwards honestly, except for the faults a test
asks for: flip one byte of what clients send (a corrupting middlebox or a bad
NIC), and count the bytes, so a test can act once an upload is under way.
*/

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct FaultProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

struct Faults {
    /// Flip the byte at this offset of the client-to-server bytes (all
    /// connections counted together), once.
    corrupt_at: Option<u64>,
    flipped: AtomicBool,
    /// The connection whose client bytes reach this offset stops forwarding
    /// (it swallows what the client sends and never answers), once: a server
    /// that took a request and hangs.
    hang_at: Option<u64>,
    hung: AtomicBool,
}

impl FaultProxy {
    /// Forwards 127.0.0.1:PORT (a free port) to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16, corrupt_at: Option<u64>) -> anyhow::Result<FaultProxy> {
        Self::start_with(upstream, corrupt_at, None)
    }

    /// As `start`, and the request that carries client byte `hang_at` never
    /// gets an answer.
    pub fn start_with(
        upstream: u16,
        corrupt_at: Option<u64>,
        hang_at: Option<u64>,
    ) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(Faults {
            corrupt_at,
            flipped: AtomicBool::new(false),
            hang_at,
            hung: AtomicBool::new(false),
        });
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        };
                        pump(client, server, sent2.clone(), faults.clone());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(FaultProxy {
            port,
            stop,
            sent,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bytes clients sent through the proxy so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pump(client: TcpStream, server: TcpStream, sent: Arc<AtomicU64>, faults: Arc<Faults>) {
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // client -> server, where the faults are
    std::thread::spawn(move || {
        let (mut from, mut to) = (client, server);
        let mut buf = vec![0u8; 64 * 1024];
        let mut swallowing = false;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if swallowing {
                continue;
            }
            let start = sent.fetch_add(n as u64, Ordering::Relaxed);
            if let Some(at) = faults.hang_at
                && (start..start + n as u64).contains(&at)
                && !faults.hung.swap(true, Ordering::Relaxed)
            {
                swallowing = true;
                continue;
            }
            if let Some(at) = faults.corrupt_at
                && (start..start + n as u64).contains(&at)
                && !faults.flipped.swap(true, Ordering::Relaxed)
            {
                buf[(at - start) as usize] ^= 0x5a;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    // server -> client
    std::thread::spawn(move || {
        let (mut from, mut to) = (server2, client2);
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
