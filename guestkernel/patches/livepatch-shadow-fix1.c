// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * livepatch-shadow-fix1.c - Shadow variables, livepatch demo
 *
 * The klp-kvm port of Linux's samples/livepatch/livepatch-shadow-fix1.c
 * (Joe Lawrence).
 *
 * Purpose
 * -------
 *
 * Fixes the memory leak introduced in the guest kernel's shadow_mod demo
 * (kernel/shadow_mod.c, Linux's livepatch-shadow-mod.c) through the use
 * of a shadow variable. This fix demonstrates the "extending" of
 * short-lived data structures by patching its allocation and release
 * functions.
 *
 * Differences from the Linux sample: struct dummy, the periods and the
 * SV_* ids come from the demo's header (shadow_mod.h) instead of copies;
 * the object is vmlinux (the demo is part of the guest kernel, which has no
 * modules); the module exit's klp_shadow_free_all() is the post_unpatch
 * callback, which runs once the patch is disabled, as a livepatch module's
 * exit can only run then; KLP_PATCH() in place of module_init() +
 * klp_enable_patch().
 *
 * Usage
 * -----
 *
 * This patch is not intended to be standalone. See the top of
 * kernel/shadow_mod.c and docs/shadow-variables.md.
 */
#define pr_fmt(fmt) "livepatch_shadow_fix1: " fmt

#include "livepatch.h"
#include "kapi.h"
#include "shadow_mod.h"

#define EINVAL 22

/*
 * The constructor makes more sense together with klp_shadow_get_or_alloc().
 * In this example, it would be safe to assign the pointer also to the shadow
 * variable returned by klp_shadow_alloc(). But we wanted to show the more
 * complicated use of the API.
 */
static int shadow_leak_ctor(void *obj, void *shadow_data, void *ctor_data)
{
	int **shadow_leak = shadow_data;
	int **leak = ctor_data;

	if (!ctor_data)
		return -EINVAL;

	*shadow_leak = *leak;
	return 0;
}

static struct dummy *livepatch_fix1_dummy_alloc(void)
{
	struct dummy *d;
	int *leak;
	int **shadow_leak;

	d = kzalloc(sizeof(*d), GFP_KERNEL);
	if (!d)
		return NULL;

	d->jiffies_expire = jiffies + msecs_to_jiffies(EXPIRE_PERIOD);

	/*
	 * Patch: save the extra memory location into a SV_LEAK shadow
	 * variable. A patched dummy_free routine can later fetch this
	 * pointer to handle resource release.
	 */
	leak = kzalloc(sizeof(*leak), GFP_KERNEL);
	if (!leak)
		goto err_leak;

	shadow_leak = klp_shadow_alloc(d, SV_LEAK, sizeof(leak), GFP_KERNEL, shadow_leak_ctor, &leak);
	if (!shadow_leak) {
		pr_err("%s: failed to allocate shadow variable for the leaking pointer: dummy @ %p, leak @ %p\n",
		       __func__, d, leak);
		goto err_shadow;
	}

	pr_info("%s: dummy @ %p, expires @ %lx\n", __func__, d, d->jiffies_expire);

	return d;

err_shadow:
	kfree(leak);
err_leak:
	kfree(d);
	return NULL;
}

static void livepatch_fix1_dummy_leak_dtor(void *obj, void *shadow_data)
{
	void *d = obj;
	int **shadow_leak = shadow_data;

	kfree(*shadow_leak);
	pr_info("%s: dummy @ %p, prevented leak @ %p\n", __func__, d, *shadow_leak);
}

static void livepatch_fix1_dummy_free(struct dummy *d)
{
	int **shadow_leak;

	/*
	 * Patch: fetch the saved SV_LEAK shadow variable, detach and
	 * free it. Note: handle cases where this shadow variable does
	 * not exist (ie, dummy structures allocated before this livepatch
	 * was loaded.)
	 */
	shadow_leak = klp_shadow_get(d, SV_LEAK);
	if (shadow_leak)
		klp_shadow_free(d, SV_LEAK, livepatch_fix1_dummy_leak_dtor);
	else
		pr_info("%s: dummy @ %p leaked!\n", __func__, d);

	kfree(d);
}

/* Linux's livepatch_shadow_fix1_exit(): cleanup any existing SV_LEAK shadow variables */
static void livepatch_shadow_fix1_post_unpatch(struct klp_object *obj)
{
	klp_shadow_free_all(SV_LEAK, livepatch_fix1_dummy_leak_dtor);
}

static struct klp_func funcs[] = {
	{
		.old_name = "dummy_alloc",
		.new_func = livepatch_fix1_dummy_alloc,
	},
	{
		.old_name = "dummy_free",
		.new_func = livepatch_fix1_dummy_free,
	}, { }
};

static struct klp_object objs[] = {
	{
		/* name being NULL means vmlinux (Linux: "livepatch_shadow_mod") */
		.funcs = funcs,
		.callbacks = {
			.post_unpatch = livepatch_shadow_fix1_post_unpatch,
		},
	}, { }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

KLP_MODULE_NAME("livepatch_shadow_fix1");
KLP_PATCH(patch);
