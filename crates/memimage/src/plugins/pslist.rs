//! pslist: processes (and with `threads`, their threads) from
//! `init_task.tasks`.

use super::tasks::{Task, all_tasks, boot_time_ns, wall_clock};
use super::{Options, Row, Value};
use crate::kernel::{Kernel, KernelError};

/// `boot_ns` is the boot time (`tasks::boot_time_ns`), for wall-clock start times.
pub(crate) fn task_row(t: &Task, boot_ns: Option<i128>) -> Row {
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
            ("start_time", wall_clock(boot_ns, t.start_time)),
            ("start_boottime_ns", Value::UInt(t.start_time)),
            ("offset", Value::UInt(t.va)),
        ],
    }
}

pub(crate) fn run(k: &Kernel<'_, '_>, opts: &Options) -> Result<Vec<Row>, KernelError> {
    let boot = boot_time_ns(k);
    Ok(all_tasks(k, opts.threads)?
        .iter()
        .map(|t| task_row(t, boot))
        .collect())
}
