// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * livepatch-shadow-fix2.c - Shadow variables, livepatch demo
 *
 * The klp-kvm port of Linux's samples/livepatch/livepatch-shadow-fix2.c
 * (Joe Lawrence).
 *
 * Purpose
 * -------
 *
 * Adds functionality to the shadow_mod demo's in-flight data structures
 * through a shadow variable. The livepatch patches a routine that
 * periodically inspects data structures, incrementing a
 * per-data-structure counter, creating the counter if needed.
 *
 * Differences from the Linux sample: as livepatch-shadow-fix1.c's (the
 * module exit's klp_shadow_free_all() is the post_unpatch callback).
 *
 * Usage
 * -----
 *
 * This patch is not intended to be standalone: it goes on top of
 * livepatch-shadow-fix1. See the top of kernel/shadow_mod.c and
 * docs/shadow-variables.md.
 */
#define pr_fmt(fmt) "livepatch_shadow_fix2: " fmt

#include "livepatch.h"
#include "kapi.h"
#include "shadow_mod.h"

static bool livepatch_fix2_dummy_check(struct dummy *d, unsigned long jiffies)
{
	int *shadow_count;

	/*
	 * Patch: handle in-flight dummy structures, if they do not
	 * already have a SV_COUNTER shadow variable, then attach a
	 * new one.
	 */
	shadow_count = klp_shadow_get_or_alloc(d, SV_COUNTER, sizeof(*shadow_count), GFP_NOWAIT, NULL, NULL);
	if (shadow_count)
		*shadow_count += 1;

	return time_after(jiffies, d->jiffies_expire);
}

static void livepatch_fix2_dummy_leak_dtor(void *obj, void *shadow_data)
{
	void *d = obj;
	void **shadow_leak = shadow_data;

	kfree(*shadow_leak);
	pr_info("%s: dummy @ %p, prevented leak @ %p\n", __func__, d, *shadow_leak);
}

static void livepatch_fix2_dummy_free(struct dummy *d)
{
	void **shadow_leak;
	int *shadow_count;

	/* Patch: copy the memory leak patch from the fix1 module. */
	shadow_leak = klp_shadow_get(d, SV_LEAK);
	if (shadow_leak)
		klp_shadow_free(d, SV_LEAK, livepatch_fix2_dummy_leak_dtor);
	else
		pr_info("%s: dummy @ %p leaked!\n", __func__, d);

	/*
	 * Patch: fetch the SV_COUNTER shadow variable and display
	 * the final count. Detach the shadow variable.
	 */
	shadow_count = klp_shadow_get(d, SV_COUNTER);
	if (shadow_count) {
		pr_info("%s: dummy @ %p, check counter = %d\n", __func__, d, *shadow_count);
		klp_shadow_free(d, SV_COUNTER, NULL);
	}

	kfree(d);
}

/* Linux's livepatch_shadow_fix2_exit(): cleanup any existing SV_COUNTER shadow variables */
static void livepatch_shadow_fix2_post_unpatch(struct klp_object *obj)
{
	klp_shadow_free_all(SV_COUNTER, NULL);
}

static struct klp_func funcs[] = {
	{
		.old_name = "dummy_check",
		.new_func = livepatch_fix2_dummy_check,
	},
	{
		.old_name = "dummy_free",
		.new_func = livepatch_fix2_dummy_free,
	}, { }
};

static struct klp_object objs[] = {
	{
		/* name being NULL means vmlinux (Linux: "livepatch_shadow_mod") */
		.funcs = funcs,
		.callbacks = {
			.post_unpatch = livepatch_shadow_fix2_post_unpatch,
		},
	}, { }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

KLP_MODULE_NAME("livepatch_shadow_fix2");
KLP_PATCH(patch);
