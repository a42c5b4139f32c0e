//! pslist: processes (and with `threads`, their threads) from
//! `init_task.tasks`.

use super::tasks::{Task, all_tasks};
use super::{Options, Row, Value};
use crate::kernel::{Kernel, KernelError};

pub(crate) fn task_row(t: &Task) -> Row {
    Row {
        fields: vec![
            ("pid", Value::Int(t.tgid)),
            ("tid", Value::Int(t.tid)),
            ("ppid", Value::Int(t.ppid)),
            ("comm", Value::Str(t.comm.clone())),
            ("uid", Value::Int(t.uid)),
            ("gid", Value::Int(t.gid)),
            ("euid", Value::Int(t.euid)),
            ("egid", Value::Int(t.egid)),
            ("start_time", Value::UInt(t.start_time)),
            ("offset", Value::UInt(t.va)),
        ],
    }
}

pub(crate) fn run(k: &Kernel<'_, '_>, opts: &Options) -> Result<Vec<Row>, KernelError> {
    Ok(all_tasks(k, opts.threads)?.iter().map(task_row).collect())
}
