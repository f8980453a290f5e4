// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * bad-unresolved.c - deliberately bad: the new function calls a kernel
 * symbol that does not exist. Loading must fail with an unresolved-symbol
 * error naming klp_no_such_symbol and the relocation's section and offset.
 */
#include "livepatch.h"
#include "kapi.h"

extern int klp_no_such_symbol(struct seq_file *m);

static int bad_cmdline_proc_show(struct seq_file *m, void *v)
{
	return klp_no_such_symbol(m);
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = bad_cmdline_proc_show, }, { }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

KLP_MODULE_NAME("bad_unresolved");
KLP_PATCH(patch);
