// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * livepatch-park.c - patches klp_park_fn(), the function a guest task sleeps
 * in for the stalled-transition test: while any task is parked inside the
 * old klp_park_fn, enabling this patch must not complete (EBUSY naming that
 * task and klp_park_fn) unless forced. The new version returns at once.
 */
#include "livepatch.h"
#include "kapi.h"

static void livepatch_klp_park_fn(void)
{
}

static struct klp_func funcs[] = {
	{
		.old_name = "klp_park_fn",
		.new_func = livepatch_klp_park_fn,
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

KLP_MODULE_NAME("livepatch_park");
KLP_PATCH(patch);
