// SPDX-License-Identifier: GPL-2.0
/*
 * bpf-helper: two eBPF programs loaded and kept, for mshot's ebpf check.
 *
 *   mshot_sockfilt  a socket filter (returns 0) attached with SO_ATTACH_BPF
 *                   to a UDP socket the helper keeps open: benign.
 *   mshot_rawtp     a raw tracepoint program on sched_process_exec, opened
 *                   with BPF_RAW_TRACEPOINT_OPEN (a bpf_link), that calls
 *                   bpf_probe_write_user(NULL, stack, 8) at every exec: the
 *                   helper eBPF rootkits use to rewrite what processes read.
 *                   The write to NULL always fails (-EFAULT), so it changes
 *                   nothing.
 *
 * Raw bpf(2) system calls, no libbpf. Prints each program's id and tag,
 * then sleeps forever holding the descriptors.
 */
#include <linux/bpf.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <netinet/in.h>
#include <unistd.h>

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
	fflush(stdout);
	for (;;)
		pause();
}
