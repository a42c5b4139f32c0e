//! kmsg: the kernel log from the lockless printk ring buffer (5.10+):
//! `prb` points at a `printk_ringbuffer` whose descriptor ring holds each
//! record's state and text position, its info array the timestamp and
//! level, and its data ring the text. Older kernels' `log_buf` records are
//! "not checked".
//!
//! The log is context for triage, not evidence by itself; two kinds of
//! lines are findings: a module other than the capture's own LiME tainting
//! the kernel (printed once per boot, for the first such module only), and
//! an oops.

use super::{Context, Finding, Report, Severity};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::util::{ptr, uint};
use crate::plugins::{Row, Value};
use crate::profile::ProfileError;

const LEVELS: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warn", "notice", "info", "debug",
];
const FACILITIES: [&str; 12] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp",
];
/// Descriptor states (top two bits of `state_var`): committed, finalized.
const COMMITTED: u64 = 1;
const FINALIZED: u64 = 2;
/// Bounds on the ring sizes we accept (the kernel's are far smaller).
const MAX_COUNT_BITS: u64 = 24;
const MAX_SIZE_BITS: u64 = 32;
/// Taint messages that name their module, `NAME: MESSAGE`.
const TAINTS: &[&str] = &[
    ": loading out-of-tree module taints kernel",
    ": module verification failed",
    ": module is from the staging directory",
    ": module license '",
];
/// How an oops starts its first line.
const OOPS: &[&str] = &[
    "BUG: ",
    "kernel BUG at ",
    "Oops: ",
    "general protection fault",
    "Unable to handle kernel",
    "Kernel panic",
];
/// The module the capture itself loads.
const CAPTURE_MODULE: &str = "lime";

/// One log line as the ring holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub ts_nsec: u64,
    pub level: u64,
    pub facility: u64,
    pub caller: Option<u64>,
    pub text: String,
}

fn name_of(table: &[&str], v: u64) -> String {
    usize::try_from(v)
        .ok()
        .and_then(|i| table.get(i))
        .map_or_else(|| v.to_string(), |s| (*s).to_string())
}

/// `print_time`'s format: seconds and microseconds, cut, not rounded.
fn seconds(ns: u64) -> String {
    format!("{}.{:06}", ns / 1_000_000_000, (ns % 1_000_000_000) / 1000)
}

/// A record's text: `[begin, next)` in the data ring, skipping the block's
/// leading id; a block that wraps starts again at offset 0.
fn text_of(
    k: &Kernel<'_, '_>,
    data: u64,
    size_bits: u64,
    (begin, next): (u64, u64),
    text_len: u64,
) -> Option<Vec<u8>> {
    // Data-less records (bit 0 set) carry no text.
    if begin & 1 == 1 || next & 1 == 1 {
        return None;
    }
    let size = 1u64 << size_bits;
    let wraps = |lpos: u64| lpos >> size_bits;
    let (at, len) = if wraps(begin) == wraps(next) {
        (begin & (size - 1), next.wrapping_sub(begin))
    } else if wraps(begin.wrapping_add(size)) == wraps(next) {
        (0, next & (size - 1))
    } else {
        return None;
    };
    if len < 8 || len > size {
        return None;
    }
    let n = text_len.min(len - 8);
    let mut buf = vec![0u8; usize::try_from(n).ok()?];
    k.vm.read(data.wrapping_add(at + 8), &mut buf).ok()?;
    Some(buf)
}

