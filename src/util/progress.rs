//! Progress for one capture: an indicatif bar on a terminal, periodic log
//! lines otherwise (CI logs, `nohup`, cron), so nobody stares at silence.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct CaptureProgress {
    host: String,
    bar: Option<ProgressBar>,
    plain: Mutex<PlainState>,
    /// Fleet runs: a per-host log of phases, and a byte counter shared by all hosts.
    log: Option<Mutex<std::fs::File>>,
    total: Option<Arc<AtomicU64>>,
    /// Bytes S3 acknowledged (parts uploaded), counted by the upload tasks.
    s3_acked: Arc<AtomicU64>,
    s3_shown: AtomicU64,
    phase: Mutex<String>,
}

struct PlainState {
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
}

const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

impl CaptureProgress {
    /// A bar when stderr is a terminal, log lines otherwise. The bar sits
    /// in a `MultiProgress` that log lines go around (`Stderr`), so a
    /// warning printed mid-capture does not overwrite it.
    pub fn new(host: &str) -> CaptureProgress {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let multi =
                MULTI.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
            multi.add(ProgressBar::new_spinner())
        });
        CaptureProgress::with_bar(host, bar)
    }

    /// One line of a fleet display (`bar` from a `MultiProgress`), or plain
    /// log lines when `bar` is None.
    pub fn with_bar(host: &str, bar: Option<ProgressBar>) -> CaptureProgress {
        if let Some(bar) = &bar {
            bar.set_style(spinner_style());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar.set_prefix(host.to_string());
        }
        CaptureProgress {
            host: host.to_string(),
            bar,
            s3_acked: Arc::new(AtomicU64::new(0)),
            s3_shown: AtomicU64::new(u64::MAX),
            phase: Mutex::new(String::new()),
            plain: Mutex::new(PlainState {
                total: 0,
                done: 0,
                started: Instant::now(),
                last_line: Instant::now(),
            }),
            log: None,
            total: None,
        }
    }

    /// Also writes phases (with the time) into `log`, and counts bytes into `total`.
    pub fn with_log(mut self, log: Option<std::fs::File>, total: Arc<AtomicU64>) -> Self {
        self.log = log.map(Mutex::new);
        self.total = Some(total);
        self
    }

    /// Appends a line to the per-host log, if any.
    pub fn log_line(&self, line: &str) {
        if let Some(log) = &self.log
            && let Ok(mut file) = log.lock()
        {
            let _ = writeln!(file, "{} {line}", jiff::Timestamp::now());
        }
    }

    /// The counter S3 upload tasks add acknowledged bytes to; the bar shows
    /// it only when the capture goes to S3 (`to_s3`).
    pub fn s3_acked(&self, to_s3: bool) -> Arc<AtomicU64> {
        if to_s3 {
            self.s3_shown.store(0, Ordering::Relaxed);
        }
        self.s3_acked.clone()
    }

    /// `received` bytes shown by the bar, `S3 acknowledged` in its message.
    fn s3_note(&self) -> Option<String> {
        let shown = self.s3_shown.load(Ordering::Relaxed);
        if shown == u64::MAX {
            return None; // no S3 upload
        }
        let acked = self.s3_acked.load(Ordering::Relaxed);
        Some(format!("S3 acknowledged {}", indicatif::HumanBytes(acked)))
    }

    fn refresh_s3(&self) {
        let Some(bar) = &self.bar else { return };
        let acked = self.s3_acked.load(Ordering::Relaxed);
        let shown = self.s3_shown.load(Ordering::Relaxed);
        if shown == u64::MAX || acked == shown {
            return;
        }
        self.s3_shown.store(acked, Ordering::Relaxed);
        let phase = self.phase.lock().map(|p| p.clone()).unwrap_or_default();
        if let Some(note) = self.s3_note() {
            bar.set_message(format!("{phase} ({note})"));
        }
    }

    pub fn phase(&self, phase: &str) {
        self.log_line(phase);
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.to_string();
        }
        match &self.bar {
            Some(bar) => bar.set_message(phase.to_string()),
            None => tracing::info!("{}: {phase}", self.host),
        }
    }

    /// Switches to byte counting against the expected image size.
    pub fn start_bytes(&self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(0);
            bar.set_style(bytes_style());
            bar.reset_eta();
        }
        if let Ok(mut p) = self.plain.lock() {
            p.total = total;
            p.done = 0;
            p.started = Instant::now();
            p.last_line = Instant::now();
        }
    }

    pub fn add_bytes(&self, n: u64) {
        if let Some(total) = &self.total {
            total.fetch_add(n, Ordering::Relaxed);
        }
        if let Some(bar) = &self.bar {
            bar.inc(n);
            self.refresh_s3();
            return;
        }
        if let Ok(mut p) = self.plain.lock() {
            p.done += n;
            if p.last_line.elapsed() >= PLAIN_INTERVAL {
                p.last_line = Instant::now();
                let secs = p.started.elapsed().as_secs_f64().max(0.001);
                let line = format!(
                    "{}: captured {:.1} of {:.1} MiB ({:.0}%, {:.1} MiB/s){}",
                    self.host,
                    p.done as f64 / 1048576.0,
                    p.total as f64 / 1048576.0,
                    if p.total > 0 {
                        p.done as f64 * 100.0 / p.total as f64
                    } else {
                        0.0
                    },
                    p.done as f64 / 1048576.0 / secs,
                    self.s3_note().map(|n| format!(", {n}")).unwrap_or_default()
                );
                self.log_line(&line);
                tracing::info!("{line}");
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The fleet's `MultiProgress`, when one is on screen: log lines written to
/// stderr go through it so they do not tear the bars.
static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// Registers the `MultiProgress` that stderr output must go around.
pub fn set_multi(multi: MultiProgress) {
    let _ = MULTI.set(multi);
}

/// stderr for the log subscriber: suspends the fleet's bars while writing.
pub struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match MULTI.get() {
            Some(multi) => multi.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix}: {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix}: {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}
