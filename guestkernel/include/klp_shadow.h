/* SPDX-License-Identifier: GPL-2.0 */
/*
 * klp_shadow.h: shadow variables, Linux's API (include/linux/livepatch.h,
 * kernel/livepatch/shadow.c) for klp-kvm patches. livepatch.h includes it;
 * the guest kernel implements it in kernel/shadow.c. docs/shadow-variables.md
 * says when to use them.
 *
 * A shadow variable is data a patch attaches to an existing object (any
 * address) without changing the object's layout: it is found by the pair
 * <obj, id>, where id is a number the patch chooses (one per kind of data,
 * e.g. SV_LEAK = 1). The data lives in the guest kernel's heap, not in the
 * patch, so it outlives the patch that created it: a later patch finds it
 * by the same <obj, id>, and it is freed only by klp_shadow_free() or
 * klp_shadow_free_all() (typically from a post_unpatch callback).
 *
 * Semantics are Linux's:
 *  - klp_shadow_get(obj, id): the data, or NULL.
 *  - klp_shadow_alloc(obj, id, size, gfp, ctor, ctor_data): a new variable
 *    of size zeroed bytes, then ctor(obj, data, ctor_data) if ctor is not
 *    NULL; NULL if the allocation fails (-ENOMEM), if ctor returns non-zero
 *    (the error is logged, nothing is attached), or if <obj, id> already
 *    exists (-EEXIST: WARN, and the existing one is left alone).
 *  - klp_shadow_get_or_alloc(...): the existing variable if there is one
 *    (ctor not called), else as klp_shadow_alloc(); NULL only on failure.
 *  - klp_shadow_free(obj, id, dtor): detach <obj, id>, call dtor(obj, data)
 *    if dtor is not NULL, free it; nothing if there is no such variable.
 *  - klp_shadow_free_all(id, dtor): the same for every <*, id>.
 *
 * Concurrency, as in Linux: one spinlock, taken with interrupts off, guards
 * the hash table; the memory of a new variable is allocated outside it and
 * the table searched again under it, so two racing get_or_alloc calls of
 * the same <obj, id> return the same variable and ctor runs once. ctor and
 * dtor run under that lock (atomic context: they must not sleep, and may
 * call klp_shadow_get but no other shadow function, which would WARN and do
 * nothing, where Linux would deadlock). Access to the data itself is the
 * caller's to serialize.
 */
#ifndef KLP_SHADOW_H
#define KLP_SHADOW_H

#ifndef __ASSEMBLER__

#include <stddef.h>

typedef unsigned int gfp_t; /* as kernel_api.h (a repeated typedef is valid C11) */

typedef int (*klp_shadow_ctor_t)(void *obj, void *shadow_data, void *ctor_data);
typedef void (*klp_shadow_dtor_t)(void *obj, void *shadow_data);

void *klp_shadow_get(void *obj, unsigned long id);
void *klp_shadow_alloc(void *obj, unsigned long id, size_t size, gfp_t gfp_flags, klp_shadow_ctor_t ctor,
		       void *ctor_data);
void *klp_shadow_get_or_alloc(void *obj, unsigned long id, size_t size, gfp_t gfp_flags, klp_shadow_ctor_t ctor,
			      void *ctor_data);
void klp_shadow_free(void *obj, unsigned long id, klp_shadow_dtor_t dtor);
void klp_shadow_free_all(unsigned long id, klp_shadow_dtor_t dtor);

#endif /* __ASSEMBLER__ */
#endif /* KLP_SHADOW_H */
