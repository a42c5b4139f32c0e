//! Inline hooks at a function's entry, per architecture. Past the landing
//! pad (`endbr64`; `bti c` or `paciasp` on AArch64), a traceable function
//! starts with its ftrace site: a NOP, or a call to ftrace's own caller.
//! A jump there, or a call to anything else, is how inline hooks are made.

use super::{Context, Finding, Owner, Report, Severity, Symbols};
use crate::kernel::Kernel;

/// Checks the entry of the function at `h`.
pub(super) fn check(
    k: &Kernel<'_, '_>,
    cx: &Context<'_>,
    syms: &Symbols<'_>,
    h: u64,
    r: &mut Report,
) {
    let mut b = [0u8; 32];
    if k.vm.read(h, &mut b).is_err() {
        r.not_checked
            .push(format!("entry of {}: unreadable", syms.text(h)));
        return;
    }
    let found = if k.is_aarch64() {
        arm64_transfer(&b, h)
    } else {
        x86_transfer(&b, h)
    };
    let Some(t) = found else { return };
    // A jump or call is judged: on a running kernel, read it once more.
    let mut again = [0u8; 32];
    if let Err(e) = super::read_judged(k, h, &mut again) {
        r.not_checked
            .push(format!("entry of {}: {e}", syms.text(h)));
        return;
    }
    if again != b {
        r.not_checked.push(format!(
            "entry of {}: it changed between two reads of the running kernel",
            syms.text(h)
        ));
        return;
    }
    let ftrace = ["ftrace_caller", "ftrace_regs_caller", "__fentry__"]
        .iter()
        .filter_map(|n| k.symbol(n).ok())
        .any(|a| a == t.target);
    if t.kind == Kind::Call && ftrace {
        return;
    }
    if t.kind == Kind::Call && traced(k, cx, syms, h, &t, r) {
        return;
    }
    let owner = cx.owner(t.target);
    r.findings.push(Finding {
        severity: match t.kind {
            Kind::Jump => Severity::High,
            Kind::Call => Severity::Medium,
        },
        check: "check_syscall",
        what: format!("inline hook at the entry of {}", syms.text(h)),
        evidence: format!(
            "{} to {:#x} ({}) at {:#x}",
            t.mnemonic,
            t.target,
            syms.text(t.target),
            t.site
        ),
        owner: owner.describe(),
    });
}

/// A site that calls a registered ftrace ops' trampoline or a BPF image
/// is traced, not patched: judged by who the tracer is. Returns whether
/// the call was such a one (and any finding is made).
fn traced(
    k: &Kernel<'_, '_>,
    cx: &Context<'_>,
    syms: &Symbols<'_>,
    h: u64,
    t: &Transfer,
    r: &mut Report,
) -> bool {
    if let Some((ops, callback)) = super::modspace::ftrace_ops_at(k, t.target) {
        let owner = cx.owner(callback);
        // A kernel tracer's trampoline (function tracer, kprobes, perf).
        if owner.is_kernel() {
            return true;
        }
        r.findings.push(Finding {
            severity: match owner {
                Owner::Module { hidden: false, .. } => Severity::Medium,
                _ => Severity::High,
            },
            check: "check_syscall",
            what: format!("ftrace hook on the entry of {}", syms.text(h)),
            evidence: format!(
                "the ftrace site at {:#x} calls the trampoline {:#x} of ftrace_ops {ops:#x}, whose callback is {callback:#x} ({})",
                t.site,
                t.target,
                syms.text(callback)
            ),
            owner: owner.describe(),
        });
        return true;
    }
    if let Some(name) = super::modspace::bpf_image_at(k, cx, t.target) {
        r.findings.push(Finding {
            severity: Severity::Medium,
            check: "check_syscall",
            what: format!("BPF program attached to the entry of {}", syms.text(h)),
            evidence: format!(
                "the ftrace site at {:#x} calls {:#x} ({name})",
                t.site, t.target
            ),
            owner: format!("BPF: {name}"),
        });
        return true;
    }
    false
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jump,
    Call,
}

/// A control transfer found at a function's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Transfer {
    kind: Kind,
    mnemonic: &'static str,
    site: u64,
    target: u64,
}

/// x86-64: after `endbr64`, a `jmp rel32` or `call rel32`.
fn x86_transfer(b: &[u8], h: u64) -> Option<Transfer> {
    let at = if b.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
        4
    } else {
        0
    };
    let rel = |o: usize| -> Option<u64> {
        let d = i32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?);
        Some(h.wrapping_add(o as u64 + 4).wrapping_add(d as i64 as u64))
    };
    let (kind, mnemonic) = match b.get(at) {
        Some(0xe9) => (Kind::Jump, "jmp"),
        Some(0xe8) => (Kind::Call, "call"),
        _ => return None,
    };
    Some(Transfer {
        kind,
        mnemonic,
        site: h + at as u64,
        target: rel(at + 1)?,
    })
}

const A64_NOP: u32 = 0xd503_201f;
/// `mov x9, x30`: the first half of a patched ftrace site.
const A64_SAVE_LR: u32 = 0xaa1e_03e9;

