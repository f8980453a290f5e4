// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * bad-notpatchable.c - deliberately bad: old_name is the kernel's
 * klp_guest_abi, a data object with no fentry site. The patch must be
 * refused as not patchable, with the reason.
 */
#include "livepatch.h"
#include "kapi.h"

static int bad_fn(void)
{
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "klp_guest_abi", .new_func = bad_fn, }, { }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

KLP_MODULE_NAME("bad_notpatchable");
KLP_PATCH(patch);
