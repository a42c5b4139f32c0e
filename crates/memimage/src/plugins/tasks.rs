//! Walking `init_task.tasks` and decoding the task fields the process
//! plugins share, with the kernel-version differences resolved once.

use crate::kernel::{Kernel, KernelError};

/// Cap on list walks: a corrupt list must not loop forever.
pub(crate) const MAX_LIST: usize = 1 << 20;

/// Entries of a kernel `list_head` ring, as addresses of the containing
/// objects (`link - member_offset`); stops at the head or a repeat.
pub(crate) fn walk_list(
    k: &Kernel<'_, '_>,
    head: u64,
    member_off: u64,
    what: &str,
) -> Result<Vec<u64>, KernelError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut link = k.read_u64(head, || format!("{what} list head at {head:#x}"))?;
    while link != head && link != 0 && seen.insert(link) && out.len() < MAX_LIST {
        out.push(link.wrapping_sub(member_off));
        link = k.read_u64(link, || format!("{what} list entry at {link:#x}"))?;
    }
    Ok(out)
}

/// One task as the process plugins report it.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub va: u64,
    pub tid: i64,
    pub tgid: i64,
    pub ppid: i64,
    pub comm: String,
    pub uid: i64,
    pub gid: i64,
    pub euid: i64,
    pub egid: i64,
    /// Nanoseconds since boot (`start_boottime`, else `start_time`).
    pub start_time: u64,
    pub mm: u64,
}

fn int(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(-1)
}

pub(crate) fn read_task(k: &Kernel<'_, '_>, va: u64) -> Result<Task, KernelError> {
    let p = k.profile;
    let tid = int(k.read_int(va, "task_struct", "pid")?);
    let tgid = int(k.read_int(va, "task_struct", "tgid")?);
    let parent = k.read_u64(va.wrapping_add(p.offset("task_struct", "parent")?), || {
        format!("task {va:#x} parent")
    })?;
    let ppid = if parent == 0 {
        0
    } else {
        int(k.read_int(parent, "task_struct", "tgid")?)
    };
    let mut comm = [0u8; 16];
    k.read(
        va.wrapping_add(p.offset("task_struct", "comm")?),
        &mut comm,
        || format!("task {va:#x} comm"),
    )?;
    let end = memchr::memchr(0, &comm).unwrap_or(16);
    let comm = String::from_utf8_lossy(comm.get(..end).unwrap_or_default()).into_owned();
    let cred_field = if p.has_field("task_struct", "cred") {
        "cred"
    } else {
        "real_cred"
    };
    let cred = k.read_u64(
        va.wrapping_add(p.offset("task_struct", cred_field)?),
        || format!("task {va:#x} cred"),
    )?;
    let id = |f: &str| -> Result<i64, KernelError> {
        if cred == 0 {
            Ok(-1)
        } else {
            Ok(int(k.read_int(cred, "cred", f)?))
        }
    };
    let start_field = if p.has_field("task_struct", "start_boottime") {
        "start_boottime"
    } else {
        "start_time"
    };
    let start_time = u64::try_from(k.read_int(va, "task_struct", start_field)?).unwrap_or(0);
    let mm = k.read_u64(va.wrapping_add(p.offset("task_struct", "mm")?), || {
        format!("task {va:#x} mm")
    })?;
    Ok(Task {
        va,
        tid,
        tgid,
        ppid,
        comm,
        uid: id("uid")?,
        gid: id("gid")?,
        euid: id("euid")?,
        egid: id("egid")?,
        start_time,
        mm,
    })
}

