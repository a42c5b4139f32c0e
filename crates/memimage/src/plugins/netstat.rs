//! netstat: every socket a process holds open, as Volatility 3's
//! `linux.sockstat` reports it (same rows, same strings), plus the
//! socket's inode number.
//!
//! How: each task's descriptor table; a file is a socket when its `f_op`
//! is `&socket_file_ops`; the `struct socket` sits before the inode in
//! `socket_alloc`; `socket->sk` is the protocol's sock. AF_INET/AF_INET6
//! read addresses from `sock_common` (and `inet_sock->pinet6` for the
//! IPv6 source), AF_UNIX its bound path and peer. Ports are stored in
//! network byte order. Threads that share their leader's descriptor table
//! are not listed again (Volatility lists the same socket once per thread).

use super::tasks::{Task, all_tasks};
use super::util::{kernel_cstr, lossy, ptr, soft, uint};
use super::vfs::fds;
use super::{Row, Value};
use crate::kernel::{Kernel, KernelError};
use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

const AF_UNIX: u64 = 1;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const SOCK_STREAM: u64 = 1;

/// Volatility's tables (constants/linux/__init__.py), so rows compare.
const SOCK_FAMILY: &[&str] = &[
    "AF_UNSPEC",
    "AF_UNIX",
    "AF_INET",
    "AF_AX25",
    "AF_IPX",
    "AF_APPLETALK",
    "AF_NETROM",
    "AF_BRIDGE",
    "AF_ATMPVC",
    "AF_X25",
    "AF_INET6",
    "AF_ROSE",
    "AF_DECnet",
    "AF_NETBEUI",
    "AF_SECURITY",
    "AF_KEY",
    "AF_NETLINK",
    "AF_PACKET",
    "AF_ASH",
    "AF_ECONET",
    "AF_ATMSVC",
    "AF_RDS",
    "AF_SNA",
    "AF_IRDA",
    "AF_PPPOX",
    "AF_WANPIPE",
    "AF_LLC",
    "AF_IB",
    "AF_MPLS",
    "AF_CAN",
    "AF_TIPC",
    "AF_BLUETOOTH",
    "AF_IUCV",
    "AF_RXRPC",
    "AF_ISDN",
    "AF_PHONET",
    "AF_IEEE802154",
    "AF_CAIF",
    "AF_ALG",
    "AF_NFC",
    "AF_VSOCK",
    "AF_KCM",
    "AF_QIPCRTR",
    "AF_SMC",
    "AF_XDP",
];

const TCP_STATES: &[&str] = &[
    "",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "TCP_NEW_SYN_RECV",
];

const SOCKET_STATES: &[&str] = &[
    "FREE",
    "UNCONNECTED",
    "CONNECTING",
    "CONNECTED",
    "DISCONNECTING",
];

fn sock_type(t: u64) -> &'static str {
    match t {
        1 => "STREAM",
        2 => "DGRAM",
        3 => "RAW",
        4 => "RDM",
        5 => "SEQPACKET",
        6 => "DCCP",
        10 => "PACKET",
        _ => "",
    }
}

fn ip_protocol(p: u64) -> Option<&'static str> {
    Some(match p {
        0 => "IP",
        1 => "ICMP",
        2 => "IGMP",
        4 => "IPIP",
        6 => "TCP",
        8 => "EGP",
        12 => "PUP",
        17 => "UDP",
        22 => "IDP",
        29 => "TP",
        33 => "DCCP",
        41 => "IPV6",
        46 => "RSVP",
        47 => "GRE",
        50 => "ESP",
        51 => "AH",
        92 => "MTP",
        94 => "BEETPH",
        98 => "ENCAP",
        103 => "PIM",
        108 => "COMP",
        132 => "SCTP",
        136 => "UDPLITE",
        137 => "MPLS",
        143 => "ETHERNET",
        255 => "RAW",
        262 => "MPTCP",
        _ => return None,
    })
}

fn ipv6_protocol(p: u64) -> Option<&'static str> {
    Some(match p {
        0 => "HOPBYHOP_OPTS",
        43 => "ROUTING",
        44 => "FRAGMENT",
        58 => "ICMPv6",
        59 => "NO_NEXT",
        60 => "DESTINATION_OPTS",
        135 => "MOBILITY",
        _ => return None,
    })
}

fn table(t: &[&str], i: u64, unknown: &str) -> String {
    usize::try_from(i)
        .ok()
        .and_then(|i| t.get(i))
        .map_or_else(|| unknown.to_string(), |s| (*s).to_string())
}

