//! eBPF programs on trace events, read from the events themselves: every
//! registered event's `prog_array`, and the events the kprobe and uprobe
//! PMUs make for one perf event, which are registered nowhere (found
//! through `kprobe_table` and `uprobes_tree`).

use super::bpf_attach::{Attachment, Looked, MAX_PER_HOOK};
use crate::kernel::{Kernel, KernelError};
use crate::plugins::tasks::{walk_list, walk_rbtree};
use crate::plugins::util::{kernel_cstr, lossy, ptr, soft, uint};
use std::collections::HashSet;

/// Programs attached to trace events (kprobe, uprobe and tracepoint
/// events, `perf_event_open` then `PERF_EVENT_IOC_SET_BPF` or a perf
/// link): each registered event's `prog_array`, then the kprobe events
/// made for one perf event by the kprobe PMU (what libbpf makes), which
/// are not registered: found through their probe in `kprobe_table`. A
/// removed program leaves `dummy_bpf_prog` in its slot.
pub(super) fn perf_events(
    k: &Kernel<'_, '_>,
    out: &mut Vec<Attachment>,
    looked: &mut Looked,
    _: &mut Vec<String>,
) -> Result<(), KernelError> {
    if !k.profile.has_field("trace_event_call", "prog_array") {
        return Ok(());
    }
    let list = k.profile.offset("trace_event_call", "list")?;
    let mut calls: HashSet<u64> = HashSet::new();
    for call in walk_list(k, k.symbol("ftrace_events")?, list, "ftrace_events")? {
        // A tracefs uprobe event is the uprobe walk's too, which names it
        // by file and offset: one row, not two.
        if uprobe_event_label(k, call).is_some() {
            continue;
        }
        looked.events += 1;
        calls.insert(call);
        event_programs(k, call, None, out)?;
    }
    for call in pmu_kprobe_events(k)? {
        if calls.insert(call) {
            looked.events += 1;
            event_programs(k, call, None, out)?;
        }
    }
    Ok(())
}

/// Programs on uprobe events: the uprobe PMU's (what libbpf makes to probe
/// a user-space function, as credential stealers on PAM or sshd do) are
/// registered nowhere but in `uprobes_tree`, as a consumer of the probed
/// file's uprobe. Tracefs uprobe events are found there too; their
/// programs are named by file and offset, which say more than the name.
pub(super) fn uprobe_events(
    k: &Kernel<'_, '_>,
    out: &mut Vec<Attachment>,
    looked: &mut Looked,
    _: &mut Vec<String>,
) -> Result<(), KernelError> {
    let p = k.profile;
    // No uprobe events in this kernel (CONFIG_UPROBE_EVENTS), or no programs on events.
    let (Ok(dispatcher), Ok(tree)) = (k.symbol("uprobe_dispatcher"), k.symbol("uprobes_tree"))
    else {
        return Ok(());
    };
    if !p.has_field("trace_event_call", "prog_array") {
        return Ok(());
    }
    let node_in_uprobe = p.offset("uprobe", "rb_node")?;
    let consumer_in_tu = p.offset("trace_uprobe", "consumer")?;
    let event_in_tu = p.offset("trace_uprobe", "tp")? + p.offset("trace_probe", "event")?;
    let call_in_event = p.offset("trace_probe_event", "call")?;
    for node in walk_rbtree(k, tree, "uprobes_tree")? {
        let uprobe = node.wrapping_sub(node_in_uprobe);
        for consumer in uprobe_consumers(k, uprobe)? {
            if soft(ptr(k, consumer, "uprobe_consumer", "handler"))? != Some(dispatcher) {
                continue;
            }
            let tu = consumer.wrapping_sub(consumer_in_tu);
            let Some(event) = soft(k.read_u64(tu.wrapping_add(event_in_tu), || {
                "trace_uprobe.tp.event".into()
            }))?
            else {
                continue;
            };
            if event != 0 {
                looked.events += 1;
                let label = uprobe_label(k, tu);
                event_programs(k, event.wrapping_add(call_in_event), Some(&label), out)?;
            }
        }
    }
    Ok(())
}

/// A uprobe's consumers: a list since 6.12 (`cons_node`), a chain of
/// `next` pointers before.
fn uprobe_consumers(k: &Kernel<'_, '_>, uprobe: u64) -> Result<Vec<u64>, KernelError> {
    let p = k.profile;
    if p.has_field("uprobe_consumer", "cons_node") {
        let head = uprobe.wrapping_add(p.offset("uprobe", "consumers")?);
        let node = p.offset("uprobe_consumer", "cons_node")?;
        return soft(walk_list(k, head, node, "uprobe consumers")).map(Option::unwrap_or_default);
    }
    let mut out = Vec::new();
    let mut c = soft(ptr(k, uprobe, "uprobe", "consumers"))?.unwrap_or(0);
    while c != 0 && out.len() < MAX_PER_HOOK as usize && !out.contains(&c) {
        out.push(c);
        c = soft(ptr(k, c, "uprobe_consumer", "next"))?.unwrap_or(0);
    }
    Ok(out)
}