/// When the machine booted, in nanoseconds since the Unix epoch: what the
/// kernel's `getboottime64` computes, `offs_real - offs_boot` of
/// `tk_core.timekeeper`. `None` when the profile lacks them or the value is
/// implausible, so callers print no time rather than a wrong one.
pub(crate) fn boot_time_ns(k: &Kernel<'_, '_>) -> Option<i128> {
    let p = k.profile;
    let tk_core = k.symbol("tk_core").ok()?;
    // tk_core is `struct { seqcount_raw_spinlock_t seq; struct timekeeper
    // timekeeper; }`: an unnamed type, so take the member's offset from the
    // symbol's type when the profile has it, else the usual 8 (a 4-byte
    // seqcount padded to the timekeeper's alignment; lockdep kernels differ
    // and fail the plausibility check below instead of giving a wrong time).
    let inner = p
        .symbols
        .get("tk_core")
        .and_then(|s| match &s.ty {
            Some(crate::profile::TypeRef::Struct(name)) => p.structs.get(name),
            _ => None,
        })
        .and_then(|st| st.fields.get("timekeeper"))
        .map_or(8, |f| f.offset);
    let tk = tk_core.wrapping_add(inner);
    let real = k.read_int(tk, "timekeeper", "offs_real").ok()?;
    let boot = k.read_int(tk, "timekeeper", "offs_boot").ok()?;
    let xtime_sec = k.read_int(tk, "timekeeper", "xtime_sec").ok()?;
    let booted = real - boot;
    // 2000-01-01 to 2200-01-01, and no later than the clock's last update.
    const EARLIEST: i128 = 946_684_800 * 1_000_000_000;
    const LATEST: i128 = 7_258_118_400 * 1_000_000_000;
    let plausible = (EARLIEST..LATEST).contains(&booted) && xtime_sec * 1_000_000_000 >= booted;
    plausible.then_some(booted)
}

/// `start_time` as Volatility 3 prints it (UTC, microseconds), given the
/// boot time; `Null` when the boot time is unknown.
pub(crate) fn wall_clock(boot_ns: Option<i128>, since_boot_ns: u64) -> super::Value {
    let Some(boot) = boot_ns else {
        return super::Value::Null;
    };
    let at = boot + i128::from(since_boot_ns);
    match jiff::Timestamp::from_nanosecond(at) {
        Ok(ts) => super::Value::Str(ts.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()),
        Err(_) => super::Value::Null,
    }
}

/// Thread-group leaders from `init_task.tasks` (init_task excluded).
pub(crate) fn processes(k: &Kernel<'_, '_>) -> Result<Vec<u64>, KernelError> {
    let off = k.profile.offset("task_struct", "tasks")?;
    let head = k.symbol("init_task")?.wrapping_add(off);
    walk_list(k, head, off, "init_task.tasks")
}

/// The other threads of a leader: `signal->thread_head`/`thread_node` on
/// 6.7+, `thread_group` before.
pub(crate) fn threads(k: &Kernel<'_, '_>, leader: u64) -> Result<Vec<u64>, KernelError> {
    let p = k.profile;
    let mut out = if p.has_field("task_struct", "thread_node")
        && p.has_field("signal_struct", "thread_head")
    {
        let node = p.offset("task_struct", "thread_node")?;
        let signal = k.read_u64(
            leader.wrapping_add(p.offset("task_struct", "signal")?),
            || format!("task {leader:#x} signal"),
        )?;
        if signal == 0 {
            return Ok(Vec::new());
        }
        walk_list(
            k,
            signal.wrapping_add(p.offset("signal_struct", "thread_head")?),
            node,
            "signal.thread_head",
        )?
    } else {
        let off = p.offset("task_struct", "thread_group")?;
        walk_list(k, leader.wrapping_add(off), off, "thread_group")?
    };
    out.retain(|&t| t != leader);
    Ok(out)
}

/// Leaders, each followed by its threads when `threads` is set.
pub(crate) fn all_tasks(k: &Kernel<'_, '_>, threads_too: bool) -> Result<Vec<Task>, KernelError> {
    let mut out = Vec::new();
    for va in processes(k)? {
        out.push(read_task(k, va)?);
        if threads_too {
            for t in threads(k, va)? {
                out.push(read_task(k, t)?);
            }
        }
    }
    Ok(out)
}
