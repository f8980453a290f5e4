// SPDX-License-Identifier: GPL-2.0
/*
 * kallsyms.c: symbol lookup for oops reports and guest-side stack traces.
 * The table (address-sorted function symbols with sizes) is generated from
 * the first link by scripts/kallsyms.sh and linked last, in its own
 * segment, so that adding it moves no other symbol.
 */
#include "kernel.h"

struct kallsym_sized {
	uint64_t addr;
	uint64_t size;
	const char *name;
};
extern const struct kallsym_sized kallsyms_syms[];
extern const uint64_t kallsyms_num;

notrace const char *kallsyms_lookup(uint64_t addr, uint64_t *off, uint64_t *size)
{
	uint64_t lo = 0, hi = kallsyms_num;
	while (lo < hi) { /* first entry with addr > target */
		uint64_t mid = lo + (hi - lo) / 2;
		if (kallsyms_syms[mid].addr <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	const struct kallsym_sized *s = &kallsyms_syms[lo - 1];
	uint64_t sz = s->size ? s->size : 1;
	if (addr - s->addr >= sz)
		return NULL;
	if (off)
		*off = addr - s->addr;
	if (size)
		*size = s->size;
	return s->name;
}

uint64_t kallsyms_lookup_name(const char *name)
{
	for (uint64_t i = 0; i < kallsyms_num; i++)
		if (strcmp(kallsyms_syms[i].name, name) == 0)
			return kallsyms_syms[i].addr;
	return 0;
}

/*
 * task_stack: the frame chain of a switched-out task, bounded by its stack
 * and by max; pcs[0] is the saved RIP (inside klp_switch_to).
 */
int task_stack(struct task *t, uint64_t *pcs, int max)
{
	if (max <= 0 || READ_ONCE(t->on_cpu) != -1)
		return 0;
	uint64_t lo = t->stack_base, hi = t->stack_base + t->stack_size;
	int n = 0;
	pcs[n++] = t->saved_rip;
	uint64_t fp = t->saved_rbp;
	while (n < max && fp >= lo && fp + 16 <= hi && (fp & 7) == 0) {
		uint64_t ret = ((uint64_t *)fp)[1];
		uint64_t next = ((uint64_t *)fp)[0];
		if (!ret)
			break;
		pcs[n++] = ret;
		if (next <= fp)
			break;
		fp = next;
	}
	return n;
}

/*
 * Return addresses (every entry but the first) point after their call,
 * possibly past the end of a noreturn caller: look them up at pc - 1.
 */
static uint64_t lookup_pc(const uint64_t *pcs, int i) { return i ? pcs[i] - 1 : pcs[i]; }

int stack_has_function(const uint64_t *pcs, int n, const char *name)
{
	for (int i = 0; i < n; i++) {
		const char *s = kallsyms_lookup(lookup_pc(pcs, i), NULL, NULL);
		if (s && strcmp(s, name) == 0)
			return 1;
	}
	return 0;
}

void seq_print_stack(struct seq_file *m, const uint64_t *pcs, int n)
{
	for (int i = 0; i < n; i++) {
		uint64_t off, size;
		const char *s = kallsyms_lookup(lookup_pc(pcs, i), &off, &size);
		if (s)
			seq_printf(m, "[<%016lx>] %s+0x%lx/0x%lx\n", pcs[i], s, off + (i ? 1 : 0), size);
		else
			seq_printf(m, "[<%016lx>] ?\n", pcs[i]);
	}
}