/// IPv6 text exactly as glibc's inet_ntop writes it (which is what
/// Volatility prints): like RFC 5952, plus "::a.b.c.d" for the deprecated
/// IPv4-compatible form that Rust's formatter writes in hex.
pub(crate) fn ipv6_text(b: [u8; 16]) -> String {
    let a = Ipv6Addr::from(b);
    let w = a.segments();
    if w.iter().take(6).all(|&x| x == 0) && w.get(6).is_some_and(|&x| x != 0) {
        let v4 = Ipv4Addr::new(
            b.get(12).copied().unwrap_or(0),
            b.get(13).copied().unwrap_or(0),
            b.get(14).copied().unwrap_or(0),
            b.get(15).copied().unwrap_or(0),
        );
        return format!("::{v4}");
    }
    a.to_string()
}

/// (local addr, local port, remote addr, remote port, state) as Volatility
/// renders them; `None` is "N/A".
type Stat = (
    Option<String>,
    Option<u64>,
    Option<String>,
    Option<u64>,
    Option<String>,
);

struct Socket {
    family: String,
    kind: String,
    proto: Option<String>,
    stat: Stat,
}

/// Inode number of the `struct socket` at `socket` (its `socket_alloc`).
fn socket_inode(k: &Kernel<'_, '_>, socket: u64) -> Result<Option<u64>, KernelError> {
    let p = k.profile;
    let alloc = socket.wrapping_sub(p.offset("socket_alloc", "socket")?);
    let inode = alloc.wrapping_add(p.offset("socket_alloc", "vfs_inode")?);
    soft(uint(k, inode, "inode", "i_ino"))
}

/// `socket.state` of `sk->sk_socket`, as text.
fn socket_state(k: &Kernel<'_, '_>, sk: u64) -> Result<Option<String>, KernelError> {
    let Some(sock) = soft(ptr(k, sk, "sock", "sk_socket"))? else {
        return Ok(None);
    };
    if sock == 0 {
        return Ok(None);
    }
    Ok(soft(uint(k, sock, "socket", "state"))?
        .map(|s| table(SOCKET_STATES, s, "Unknown socket state")))
}

fn stream_or_socket_state(
    k: &Kernel<'_, '_>,
    sk: u64,
    stype: u64,
    what: &str,
) -> Result<Option<String>, KernelError> {
    if stype == SOCK_STREAM {
        let common = sk.wrapping_add(k.profile.offset("sock", "__sk_common")?);
        Ok(soft(uint(k, common, "sock_common", "skc_state"))?
            .map(|s| table(TCP_STATES, s, &format!("Unknown {what} stream state"))))
    } else {
        socket_state(k, sk)
    }
}

fn read_bytes<const N: usize>(k: &Kernel<'_, '_>, va: u64) -> Option<[u8; N]> {
    let mut b = [0u8; N];
    k.vm.read(va, &mut b).ok().map(|()| b)
}

fn inet(k: &Kernel<'_, '_>, sk: u64, family: u64, stype: u64) -> Result<Stat, KernelError> {
    let p = k.profile;
    let common = sk.wrapping_add(p.offset("sock", "__sk_common")?);
    let cf = |f: &str| -> Result<u64, KernelError> {
        Ok(common.wrapping_add(p.offset("sock_common", f)?))
    };
    let ntohs = |v: Option<u64>| v.map(|v| u64::from((v as u16).swap_bytes()));
    let sport_field = if p.has_field("inet_sock", "sport") {
        "sport"
    } else {
        "inet_sport"
    };
    let sport = ntohs(soft(uint(k, sk, "inet_sock", sport_field))?);
    let dport = if p.has_field("sock_common", "skc_portpair") {
        soft(uint(k, common, "sock_common", "skc_portpair"))?.map(|v| v & 0xffff)
    } else if p.has_field("inet_sock", "inet_dport") {
        soft(uint(k, sk, "inet_sock", "inet_dport"))?
    } else {
        soft(uint(k, common, "sock_common", "skc_dport"))?
    };
    let dport = ntohs(dport);
    let (src, dst) = if family == AF_INET {
        let v4 = |a: Option<[u8; 4]>| a.map(|b| Ipv4Addr::from(b).to_string());
        let src_va = if p.has_field("inet_sock", "inet_rcv_saddr") {
            sk.wrapping_add(p.offset("inet_sock", "inet_rcv_saddr")?)
        } else {
            cf("skc_rcv_saddr")?
        };
        let mut dst_va = cf("skc_daddr")?;
        for f in ["daddr", "inet_daddr"] {
            if p.has_field("inet_sock", f) {
                let va = sk.wrapping_add(p.offset("inet_sock", f)?);
                if read_bytes::<4>(k, va).is_some_and(|b| b != [0; 4]) {
                    dst_va = va;
                }
                break;
            }
        }
        (v4(read_bytes(k, src_va)), v4(read_bytes(k, dst_va)))
    } else {
        let v6 = |a: Option<[u8; 16]>| a.map(ipv6_text);
        let pinet6 = soft(ptr(k, sk, "inet_sock", "pinet6"))?.unwrap_or(0);
        let src = if pinet6 == 0 {
            None
        } else {
            v6(read_bytes(
                k,
                pinet6.wrapping_add(p.offset("ipv6_pinfo", "saddr")?),
            ))
        };
        let dst_va = if pinet6 != 0 && p.has_field("ipv6_pinfo", "daddr") {
            pinet6.wrapping_add(p.offset("ipv6_pinfo", "daddr")?)
        } else {
            cf("skc_v6_daddr")?
        };
        (src, v6(read_bytes(k, dst_va)))
    };
    let state = stream_or_socket_state(k, sk, stype, "inet_sock")?;
    Ok((src, sport, dst, dport, state))
}

