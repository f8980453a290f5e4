// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * livepatch-sample2.c - a second patch on cmdline_proc_show(), for stacking:
 * enabled on top of livepatch_sample it wins (top of the func_stack);
 * disabling it brings livepatch_sample's text back.
 */
#include "livepatch.h"
#include "kapi.h"

static int livepatch_cmdline_proc_show2(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "this has been live patched twice");
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = livepatch_cmdline_proc_show2,
	}, { }
};

static struct klp_object objs[] = {
	{
		.funcs = funcs,
	}, { }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

KLP_MODULE_NAME("livepatch_sample2");
KLP_PATCH(patch);
