//! Classic BPF, as `tcpdump -d` prints it: `ldh [12]`, `jeq #0x800 jt 2
//! jf 3`, `ret #65535`. Jump targets are absolute instruction numbers.

/// `SKF_AD_OFF`: loads at or above it read the packet's metadata.
const ANCILLARY: u32 = 0xffff_f000;
/// `SKF_AD_*` by offset from `SKF_AD_OFF`, in steps of 4.
const ANCILLARY_NAMES: &[&str] = &[
    "protocol",
    "pkttype",
    "ifindex",
    "nlattr",
    "nlattr_nest",
    "mark",
    "queue",
    "hatype",
    "rxhash",
    "cpu",
    "alu_xor_x",
    "vlan_tci",
    "vlan_present",
    "pay_offset",
    "random",
    "vlan_tpid",
];

/// One instruction (`struct sock_filter`: code, jt, jf, k).
fn one(pc: usize, code: u16, jt: u8, jf: u8, k: u32) -> String {
    let size = match code & 0x18 {
        0x00 => "",
        0x08 => "h",
        0x10 => "b",
        _ => "?",
    };
    let x_src = code & 0x08 != 0;
    let operand = if x_src {
        "x".to_string()
    } else {
        format!("#{k:#x}")
    };
    let target = |off: u32| pc + 1 + off as usize;
    match code & 0x07 {
        // LD, LDX.
        class @ (0 | 1) => {
            let op = if class == 1 { "ldx" } else { "ld" };
            match code & 0xe0 {
                0x00 => format!("{op} #{k:#x}"),
                0x20 if k >= ANCILLARY => {
                    let i = ((k - ANCILLARY) / 4) as usize;
                    let name = ANCILLARY_NAMES.get(i).copied().unwrap_or("?");
                    format!("{op}{size} #{name}")
                }
                0x20 => format!("{op}{size} [{k}]"),
                0x40 => format!("{op}{size} [x + {k}]"),
                0x60 => format!("{op} M[{k}]"),
                0x80 => format!("{op} #pktlen"),
                0xa0 => format!("ldxb 4*([{k}]&0xf)"),
                _ => format!("unknown {code:#06x}"),
            }
        }
        2 => format!("st M[{k}]"),
        3 => format!("stx M[{k}]"),
        4 => {
            let op = match code & 0xf0 {
                0x00 => "add",
                0x10 => "sub",
                0x20 => "mul",
                0x30 => "div",
                0x40 => "or",
                0x50 => "and",
                0x60 => "lsh",
                0x70 => "rsh",
                0x80 => return "neg".into(),
                0x90 => "mod",
                0xa0 => "xor",
                _ => return format!("unknown {code:#06x}"),
            };
            format!("{op} {operand}")
        }
        5 => {
            let op = match code & 0xf0 {
                0x00 => return format!("ja {}", target(k)),
                0x10 => "jeq",
                0x20 => "jgt",
                0x30 => "jge",
                0x40 => "jset",
                _ => return format!("unknown {code:#06x}"),
            };
            format!(
                "{op} {operand} jt {} jf {}",
                target(u32::from(jt)),
                target(u32::from(jf))
            )
        }
        6 => match code & 0x18 {
            0x08 => "ret x".into(),
            0x10 => "ret a".into(),
            _ if k > 0xffff => format!("ret #{k:#x}"),
            _ => format!("ret #{k}"),
        },
        _ => match code & 0xf8 {
            0x00 => "tax".into(),
            0x80 => "txa".into(),
            _ => format!("unknown {code:#06x}"),
        },
    }
}

/// Each instruction of `insns` (8 bytes each), numbered.
pub(crate) fn disassemble(insns: &[u8]) -> Vec<String> {
    insns
        .chunks_exact(8)
        .enumerate()
        .map(|(pc, i)| {
            let b = |n: usize| i.get(n).copied().unwrap_or(0);
            let code = u16::from_le_bytes([b(0), b(1)]);
            let k = u32::from_le_bytes([b(4), b(5), b(6), b(7)]);
            format!("{pc}: {}", one(pc, code, b(2), b(3), k))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Vec<u8> {
        let mut v = code.to_le_bytes().to_vec();
        v.extend([jt, jf]);
        v.extend(k.to_le_bytes());
        v
    }

    /// `tcpdump -d ip` on Ethernet, and a seccomp filter's usual opening.
    #[test]
    fn decodes_as_tcpdump_does() {
        let ip: Vec<u8> = [
            insn(0x28, 0, 0, 12),
            insn(0x15, 0, 1, 0x800),
            insn(0x06, 0, 0, 262_144),
            insn(0x06, 0, 0, 0),
        ]
        .concat();
        assert_eq!(
            disassemble(&ip),
            [
                "0: ldh [12]",
                "1: jeq #0x800 jt 2 jf 3",
                "2: ret #0x40000",
                "3: ret #0"
            ]
        );
        let seccomp: Vec<u8> = [
            insn(0x20, 0, 0, 4),
            insn(0x15, 1, 0, 0xc000_003e),
            insn(0x06, 0, 0, 0),
            insn(0x20, 0, 0, 0),
            insn(0x35, 0, 1, 0x4000_0000),
            insn(0x06, 0, 0, 0x7fff_0000),
        ]
        .concat();
        assert_eq!(
            disassemble(&seccomp),
            [
                "0: ld [4]",
                "1: jeq #0xc000003e jt 3 jf 2",
                "2: ret #0",
                "3: ld [0]",
                "4: jge #0x40000000 jt 5 jf 6",
                "5: ret #0x7fff0000"
            ]
        );
    }

    #[test]
    fn every_class_and_odd_input() {
        let prog: Vec<u8> = [
            insn(0x30, 0, 0, ANCILLARY),
            insn(0xb1, 0, 0, 14),
            insn(0x50, 0, 0, 0),
            insn(0x07, 0, 0, 0),
            insn(0x0c, 0, 0, 0),
            insn(0x84, 0, 0, 0),
            insn(0x05, 0, 0, 2),
            insn(0x16, 0, 0, 0),
            insn(0xffff, 0, 0, 0),
        ]
        .concat();
        assert_eq!(
            disassemble(&prog),
            [
                "0: ldb #protocol",
                "1: ldxb 4*([14]&0xf)",
                "2: ldb [x + 0]",
                "3: tax",
                "4: add x",
                "5: neg",
                "6: ja 9",
                "7: ret a",
                "8: unknown 0xffff"
            ]
        );
        // A trailing partial instruction is not one.
        assert_eq!(disassemble(&[0x06, 0, 0]), Vec::<String>::new());
    }

    proptest::proptest! {
        /// Any bytes: one line per whole instruction, no panic.
        #[test]
        fn any_bytes_decode(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            proptest::prop_assert_eq!(disassemble(&bytes).len(), bytes.len() / 8);
        }
    }
}
