// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * bad-sympos.c - deliberately bad: old_sympos 3 of klp_dup_fn, which exists
 * only twice.
 */
#include "livepatch.h"
#include "kapi.h"

static int bad_dup(int x)
{
	return x;
}

static struct klp_func funcs[] = {
	{ .old_name = "klp_dup_fn", .new_func = bad_dup, .old_sympos = 3, }, { }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

KLP_MODULE_NAME("bad_sympos");
KLP_PATCH(patch);
