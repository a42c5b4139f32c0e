//! lsof: every open descriptor of every task (threads included, as
//! Volatility's `linux.lsof`): the path as the task sees it, the device
//! and the inode. Rows only; what a file means is the reader's call.

use super::tasks::all_tasks;
use super::vfs::{fds, file_inode, file_path, task_root};
use super::{Row, Value};
use crate::kernel::{Kernel, KernelError};

pub(crate) fn run(k: &Kernel<'_, '_>) -> Result<Vec<Row>, KernelError> {
    let mut rows = Vec::new();
    for t in all_tasks(k, true)? {
        let root = task_root(k, t.va)?;
        for (fd, file) in fds(k, t.va)? {
            let path = file_path(k, root, file)?;
            let (ino, major, minor) = file_inode(k, file)?;
            rows.push(Row {
                fields: vec![
                    ("pid", Value::Int(t.tgid)),
                    ("tid", Value::Int(t.tid)),
                    ("comm", Value::Str(t.comm.clone())),
                    ("fd", Value::UInt(fd)),
                    ("path", Value::Str(path)),
                    ("device", Value::Str(format!("{major}:{minor}"))),
                    ("inode", Value::UInt(ino)),
                ],
            });
        }
    }
    Ok(rows)
}
