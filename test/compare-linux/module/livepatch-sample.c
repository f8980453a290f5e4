// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * livepatch-sample.c - Kernel Live Patching Sample Module
 *
 * Copyright (C) 2014 Seth Jennings <sjenning@redhat.com>
 *
 * Linux's samples/livepatch/livepatch-sample.c (v6.1), with two changes
 * (the Debian linux-headers packages do not ship samples/, hence the copy):
 * this paragraph, and the timestamps below, which test/compare-linux reads
 * to time Linux's transitions inside the kernel. It replaces
 * cmdline_proc_show(), so that reading /proc/cmdline prints "this has been
 * live patched"; klp-kvm's guestkernel/patches/livepatch-sample.c is the
 * same patch for klp-kvm's guest.
 *
 * The timestamps (ktime_get_ns(), read-only module parameters under
 * /sys/module/livepatch_sample/parameters/): t_init when the module's init
 * starts (before klp_enable_patch), and one per klp callback. Linux calls
 * pre_patch in __klp_enable_patch after klp_init_transition, right before
 * klp_patch_object (the ftrace registration that redirects the function),
 * and post_patch in klp_complete_transition, once every task is switched
 * (at the first try inside klp_enable_patch, or from klp_transition_work_fn
 * retrying every second): pre_patch..post_patch is the enable transition,
 * the text change included. pre_unpatch and post_unpatch frame the disable
 * in the same way. The callbacks only record the time.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>

/*
 * This (dumb) live patch overrides the function that prints the
 * kernel boot cmdline when /proc/cmdline is read.
 *
 * Example:
 *
 * $ cat /proc/cmdline
 * <your cmdline>
 *
 * $ insmod livepatch-sample.ko
 * $ cat /proc/cmdline
 * this has been live patched
 *
 * $ echo 0 > /sys/kernel/livepatch/livepatch_sample/enabled
 * $ cat /proc/cmdline
 * <your cmdline>
 */

#include <linux/seq_file.h>
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

static unsigned long t_init, t_pre_patch, t_post_patch, t_pre_unpatch, t_post_unpatch;
module_param(t_init, ulong, 0444);
module_param(t_pre_patch, ulong, 0444);
module_param(t_post_patch, ulong, 0444);
module_param(t_pre_unpatch, ulong, 0444);
module_param(t_post_unpatch, ulong, 0444);

static int pre_patch(struct klp_object *obj)
{
	t_pre_patch = ktime_get_ns();
	return 0;
}

static void post_patch(struct klp_object *obj)
{
	t_post_patch = ktime_get_ns();
}

static void pre_unpatch(struct klp_object *obj)
{
	t_pre_unpatch = ktime_get_ns();
}

static void post_unpatch(struct klp_object *obj)
{
	t_post_unpatch = ktime_get_ns();
}

static struct klp_object objs[] = {
	{
		/* name being NULL means vmlinux */
		.funcs = funcs,
		.callbacks = {
			.pre_patch = pre_patch,
			.post_patch = post_patch,
			.pre_unpatch = pre_unpatch,
			.post_unpatch = post_unpatch,
		},
	}, { }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int livepatch_init(void)
{
	t_init = ktime_get_ns();
	return klp_enable_patch(&patch);
}

static void livepatch_exit(void)
{
}

module_init(livepatch_init);
module_exit(livepatch_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
