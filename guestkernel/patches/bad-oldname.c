// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * bad-oldname.c - deliberately bad: old_name names a function the kernel
 * does not have. Enabling must fail (unresolved old function), leaving
 * nothing half-applied.
 */
#include "livepatch.h"
#include "kapi.h"

static int bad_fn(struct seq_file *m, void *v)
{
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "klp_no_such_function", .new_func = bad_fn, }, { }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

KLP_MODULE_NAME("bad_oldname");
KLP_PATCH(patch);
