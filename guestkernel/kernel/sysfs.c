// SPDX-License-Identifier: GPL-2.0
/*
 * sysfs.c: /sys/kernel/livepatch, rendered from the host-written
 * klp_sysfs_state (include/klp_abi.h) with Linux's file names. Reads run
 * under the host's seqlock and are retried when the host wrote meanwhile;
 * every count and name from the buffer is clamped (the host is trusted
 * more than a patch, but a torn or bogus buffer must not crash us).
 * Writes to enabled/transition/force are forwarded to the host through
 * the agent and return its answer.
 */
#include "kernel.h"

enum lp_kind { LP_ROOT, LP_PATCH, LP_PATCH_ATTR, LP_OBJ, LP_OBJ_PATCHED, LP_FUNC };

static const char *const patch_attrs[] = { "enabled", "force", "replace", "stack_order", "transition" };

struct lp_node {
	enum lp_kind kind;
	uint32_t p, o, f;
	const char *attr;
};

static uint32_t clampu(uint32_t v, uint32_t max) { return v > max ? max : v; }

/* copy a possibly unterminated name into out (>= len+1 bytes) */
static void name_copy(char *out, const volatile char *name, size_t len)
{
	size_t i;
	for (i = 0; i < len && name[i]; i++)
		out[i] = name[i];
	out[i] = 0;
}

static int comp_eq(const char *comp, size_t n, const volatile char *name, size_t len)
{
	char buf[KLP_SYSFS_NAME_LEN + 1];
	if (len > KLP_SYSFS_NAME_LEN)
		len = KLP_SYSFS_NAME_LEN;
	name_copy(buf, name, len);
	return strlen(buf) == n && !strncmp(buf, comp, n) && n > 0;
}

static const volatile struct klp_sysfs_state *st(void) { return (const volatile struct klp_sysfs_state *)&klp_sysfs_state; }

static uint32_t nr_patches(void) { return clampu(st()->nr_patches, KLP_SYSFS_MAX_PATCHES); }

/* object range of patch p, clamped to the table */
static void obj_range(uint32_t p, uint32_t *first, uint32_t *end)
{
	uint32_t f = clampu(st()->patches[p].first_obj, KLP_SYSFS_MAX_OBJS);
	uint32_t n = clampu(st()->patches[p].nr_objs, KLP_SYSFS_MAX_OBJS - f);
	uint32_t limit = clampu(st()->nr_objs, KLP_SYSFS_MAX_OBJS);
	*first = f;
	*end = min(f + n, limit);
	if (*end < f)
		*end = f;
}

static void func_range(uint32_t o, uint32_t *first, uint32_t *end)
{
	uint32_t f = clampu(st()->objs[o].first_func, KLP_SYSFS_MAX_FUNCS);
	uint32_t n = clampu(st()->objs[o].nr_funcs, KLP_SYSFS_MAX_FUNCS - f);
	uint32_t limit = clampu(st()->nr_funcs, KLP_SYSFS_MAX_FUNCS);
	*first = f;
	*end = min(f + n, limit);
	if (*end < f)
		*end = f;
}

static int func_dir_eq(const char *comp, size_t n, uint32_t fi)
{
	char buf[KLP_SYSFS_FUNC_NAME_LEN + 16];
	char nm[KLP_SYSFS_FUNC_NAME_LEN + 1];
	name_copy(nm, st()->funcs[fi].name, KLP_SYSFS_FUNC_NAME_LEN);
	int len = snprintf(buf, sizeof(buf), "%s,%u", nm, st()->funcs[fi].sympos);
	return len > 0 && (size_t)len == n && !strncmp(buf, comp, n);
}

/* resolve rel ("", "p", "p/attr", "p/obj", "p/obj/patched", "p/obj/func,pos") */
static int lp_resolve(const char *rel, struct lp_node *nd)
{
	const char *comp[4];
	size_t len[4];
	int nc = 0;
	const char *s = rel;
	while (*s) {
		if (nc == 4)
			return -ENOENT;
		comp[nc] = s;
		while (*s && *s != '/')
			s++;
		len[nc] = s - comp[nc];
		nc++;
		if (*s == '/')
			s++;
	}
	nd->kind = LP_ROOT;
	if (nc == 0)
		return 0;
	uint32_t np = nr_patches(), p;
	for (p = 0; p < np; p++)
		if (comp_eq(comp[0], len[0], st()->patches[p].name, KLP_SYSFS_NAME_LEN))
			break;
	if (p == np)
		return -ENOENT;
	nd->p = p;
	nd->kind = LP_PATCH;
	if (nc == 1)
		return 0;
	if (nc == 2) {
		for (size_t i = 0; i < ARRAY_SIZE(patch_attrs); i++) {
			if (strlen(patch_attrs[i]) == len[1] && !strncmp(patch_attrs[i], comp[1], len[1])) {
				nd->kind = LP_PATCH_ATTR;
				nd->attr = patch_attrs[i];
				return 0;
			}
		}
	}
	uint32_t of, oe, o;
	obj_range(p, &of, &oe);
	for (o = of; o < oe; o++)
		if (comp_eq(comp[1], len[1], st()->objs[o].name, KLP_SYSFS_NAME_LEN))
			break;
	if (o == oe)
		return -ENOENT;
	nd->o = o;
	nd->kind = LP_OBJ;
	if (nc == 2)
		return 0;
	if (nc == 3 && len[2] == 7 && !strncmp(comp[2], "patched", 7)) {
		nd->kind = LP_OBJ_PATCHED;
		return 0;
	}
	uint32_t ff, fe, f;
	func_range(o, &ff, &fe);
	for (f = ff; f < fe; f++)
		if (func_dir_eq(comp[2], len[2], f))
			break;
	if (f == fe || nc != 3)
		return -ENOENT;
	nd->f = f;
	nd->kind = LP_FUNC;
	return 0;
}

