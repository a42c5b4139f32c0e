// SPDX-License-Identifier: GPL-2.0
/*
 * bpf-helper: eBPF programs loaded and kept, for mshot's ebpf check, and
 * classic BPF filters for its bpf_filters plugin.
 *
 *   mshot_sockfilt  a socket filter (returns 0) attached with SO_ATTACH_BPF
 *                   to a UDP socket the helper keeps open: benign.
 *   mshot_rawtp     a raw tracepoint program on sched_process_exec, opened
 *                   with BPF_RAW_TRACEPOINT_OPEN (a bpf_link), that calls
 *                   bpf_probe_write_user(NULL, stack, 8) at every exec: the
 *                   helper eBPF rootkits use to rewrite what processes read.
 *                   The write to NULL always fails (-EFAULT), so it changes
 *                   nothing.
 *   Attached the older ways, with no link (all pass every packet):
 *   mshot_cgroup    cgroup_skb on the root cgroup's egress (BPF_PROG_ATTACH);
 *   mshot_xdp       XDP on lo, generic mode, by netlink (IFLA_XDP);
 *   mshot_tcx       sched_cls on lo's tcx ingress (BPF_PROG_ATTACH, 6.6+);
 *   mshot_perf      a tracepoint program on sched_process_fork by
 *                   perf_event_open and PERF_EVENT_IOC_SET_BPF;
 *   mshot_kprobe    a kprobe program on do_sys_openat2 by a perf event of
 *                   the kprobe PMU (a probe of its own, not a tracefs
 *                   event) and PERF_EVENT_IOC_SET_BPF;
 *   mshot_uprobe    a kprobe program on a function of this helper's own
 *                   file by a perf event of the uprobe PMU (how eBPF
 *                   credential stealers probe PAM or sshd), the same way;
 *   mshot_tc        tc's BPF classifier on lo's clsact ingress (netlink,
 *                   as `tc filter add dev lo ingress bpf da` does).
 *   Classic BPF: a packet socket filtered by SO_ATTACH_FILTER (the way
 *   BPFDoor listens), and a child process under a seccomp filter.
 *
 * Raw system calls, no libbpf. Prints each kept program's id and tag
 * ("bpf-helper: NAME id N tag HEX"), then sleeps forever holding the
 * descriptors. A hook this kernel lacks is said and skipped.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/perf_event.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <netinet/in.h>
#include <unistd.h>

/* enum bpf_attach_type's BPF_TCX_INGRESS (6.6), which older headers lack. */
#define TCX_INGRESS 46

#define INSN(c, d, s, o, i) ((struct bpf_insn){ .code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i) })
#define MOV64_IMM(d, i) INSN(BPF_ALU64 | BPF_MOV | BPF_K, d, 0, 0, i)
#define MOV64_REG(d, s) INSN(BPF_ALU64 | BPF_MOV | BPF_X, d, s, 0, 0)
#define ADD64_IMM(d, i) INSN(BPF_ALU64 | BPF_ADD | BPF_K, d, 0, 0, i)
#define ST_DW(d, o, i) INSN(BPF_ST | BPF_MEM | BPF_DW, d, 0, o, i)
#define CALL(f) INSN(BPF_JMP | BPF_CALL, 0, 0, 0, f)
#define EXIT() INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)

static long bpf(int cmd, union bpf_attr *attr)
{
	return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

static int load(enum bpf_prog_type type, const char *name, const struct bpf_insn *insns,
		unsigned int n)
{
	static char log[4096];
	union bpf_attr attr;
	int fd;

	memset(&attr, 0, sizeof(attr));
	attr.prog_type = type;
	attr.insns = (unsigned long)insns;
	attr.insn_cnt = n;
	attr.license = (unsigned long)"GPL";
	attr.log_buf = (unsigned long)log;
	attr.log_size = sizeof(log);
	attr.log_level = 1;
	strncpy(attr.prog_name, name, sizeof(attr.prog_name) - 1);
	fd = bpf(BPF_PROG_LOAD, &attr);
	if (fd < 0) {
		perror("bpf-helper: BPF_PROG_LOAD");
		fprintf(stderr, "%s: verifier log:\n%s\n", name, log);
	}
	return fd;
}

/* Prints "NAME id N tag HEX". */
static int show(int fd, const char *name)
{
	struct bpf_prog_info info;
	union bpf_attr attr;
	int i;

	memset(&info, 0, sizeof(info));
	memset(&attr, 0, sizeof(attr));
	attr.info.bpf_fd = fd;
	attr.info.info_len = sizeof(info);
	attr.info.info = (unsigned long)&info;
	if (bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) < 0) {
		perror("bpf-helper: BPF_OBJ_GET_INFO_BY_FD");
		return -1;
	}
	printf("bpf-helper: %s id %u tag ", name, info.id);
	for (i = 0; i < BPF_TAG_SIZE; i++)
		printf("%02x", info.tag[i]);
	printf("\n");
	return 0;
}

