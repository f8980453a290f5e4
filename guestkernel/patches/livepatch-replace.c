// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * livepatch-replace.c - an atomic-replace patch (.replace = true): enabling it
 * replaces every enabled patch; functions they patched that it does not
 * patch itself go back to the original code (Linux's "nop" funcs). It
 * patches only cmdline_proc_show, so klp_pair_* etc. revert.
 */
#include "livepatch.h"
#include "kapi.h"

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "this has been live patched (atomic replace)");
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = livepatch_cmdline_proc_show,
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
	.replace = true,
};

KLP_MODULE_NAME("livepatch_replace");
KLP_PATCH(patch);
