// SPDX-License-Identifier: GPL-2.0
/* dup_b.c: the second local klp_dup_fn (sympos 2), see dup_a.c. */
#include "kernel.h"

static __patchable int klp_dup_fn(int x) { return x + 2000; }

int klp_dup_b_value(int x) { return klp_dup_fn(x); }
