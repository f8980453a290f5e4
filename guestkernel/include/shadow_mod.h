/* SPDX-License-Identifier: GPL-2.0 */
/*
 * shadow_mod.h: the shadow-variable demo (kernel/shadow_mod.c), the guest
 * kernel's port of Linux's samples/livepatch/livepatch-shadow-mod.c, and what
 * its patches need of it (patches/livepatch-shadow-fix1.c, -fix2.c). Linux's
 * fix modules copy struct dummy and the periods, since the module they patch
 * has no header; here the patches are built from the kernel's own tree and
 * include this one, so the layout they assume cannot drift.
 *
 * Linux's periods are seconds; here milliseconds, 20 times shorter, with the
 * same ratios, so that a test sees the whole story in a few seconds.
 */
#ifndef KLP_SHADOW_MOD_H
#define KLP_SHADOW_MOD_H

#include <stdbool.h>

/* Allocate new dummies every ALLOC_PERIOD ms */
#define ALLOC_PERIOD 50
/* Check for expired dummies after a few new ones have been allocated */
#define CLEANUP_PERIOD (3 * ALLOC_PERIOD)
/* Dummies expire after a few cleanup instances */
#define EXPIRE_PERIOD (4 * CLEANUP_PERIOD)

/* Shadow variable ids of the fix patches (Linux's "Shadow variable enums") */
#define SV_LEAK 1
#define SV_COUNTER 2

struct list_head {
	struct list_head *next, *prev;
};

struct dummy {
	struct list_head list;
	unsigned long jiffies_expire;
};

/*
 * The functions the fixes replace. The demo thread calls them with
 * dummy_list_lock held (interrupts off): they must not sleep.
 */
struct dummy *dummy_alloc(void);
void dummy_free(struct dummy *d);
bool dummy_check(struct dummy *d, unsigned long jiffies);

#endif /* KLP_SHADOW_MOD_H */