enum lp_op { OP_READ, OP_LIST, OP_ISDIR, OP_CHECK_WRITE };

static int lp_op_locked(enum lp_op op, const char *rel, struct seq_file *m)
{
	struct lp_node nd;
	int err = lp_resolve(rel, &nd);
	if (err)
		return op == OP_ISDIR ? 0 : err;
	int isdir = nd.kind == LP_ROOT || nd.kind == LP_PATCH || nd.kind == LP_OBJ || nd.kind == LP_FUNC;
	if (op == OP_ISDIR)
		return isdir;
	if (op == OP_CHECK_WRITE) {
		if (isdir)
			return -EISDIR;
		if (nd.kind == LP_PATCH_ATTR &&
		    (!strcmp(nd.attr, "enabled") || !strcmp(nd.attr, "transition") || !strcmp(nd.attr, "force")))
			return 0;
		return -EACCES;
	}
	if (op == OP_READ) {
		const volatile struct klp_sysfs_patch *pp = &st()->patches[nd.p];
		if (isdir)
			return -EISDIR;
		if (nd.kind == LP_OBJ_PATCHED) {
			seq_printf(m, "%u\n", st()->objs[nd.o].patched ? 1 : 0);
			return 0;
		}
		if (!strcmp(nd.attr, "enabled"))
			seq_printf(m, "%u\n", pp->enabled ? 1 : 0);
		else if (!strcmp(nd.attr, "transition"))
			seq_printf(m, "%u\n", pp->transition ? 1 : 0);
		else if (!strcmp(nd.attr, "force"))
			seq_printf(m, "%u\n", pp->force ? 1 : 0);
		else if (!strcmp(nd.attr, "replace"))
			seq_printf(m, "%u\n", pp->replace ? 1 : 0);
		else
			seq_printf(m, "%u\n", pp->stack_order);
		return 0;
	}
	/* OP_LIST */
	char nm[KLP_SYSFS_NAME_LEN + 1];
	switch (nd.kind) {
	case LP_ROOT:
		for (uint32_t p = 0; p < nr_patches(); p++) {
			name_copy(nm, st()->patches[p].name, KLP_SYSFS_NAME_LEN);
			if (nm[0])
				seq_printf(m, "%s/\n", nm);
		}
		return 0;
	case LP_PATCH: {
		for (size_t i = 0; i < ARRAY_SIZE(patch_attrs); i++)
			seq_printf(m, "%s\n", patch_attrs[i]);
		uint32_t of, oe;
		obj_range(nd.p, &of, &oe);
		for (uint32_t o = of; o < oe; o++) {
			name_copy(nm, st()->objs[o].name, KLP_SYSFS_NAME_LEN);
			if (nm[0])
				seq_printf(m, "%s/\n", nm);
		}
		return 0;
	}
	case LP_OBJ: {
		seq_puts(m, "patched\n");
		uint32_t ff, fe;
		func_range(nd.o, &ff, &fe);
		for (uint32_t f = ff; f < fe; f++) {
			char fn[KLP_SYSFS_FUNC_NAME_LEN + 1];
			name_copy(fn, st()->funcs[f].name, KLP_SYSFS_FUNC_NAME_LEN);
			if (fn[0])
				seq_printf(m, "%s,%u/\n", fn, st()->funcs[f].sympos);
		}
		return 0;
	}
	case LP_FUNC:
		return 0;
	default:
		seq_printf(m, "%s\n", rel);
		return 0;
	}
}

/* run op under the seqlock, retrying on concurrent host writes */
static int lp_op(enum lp_op op, const char *rel, struct seq_file *m)
{
	for (int tries = 0; tries < 2000; tries++) {
		uint32_t seq = __atomic_load_n(&klp_sysfs_state.seq, __ATOMIC_ACQUIRE);
		if (seq & 1) {
			if (tries > 100)
				msleep(1);
			else
				cpu_relax();
			continue;
		}
		size_t save = m ? m->count : 0;
		int r = lp_op_locked(op, rel, m);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&klp_sysfs_state.seq, __ATOMIC_ACQUIRE) == seq)
			return r;
		if (m) {
			m->count = save;
			m->overflow = 0;
			if (m->size)
				m->buf[save] = 0;
		}
	}
	return -EAGAIN;
}

int lp_sysfs_read(const char *rel, struct seq_file *m) { return lp_op(OP_READ, rel, m); }
int lp_sysfs_list(const char *rel, struct seq_file *m) { return lp_op(OP_LIST, rel, m); }
int lp_sysfs_is_dir(const char *rel)
{
	int r = lp_op(OP_ISDIR, rel, NULL);
	return r > 0;
}

int lp_sysfs_nr_patches(void) { return (int)nr_patches(); }

static uint64_t sysfs_timeout_ns(void)
{
	const char *v = cmdline_get("klp.sysfs_timeout_ms");
	uint64_t ms;
	if (v && !parse_u64(v, strlen(v), &ms) && ms > 0 && ms < 3600000)
		return ms * NSEC_PER_MSEC;
	return 20000 * NSEC_PER_MSEC;
}

int lp_sysfs_write(const char *rel, const char *data, size_t n)
{
	int err = lp_op(OP_CHECK_WRITE, rel, NULL);
	if (err)
		return err;
	char value[64];
	while (n && (data[n - 1] == '\n' || data[n - 1] == '\r'))
		n--;
	if (n >= sizeof(value))
		return -EINVAL;
	memcpy(value, data, n);
	value[n] = 0;
	char path[320];
	snprintf(path, sizeof(path), "/sys/kernel/livepatch/%s", rel);
	return agent_sysfs_write_event(path, value, sysfs_timeout_ns());
}