/// Landing pads and return-address signing that may precede the site.
fn a64_prologue(w: u32) -> bool {
    matches!(
        w,
        0xd503_241f // bti
            | 0xd503_245f // bti c
            | 0xd503_24df // bti jc
            | 0xd503_233f // paciasp
            | 0xd503_237f // pacibsp
    )
}

fn sign_extend(v: u32, bits: u32) -> i64 {
    let shift = 64 - bits;
    (i64::from(v) << shift) >> shift
}

/// AArch64: the site's `bl` to anything, or a `b` (or `ldr xN, =addr;
/// br xN`) where the site or the function's first instruction should be.
fn arm64_transfer(b: &[u8], h: u64) -> Option<Transfer> {
    let word = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            b.get(i * 4..i * 4 + 4)?.try_into().ok()?,
        ))
    };
    let mut i = 0;
    while i < 2 && word(i).is_some_and(a64_prologue) {
        i += 1;
    }
    let pc = |i: usize| h + 4 * i as u64;
    let branch = |i: usize, w: u32| -> Option<Transfer> {
        let imm = sign_extend(w & 0x03ff_ffff, 26) * 4;
        let target = pc(i).wrapping_add(imm as u64);
        match w & 0xfc00_0000 {
            0x1400_0000 => Some(Transfer {
                kind: Kind::Jump,
                mnemonic: "b",
                site: pc(i),
                target,
            }),
            0x9400_0000 => Some(Transfer {
                kind: Kind::Call,
                mnemonic: "bl",
                site: pc(i),
                target,
            }),
            _ => None,
        }
    };
    let first = word(i)?;
    // The ftrace site: two NOPs, or `mov x9, x30; bl <caller>`.
    if first == A64_NOP || first == A64_SAVE_LR {
        let second = word(i + 1)?;
        return if second == A64_NOP {
            None
        } else {
            branch(i + 1, second)
        };
    }
    if let Some(t) = branch(i, first) {
        return Some(t);
    }
    // `ldr xN, <literal>; br xN`: an absolute jump through a literal.
    let second = word(i + 1)?;
    let reg = first & 0x1f;
    if first & 0xff00_0000 == 0x5800_0000 && second == (0xd61f_0000 | reg << 5) {
        let lit = pc(i).wrapping_add((sign_extend((first >> 5) & 0x7_ffff, 19) * 4) as u64);
        let off = usize::try_from(lit.wrapping_sub(h)).ok()?;
        let target = u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?);
        return Some(Transfer {
            kind: Kind::Jump,
            mnemonic: "ldr+br",
            site: pc(i),
            target,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn code(words: &[u32]) -> Vec<u8> {
        let mut b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        b.resize(32, 0);
        b
    }

    const H: u64 = 0xffff_8000_8010_0000;

    #[test]
    fn arm64_clean_entries_pass() {
        // bti c; nop; nop; paciasp (an untraced site).
        assert_eq!(
            arm64_transfer(&code(&[0xd503_245f, A64_NOP, A64_NOP, 0xd503_233f]), H),
            None
        );
        // A function without a site: stp x29, x30, [sp, #-16]!
        assert_eq!(arm64_transfer(&code(&[0xa9bf_7bfd, 0x9100_03fd]), H), None);
    }

    #[test]
    fn arm64_traced_site_is_a_call() {
        // bti c; mov x9, x30; bl -0x1000
        let bl = 0x9400_0000 | (((-0x1000i32 / 4) as u32) & 0x03ff_ffff);
        let t = arm64_transfer(&code(&[0xd503_245f, A64_SAVE_LR, bl]), H).unwrap();
        assert_eq!(
            (t.kind, t.site, t.target),
            (Kind::Call, H + 8, H + 8 - 0x1000)
        );
    }

    #[test]
    fn arm64_jumps_are_found() {
        // b +0x20000 where the site should be.
        let b = 0x1400_0000 | (0x20000 / 4);
        let t = arm64_transfer(&code(&[0xd503_245f, b]), H).unwrap();
        assert_eq!(
            (t.kind, t.mnemonic, t.target),
            (Kind::Jump, "b", H + 4 + 0x20000)
        );
        // ldr x16, #8; br x16; .quad target
        let target = 0xffff_8000_0123_4000u64;
        let mut c = code(&[0x5800_0050, 0xd61f_0200]);
        c[8..16].copy_from_slice(&target.to_le_bytes());
        let t = arm64_transfer(&c, H).unwrap();
        assert_eq!((t.mnemonic, t.site, t.target), ("ldr+br", H, target));
        // ldr x16 with br x17 is not the pattern.
        assert_eq!(arm64_transfer(&code(&[0x5800_0050, 0xd61f_0220]), H), None);
    }

    #[test]
    fn x86_entries() {
        let mut b = vec![0xf3, 0x0f, 0x1e, 0xfa, 0xe9];
        b.extend_from_slice(&0x100i32.to_le_bytes());
        b.resize(32, 0x90);
        let t = x86_transfer(&b, 0x1000).unwrap();
        assert_eq!(
            (t.kind, t.site, t.target),
            (Kind::Jump, 0x1004, 0x1009 + 0x100)
        );
        let nop5 = [0x0f, 0x1f, 0x44, 0x00, 0x00];
        assert_eq!(x86_transfer(&nop5, 0x1000), None);
    }
}