/// `uprobe FILE+0xOFFSET` of a `trace_uprobe` (`uretprobe` for a return probe).
fn uprobe_label(k: &Kernel<'_, '_>, tu: u64) -> String {
    let file = ptr(k, tu, "trace_uprobe", "filename")
        .and_then(|at| kernel_cstr(k, at, 4096))
        .map_or_else(|_| "?".into(), |s| lossy(&s));
    let offset = uint(k, tu, "trace_uprobe", "offset").unwrap_or(0);
    // A return probe's consumer has a return handler too.
    let ret = k.profile.offset("trace_uprobe", "consumer").is_ok_and(|c| {
        ptr(k, tu.wrapping_add(c), "uprobe_consumer", "ret_handler").is_ok_and(|h| h != 0)
    });
    let kind = if ret { "uretprobe" } else { "uprobe" };
    format!("{kind} {file}+{offset:#x}")
}

/// The label of a trace event when it is a uprobe event (a perf link's
/// event, say): its probe event's first probe is a `trace_uprobe` whose
/// consumer runs `uprobe_dispatcher`. `None` for any other event.
pub(crate) fn uprobe_event_label(k: &Kernel<'_, '_>, call: u64) -> Option<String> {
    let p = k.profile;
    let dispatcher = k.symbol("uprobe_dispatcher").ok()?;
    let event = call.wrapping_sub(p.offset("trace_probe_event", "call").ok()?);
    // A probe event's class is its own (`tp_event->class`); a tracepoint's is static.
    let class = event.wrapping_add(p.offset("trace_probe_event", "class").ok()?);
    if ptr(k, call, "trace_event_call", "class").ok()? != class {
        return None;
    }
    let probes = event.wrapping_add(p.offset("trace_probe_event", "probes").ok()?);
    let first = k
        .read_u64(probes, || "trace_probe_event.probes".into())
        .ok()?;
    let tp = first.wrapping_sub(p.offset("trace_probe", "list").ok()?);
    let tu = tp.wrapping_sub(p.offset("trace_uprobe", "tp").ok()?);
    let consumer = tu.wrapping_add(p.offset("trace_uprobe", "consumer").ok()?);
    (ptr(k, consumer, "uprobe_consumer", "handler").ok()? == dispatcher)
        .then(|| uprobe_label(k, tu))
}

/// The programs in one trace event's `prog_array`.
fn event_programs(
    k: &Kernel<'_, '_>,
    call: u64,
    label: Option<&str>,
    out: &mut Vec<Attachment>,
) -> Result<(), KernelError> {
    let p = k.profile;
    let Some(array) = soft(ptr(k, call, "trace_event_call", "prog_array"))? else {
        return Ok(());
    };
    if array == 0 {
        return Ok(());
    }
    let dummy = k.symbol("dummy_bpf_prog").unwrap_or(0);
    let items = p.offset("bpf_prog_array", "items")?;
    let item_size = p.struct_def("bpf_prog_array_item")?.size.max(8);
    for i in 0..MAX_PER_HOOK {
        let at = array.wrapping_add(items + i * item_size);
        let Some(prog) = soft(k.read_u64(at, || "bpf_prog_array item".into()))? else {
            break;
        };
        if prog == 0 {
            break;
        }
        if prog != dummy {
            let name = match label {
                Some(label) => label.to_string(),
                None => super::bpf::event_name(k, call).unwrap_or_else(|_| "?".into()),
            };
            out.push(Attachment {
                prog,
                link: None,
                point: format!("perf event {name}"),
            });
        }
    }
    Ok(())
}

/// The trace events behind the kprobes a trace_kprobe owns (its
/// `kprobe_dispatcher`), aggregated probes' members included: the
/// `trace_kprobe` holds the probe (`rp.kp`) and its event (`tp.event`,
/// whose `call` it is).
fn pmu_kprobe_events(k: &Kernel<'_, '_>) -> Result<Vec<u64>, KernelError> {
    let p = k.profile;
    // No kprobe events in this kernel.
    let Ok(dispatcher) = k.symbol("kprobe_dispatcher") else {
        return Ok(Vec::new());
    };
    let aggregate = k.symbol("aggr_pre_handler").ok();
    let kp_in_tk = p.offset("trace_kprobe", "rp")? + p.offset("kretprobe", "kp")?;
    let event_in_tk = p.offset("trace_kprobe", "tp")? + p.offset("trace_probe", "event")?;
    let call_in_event = p.offset("trace_probe_event", "call")?;
    let members = p.offset("kprobe", "list")?;
    let mut out = Vec::new();
    for kp in super::tracing::kprobe_list(k)? {
        let mut probes = vec![kp];
        if aggregate.is_some() && soft(ptr(k, kp, "kprobe", "pre_handler"))? == aggregate {
            let head = kp.wrapping_add(members);
            probes = soft(walk_list(k, head, members, "aggregated kprobes"))?.unwrap_or_default();
        }
        for probe in probes {
            if soft(ptr(k, probe, "kprobe", "pre_handler"))? != Some(dispatcher) {
                continue;
            }
            let tk = probe.wrapping_sub(kp_in_tk);
            let Some(event) = soft(k.read_u64(tk.wrapping_add(event_in_tk), || {
                "trace_kprobe.tp.event".into()
            }))?
            else {
                continue;
            };
            if event != 0 {
                out.push(event.wrapping_add(call_in_event));
            }
        }
    }
    Ok(out)
}
