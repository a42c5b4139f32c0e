//! Decoding the generated system-call dispatchers (`x64_sys_call`,
//! `ia32_sys_call`, `x32_sys_call`, since the 2024 branch-history fix):
//! a compare tree on the number in `esi`, whose cases leave the function
//! by a tail `jmp rel32` (or, for noreturn handlers, a `call`).
//!
//! The decoder follows every path with the set of numbers that can reach
//! it, so each case is known by the numbers it serves, the default case
//! included. Anything it does not recognise is an error, never a guess:
//! the caller reports "not checked" rather than "clean".

use iced_x86::{
    Code, ConditionCode, Decoder, DecoderOptions, FlowControl, Mnemonic, OpKind, Register,
};
use std::collections::HashSet;

/// Numbers as inclusive, sorted, disjoint ranges.
pub(crate) type Set = Vec<(u32, u32)>;

/// One way out of the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Case {
    pub numbers: Set,
    pub target: u64,
    /// Address of the instruction that leaves (for patch evidence).
    pub site: u64,
}

/// Paths explored before the decoder gives up.
const MAX_STEPS: usize = 200_000;

fn intersect(a: &Set, lo: u32, hi: u32) -> Set {
    a.iter()
        .filter_map(|&(s, e)| {
            let (s, e) = (s.max(lo), e.min(hi));
            (s <= e).then_some((s, e))
        })
        .collect()
}

