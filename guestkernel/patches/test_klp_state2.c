// SPDX-License-Identifier: GPL-2.0
/*
 * test_klp_state2.c - a cumulative patch that takes over a system state
 *
 * The klp-kvm port of Linux's lib/livepatch/test_klp_state2.c (Petr
 * Mladek; tools/testing/selftests/livepatch/test-state.sh runs it).
 *
 * The same change as test_klp_state.c (console_loglevel raised to
 * CONSOLE_LOGLEVEL_MOTORMOUTH, state CONSOLE_LOGLEVEL_STATE), in version 2,
 * which can migrate: when an installed patch already made the change
 * (klp_get_prev_state() finds its state), this one does not allocate nor
 * change anything but takes the saved value over, by copying the old
 * state's data pointer in post_patch, while the patch it replaces still
 * holds it. Disabled with nothing below it, it restores and frees as
 * test_klp_state does.
 *
 * test_klp_state3.c is this file again, under another name: the next
 * cumulative patch with the same fix.
 *
 * Differences from Linux's module: as in test_klp_state.c.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include "livepatch.h"
#include "kapi.h"

#define EINVAL 22
#define ENOMEM 12

#define CONSOLE_LOGLEVEL_STATE 1
/* Version 2: the change can be taken over (migrated). */
#define CONSOLE_LOGLEVEL_STATE_VERSION 2

static struct klp_patch patch;

static void callback_info(const char *callback, struct klp_object *obj)
{
	pr_info("%s: %s\n", callback, obj->name ? obj->name : "vmlinux");
}

static int allocate_loglevel_state(void)
{
	struct klp_state *state;

	if (klp_get_prev_state(CONSOLE_LOGLEVEL_STATE)) {
		pr_info("%s: space to store console_loglevel already allocated\n", __func__);
		return 0;
	}
	state = klp_get_state(&patch, CONSOLE_LOGLEVEL_STATE);
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
	struct klp_state *prev;

	if (!state)
		return;
	prev = klp_get_prev_state(CONSOLE_LOGLEVEL_STATE);
	if (prev) {
		pr_info("%s: taking over the console_loglevel change\n", __func__);
		state->data = prev->data;
		return;
	}
	pr_info("%s: fixing console_loglevel\n", __func__);
	*(int *)state->data = console_loglevel;
	console_loglevel = CONSOLE_LOGLEVEL_MOTORMOUTH;
}

static void restore_console_loglevel(void)
{
	struct klp_state *state;

	if (klp_get_prev_state(CONSOLE_LOGLEVEL_STATE)) {
		pr_info("%s: passing the console_loglevel change back to the old livepatch\n", __func__);
		return;
	}
	state = klp_get_state(&patch, CONSOLE_LOGLEVEL_STATE);
	if (!state)
		return;
	pr_info("%s: restoring console_loglevel\n", __func__);
	console_loglevel = *(int *)state->data;
}

static void free_loglevel_state(void)
{
	struct klp_state *state;

	if (klp_get_prev_state(CONSOLE_LOGLEVEL_STATE)) {
		pr_info("%s: keeping space to store console_loglevel\n", __func__);
		return;
	}
	state = klp_get_state(&patch, CONSOLE_LOGLEVEL_STATE);
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
