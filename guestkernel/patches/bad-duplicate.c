// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * bad-duplicate.c - deliberately bad: two funcs of one object patch the same
 * old function (which one would win is undefined), so the patch is refused.
 */
#include "livepatch.h"
#include "kapi.h"

static int bad_show1(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "one");
	return 0;
}

static int bad_show2(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "two");
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = bad_show1, },
	{ .old_name = "cmdline_proc_show", .new_func = bad_show2, },
	{ }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

KLP_MODULE_NAME("bad_duplicate");
KLP_PATCH(patch);