/* Attaches `fd` to the root cgroup v2's egress, mounting it if need be. */
static int attach_cgroup(int fd)
{
	union bpf_attr attr;
	int cg;

	mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, NULL);
	cg = open("/sys/fs/cgroup", O_RDONLY | O_DIRECTORY);
	if (cg < 0)
		return -1;
	memset(&attr, 0, sizeof(attr));
	attr.target_fd = cg;
	attr.attach_bpf_fd = fd;
	attr.attach_type = BPF_CGROUP_INET_EGRESS;
	return bpf(BPF_PROG_ATTACH, &attr);
}

/* A netlink request under construction: header, family header, attributes. */
struct nlreq {
	struct nlmsghdr nh;
	char body[256];
};

static struct rtattr *nl_attr(struct nlreq *r, unsigned short type, const void *data, int len)
{
	struct rtattr *a = (struct rtattr *)((char *)r + NLMSG_ALIGN(r->nh.nlmsg_len));

	a->rta_type = type;
	a->rta_len = RTA_LENGTH(len);
	if (len)
		memcpy(RTA_DATA(a), data, len);
	r->nh.nlmsg_len = NLMSG_ALIGN(r->nh.nlmsg_len) + RTA_ALIGN(a->rta_len);
	return a;
}

/* Closes a nested attribute opened by nl_attr(r, type, NULL, 0). */
static void nl_end(struct nlreq *r, struct rtattr *nest)
{
	nest->rta_len = (char *)r + r->nh.nlmsg_len - (char *)nest;
}

/* Sends the request and reads its acknowledgement; -1 with errno set. */
static int nl_talk(struct nlreq *r)
{
	char reply[4096];
	struct nlmsgerr *err;
	int nl, n;

	nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
	if (nl < 0 || send(nl, r, r->nh.nlmsg_len, 0) < 0)
		return -1;
	n = recv(nl, reply, sizeof(reply), 0);
	close(nl);
	err = NLMSG_DATA((struct nlmsghdr *)reply);
	if (n < (int)NLMSG_LENGTH(sizeof(*err)) || err->error) {
		errno = n > 0 ? -err->error : EIO;
		return -1;
	}
	return 0;
}

static void nl_start(struct nlreq *r, unsigned short type, unsigned short flags, const void *fam,
		     int len)
{
	memset(r, 0, sizeof(*r));
	r->nh.nlmsg_len = NLMSG_LENGTH(len);
	r->nh.nlmsg_type = type;
	r->nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
	memcpy(NLMSG_DATA(&r->nh), fam, len);
}

/* Sets `fd` as lo's generic-mode XDP program by RTM_SETLINK. */
static int attach_xdp(int fd)
{
	struct ifinfomsg ifi = { .ifi_family = AF_UNSPEC, .ifi_index = 1 };
	__u32 flags = XDP_FLAGS_SKB_MODE;
	struct rtattr *xdp;
	struct nlreq r;

	nl_start(&r, RTM_SETLINK, 0, &ifi, sizeof(ifi));
	xdp = nl_attr(&r, NLA_F_NESTED | IFLA_XDP, NULL, 0);
	nl_attr(&r, IFLA_XDP_FD, &fd, sizeof(fd));
	nl_attr(&r, IFLA_XDP_FLAGS, &flags, sizeof(flags));
	nl_end(&r, xdp);
	return nl_talk(&r);
}

/* A clsact qdisc on lo, then `fd` as a direct-action BPF classifier on its
 * ingress. */
static int attach_tc(int fd)
{
	struct tcmsg qd = { .tcm_family = AF_UNSPEC, .tcm_ifindex = 1,
			    .tcm_handle = TC_H_MAKE(TC_H_CLSACT, 0), .tcm_parent = TC_H_CLSACT };
	struct tcmsg flt = { .tcm_family = AF_UNSPEC, .tcm_ifindex = 1,
			     .tcm_parent = TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS),
			     .tcm_info = TC_H_MAKE(1 << 16, htons(ETH_P_ALL)) };
	__u32 da = TCA_BPF_FLAG_ACT_DIRECT;
	struct rtattr *opts;
	struct nlreq r;

	nl_start(&r, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, &qd, sizeof(qd));
	nl_attr(&r, TCA_KIND, "clsact", sizeof("clsact"));
	if (nl_talk(&r) < 0)
		return -1;
	nl_start(&r, RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, &flt, sizeof(flt));
	nl_attr(&r, TCA_KIND, "bpf", sizeof("bpf"));
	opts = nl_attr(&r, NLA_F_NESTED | TCA_OPTIONS, NULL, 0);
	nl_attr(&r, TCA_BPF_FD, &fd, sizeof(fd));
	nl_attr(&r, TCA_BPF_NAME, "mshot_tc", sizeof("mshot_tc"));
	nl_attr(&r, TCA_BPF_FLAGS, &da, sizeof(da));
	nl_end(&r, opts);
	return nl_talk(&r);
}

