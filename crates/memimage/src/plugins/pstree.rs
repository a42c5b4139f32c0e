//! pstree: pslist's rows arranged as a tree (depth-first, children sorted
//! by pid) with a `depth` column. A task whose parent is not listed is a
//! root; threads hang under their thread-group leader.

use super::pslist::task_row;
use super::tasks::{all_tasks, boot_time_ns};
use super::{Options, Row, Value};
use crate::kernel::{Kernel, KernelError};
use std::collections::{BTreeMap, HashSet};

pub(crate) fn run(k: &Kernel<'_, '_>, opts: &Options) -> Result<Vec<Row>, KernelError> {
    let tasks = all_tasks(k, opts.threads)?;
    let boot = boot_time_ns(k);
    // Key of a node: its tid; its parent key: leader's tgid for threads,
    // the parent's tgid for leaders.
    let keys: HashSet<i64> = tasks.iter().map(|t| t.tid).collect();
    let mut children: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        let parent = if t.tid != t.tgid { t.tgid } else { t.ppid };
        if parent != t.tid && keys.contains(&parent) {
            children.entry(parent).or_default().push(i);
        } else {
            roots.push(i);
        }
    }
    let by_tid = |v: &mut Vec<usize>| v.sort_by_key(|&i| tasks.get(i).map_or(0, |t| t.tid));
    by_tid(&mut roots);
    children.values_mut().for_each(by_tid);
    let mut out = Vec::with_capacity(tasks.len());
    let mut visited = HashSet::new();
    let mut stack: Vec<(usize, i64)> = roots.iter().rev().map(|&i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        let Some(t) = tasks.get(i) else { continue };
        if !visited.insert(i) {
            continue;
        }
        let mut row = task_row(t, boot);
        row.fields.push(("depth", Value::Int(depth)));
        out.push(row);
        if let Some(kids) = children.get(&t.tid) {
            stack.extend(kids.iter().rev().map(|&c| (c, depth + 1)));
        }
    }
    Ok(out)
}
