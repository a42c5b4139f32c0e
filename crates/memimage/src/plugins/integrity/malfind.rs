//! malfind: anonymous process memory that is writable and executable and
//! holds code, the shape of injected shellcode. JIT compilers make such
//! mappings too, so a finding names the process for a human to judge;
//! the first bytes and their disassembly are the evidence.

use super::{Context, Finding, Report, Severity};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::maps::{mm_bounds, vma_name};
use crate::plugins::tasks::{processes, read_task};
use crate::plugins::util::{process_vm, soft};
use crate::plugins::vma::vmas;
use crate::plugins::{Row, Value};
use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter};

const SHOWN: usize = 64;
/// Instructions shown.
const SHOWN_INSNS: usize = 8;

/// The first instructions of `bytes` in the kernel's architecture.
pub(super) fn disassemble(k: &Kernel<'_, '_>, bytes: &[u8], ip: u64) -> String {
    if k.is_aarch64() {
        disassemble_a64(bytes)
    } else {
        disassemble_x86(bytes, ip)
    }
}

fn disassemble_a64(bytes: &[u8]) -> String {
    use yaxpeax_arch::{Decoder as _, U8Reader};
    let dec = yaxpeax_arm::armv8::a64::InstDecoder::default();
    let mut reader = U8Reader::new(bytes);
    let mut out = Vec::new();
    while out.len() < SHOWN_INSNS {
        match dec.decode(&mut reader) {
            Ok(ins) => out.push(ins.to_string()),
            Err(_) => break,
        }
    }
    out.join("; ")
}

fn disassemble_x86(bytes: &[u8], ip: u64) -> String {
    let mut dec = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let mut fmt = GasFormatter::new();
    let mut out = Vec::new();
    let mut text = String::new();
    while dec.can_decode() && out.len() < SHOWN_INSNS {
        let ins = dec.decode();
        if ins.is_invalid() {
            break;
        }
        text.clear();
        fmt.format(&ins, &mut text);
        out.push(text.clone());
    }
    out.join("; ")
}

pub(crate) fn check(k: &Kernel<'_, '_>, _cx: &Context<'_>) -> Result<Report, KernelError> {
    let procs = processes(k)?;
    let mut r = Report {
        examined: format!("the anonymous memory of {} processes", procs.len()),
        ..Report::default()
    };
    for t in procs {
        let task = read_task(k, t)?;
        if task.mm == 0 {
            continue;
        }
        let Some(vm) = process_vm(k, task.mm)? else {
            continue;
        };
        let bounds = mm_bounds(k, task.mm)?;
        for v in soft(vmas(k, task.mm))?.unwrap_or_default() {
            let perms = v.perms();
            if v.file != 0 || !perms.contains('x') || !perms.contains('w') {
                continue;
            }
            let name = vma_name(k, None, &bounds, &v)?;
            if name == "[vdso]" {
                continue;
            }
            let mut head = [0u8; SHOWN];
            if vm.read(v.start, &mut head).is_err() || head.iter().all(|&b| b == 0) {
                continue;
            }
            let disasm = disassemble(k, &head, v.start);
            r.findings.push(Finding {
                severity: Severity::Medium,
                check: "malfind",
                what: format!(
                    "process {} ({}) has writable and executable anonymous memory holding code",
                    task.tgid, task.comm
                ),
                evidence: format!("{:#x}-{:#x} {perms}: {disasm}", v.start, v.end),
                owner: format!("process {} ({})", task.tgid, task.comm),
            });
            r.rows.push(Row {
                fields: vec![
                    ("pid", Value::Int(task.tgid)),
                    ("comm", Value::Str(task.comm.clone())),
                    ("start", Value::UInt(v.start)),
                    ("end", Value::UInt(v.end)),
                    ("perms", Value::Str(perms)),
                    ("hexdump", Value::Str(hex(&head))),
                    ("disasm", Value::Str(disasm)),
                ],
            });
        }
    }
    Ok(r)
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_architectures_disassemble() {
        // mov w0, #42; ret (what the lab's rwx-helper runs on arm64).
        let a64: Vec<u8> = [0x5280_0540u32, 0xd65f_03c0]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert_eq!(disassemble_a64(&a64), "mov w0, #0x2a; ret");
        // mov eax, 42; ret
        assert_eq!(
            disassemble_x86(&[0xb8, 0x2a, 0, 0, 0, 0xc3], 0x1000),
            "mov $0x2A,%eax; ret"
        );
    }
}
