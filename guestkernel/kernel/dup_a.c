// SPDX-License-Identifier: GPL-2.0
/*
 * dup_a.c and dup_b.c each define a local klp_dup_fn: the same name twice
 * in vmlinux, told apart by sympos (1 = this one, the first in link order).
 */
#include "kernel.h"

static __patchable int klp_dup_fn(int x) { return x + 1000; }

int klp_dup_a_value(int x) { return klp_dup_fn(x); }