fn union(parts: &[Set]) -> Set {
    let mut all: Vec<(u32, u32)> = parts.iter().flatten().copied().collect();
    all.sort_unstable();
    let mut out: Set = Vec::new();
    for (s, e) in all {
        match out.last_mut() {
            Some(last) if u64::from(s) <= u64::from(last.1) + 1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The numbers of `set` for which `cond` holds after `cmp nr, c`.
fn restrict(set: &Set, cond: ConditionCode, c: u32) -> Option<Set> {
    // Signed order is unsigned order with the sign bit flipped.
    const M: u32 = 0x8000_0000;
    let unsigned = |lo: u32, hi: u32| intersect(set, lo, hi);
    let signed = |lo: u32, hi: u32| {
        let (a, b) = (lo ^ M, hi ^ M);
        if a <= b {
            intersect(set, a, b)
        } else {
            union(&[intersect(set, a, u32::MAX), intersect(set, 0, b)])
        }
    };
    let cs = c ^ M;
    Some(match cond {
        ConditionCode::e => unsigned(c, c),
        ConditionCode::ne => union(&[
            c.checked_sub(1).map_or_else(Vec::new, |p| unsigned(0, p)),
            c.checked_add(1)
                .map_or_else(Vec::new, |n| unsigned(n, u32::MAX)),
        ]),
        ConditionCode::a => c
            .checked_add(1)
            .map_or_else(Vec::new, |n| unsigned(n, u32::MAX)),
        ConditionCode::ae => unsigned(c, u32::MAX),
        ConditionCode::b => c.checked_sub(1).map_or_else(Vec::new, |p| unsigned(0, p)),
        ConditionCode::be => unsigned(0, c),
        ConditionCode::g => cs
            .checked_add(1)
            .map_or_else(Vec::new, |n| signed(n, u32::MAX)),
        ConditionCode::ge => signed(cs, u32::MAX),
        ConditionCode::l => cs.checked_sub(1).map_or_else(Vec::new, |p| signed(0, p)),
        ConditionCode::le => signed(0, cs),
        _ => return None,
    })
}

fn minus(a: &Set, b: &Set) -> Set {
    let mut out = a.clone();
    for &(s, e) in b {
        out = out
            .into_iter()
            .flat_map(|(x, y)| {
                let mut v = Vec::new();
                if x < s {
                    v.push((x, y.min(s - 1)));
                }
                if y > e {
                    v.push((x.max(e + 1), y));
                }
                v
            })
            .collect();
    }
    out
}

fn is_nr_reg(r: Register) -> bool {
    matches!(
        r,
        Register::ESI | Register::RSI | Register::SI | Register::SIL
    )
}

/// Decodes the dispatcher whose code is `code`, loaded at `start`.
/// `entry_site` is where the 5-byte ftrace site sits (after `endbr64`),
/// whose `call` is not a case.
pub(crate) fn decode(code: &[u8], start: u64) -> Result<Vec<Case>, String> {
    let end = start.wrapping_add(code.len() as u64);
    let inside = |a: u64| a >= start && a < end;
    let mut cases: Vec<Case> = Vec::new();
    let mut work: Vec<(u64, Set, Option<u32>)> = vec![(start, vec![(0, u32::MAX)], None)];
    let mut seen: HashSet<(u64, Set, Option<u32>)> = HashSet::new();
    let mut steps = 0usize;
    let mut entry_site = None;
    while let Some((pc0, set0, cmp0)) = work.pop() {
        if set0.is_empty() || !seen.insert((pc0, set0.clone(), cmp0)) {
            continue;
        }
        let (mut pc, mut set, mut cmp) = (pc0, set0, cmp0);
        loop {
            steps += 1;
            if steps > MAX_STEPS {
                return Err("the compare tree does not end (too many paths)".into());
            }
            if !inside(pc) {
                return Err(format!("execution runs past the function's end at {pc:#x}"));
            }
            let off = usize::try_from(pc - start).unwrap_or(usize::MAX);
            let bytes = code.get(off..).unwrap_or_default();
            let mut dec = Decoder::with_ip(64, bytes, pc, DecoderOptions::NONE);
            let ins = dec.decode();
            if ins.is_invalid() {
                return Err(format!("undecodable bytes at {pc:#x}"));
            }
            let next = ins.next_ip();
            if pc == start && ins.code() == Code::Endbr64 {
                entry_site = Some(next);
            } else if pc == start {
                entry_site = Some(start);
            }
            match ins.flow_control() {
                FlowControl::Next => {
                    match ins.mnemonic() {
                        Mnemonic::Nop | Mnemonic::Endbr64 => {}
                        Mnemonic::Cmp
                            if ins.op0_kind() == OpKind::Register
                                && is_nr_reg(ins.op0_register())
                                && matches!(
                                    ins.op1_kind(),
                                    OpKind::Immediate8to32
                                        | OpKind::Immediate32
                                        | OpKind::Immediate8
                                ) =>
                        {
                            cmp = Some(ins.immediate(1) as u32);
                        }
                        Mnemonic::Test
                            if ins.op0_kind() == OpKind::Register
                                && ins.op1_kind() == OpKind::Register
                                && is_nr_reg(ins.op0_register())
                                && ins.op0_register() == ins.op1_register() =>
                        {
                            cmp = Some(0);
                        }
                        _ => {
                            // Anything else must leave the number alone.
                            let writes_nr = (0..ins.op_count()).any(|i| {
                                ins.op_kind(i) == OpKind::Register
                                    && is_nr_reg(ins.op_register(i))
                                    && i == 0
                            });
                            if writes_nr {
                                return Err(format!(
                                    "{:?} at {pc:#x} changes the number register",
                                    ins.mnemonic()
                                ));
                            }
                            cmp = None;
                        }
                    }
                    pc = next;
                }
                FlowControl::ConditionalBranch => {
                    let Some(c) = cmp else {
                        return Err(format!("conditional jump at {pc:#x} without a compare"));
                    };
                    let Some(taken) = restrict(&set, ins.condition_code(), c) else {
                        return Err(format!("condition {:?} at {pc:#x}", ins.condition_code()));
                    };
                    let target = ins.near_branch_target();
                    if !taken.is_empty() {
                        if inside(target) {
                            work.push((target, taken.clone(), cmp));
                        } else {
                            cases.push(Case {
                                numbers: taken.clone(),
                                target,
                                site: pc,
                            });
                        }
                    }
                    set = minus(&set, &taken);
                    if set.is_empty() {
                        break;
                    }
                    pc = next;
                }
                FlowControl::UnconditionalBranch => {
                    let target = ins.near_branch_target();
                    if inside(target) {
                        work.push((target, set, cmp));
                    } else {
                        cases.push(Case {
                            numbers: set,
                            target,
                            site: pc,
                        });
                    }
                    break;
                }
                FlowControl::Call if Some(pc) == entry_site => pc = next,
                FlowControl::Call => {
                    // Only noreturn handlers (exit, exit_group) are called.
                    cases.push(Case {
                        numbers: set,
                        target: ins.near_branch_target(),
                        site: pc,
                    });
                    break;
                }
                FlowControl::Interrupt if ins.mnemonic() == Mnemonic::Int3 => break,
                FlowControl::Exception => break,
                other => {
                    return Err(format!(
                        "unexpected {other:?} ({:?}) at {pc:#x}",
                        ins.mnemonic()
                    ));
                }
            }
        }
    }
    // Merge the ranges of each target; a number reached twice is an error.
    let mut merged: Vec<Case> = Vec::new();
    for c in cases {
        if let Some(m) = merged
            .iter_mut()
            .find(|m| m.target == c.target && m.site == c.site)
        {
            m.numbers = union(&[m.numbers.clone(), c.numbers]);
        } else {
            merged.push(c);
        }
    }
    merged.sort_by_key(|c| c.numbers.first().copied());
    Ok(merged)
}

/// The target for `nr` among `cases`.
pub(crate) fn target_of(cases: &[Case], nr: u32) -> Option<&Case> {
    cases
        .iter()
        .find(|c| c.numbers.iter().any(|&(s, e)| nr >= s && nr <= e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// cmp esi,2; je +a; ja +b; (0,1) -> jmp A; 2 -> jmp B; >2 -> jmp C.
    #[test]
    fn small_tree() {
        let base = 0xffff_ffff_8100_0000u64;
        let mut code = vec![0x0f, 0x1f, 0x44, 0x00, 0x00]; // ftrace nop
        code.extend([0x83, 0xfe, 0x02]); // cmp esi, 2
        code.extend([0x74, 0x07]); // je +7 -> 0x11
        code.extend([0x77, 0x0a]); // ja +10 -> 0x16
        let rel = |from: u64, to: u64| ((to as i64 - from as i64) as i32).to_le_bytes();
        // 0x0c: jmp A
        let a = base + 0x1000;
        code.push(0xe9);
        code.extend(rel(base + 0x11, a));
        // 0x11: jmp B
        let b = base + 0x2000;
        code.push(0xe9);
        code.extend(rel(base + 0x16, b));
        // 0x16: jmp C
        let c = base + 0x3000;
        code.push(0xe9);
        code.extend(rel(base + 0x1b, c));
        let cases = decode(&code, base).unwrap();
        assert_eq!(target_of(&cases, 0).unwrap().target, a);
        assert_eq!(target_of(&cases, 1).unwrap().target, a);
        assert_eq!(target_of(&cases, 2).unwrap().target, b);
        assert_eq!(target_of(&cases, 3).unwrap().target, c);
        assert_eq!(target_of(&cases, u32::MAX).unwrap().target, c);
    }

    #[test]
    fn unknown_code_is_an_error() {
        // mov esi, 1 changes the number: not a compare tree.
        let code = [0xbe, 0x01, 0x00, 0x00, 0x00, 0xc3];
        assert!(decode(&code, 0x1000).is_err());
        // A return inside the tree is not a case either.
        assert!(decode(&[0xc3], 0x1000).is_err());
        // Running off the end.
        assert!(decode(&[0x90, 0x90], 0x1000).is_err());
    }

    #[test]
    fn set_operations() {
        let all = vec![(0, u32::MAX)];
        assert_eq!(
            restrict(&all, ConditionCode::ne, 5).unwrap(),
            vec![(0, 4), (6, u32::MAX)]
        );
        assert_eq!(
            restrict(&all, ConditionCode::l, 0).unwrap(),
            vec![(0x8000_0000, u32::MAX)]
        );
        assert_eq!(minus(&all, &vec![(3, 3)]), vec![(0, 2), (4, u32::MAX)]);
    }
}
