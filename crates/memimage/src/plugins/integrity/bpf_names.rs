//! Names of eBPF program, link and attach types. The values are the UAPI's
//! (`include/uapi/linux/bpf.h`, stable ABI, here up to 6.13); the
//! profile's own enum wins when it has one, so a newer kernel's types are
//! named too.

use crate::kernel::Kernel;

/// `enum bpf_prog_type`, from 0.
const PROG_TYPES: &[&str] = &[
    "unspec",
    "socket_filter",
    "kprobe",
    "sched_cls",
    "sched_act",
    "tracepoint",
    "xdp",
    "perf_event",
    "cgroup_skb",
    "cgroup_sock",
    "lwt_in",
    "lwt_out",
    "lwt_xmit",
    "sock_ops",
    "sk_skb",
    "cgroup_device",
    "sk_msg",
    "raw_tracepoint",
    "cgroup_sock_addr",
    "lwt_seg6local",
    "lirc_mode2",
    "sk_reuseport",
    "flow_dissector",
    "cgroup_sysctl",
    "raw_tracepoint_writable",
    "cgroup_sockopt",
    "tracing",
    "struct_ops",
    "ext",
    "lsm",
    "sk_lookup",
    "syscall",
    "netfilter",
];

/// `enum bpf_link_type`, from 0.
const LINK_TYPES: &[&str] = &[
    "unspec",
    "raw_tracepoint",
    "tracing",
    "cgroup",
    "iter",
    "netns",
    "xdp",
    "perf_event",
    "kprobe_multi",
    "struct_ops",
    "netfilter",
    "tcx",
    "uprobe_multi",
    "netkit",
    "sockmap",
];

/// `enum bpf_attach_type`, from 0.
const ATTACH_TYPES: &[&str] = &[
    "cgroup_inet_ingress",
    "cgroup_inet_egress",
    "cgroup_inet_sock_create",
    "cgroup_sock_ops",
    "sk_skb_stream_parser",
    "sk_skb_stream_verdict",
    "cgroup_device",
    "sk_msg_verdict",
    "cgroup_inet4_bind",
    "cgroup_inet6_bind",
    "cgroup_inet4_connect",
    "cgroup_inet6_connect",
    "cgroup_inet4_post_bind",
    "cgroup_inet6_post_bind",
    "cgroup_udp4_sendmsg",
    "cgroup_udp6_sendmsg",
    "lirc_mode2",
    "flow_dissector",
    "cgroup_sysctl",
    "cgroup_udp4_recvmsg",
    "cgroup_udp6_recvmsg",
    "cgroup_getsockopt",
    "cgroup_setsockopt",
    "trace_raw_tp",
    "trace_fentry",
    "trace_fexit",
    "modify_return",
    "lsm_mac",
    "trace_iter",
    "cgroup_inet4_getpeername",
    "cgroup_inet6_getpeername",
    "cgroup_inet4_getsockname",
    "cgroup_inet6_getsockname",
    "xdp_devmap",
    "cgroup_inet_sock_release",
    "xdp_cpumap",
    "sk_lookup",
    "xdp",
    "sk_skb_verdict",
    "sk_reuseport_select",
    "sk_reuseport_select_or_migrate",
    "perf_event",
    "trace_kprobe_multi",
    "lsm_cgroup",
    "struct_ops",
    "netfilter",
    "tcx_ingress",
    "tcx_egress",
    "trace_uprobe_multi",
    "cgroup_unix_connect",
    "cgroup_unix_sendmsg",
    "cgroup_unix_recvmsg",
    "cgroup_unix_getpeername",
    "cgroup_unix_getsockname",
    "netkit_primary",
    "netkit_peer",
    "trace_kprobe_session",
    "trace_uprobe_session",
];

/// `BPF_MODIFY_RETURN`: an fmod_ret program changes what a function returns.
pub(crate) const MODIFY_RETURN: u64 = 26;

/// The constant of `enum name` whose value is `v`, without `prefix` and in
/// lower case; else the built-in table's name; else the number.
fn name(k: &Kernel<'_, '_>, en: &str, prefix: &str, table: &[&str], v: u64) -> String {
    if let Some(e) = k.profile.enums.get(en)
        && let Some((n, _)) = e.constants.iter().find(|(n, c)| {
            u64::try_from(**c).ok() == Some(v) && !n.starts_with("__") && !n.starts_with("MAX_")
        })
    {
        return n.strip_prefix(prefix).unwrap_or(n).to_ascii_lowercase();
    }
    usize::try_from(v)
        .ok()
        .and_then(|i| table.get(i))
        .map_or_else(|| v.to_string(), |n| (*n).to_string())
}

pub(crate) fn prog_type(k: &Kernel<'_, '_>, v: u64) -> String {
    name(k, "bpf_prog_type", "BPF_PROG_TYPE_", PROG_TYPES, v)
}

pub(crate) fn link_type(k: &Kernel<'_, '_>, v: u64) -> String {
    name(k, "bpf_link_type", "BPF_LINK_TYPE_", LINK_TYPES, v)
}

pub(crate) fn attach_type(k: &Kernel<'_, '_>, v: u64) -> String {
    name(k, "bpf_attach_type", "BPF_", ATTACH_TYPES, v)
}

/// A cgroup's hook by its slot in `cgroup_bpf.progs` (`enum
/// cgroup_bpf_attach_type`, internal: the order changes between kernels,
/// so only the profile's enum names it).
pub(crate) fn cgroup_hook(k: &Kernel<'_, '_>, slot: u64) -> String {
    let n = name(k, "cgroup_bpf_attach_type", "CGROUP_", &[], slot);
    if n == slot.to_string() {
        format!("hook {slot}")
    } else {
        n
    }
}

/// A network namespace's hook (`enum netns_bpf_attach_type`).
pub(crate) fn netns_hook(k: &Kernel<'_, '_>, slot: u64) -> String {
    name(
        k,
        "netns_bpf_attach_type",
        "NETNS_BPF_",
        &["flow_dissector", "sk_lookup"],
        slot,
    )
}
