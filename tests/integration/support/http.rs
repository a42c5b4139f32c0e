//! A real HTTP server on loopback: Python's `http.server` serving a directory,
//! with its request log kept so tests can see what was fetched.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::process::KillOnDrop;

pub struct HttpServer {
    port: u16,
    log: PathBuf,
    _child: KillOnDrop,
}

impl HttpServer {
    /// Serves `dir` on 127.0.0.1 at a free port; returns once it accepts connections.
    pub fn serve(dir: &Path) -> anyhow::Result<HttpServer> {
        let log = dir.with_extension("http.log");
        for _ in 0..5 {
            let port = super::free_port([127, 0, 0, 1].into())?;
            let child = Command::new("python3")
                .args(["-m", "http.server", "--bind", "127.0.0.1"])
                .arg("--directory")
                .arg(dir)
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .context("cannot start python3 -m http.server")?;
            let mut child = KillOnDrop(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(HttpServer {
                        port,
                        log,
                        _child: child,
                    });
                }
                if child.0.try_wait()?.is_some() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        bail!(
            "python3 -m http.server did not start serving {}",
            dir.display()
        )
    }

    /// `http://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// How many GET requests for `path` (as `/modules/...`) the server logged.
    pub fn gets(&self, path: &str) -> usize {
        let needle = format!("\"GET {path} HTTP");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}