/// A unix socket's bound path ("@name" for the abstract namespace).
fn unix_name(k: &Kernel<'_, '_>, sk: u64) -> Result<Option<String>, KernelError> {
    let p = k.profile;
    let Some(addr) = soft(ptr(k, sk, "unix_sock", "addr"))? else {
        return Ok(None);
    };
    if addr == 0 {
        return Ok(None);
    }
    let name = addr.wrapping_add(p.offset("unix_address", "name")?);
    let path = name.wrapping_add(p.offset("sockaddr_un", "sun_path")?);
    let mut first = [0u8; 1];
    if k.vm.read(path, &mut first).is_err() {
        return Ok(None);
    }
    Ok(if first == [0] {
        soft(kernel_cstr(k, path.wrapping_add(1), 107))?.map(|b| format!("@{}", lossy(&b)))
    } else {
        soft(kernel_cstr(k, path, 108))?.map(|b| lossy(&b))
    })
}

fn unix_inode(k: &Kernel<'_, '_>, sk: u64) -> Result<Option<u64>, KernelError> {
    match soft(ptr(k, sk, "sock", "sk_socket"))? {
        Some(0) => Ok(Some(0)),
        Some(s) => socket_inode(k, s),
        None => Ok(None),
    }
}

fn unix(k: &Kernel<'_, '_>, sk: u64, stype: u64) -> Result<Stat, KernelError> {
    let state = stream_or_socket_state(k, sk, stype, "unix_sock")?;
    let src = unix_name(k, sk)?;
    let sport = unix_inode(k, sk)?;
    let peer = soft(ptr(k, sk, "unix_sock", "peer"))?.unwrap_or(0);
    let (dst, dport) = if peer == 0 {
        (None, None)
    } else {
        (unix_name(k, peer)?, unix_inode(k, peer)?)
    };
    Ok((src, sport, dst, dport, state))
}

/// A socket's family and type by name, e.g. `("AF_PACKET", "RAW")`.
pub(crate) fn family_and_type(
    k: &Kernel<'_, '_>,
    sk: u64,
) -> Result<Option<(String, String)>, KernelError> {
    let common = sk.wrapping_add(k.profile.offset("sock", "__sk_common")?);
    let (Some(family), Some(stype)) = (
        soft(uint(k, common, "sock_common", "skc_family"))?,
        soft(uint(k, sk, "sock", "sk_type"))?,
    ) else {
        return Ok(None);
    };
    Ok(Some((
        table(SOCK_FAMILY, family, "Unknown socket family"),
        sock_type(stype).to_string(),
    )))
}

fn read_socket(k: &Kernel<'_, '_>, sk: u64) -> Result<Option<Socket>, KernelError> {
    let p = k.profile;
    let common = sk.wrapping_add(p.offset("sock", "__sk_common")?);
    let (Some(family), Some(stype), Some(proto)) = (
        soft(uint(k, common, "sock_common", "skc_family"))?,
        soft(uint(k, sk, "sock", "sk_type"))?,
        soft(uint(k, sk, "sock", "sk_protocol"))?,
    ) else {
        return Ok(None);
    };
    let (stat, proto) = match family {
        AF_INET | AF_INET6 => {
            let mut name = ip_protocol(proto);
            if family == AF_INET6 {
                name = ipv6_protocol(proto).or(name);
            }
            (inet(k, sk, family, stype)?, name.map(str::to_string))
        }
        AF_UNIX => (unix(k, sk, stype)?, None),
        // Other families: what every sock has (Volatility's fallback).
        _ => ((None, None, None, None, socket_state(k, sk)?), None),
    };
    Ok(Some(Socket {
        family: table(SOCK_FAMILY, family, "Unknown socket family"),
        kind: sock_type(stype).to_string(),
        proto,
        stat,
    }))
}

