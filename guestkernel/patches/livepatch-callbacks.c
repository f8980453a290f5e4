// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * livepatch-callbacks.c - the vmlinux object's pre/post (un)patch callbacks
 * (Linux's samples/livepatch/livepatch-callbacks-demo.c, reduced). Each
 * callback bumps its own counter and the kernel's klp_callback_counter (shown
 * by /proc/klp_selftest); the replacement cmdline_proc_show() prints the
 * patch's counters, so "cat /proc/cmdline" shows which callbacks ran.
 * pre_patch refuses (-EINVAL) once klp_callbacks_refuse is set non-zero,
 * which a test can poke to check that a failing pre_patch aborts enabling.
 */
#include "livepatch.h"
#include "kapi.h"

#define EINVAL 22

extern volatile unsigned long klp_callback_counter;

/* Not static: tests find the counters by symbol in the patch image. */
int klp_callbacks_refuse;
unsigned long klp_callbacks_counts[4];

static int pre_patch_callback(struct klp_object *obj)
{
	klp_callbacks_counts[0]++;
	klp_callback_counter++;
	return klp_callbacks_refuse ? -EINVAL : 0;
}

static void post_patch_callback(struct klp_object *obj)
{
	klp_callbacks_counts[1]++;
	klp_callback_counter++;
}

static void pre_unpatch_callback(struct klp_object *obj)
{
	klp_callbacks_counts[2]++;
	klp_callback_counter++;
}

static void post_unpatch_callback(struct klp_object *obj)
{
	klp_callbacks_counts[3]++;
	klp_callback_counter++;
}

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "callbacks: pre_patch=%lu post_patch=%lu pre_unpatch=%lu post_unpatch=%lu\n",
		   klp_callbacks_counts[0], klp_callbacks_counts[1],
		   klp_callbacks_counts[2], klp_callbacks_counts[3]);
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
		.callbacks = {
			.pre_patch = pre_patch_callback,
			.post_patch = post_patch_callback,
			.pre_unpatch = pre_unpatch_callback,
			.post_unpatch = post_unpatch_callback,
		},
	}, { }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

KLP_MODULE_NAME("livepatch_callbacks");
KLP_PATCH(patch);
