// SPDX-License-Identifier: GPL-2.0
/*
 * test_klp_state.c - a patch that modifies a system state, and says so
 *
 * The klp-kvm port of Linux's lib/livepatch/test_klp_state.c (Petr
 * Mladek; tools/testing/selftests/livepatch/test-state.sh runs it).
 *
 * The system state is console_loglevel: post_patch raises it to
 * CONSOLE_LOGLEVEL_MOTORMOUTH (every message on the console), pre_unpatch
 * puts back the value it found. The patch declares that it does so as
 * state CONSOLE_LOGLEVEL_STATE, version 1, and keeps the saved value in the
 * state's data, allocated by pre_patch and freed by post_unpatch.
 *
 * Version 1 cannot hand the change over: it has no idea of another patch.
 * So a cumulative (atomic replace) patch that knows the state only in
 * version 1 may not replace test_klp_state2 (version 2): the host refuses
 * to enable it, EINVAL, as Linux's klp_is_patch_compatible() does.
 *
 * Differences from Linux's module: the object is always vmlinux (the guest
 * has no modules, so callback_info has no module state to print); no
 * function is patched (Linux's no_funcs); KBUILD_MODNAME comes from the
 * patches' Makefile; KLP_PATCH() in place of module_init() +
 * klp_enable_patch(). docs/states.md tells the story.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include "livepatch.h"
#include "kapi.h"

#define EINVAL 22
#define ENOMEM 12

#define CONSOLE_LOGLEVEL_STATE 1
/* Version 1: the change cannot be taken over by another patch. */
#define CONSOLE_LOGLEVEL_STATE_VERSION 1

static struct klp_patch patch;

static void callback_info(const char *callback, struct klp_object *obj)
{
	pr_info("%s: %s\n", callback, obj->name ? obj->name : "vmlinux");
}

static int allocate_loglevel_state(void)
{
	struct klp_state *state = klp_get_state(&patch, CONSOLE_LOGLEVEL_STATE);

	if (!state)
		return -EINVAL;
	state->data = kzalloc(sizeof(console_loglevel), GFP_KERNEL);
	if (!state->data)
		return -ENOMEM;
	pr_info("%s: allocating space to store console_loglevel\n", __func__);
	return 0;
}

static void fix_console_loglevel(void)
{
	struct klp_state *state = klp_get_state(&patch, CONSOLE_LOGLEVEL_STATE);

	if (!state)
		return;
	pr_info("%s: fixing console_loglevel\n", __func__);
	*(int *)state->data = console_loglevel;
	console_loglevel = CONSOLE_LOGLEVEL_MOTORMOUTH;
}

static void restore_console_loglevel(void)
{
	struct klp_state *state = klp_get_state(&patch, CONSOLE_LOGLEVEL_STATE);

	if (!state)
		return;
	pr_info("%s: restoring console_loglevel\n", __func__);
	console_loglevel = *(int *)state->data;
}

static void free_loglevel_state(void)
{
	struct klp_state *state = klp_get_state(&patch, CONSOLE_LOGLEVEL_STATE);

	if (!state)
		return;
	pr_info("%s: freeing space for the stored console_loglevel\n", __func__);
	kfree(state->data);
}

/* enabling: before the switch */
static int pre_patch_callback(struct klp_object *obj)
{
	callback_info(__func__, obj);
	return allocate_loglevel_state();
}

/* enabling: after the switch */
static void post_patch_callback(struct klp_object *obj)
{
	callback_info(__func__, obj);
	fix_console_loglevel();
}

/* disabling: before the switch */
static void pre_unpatch_callback(struct klp_object *obj)
{
	callback_info(__func__, obj);
	restore_console_loglevel();
}

/* disabling: after the switch */
static void post_unpatch_callback(struct klp_object *obj)
{
	callback_info(__func__, obj);
	free_loglevel_state();
}

static struct klp_func no_funcs[] = {
	{ }
};

static struct klp_object objs[] = {
	{
		.name = NULL, /* vmlinux */
		.funcs = no_funcs,
		.callbacks = {
			.pre_patch = pre_patch_callback,
			.post_patch = post_patch_callback,
			.pre_unpatch = pre_unpatch_callback,
			.post_unpatch = post_unpatch_callback,
		},
	}, { }
};

static struct klp_state states[] = {
	{
		.id = CONSOLE_LOGLEVEL_STATE,
		.version = CONSOLE_LOGLEVEL_STATE_VERSION,
	}, { }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	.states = states,
	.replace = true,
};

KLP_MODULE_NAME(KBUILD_MODNAME);
KLP_PATCH(patch);
