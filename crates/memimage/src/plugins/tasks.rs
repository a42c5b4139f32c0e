//! Walking `init_task.tasks` and decoding the task fields the process
//! plugins share, with the kernel-version differences resolved once.

use crate::kernel::{Kernel, KernelError};

/// Cap on list walks: a corrupt list must not loop forever.
pub(crate) const MAX_LIST: usize = 1 << 20;

/// Cap on rb-tree walks.
const MAX_TREE_NODES: usize = 1 << 16;

/// The nodes of the rb-tree whose `rb_root` is at `root` (depth first;
/// the order does not matter to the callers); a repeat or null ends a
/// branch, so a corrupt tree cannot loop.
pub(crate) fn walk_rbtree(
    k: &Kernel<'_, '_>,
    root: u64,
    what: &str,
) -> Result<Vec<u64>, KernelError> {
    let p = k.profile;
    let top = root.wrapping_add(p.offset("rb_root", "rb_node")?);
    let (left, right) = (
        p.offset("rb_node", "rb_left")?,
        p.offset("rb_node", "rb_right")?,
    );
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![k.read_u64(top, || format!("{what} root"))?];
    while let Some(n) = stack.pop() {
        if n == 0 || out.len() >= MAX_TREE_NODES || !seen.insert(n) {
            continue;
        }
        out.push(n);
        stack.push(k.read_u64(n.wrapping_add(left), || format!("{what} node {n:#x}"))?);
        stack.push(k.read_u64(n.wrapping_add(right), || format!("{what} node {n:#x}"))?);
    }
    Ok(out)
}

/// Entries of a kernel `list_head` ring, as addresses of the containing
/// objects (`link - member_offset`); stops at the head or a repeat.
///
/// The ring is walked forwards (`next`, as Volatility does) and then
/// backwards (`prev`). In a live capture the pages holding a list's links
/// are copied at different moments, so an entry that was freed and reused
/// while the capture ran can send the forward walk to the end of the ring,
/// skipping every entry after it (the lab saw the capture's own SSH session
/// vanish that way). The backward walk finds those; entries it alone finds
/// follow the forward ones in the order found (Volatility 3's order), and
/// a kernel note says the ring disagreed.
pub(crate) fn walk_list(
    k: &Kernel<'_, '_>,
    head: u64,
    member_off: u64,
    what: &str,
) -> Result<Vec<u64>, KernelError> {
    let mut links = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut link = k.read_u64(head, || format!("{what} list head at {head:#x}"))?;
    while link != head && link != 0 && seen.insert(link) && links.len() < MAX_LIST {
        // An entry whose link cannot be read ends the forward walk, as in
        // Volatility; the backward walk may still reach what lies beyond.
        match k.vm.read_u64(link) {
            Ok(next) => links.push(std::mem::replace(&mut link, next)),
            Err(e) => {
                k.note(format!(
                    "the {what} list's entry at {link:#x} cannot be read ({e}); walked from its other end"
                ));
                break;
            }
        }
    }
    // `prev` sits after `next` in every `list_head`. A link that cannot be
    // read backwards ends that walk only: the forward one already stands.
    let mut back = Vec::new();
    let mut back_seen = std::collections::HashSet::new();
    let mut link = k.vm.read_u64(head.wrapping_add(8)).unwrap_or(0);
    while link != head && link != 0 && back_seen.insert(link) && back.len() < MAX_LIST {
        if !seen.contains(&link) {
            back.push(link);
        }
        match k.vm.read_u64(link.wrapping_add(8)) {
            Ok(prev) => link = prev,
            Err(_) => break,
        }
    }
    if !back.is_empty() {
        k.note(format!(
            "the {what} list's forward and backward links disagree (pages copied at different \
             moments of a live capture); {} entries found only walking it backwards are included",
            back.len()
        ));
        links.extend(back);
    }
    Ok(links
        .into_iter()
        .map(|l| l.wrapping_sub(member_off))
        .collect())
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

/// Thread-group leaders from `init_task.tasks` (init_task excluded), the
/// entries that pass [`is_live_task`].
pub(crate) fn processes(k: &Kernel<'_, '_>) -> Result<Vec<u64>, KernelError> {
    let off = k.profile.offset("task_struct", "tasks")?;
    let head = k.symbol("init_task")?.wrapping_add(off);
    let mut out = walk_list(k, head, off, "init_task.tasks")?;
    out.retain(|&t| is_live_task(k, t));
    Ok(out)
}

/// Volatility 3's test (`task_struct.is_valid`) that a list entry is a
/// task still in use rather than freed or half torn down memory reached
/// through a stale link: the whole struct is readable, the ids are not
/// negative, `signal`, `nsproxy` and `real_parent` point at readable
/// objects, and `mm`, when set, is readable and equals `active_mm`. A
/// zombie fails it too (its `nsproxy` is already gone), as in Volatility.
pub(crate) fn is_live_task(k: &Kernel<'_, '_>, va: u64) -> bool {
    let p = k.profile;
    // Readable from the first byte to the last, page by page; a type the
    // profile lacks is taken as readable.
    let readable = |at: u64, st: &str| {
        let Ok(def) = p.struct_def(st) else {
            return true;
        };
        let end = at.wrapping_add(def.size.max(1) - 1);
        let mut page = at;
        let mut byte = [0u8; 1];
        loop {
            if k.vm.read(page, &mut byte).is_err() {
                return false;
            }
            let next = (page | 0xfff).wrapping_add(1);
            if next > end || next <= page {
                return k.vm.read(end, &mut byte).is_ok();
            }
            page = next;
        }
    };
    let pointer = |field: &str| -> Option<Option<u64>> {
        let off = p.offset("task_struct", field).ok()?;
        Some(k.vm.read_u64(va.wrapping_add(off)).ok())
    };
    if !readable(va, "task_struct") {
        return false;
    }
    let ids_ok = ["pid", "tgid"]
        .iter()
        .all(|f| k.read_int(va, "task_struct", f).is_ok_and(|v| v >= 0));
    if !ids_ok {
        return false;
    }
    for (field, st) in [
        ("signal", "signal_struct"),
        ("nsproxy", "nsproxy"),
        ("real_parent", "task_struct"),
    ] {
        match pointer(field) {
            None => {}
            Some(Some(ptr)) if ptr != 0 && readable(ptr, st) => {}
            Some(_) => return false,
        }
    }
    let active_mm = pointer("active_mm").flatten();
    if let Some(Some(a)) = pointer("active_mm")
        && a != 0
        && !readable(a, "mm_struct")
    {
        return false;
    }
    match pointer("mm") {
        Some(Some(0)) | None => true,
        Some(Some(mm)) => readable(mm, "mm_struct") && active_mm.is_none_or(|a| a == mm),
        Some(None) => false,
    }
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
    out.retain(|&t| t != leader && is_live_task(k, t));
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
