//! Files as processes hold them: the descriptor table of a task and the
//! path of a `struct file`, built the way Volatility's `do_get_path` (and
//! the kernel's `prepend_path`) do: dentry names up to the mount root, then
//! across to the parent mount, until the task's own root.

use super::util::{kernel_cstr, lossy, ptr, soft, uint};
use crate::kernel::{Kernel, KernelError};

/// Volatility skips a task whose table claims more descriptors than this.
const MAX_FDS: u64 = 500_000;
/// Cap on path components, against dentry cycles in a smeared image.
const MAX_DEPTH: usize = 1024;

/// The root a task resolves paths against (`task->fs->root`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Root {
    dentry: u64,
    mnt: u64,
}

pub(crate) fn task_root(k: &Kernel<'_, '_>, task: u64) -> Result<Option<Root>, KernelError> {
    let p = k.profile;
    let Some(fs) = soft(ptr(k, task, "task_struct", "fs"))? else {
        return Ok(None);
    };
    if fs == 0 {
        return Ok(None);
    }
    let root = fs.wrapping_add(p.offset("fs_struct", "root")?);
    let dentry = soft(ptr(k, root, "path", "dentry"))?;
    let mnt = soft(ptr(k, root, "path", "mnt"))?;
    Ok(match (dentry, mnt) {
        (Some(dentry), Some(mnt)) if dentry != 0 && mnt != 0 => Some(Root { dentry, mnt }),
        _ => None,
    })
}

/// Open descriptors of a task: (fd number, `struct file` address).
pub(crate) fn fds(k: &Kernel<'_, '_>, task: u64) -> Result<Vec<(u64, u64)>, KernelError> {
    let Some(files) = soft(ptr(k, task, "task_struct", "files"))? else {
        return Ok(Vec::new());
    };
    if files == 0 {
        return Ok(Vec::new());
    }
    let Some(fdt) = soft(ptr(k, files, "files_struct", "fdt"))? else {
        return Ok(Vec::new());
    };
    let (Some(max), Some(arr)) = (
        soft(uint(k, fdt, "fdtable", "max_fds"))?,
        soft(ptr(k, fdt, "fdtable", "fd"))?,
    ) else {
        return Ok(Vec::new());
    };
    if arr == 0 || max > MAX_FDS {
        return Ok(Vec::new());
    }
    // Page by page: an unreadable page loses its entries, not the table.
    let mut out = Vec::new();
    let total = max * 8;
    let mut off = 0u64;
    while off < total {
        let va = arr.wrapping_add(off);
        let n = (0x1000 - (va & 0xfff)).min(total - off);
        let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0)];
        if k.vm.read(va, &mut buf).is_ok() {
            for (i, c) in buf.chunks_exact(8).enumerate() {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                let f = u64::from_le_bytes(b);
                if f != 0 {
                    out.push((off / 8 + i as u64, f));
                }
            }
        }
        off += n;
    }
    Ok(out)
}

fn dentry_name(k: &Kernel<'_, '_>, dentry: u64) -> Result<String, KernelError> {
    let p = k.profile;
    let q = dentry.wrapping_add(p.offset("dentry", "d_name")?);
    let len = soft(uint(k, q, "qstr", "len"))?.unwrap_or(254).min(4095);
    let Some(name) = soft(ptr(k, q, "qstr", "name"))? else {
        return Ok(String::new());
    };
    let max = usize::try_from(len + 1).unwrap_or(256);
    Ok(soft(kernel_cstr(k, name, max))?
        .map(|b| lossy(&b))
        .unwrap_or_default())
}

fn mount_of(k: &Kernel<'_, '_>, vfsmnt: u64) -> Result<u64, KernelError> {
    Ok(vfsmnt.wrapping_sub(k.profile.offset("mount", "mnt")?))
}

/// `do_get_path`: the path of `dentry` on `vfsmnt` as seen from `root`.
fn get_path(
    k: &Kernel<'_, '_>,
    root: Root,
    dentry: u64,
    vfsmnt: u64,
) -> Result<String, KernelError> {
    let p = k.profile;
    let inode = soft(ptr(k, dentry, "dentry", "d_inode"))?.unwrap_or(0);
    let mut parts: Vec<String> = Vec::new();
    let mut smeared = false;
    let (mut dentry, mut vfsmnt) = (dentry, vfsmnt);
    for _ in 0..MAX_DEPTH {
        if dentry == 0 || (dentry == root.dentry && vfsmnt == root.mnt) {
            break;
        }
        let Some(parent) = soft(ptr(k, dentry, "dentry", "d_parent"))? else {
            break;
        };
        let Some(mnt_root) = soft(ptr(k, vfsmnt, "vfsmount", "mnt_root"))? else {
            break;
        };
        if dentry == mnt_root || dentry == parent {
            if dentry != mnt_root {
                break;
            }
            let mount = mount_of(k, vfsmnt)?;
            let Some(mparent) = soft(ptr(k, mount, "mount", "mnt_parent"))? else {
                break;
            };
            if mparent == mount {
                break;
            }
            let Some(mp) = soft(ptr(k, mount, "mount", "mnt_mountpoint"))? else {
                break;
            };
            dentry = mp;
            vfsmnt = mparent.wrapping_add(p.offset("mount", "mnt")?);
            continue;
        }
        let name = dentry_name(k, dentry)?;
        if name.is_empty() {
            smeared = true;
        }
        parts.push(name.trim_matches('/').to_string());
        dentry = parent;
    }
    parts.reverse();
    let path = format!("/{}", parts.join("/"));
    if smeared {
        return Ok(format!("<potentially smeared> {path}"));
    }
    if inode != 0 && inode_valid(k, inode)? && soft(uint(k, inode, "inode", "i_nlink"))? == Some(0)
    {
        return Ok(format!(" {path} (deleted)"));
    }
    Ok(path)
}

