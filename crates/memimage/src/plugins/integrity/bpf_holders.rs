//! Who holds the kernel's BPF objects: the programs and links each process
//! has a descriptor of, and the filter of every socket a process holds open.

use crate::kernel::{Kernel, KernelError};
use crate::plugins::tasks::{processes, read_task};
use crate::plugins::util::ptr;
use crate::plugins::vfs::fds;
use std::collections::HashMap;

/// Object address to the processes holding it (`process PID (COMM)`).
pub(crate) type Holders = HashMap<u64, Vec<String>>;

/// A socket's filter (`SO_ATTACH_FILTER`, `SO_ATTACH_BPF`).
#[derive(Debug, Clone)]
pub(crate) struct SocketFilter {
    pub prog: u64,
    pub pid: i64,
    pub comm: String,
    pub fd: u64,
    /// Family and type, e.g. `AF_PACKET RAW`.
    pub socket: String,
}

/// Programs and links each process holds a descriptor of
/// (`file->private_data` of files whose `f_op` is `bpf_prog_fops` or
/// `bpf_link_fops`), and the filter of each socket it holds
/// (`sock.sk_filter`: `SO_ATTACH_FILTER` or `SO_ATTACH_BPF`).
pub(crate) fn descriptors(k: &Kernel<'_, '_>) -> Result<(Holders, Vec<SocketFilter>), KernelError> {
    let sym = |n: &str| k.symbol(n).ok();
    let fops: Vec<u64> = ["bpf_prog_fops", "bpf_link_fops"]
        .iter()
        .filter_map(|n| sym(n))
        .collect();
    let socket_fops = sym("socket_file_ops");
    let mut out: Holders = HashMap::new();
    let mut sockets = Vec::new();
    for task in processes(k)? {
        let Ok(t) = read_task(k, task) else { continue };
        let who = format!("process {} ({})", t.tgid, t.comm);
        for (fd, file) in fds(k, task).unwrap_or_default() {
            let Ok(f_op) = ptr(k, file, "file", "f_op") else {
                continue;
            };
            let Ok(obj) = ptr(k, file, "file", "private_data") else {
                continue;
            };
            if fops.contains(&f_op) {
                let v = out.entry(obj).or_default();
                if !v.contains(&who) {
                    v.push(who.clone());
                }
            } else if Some(f_op) == socket_fops
                && let Ok(Some((prog, socket))) = socket_filter(k, obj)
            {
                sockets.push(SocketFilter {
                    prog,
                    pid: t.tgid,
                    comm: t.comm.clone(),
                    fd,
                    socket,
                });
            }
        }
    }
    Ok((out, sockets))
}

/// The program filtering the socket `socket`, and the socket's kind.
fn socket_filter(k: &Kernel<'_, '_>, socket: u64) -> Result<Option<(u64, String)>, KernelError> {
    let sk = ptr(k, socket, "socket", "sk")?;
    if sk == 0 {
        return Ok(None);
    }
    let filter = ptr(k, sk, "sock", "sk_filter")?;
    if filter == 0 {
        return Ok(None);
    }
    let prog = ptr(k, filter, "sk_filter", "prog")?;
    let kind = crate::plugins::netstat::family_and_type(k, sk)?
        .map_or_else(|| "a".into(), |(f, t)| format!("{f} {t}"));
    Ok((prog != 0).then_some((prog, kind)))
}