/// Every readable record from the oldest (`tail_id`) to the newest
/// (`head_id`), split into lines, with the device lines Volatility adds.
pub(crate) fn read_log(k: &Kernel<'_, '_>) -> Result<Vec<Line>, KernelError> {
    let p = k.profile;
    let prb = k.read_u64(k.symbol("prb")?, || "prb".into())?;
    let desc_ring = prb.wrapping_add(p.offset("printk_ringbuffer", "desc_ring")?);
    let data_ring = prb.wrapping_add(p.offset("printk_ringbuffer", "text_data_ring")?);
    let count_bits = uint(k, desc_ring, "prb_desc_ring", "count_bits")?;
    let size_bits = uint(k, data_ring, "prb_data_ring", "size_bits")?;
    if count_bits > MAX_COUNT_BITS || size_bits > MAX_SIZE_BITS {
        return Err(KernelError::Profile(ProfileError::Malformed {
            expected: "a printk ring of at most 2^24 records and 4 GiB".into(),
            found: format!("2^{count_bits} records, 2^{size_bits} bytes"),
        }));
    }
    let descs = ptr(k, desc_ring, "prb_desc_ring", "descs")?;
    let infos = ptr(k, desc_ring, "prb_desc_ring", "infos")?;
    let data = ptr(k, data_ring, "prb_data_ring", "data")?;
    let counter = |obj: u64, f: &str| -> Result<u64, KernelError> {
        k.read_u64(obj.wrapping_add(p.offset("prb_desc_ring", f)?), || {
            format!("printk ring {f}")
        })
    };
    // The top two bits of an id word are the state; the rest the id.
    let id_mask = u64::MAX >> 2;
    let tail = counter(desc_ring, "tail_id")? & id_mask;
    let head = counter(desc_ring, "head_id")? & id_mask;
    let count = 1u64 << count_bits;
    let desc_size = p.struct_def("prb_desc")?.size;
    let info_size = p.struct_def("printk_info")?.size;
    let state_off = p.offset("prb_desc", "state_var")?;
    let lpos_off = p.offset("prb_desc", "text_blk_lpos")?;
    let dev_info = p.offset("printk_info", "dev_info").ok();
    let mut out = Vec::new();
    let mut id = tail;
    for _ in 0..count {
        let slot = id & (count - 1);
        let desc = descs.wrapping_add(slot * desc_size);
        let info = infos.wrapping_add(slot * info_size);
        // Records being written or already overwritten have no text.
        if let Some(lines) = record(
            k,
            desc,
            info,
            (state_off, lpos_off),
            id,
            (data, size_bits),
            dev_info,
        )? {
            out.extend(lines);
        }
        if id == head {
            break;
        }
        id = id.wrapping_add(1) & id_mask;
    }
    Ok(out)
}

/// One record's lines; `None` when it is not a finished record with this id
/// (being written, reused, or unreadable).
fn record(
    k: &Kernel<'_, '_>,
    desc: u64,
    info: u64,
    (state_off, lpos_off): (u64, u64),
    id: u64,
    (data, size_bits): (u64, u64),
    dev_info: Option<u64>,
) -> Result<Option<Vec<Line>>, KernelError> {
    let Ok(state_var) = k.vm.read_u64(desc.wrapping_add(state_off)) else {
        return Ok(None);
    };
    let state = state_var >> 62;
    if state_var & (u64::MAX >> 2) != id || !(state == COMMITTED || state == FINALIZED) {
        return Ok(None);
    }
    let lpos = desc.wrapping_add(lpos_off);
    let (Ok(begin), Ok(next)) = (k.vm.read_u64(lpos), k.vm.read_u64(lpos.wrapping_add(8))) else {
        return Ok(None);
    };
    let field = |f: &str| uint(k, info, "printk_info", f).ok();
    let (Some(ts_nsec), Some(text_len)) = (field("ts_nsec"), field("text_len")) else {
        return Ok(None);
    };
    let line = |text: String| Line {
        ts_nsec,
        level: field("level").unwrap_or(0),
        facility: field("facility").unwrap_or(0),
        caller: field("caller_id"),
        text,
    };
    let mut lines = Vec::new();
    if let Some(t) = text_of(k, data, size_bits, (begin, next), text_len) {
        lines.extend(
            String::from_utf8_lossy(&t)
                .lines()
                .map(|l| line(l.to_string())),
        );
    }
    if let Some(off) = dev_info {
        let at = info.wrapping_add(off);
        for (f, key) in [("subsystem", "SUBSYSTEM"), ("device", "DEVICE")] {
            let (Ok(foff), Ok(len)) = (
                k.profile.offset("dev_printk_info", f),
                crate::plugins::util::array_field(k, "dev_printk_info", f).map(|(_, n)| n),
            ) else {
                continue;
            };
            let mut b = vec![0u8; usize::try_from(len.min(64)).unwrap_or(0)];
            if k.vm.read(at.wrapping_add(foff), &mut b).is_ok() {
                let end = memchr::memchr(0, &b).unwrap_or(b.len());
                if end > 0 {
                    let v = String::from_utf8_lossy(b.get(..end).unwrap_or_default());
                    lines.push(line(format!(" {key}={v}")));
                }
            }
        }
    }
    Ok(Some(lines))
}

