// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * livepatch-sample.c - Kernel Live Patching Sample Module
 *
 * The klp-kvm port of Linux's samples/livepatch/livepatch-sample.c: it
 * replaces cmdline_proc_show() so that "cat /proc/cmdline" prints
 * "this has been live patched". The only differences from the Linux
 * sample: the includes, and KLP_PATCH() in place of module_init() +
 * klp_enable_patch() (the host enables the patch, not the guest).
 */
#include "livepatch.h"
#include "kapi.h"

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "this has been live patched");
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
		/* name being NULL means vmlinux */
		.funcs = funcs,
	}, { }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

KLP_MODULE_NAME("livepatch_sample");
KLP_PATCH(patch);