/// `inode.is_valid()` as Volatility defines it.
fn inode_valid(k: &Kernel<'_, '_>, inode: u64) -> Result<bool, KernelError> {
    let ino = soft(uint(k, inode, "inode", "i_ino"))?;
    let count = soft(k.read_int(inode, "inode", "i_count"))?;
    Ok(matches!((ino, count), (Some(i), Some(c)) if i > 0 && c >= 0))
}

/// Names of pseudo files (sockets, pipes, anonymous inodes) come from the
/// dentry's `d_dname` operation: `socket:[INODE]` and the like.
fn pseudo_path(k: &Kernel<'_, '_>, dentry: u64, d_dname: u64) -> Result<String, KernelError> {
    let inode = soft(ptr(k, dentry, "dentry", "d_inode"))?.unwrap_or(0);
    if inode == 0 || !inode_valid(k, inode)? {
        return Ok(format!("<invalid dentry inode> {inode:x}"));
    }
    let ino = soft(uint(k, inode, "inode", "i_ino"))?.unwrap_or(0);
    let sym = |n: &str| k.symbol(n).ok() == Some(d_dname);
    let pre = if sym("sockfs_dname") {
        "socket".to_string()
    } else if sym("anon_inodefs_dname") {
        "anon_inode".to_string()
    } else if sym("pipefs_dname") {
        "pipe".to_string()
    } else if sym("simple_dname") {
        return Ok(format!("/{} (deleted)", dentry_name(k, dentry)?));
    } else if sym("ns_dname") {
        "ns".to_string()
    } else {
        format!("<unknown d_dname pointer> {d_dname:x}")
    };
    Ok(format!("{pre}:[{ino}]"))
}

/// `path_for_file`: the path of an open file as the task sees it.
pub(crate) fn file_path(
    k: &Kernel<'_, '_>,
    root: Option<Root>,
    file: u64,
) -> Result<String, KernelError> {
    let p = k.profile;
    let fpath = file.wrapping_add(p.offset("file", "f_path")?);
    let Some(dentry) = soft(ptr(k, fpath, "path", "dentry"))? else {
        return Ok(String::new());
    };
    if dentry == 0 {
        return Ok(String::new());
    }
    let d_op = soft(ptr(k, dentry, "dentry", "d_op"))?.unwrap_or(0);
    if d_op != 0
        && p.has_field("dentry_operations", "d_dname")
        && let Some(d_dname) = soft(ptr(k, d_op, "dentry_operations", "d_dname"))?
        && d_dname != 0
    {
        return pseudo_path(k, dentry, d_dname);
    }
    let Some(root) = root else {
        return Ok(String::new());
    };
    let Some(mnt) = soft(ptr(k, fpath, "path", "mnt"))? else {
        return Ok(String::new());
    };
    if mnt == 0 {
        return Ok(String::new());
    }
    get_path(k, root, dentry, mnt)
}

/// (inode number, device major, minor) of an open file; zeros when absent.
pub(crate) fn file_inode(k: &Kernel<'_, '_>, file: u64) -> Result<(u64, u64, u64), KernelError> {
    let p = k.profile;
    let fpath = file.wrapping_add(p.offset("file", "f_path")?);
    let Some(dentry) = soft(ptr(k, fpath, "path", "dentry"))? else {
        return Ok((0, 0, 0));
    };
    let Some(inode) = soft(ptr(k, dentry, "dentry", "d_inode"))? else {
        return Ok((0, 0, 0));
    };
    let Some(ino) = soft(uint(k, inode, "inode", "i_ino"))? else {
        return Ok((0, 0, 0));
    };
    let sb = soft(ptr(k, inode, "inode", "i_sb"))?.unwrap_or(0);
    let dev = if sb == 0 {
        None
    } else {
        soft(uint(k, sb, "super_block", "s_dev"))?
    };
    Ok(match dev {
        Some(d) => (ino, d >> 20, d & 0xf_ffff),
        None => (ino, 0, 0),
    })
}
