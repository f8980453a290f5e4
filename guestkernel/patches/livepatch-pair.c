// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * livepatch-pair.c - patches the consistency-checker pair: klp_pair_a() and
 * klp_pair_b() both become version 2. The new A calls klp_pair_b through the
 * kernel symbol (not its own copy), so the call goes through B's redirect:
 * a consistent state reads (2 << 16) | 2; a torn one (new A, old B or the
 * reverse) reads a mixed value.
 */
#include "livepatch.h"
#include "kapi.h"

#define PAIR_VERSION 2UL

static unsigned long livepatch_klp_pair_b(void)
{
	return PAIR_VERSION;
}

static unsigned long livepatch_klp_pair_a(void)
{
	return (PAIR_VERSION << 16) | klp_pair_b();
}

static struct klp_func funcs[] = {
	{
		.old_name = "klp_pair_a",
		.new_func = livepatch_klp_pair_a,
	}, {
		.old_name = "klp_pair_b",
		.new_func = livepatch_klp_pair_b,
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

KLP_MODULE_NAME("livepatch_pair");
KLP_PATCH(patch);
