// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * bad-ambiguous.c - deliberately bad: klp_dup_fn exists twice (two static
 * functions in two files) and old_sympos is 0 ("the only one"): ambiguous.
 */
#include "livepatch.h"
#include "kapi.h"

static int bad_dup(int x)
{
	return x;
}

static struct klp_func funcs[] = {
	{ .old_name = "klp_dup_fn", .new_func = bad_dup, }, { }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

KLP_MODULE_NAME("bad_ambiguous");
KLP_PATCH(patch);
