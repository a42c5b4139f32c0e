//! Progress for one capture: an indicatif bar on a terminal, periodic log
//! lines otherwise (CI logs, `nohup`, cron), so nobody stares at silence.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct CaptureProgress {
    host: String,
    bar: Option<ProgressBar>,
    plain: Mutex<PlainState>,
}

struct PlainState {
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
}

const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

impl CaptureProgress {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn new(host: &str) -> CaptureProgress {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(spinner_style());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar.set_prefix(host.to_string());
            bar
        });
        CaptureProgress {
            host: host.to_string(),
            bar,
            plain: Mutex::new(PlainState {
                total: 0,
                done: 0,
                started: Instant::now(),
                last_line: Instant::now(),
            }),
        }
    }

    pub fn phase(&self, phase: &str) {
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
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        if let Ok(mut p) = self.plain.lock() {
            p.done += n;
            if p.last_line.elapsed() >= PLAIN_INTERVAL {
                p.last_line = Instant::now();
                let secs = p.started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    "{}: captured {:.1} of {:.1} MiB ({:.0}%, {:.1} MiB/s)",
                    self.host,
                    p.done as f64 / 1048576.0,
                    p.total as f64 / 1048576.0,
                    if p.total > 0 {
                        p.done as f64 * 100.0 / p.total as f64
                    } else {
                        0.0
                    },
                    p.done as f64 / 1048576.0 / secs
                );
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// Prints a line without tearing the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
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
