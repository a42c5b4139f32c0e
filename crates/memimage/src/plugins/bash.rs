//! bash: command history recovered from the heap of bash (and sh, dash)
//! processes, the way Volatility's `linux.bash` does it.
//!
//! readline keeps each history line in a `HIST_ENTRY { char *line; char
//! *timestamp; histdata_t data; }` on the heap, and the timestamp string
//! is "#" followed by the epoch seconds. So: find every '#' byte in the
//! heap, then every heap word that points at one of them; the word 8 bytes
//! before it is `line`. An entry counts when its timestamp is "#" plus
//! digits (10 or more characters) and its line is not empty. Unlike
//! Volatility, only 8-byte aligned words are tried: malloc aligns the
//! entries, and it is eight times less work.

use super::maps::mm_bounds;
use super::memdump::for_each_mapped;
use super::tasks::{processes, read_task};
use super::util::{cstr, lossy, process_vm};
use super::vma::vmas;
use super::{Row, Value};
use crate::kernel::{Kernel, KernelError};
use crate::memory::VirtualMemory;
use std::collections::HashSet;

const SHELLS: &[&str] = &["bash", "sh", "dash"];
const MAX_LINE: usize = 1024;
/// Heap bytes read per process, at most (a bash heap is a few MiB).
const MAX_HEAP: u64 = 512 << 20;

/// Seconds since the epoch as "YYYY-MM-DDTHH:MM:SSZ" (UTC).
pub(crate) fn utc_text(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The epoch seconds of a readline timestamp ("#1700000000"), if valid.
pub(crate) fn parse_timestamp(ts: &[u8]) -> Option<i64> {
    let digits = ts.strip_prefix(b"#")?;
    if ts.len() < 10 || digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Readable pages of the heap regions: (address, bytes).
fn heap_pages(k: &Kernel<'_, '_>, dtb: u64, ranges: &[(u64, u64)]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for &(start, end) in ranges {
        let budget = MAX_HEAP.saturating_sub(out.len() as u64 * 0x1000);
        for_each_mapped(k, dtb, start & !0xfff, end, budget, |va, b| {
            out.push((va, b.to_vec()));
        });
    }
    out
}

/// (timestamp, command) of each history entry found in `pages`.
pub(crate) fn scan_history(
    vm: &VirtualMemory<'_, '_>,
    pages: &[(u64, Vec<u8>)],
) -> Vec<(i64, String)> {
    let hashes: HashSet<u64> = pages
        .iter()
        .flat_map(|(va, b)| memchr::memchr_iter(b'#', b).map(move |i| va + i as u64))
        .collect();
    let mut found = Vec::new();
    if hashes.is_empty() {
        return found;
    }
    for (va, b) in pages {
        for (i, w) in b.chunks_exact(8).enumerate() {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            let target = u64::from_le_bytes(a);
            if !hashes.contains(&target) {
                continue;
            }
            let entry = (va + i as u64 * 8).wrapping_sub(8);
            let Ok(line_ptr) = vm.read_u64(entry) else {
                continue;
            };
            let Some(ts) = cstr(vm, target, MAX_LINE)
                .ok()
                .and_then(|t| parse_timestamp(&t))
            else {
                continue;
            };
            let Ok(line) = cstr(vm, line_ptr, MAX_LINE) else {
                continue;
            };
            if !line.is_empty() {
                found.push((ts, lossy(&line)));
            }
        }
    }
    found.sort_by_key(|(ts, _)| *ts);
    found
}

pub(crate) fn run(k: &Kernel<'_, '_>) -> Result<Vec<Row>, KernelError> {
    let mut rows = Vec::new();
    for va in processes(k)? {
        let t = read_task(k, va)?;
        if t.mm == 0 || !SHELLS.contains(&t.comm.as_str()) {
            continue;
        }
        let Some(vm) = process_vm(k, t.mm)? else {
            continue;
        };
        let b = mm_bounds(k, t.mm)?;
        let heap: Vec<(u64, u64)> = vmas(k, t.mm)?
            .iter()
            .filter(|v| v.start <= b.brk && v.end >= b.start_brk)
            .map(|v| (v.start, v.end))
            .collect();
        let pages = heap_pages(k, vm.dtb, &heap);
        for (ts, cmd) in scan_history(&vm, &pages) {
            rows.push(Row {
                fields: vec![
                    ("pid", Value::Int(t.tgid)),
                    ("comm", Value::Str(t.comm.clone())),
                    ("time", Value::Str(utc_text(ts))),
                    ("timestamp", Value::Int(ts)),
                    ("command", Value::Str(cmd)),
                ],
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_dates() {
        assert_eq!(parse_timestamp(b"#1700000000"), Some(1_700_000_000));
        assert_eq!(parse_timestamp(b"#17000"), None);
        assert_eq!(parse_timestamp(b"1700000000"), None);
        assert_eq!(parse_timestamp(b"#170000000x"), None);
        assert_eq!(utc_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_text(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_text(951_782_400), "2000-02-29T00:00:00Z");
    }
}
