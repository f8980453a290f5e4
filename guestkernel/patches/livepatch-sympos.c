// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * livepatch-sympos.c - patches the second of the two static klp_dup_fn()
 * (old_sympos = 2: the higher address of the two) and reaches the original
 * local symbol through Linux's .klp.sym.vmlinux.klp_dup_fn,2 form.
 *
 * The new function calls the original body past its fentry NOP (a call to
 * the entry would be redirected back here) and adds 1000, so a test sees
 * both that the patch runs and that the local symbol resolved to the
 * right copy.
 */
#include "livepatch.h"
#include "kapi.h"

extern int klp_dup_fn_2(int) __asm__(KLP_SYM("vmlinux", "klp_dup_fn", "2"));

static int livepatch_klp_dup_fn(int x)
{
	int (*orig)(int) = (int (*)(int))((char *)klp_dup_fn_2 + KLP_FENTRY_SIZE);

	return orig(x) + 1000;
}

static struct klp_func funcs[] = {
	{
		.old_name = "klp_dup_fn",
		.new_func = livepatch_klp_dup_fn,
		.old_sympos = 2,
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

KLP_MODULE_NAME("livepatch_sympos");
KLP_PATCH(patch);
