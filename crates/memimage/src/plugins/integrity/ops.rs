//! Operation tables rootkits rewrite to hide or to listen: the
//! `seq_operations` behind /proc/net/{tcp,udp,raw,unix,...} (a replaced
//! `show` hides connections from netstat and ss), and each terminal's line
//! discipline `receive_buf` (a replaced one sees every keystroke).

use super::{Context, Finding, Owner, Report, Severity};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::tasks::walk_list;
use crate::plugins::util::{kernel_cstr, lossy, ptr, uint};
use crate::plugins::{Row, Value};
use crate::profile::ProfileError;

/// The `seq_operations` Volatility checks on 4.18 and later.
const SEQ_OPS: &[&str] = &[
    "raw_seq_ops",
    "udp_seq_ops",
    "arp_seq_ops",
    "unix_seq_ops",
    "udp6_seq_ops",
    "raw6_seq_ops",
    "tcp_seq_ops",
    "tcp4_seq_ops",
    "tcp6_seq_ops",
    "packet_seq_ops",
];
/// Drivers such as the pty masters have thousands of slots; more is corrupt.
const MAX_TTYS: u64 = 1 << 20;

/// check_afinfo: every member of the network `seq_operations` must be
/// kernel code; these tables live in the kernel image, so a module's code
/// there, listed or not, is a hook.
pub(crate) fn check_afinfo(k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    let p = k.profile;
    if p.has_field("tcp_seq_afinfo", "seq_fops") {
        return Ok(Report {
            not_checked: vec![
                "network seq operations: kernels before 4.18 keep them in *_seq_afinfo, which is not read"
                    .into(),
            ],
            examined: "network seq operations".into(),
            ..Report::default()
        });
    }
    let members: Vec<(String, u64)> = p
        .struct_def("seq_operations")?
        .fields
        .iter()
        .filter(|(n, _)| !n.starts_with("__UNIQUE_ID_rh_kabi_hide"))
        .map(|(n, f)| (n.clone(), f.offset))
        .collect();
    let tables: Vec<(&str, u64)> = SEQ_OPS
        .iter()
        .filter_map(|n| k.symbol(n).ok().map(|a| (*n, a)))
        .collect();
    if tables.is_empty() {
        return Err(KernelError::Profile(ProfileError::MissingSymbol {
            profile: p.name.clone(),
            name: SEQ_OPS.join(", "),
        }));
    }
    let mut r = Report::default();
    for (table, at) in &tables {
        for (member, off) in &members {
            let Ok(addr) = k.vm.read_u64(at.wrapping_add(*off)) else {
                r.not_checked.push(format!("{table}.{member}: unreadable"));
                continue;
            };
            if addr == 0 {
                continue;
            }
            let owner = cx.owner(addr);
            let hooked = !owner.is_kernel();
            if hooked {
                r.findings.push(Finding {
                    severity: Severity::High,
                    check: "check_afinfo",
                    what: format!("{table}.{member} runs code outside kernel text"),
                    evidence: format!("{table}.{member} = {addr:#x}"),
                    owner: owner.describe(),
                });
            }
            r.rows.push(Row {
                fields: vec![
                    ("table", Value::Str((*table).into())),
                    ("member", Value::Str(member.clone())),
                    ("address", Value::UInt(addr)),
                    ("symbol", owner.symbol()),
                    ("hooked", Value::Str(hooked.to_string())),
                    ("owner", Value::Str(owner.describe())),
                ],
            });
        }
    }
    r.examined = format!(
        "{} members of {} network seq_operations",
        r.rows.len(),
        tables.len()
    );
    Ok(r)
}

/// tty_check: the line discipline's `receive_buf` of every open terminal.
/// Line disciplines may come from listed modules (n_hdlc, ppp); one that a
/// hidden module or nothing owns is a finding.
pub(crate) fn tty_check(k: &Kernel<'_, '_>, cx: &Context<'_>) -> Result<Report, KernelError> {
    let p = k.profile;
    let drivers = walk_list(
        k,
        k.symbol("tty_drivers")?,
        p.offset("tty_driver", "tty_drivers")?,
        "tty_drivers",
    )?;
    let name_off = p.offset("tty_struct", "name")?;
    let mut r = Report::default();
    let ndrivers = drivers.len();
    for drv in drivers {
        let (Ok(ttys), Ok(num)) = (
            ptr(k, drv, "tty_driver", "ttys"),
            uint(k, drv, "tty_driver", "num"),
        ) else {
            r.not_checked
                .push(format!("tty driver at {drv:#x}: unreadable"));
            continue;
        };
        if ttys == 0 || num == 0 {
            continue;
        }
        for i in 0..num.min(MAX_TTYS) {
            let Ok(tty) = k.vm.read_u64(ttys.wrapping_add(8 * i)) else {
                continue;
            };
            if tty == 0 {
                continue;
            }
            let name = kernel_cstr(k, tty.wrapping_add(name_off), 64)
                .map(|b| lossy(&b))
                .unwrap_or_default();
            let recv = ptr(k, tty, "tty_struct", "ldisc")
                .and_then(|l| ptr(k, l, "tty_ldisc", "ops"))
                .and_then(|o| ptr(k, o, "tty_ldisc_ops", "receive_buf"));
            let Ok(recv) = recv else {
                r.not_checked
                    .push(format!("tty {name}: its line discipline is unreadable"));
                continue;
            };
            let owner = cx.owner(recv);
            let bad =
                matches!(owner, Owner::Unknown | Owner::Module { hidden: true, .. }) && recv != 0;
            if bad {
                r.findings.push(Finding {
                    severity: Severity::High,
                    check: "tty_check",
                    what: format!("terminal {name} hands its input to code no listed module owns"),
                    evidence: format!("line discipline receive_buf {recv:#x}"),
                    owner: owner.describe(),
                });
            }
            r.rows.push(Row {
                fields: vec![
                    ("name", Value::Str(name)),
                    ("address", Value::UInt(recv)),
                    ("symbol", owner.symbol()),
                    ("owner", Value::Str(owner.describe())),
                ],
            });
        }
    }
    let n = r.rows.len();
    r.examined = format!(
        "{n} open terminal{} of {ndrivers} tty drivers",
        if n == 1 { "" } else { "s" }
    );
    Ok(r)
}