/* Attaches `fd` to lo's tcx ingress (no link). */
static int attach_tcx(int fd)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.target_fd = 1; /* target_ifindex: lo */
	attr.attach_bpf_fd = fd;
	attr.attach_type = TCX_INGRESS;
	return bpf(BPF_PROG_ATTACH, &attr);
}

/* The number a sysfs or tracefs file holds, in `out`; -1 when unreadable. */
static int read_number(const char *file, unsigned long long *out)
{
	char buf[32] = "";
	int f = open(file, O_RDONLY);

	if (f < 0 || read(f, buf, sizeof(buf) - 1) <= 0)
		return -1;
	close(f);
	*out = strtoull(buf, NULL, 10);
	return 0;
}

/* Opens the perf event `pa` describes on CPU 0 and runs `fd` on it
 * (PERF_EVENT_IOC_SET_BPF, no link); the event's descriptor. */
static int perf_bpf(struct perf_event_attr *pa, int fd)
{
	int ev;

	pa->size = sizeof(*pa);
	pa->sample_period = 1;
	pa->wakeup_events = 1;
	ev = syscall(__NR_perf_event_open, pa, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
	if (ev < 0 || ioctl(ev, PERF_EVENT_IOC_SET_BPF, fd) < 0 ||
	    ioctl(ev, PERF_EVENT_IOC_ENABLE, 0) < 0)
		return -1;
	return ev;
}

/* A perf event on sched_process_fork running `fd`; the event's descriptor. */
static int attach_perf(int fd)
{
	struct perf_event_attr pa;
	unsigned long long id;

	mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, NULL);
	if (read_number("/sys/kernel/tracing/events/sched/sched_process_fork/id", &id) < 0)
		return -1;
	memset(&pa, 0, sizeof(pa));
	pa.type = PERF_TYPE_TRACEPOINT;
	pa.config = id;
	return perf_bpf(&pa, fd);
}

/* A kprobe PMU event on do_sys_openat2 running `fd`; the event's descriptor. */
static int attach_kprobe(int fd)
{
	struct perf_event_attr pa;
	unsigned long long type;

	if (read_number("/sys/bus/event_source/devices/kprobe/type", &type) < 0)
		return -1;
	memset(&pa, 0, sizeof(pa));
	pa.type = type;
	pa.config1 = (unsigned long)"do_sys_openat2"; /* kprobe_func */
	return perf_bpf(&pa, fd);
}

/* The function the uprobe probes; never called. */
__attribute__((noinline, used)) int uprobe_target(int x)
{
	return x * 3 + 1;
}

/* A uprobe PMU event on uprobe_target in this helper's file, running `fd`:
 * the file offset comes from the mapping that holds the function. */
static int attach_uprobe(int fd)
{
	unsigned long at = (unsigned long)uprobe_target, start, end, off;
	static char path[4096];
	struct perf_event_attr pa;
	unsigned long long type;
	char line[4352];
	int ev, found = 0;
	FILE *maps;

	if (read_number("/sys/bus/event_source/devices/uprobe/type", &type) < 0)
		return -1;
	maps = fopen("/proc/self/maps", "r");
	if (!maps)
		return -1;
	while (!found && fgets(line, sizeof(line), maps))
		found = sscanf(line, "%lx-%lx %*s %lx %*s %*s %4095s", &start, &end, &off, path) == 4 &&
			at >= start && at < end;
	fclose(maps);
	if (!found) {
		errno = ENOENT;
		return -1;
	}
	memset(&pa, 0, sizeof(pa));
	pa.type = type;
	pa.config1 = (unsigned long)path; /* uprobe_path */
	pa.config2 = at - start + off; /* probe_offset */
	ev = perf_bpf(&pa, fd);
	if (ev >= 0)
		printf("bpf-helper: uprobe %s+0x%lx\n", path, at - start + off);
	return ev;
}