/// The module a taint line names, if it is one.
fn tainting_module(text: &str) -> Option<&str> {
    if !TAINTS.iter().any(|t| text.contains(t)) {
        return None;
    }
    let (name, _) = text.split_once(": ")?;
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then_some(name)
}

pub(crate) fn check(k: &Kernel<'_, '_>, _cx: &Context<'_>) -> Result<Report, KernelError> {
    let p = k.profile;
    if p.symbol("prb").is_err() && p.symbol("log_first_idx").is_ok() {
        return Ok(Report {
            not_checked: vec![
                "the kernel log: this kernel keeps it in log_buf records (before 5.10), which are not read"
                    .into(),
            ],
            examined: "the kernel log".into(),
            ..Report::default()
        });
    }
    let lines = read_log(k)?;
    let mut r = Report {
        examined: format!("{} kernel log lines", lines.len()),
        ..Report::default()
    };
    let mut last_oops: Option<u64> = None;
    // Tainting modules in the order the log names them, with their lines.
    let mut taints: Vec<(String, Vec<String>)> = Vec::new();
    for l in &lines {
        let at = seconds(l.ts_nsec);
        if let Some(m) = tainting_module(&l.text)
            && m != CAPTURE_MODULE
        {
            match taints.iter_mut().find(|(name, _)| name == m) {
                Some((_, lines)) => lines.push(format!("[{at}] {}", l.text)),
                None => taints.push((m.to_string(), vec![format!("[{at}] {}", l.text)])),
            }
        }
        // One finding per oops: its first line (the lines of one report
        // follow within the second).
        if OOPS.iter().any(|o| l.text.starts_with(o))
            && last_oops.is_none_or(|t| l.ts_nsec.saturating_sub(t) > 1_000_000_000)
        {
            last_oops = Some(l.ts_nsec);
            r.findings.push(Finding {
                severity: Severity::Medium,
                check: "kmsg",
                what: "the kernel oopsed".into(),
                evidence: format!("[{at}] {}", l.text),
                owner: "kernel".into(),
            });
        }
        r.rows.push(Row {
            fields: vec![
                ("timestamp", Value::Str(at)),
                ("facility", Value::Str(name_of(&FACILITIES, l.facility))),
                ("level", Value::Str(name_of(&LEVELS, l.level))),
                (
                    "caller",
                    l.caller.map_or(Value::Null, |c| Value::Str(caller(c))),
                ),
                ("line", Value::Str(l.text.clone())),
            ],
        });
    }
    // One finding per module: out-of-tree and unsigned are two lines.
    for (m, lines) in taints {
        r.findings.push(Finding {
            severity: Severity::Medium,
            check: "kmsg",
            what: format!("module {m} tainted the kernel"),
            evidence: lines.join("; "),
            owner: format!("module {m}"),
        });
    }
    Ok(r)
}

/// `CPU(n)` for messages from interrupt context, `Task(pid)` otherwise.
fn caller(id: u64) -> String {
    if id & 0x8000_0000 != 0 {
        format!("CPU({})", id & 0x7fff_ffff)
    } else {
        format!("Task({id})")
    }
}
