//! envars: each process' environment, read from its own address space
//! (`mm->env_start..env_end`), as Volatility's `linux.envars`: kernel
//! threads are skipped, areas over 8 KiB or partly unreadable are skipped,
//! and parsing stops at the first entry without '='.

use super::tasks::{processes, read_task};
use super::util::{process_vm, soft, uint};
use super::{Row, Value};
use crate::kernel::{Kernel, KernelError};

const PF_KTHREAD: u64 = 0x0020_0000;
const MAX_ENV: u64 = 8192;

/// (key, value) pairs of the environment block `data`.
pub(crate) fn parse_env(data: &[u8]) -> Vec<(String, String)> {
    let mut end = data.len();
    while end > 0 && data.get(end - 1) == Some(&0) {
        end -= 1;
    }
    let mut out = Vec::new();
    for pair in data.get(..end).unwrap_or_default().split(|&b| b == 0) {
        let text = String::from_utf8_lossy(pair);
        let Some((k, v)) = text.split_once('=') else {
            break;
        };
        out.push((k.to_string(), v.to_string()));
    }
    out
}

pub(crate) fn run(k: &Kernel<'_, '_>) -> Result<Vec<Row>, KernelError> {
    let mut rows = Vec::new();
    for va in processes(k)? {
        let t = read_task(k, va)?;
        let flags = soft(uint(k, va, "task_struct", "flags"))?.unwrap_or(0);
        if t.mm == 0 || flags & PF_KTHREAD != 0 {
            continue;
        }
        let (Some(start), Some(end)) = (
            soft(uint(k, t.mm, "mm_struct", "env_start"))?,
            soft(uint(k, t.mm, "mm_struct", "env_end"))?,
        ) else {
            continue;
        };
        let len = end.wrapping_sub(start);
        if end < start || len == 0 || len > MAX_ENV {
            continue;
        }
        let Some(vm) = process_vm(k, t.mm)? else {
            continue;
        };
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        if vm.read(start, &mut buf).is_err() {
            continue;
        }
        for (key, value) in parse_env(&buf) {
            rows.push(Row {
                fields: vec![
                    ("pid", Value::Int(t.tgid)),
                    ("ppid", Value::Int(t.ppid)),
                    ("comm", Value::Str(t.comm.clone())),
                    ("key", Value::Str(key)),
                    ("value", Value::Str(value)),
                ],
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::parse_env;

    #[test]
    fn env_block_parsing_follows_volatility() {
        let v = parse_env(b"A=1\0B=x=y\0\0\0");
        assert_eq!(
            v,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        // Stops at the first entry without '='.
        assert_eq!(parse_env(b"A=1\0junk\0C=3\0").len(), 1);
        assert!(parse_env(b"").is_empty());
    }
}