/* Loads a program returning `ret` and attaches it; says why when it can't. */
static void attach_one(enum bpf_prog_type type, const char *name, int ret, int (*attach)(int))
{
	const struct bpf_insn insns[] = {
		MOV64_IMM(BPF_REG_0, ret),
		EXIT(),
	};
	int fd = load(type, name, insns, 2);

	if (fd < 0)
		return;
	if (attach(fd) < 0) {
		printf("bpf-helper: %s not attached: %s\n", name, strerror(errno));
		close(fd);
		return;
	}
	show(fd, name);
}

/* Classic BPF: IPv4 frames pass, others don't. */
static struct sock_filter ipv4_only[] = {
	{ BPF_LD | BPF_H | BPF_ABS, 0, 0, 12 },
	{ BPF_JMP | BPF_JEQ | BPF_K, 0, 1, ETH_P_IP },
	{ BPF_RET | BPF_K, 0, 0, 0xffff },
	{ BPF_RET | BPF_K, 0, 0, 0 },
};

static struct sock_filter allow_all[] = {
	{ BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW },
};

/* A packet socket filtered by a classic program. */
static void packet_filter(void)
{
	struct sock_fprog prog = { .len = 4, .filter = ipv4_only };
	int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));

	if (s < 0 || setsockopt(s, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0)
		perror("bpf-helper: SO_ATTACH_FILTER");
	else
		printf("bpf-helper: classic packet filter fd %d\n", s);
}

/* A child under a seccomp filter, forked first so that it holds nothing. */
static void seccomp_child(void)
{
	struct sock_fprog prog = { .len = 1, .filter = allow_all };
	pid_t child = fork();

	if (child == 0) {
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
		    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
			perror("bpf-helper: seccomp");
		for (;;)
			pause();
	}
	printf("bpf-helper: seccomp child %d\n", (int)child);
	fflush(stdout);
}

int main(void)
{
	const struct bpf_insn accept_none[] = {
		MOV64_IMM(BPF_REG_0, 0),
		EXIT(),
	};
	const struct bpf_insn write_user[] = {
		ST_DW(BPF_REG_10, -8, 0),
		MOV64_IMM(BPF_REG_1, 0),
		MOV64_REG(BPF_REG_2, BPF_REG_10),
		ADD64_IMM(BPF_REG_2, -8),
		MOV64_IMM(BPF_REG_3, 8),
		CALL(BPF_FUNC_probe_write_user),
		MOV64_IMM(BPF_REG_0, 0),
		EXIT(),
	};
	union bpf_attr attr;
	int filter, rawtp, link, sock;

	seccomp_child();
	filter = load(BPF_PROG_TYPE_SOCKET_FILTER, "mshot_sockfilt", accept_none, 2);
	rawtp = load(BPF_PROG_TYPE_RAW_TRACEPOINT, "mshot_rawtp", write_user, 8);
	if (filter < 0 || rawtp < 0)
		return 1;
	sock = socket(AF_INET, SOCK_DGRAM, 0);
	if (sock < 0 || setsockopt(sock, SOL_SOCKET, SO_ATTACH_BPF, &filter, sizeof(filter)) < 0) {
		perror("bpf-helper: SO_ATTACH_BPF");
		return 1;
	}
	memset(&attr, 0, sizeof(attr));
	attr.raw_tracepoint.name = (unsigned long)"sched_process_exec";
	attr.raw_tracepoint.prog_fd = rawtp;
	link = bpf(BPF_RAW_TRACEPOINT_OPEN, &attr);
	if (link < 0) {
		perror("bpf-helper: BPF_RAW_TRACEPOINT_OPEN");
		return 1;
	}
	if (show(filter, "mshot_sockfilt") < 0 || show(rawtp, "mshot_rawtp") < 0)
		return 1;
	printf("bpf-helper: pid %d, raw tracepoint sched_process_exec link fd %d\n", (int)getpid(),
	       link);
	attach_one(BPF_PROG_TYPE_CGROUP_SKB, "mshot_cgroup", 1, attach_cgroup);
	attach_one(BPF_PROG_TYPE_XDP, "mshot_xdp", XDP_PASS, attach_xdp);
	attach_one(BPF_PROG_TYPE_SCHED_CLS, "mshot_tcx", -1, attach_tcx);
	attach_one(BPF_PROG_TYPE_TRACEPOINT, "mshot_perf", 0, attach_perf);
	attach_one(BPF_PROG_TYPE_KPROBE, "mshot_kprobe", 0, attach_kprobe);
	attach_one(BPF_PROG_TYPE_KPROBE, "mshot_uprobe", 0, attach_uprobe);
	attach_one(BPF_PROG_TYPE_SCHED_CLS, "mshot_tc", TC_ACT_OK, attach_tc);
	packet_filter();
	fflush(stdout);
	for (;;)
		pause();
}