fn netns(k: &Kernel<'_, '_>, task: u64) -> Result<Option<u64>, KernelError> {
    let p = k.profile;
    let Some(nsproxy) = soft(ptr(k, task, "task_struct", "nsproxy"))? else {
        return Ok(None);
    };
    if nsproxy == 0 || !p.has_field("net", "ns") {
        return Ok(None);
    }
    let Some(net) = soft(ptr(k, nsproxy, "nsproxy", "net_ns"))? else {
        return Ok(None);
    };
    if net == 0 {
        return Ok(None);
    }
    soft(uint(
        k,
        net.wrapping_add(p.offset("net", "ns")?),
        "ns_common",
        "inum",
    ))
}

fn opt_str(v: Option<String>) -> Value {
    v.map_or(Value::Null, Value::Str)
}

fn opt_uint(v: Option<u64>) -> Value {
    v.map_or(Value::Null, Value::UInt)
}

fn task_sockets(
    k: &Kernel<'_, '_>,
    t: &Task,
    sock_fops: &[u64],
    rows: &mut Vec<Row>,
) -> Result<(), KernelError> {
    let p = k.profile;
    let ns = netns(k, t.va)?;
    for (fd, file) in fds(k, t.va)? {
        let Some(f_op) = soft(ptr(k, file, "file", "f_op"))? else {
            continue;
        };
        if f_op == 0 || !sock_fops.contains(&f_op) {
            continue;
        }
        let fpath = file.wrapping_add(p.offset("file", "f_path")?);
        let Some(dentry) = soft(ptr(k, fpath, "path", "dentry"))? else {
            continue;
        };
        let Some(d_inode) = soft(ptr(k, dentry, "dentry", "d_inode"))? else {
            continue;
        };
        if dentry == 0 || d_inode == 0 {
            continue;
        }
        let socket = d_inode
            .wrapping_sub(p.offset("socket_alloc", "vfs_inode")?)
            .wrapping_add(p.offset("socket_alloc", "socket")?);
        let Some(sk) = soft(ptr(k, socket, "socket", "sk"))? else {
            continue;
        };
        if sk == 0 {
            continue;
        }
        let Some(s) = read_socket(k, sk)? else {
            continue;
        };
        let inode = soft(uint(k, d_inode, "inode", "i_ino"))?;
        let (la, lp, ra, rp, state) = s.stat;
        rows.push(Row {
            fields: vec![
                ("netns", opt_uint(ns)),
                ("pid", Value::Int(t.tgid)),
                ("tid", Value::Int(t.tid)),
                ("comm", Value::Str(t.comm.clone())),
                ("fd", Value::UInt(fd)),
                ("inode", opt_uint(inode)),
                ("family", Value::Str(s.family)),
                ("type", Value::Str(s.kind)),
                ("proto", opt_str(s.proto)),
                ("local_addr", opt_str(la)),
                ("local_port", opt_uint(lp)),
                ("remote_addr", opt_str(ra)),
                ("remote_port", opt_uint(rp)),
                ("state", opt_str(state)),
                ("offset", Value::UInt(sk)),
            ],
        });
    }
    Ok(())
}

pub(crate) fn run(k: &Kernel<'_, '_>) -> Result<Vec<Row>, KernelError> {
    let sock_fops: Vec<u64> = ["socket_file_ops", "sockfs_dentry_operations"]
        .iter()
        .filter_map(|s| k.symbol(s).ok())
        .collect();
    if sock_fops.is_empty() {
        k.symbol("socket_file_ops")?;
    }
    let mut rows = Vec::new();
    let mut tables_seen = HashSet::new();
    for t in all_tasks(k, true)? {
        // One row per descriptor table: threads usually share the leader's.
        let files = soft(ptr(k, t.va, "task_struct", "files"))?.unwrap_or(0);
        if files == 0 || !tables_seen.insert(files) {
            continue;
        }
        task_sockets(k, &t, &sock_fops, &mut rows)?;
    }
    Ok(rows)
}
