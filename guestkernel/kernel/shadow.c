// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * shadow.c: shadow variables, after Linux's kernel/livepatch/shadow.c (Josh
 * Poimboeuf, Seth Jennings, Joe Lawrence). The API and its semantics are
 * described in include/klp_shadow.h; patches call these functions as
 * ordinary kernel symbols (their relocations are resolved against vmlinux).
 *
 * The same structure as Linux: a hash table of 2^12 buckets keyed by the
 * object's address, one spinlock (klp_shadow_lock, taken with interrupts
 * off) over it, a new variable allocated outside the lock and the table
 * searched again under it before it is attached, ctor and dtor called under
 * the lock. Where Linux reads the table under RCU, klp_shadow_get takes the
 * lock here (the guest has no RCU), and a freed variable is kfree()d at
 * once where Linux waits for a grace period: a caller must not use data it
 * got from klp_shadow_get after some other path freed it, which Linux does
 * not allow either. klp_shadow_get called from a ctor or dtor (this CPU
 * already holds the lock) searches without taking it again.
 *
 * The data lives in the kernel heap (kmalloc), so it outlives the patch that
 * created it; only klp_shadow_free and klp_shadow_free_all release it.
 */
#include "kernel.h"
#include "klp_shadow.h"

#define GOLDEN_RATIO_64 0x61c8864680b583ebUL

/*
 * struct klp_shadow - a shadow variable
 * @next:	next in its hash bucket
 * @obj:	pointer to the parent object
 * @id:		data identifier
 * @data:	the data (size bytes, 16-byte aligned)
 */
struct klp_shadow {
	struct klp_shadow *next;
	void *obj;
	unsigned long id;
	char data[] __attribute__((aligned(16)));
};

static struct klp_shadow *klp_shadow_hash[KLP_SHADOW_BUCKETS];
_Static_assert(KLP_SHADOW_BUCKETS == 1 << KLP_SHADOW_HASH_BITS, "buckets");

/* klp_shadow_lock guards klp_shadow_hash, the variables in it and the counts. */
static spinlock_t klp_shadow_lock = SPINLOCK_INIT;
/* the CPU holding klp_shadow_lock, -1 if none: a ctor or dtor calling back in */
static volatile int klp_shadow_owner = -1;
static struct klp_shadow_counts counts;
void (*volatile klp_shadow_race_hook)(void *obj, unsigned long id);

/* hash_64 of Linux's hash_min(): the high bits of obj times the golden ratio */
static inline unsigned int klp_shadow_bucket(const void *obj)
{
	return (unsigned int)(((uint64_t)(uintptr_t)obj * GOLDEN_RATIO_64) >> (64 - KLP_SHADOW_HASH_BITS));
}

/* klp_shadow_bucket_of: obj's bucket (the self-test picks objects that share one) */
unsigned int klp_shadow_bucket_of(const void *obj) { return klp_shadow_bucket(obj); }

static inline int klp_shadow_match(const struct klp_shadow *shadow, const void *obj, unsigned long id)
{
	return shadow->obj == obj && shadow->id == id;
}

static uint64_t klp_shadow_lock_irqsave(void)
{
	uint64_t flags = spin_lock_irqsave(&klp_shadow_lock);
	WRITE_ONCE(klp_shadow_owner, (int)smp_processor_id());
	return flags;
}

static void klp_shadow_unlock_irqrestore(uint64_t flags)
{
	WRITE_ONCE(klp_shadow_owner, -1);
	spin_unlock_irqrestore(&klp_shadow_lock, flags);
}

/*
 * klp_shadow_nested: this CPU holds klp_shadow_lock, so the caller is a ctor
 * or dtor running under it. Only the holder writes its own CPU number (with
 * interrupts off until it writes -1 again), so reading this CPU's number
 * means exactly that.
 */
static int klp_shadow_nested(void) { return READ_ONCE(klp_shadow_owner) == (int)smp_processor_id(); }

/* klp_shadow_find: <obj, id>'s variable or NULL; klp_shadow_lock held */
static struct klp_shadow *klp_shadow_find(void *obj, unsigned long id)
{
	for (struct klp_shadow *s = klp_shadow_hash[klp_shadow_bucket(obj)]; s; s = s->next)
		if (klp_shadow_match(s, obj, id))
			return s;
	return NULL;
}

/**
 * klp_shadow_get() - retrieve a shadow variable data pointer
 * @obj:	pointer to parent object
 * @id:		data identifier
 *
 * Return: the shadow variable data element, NULL on failure.
 */
void *klp_shadow_get(void *obj, unsigned long id)
{
	struct klp_shadow *s;
	if (klp_shadow_nested())
		return (s = klp_shadow_find(obj, id)) ? s->data : NULL;
	uint64_t flags = klp_shadow_lock_irqsave();
	s = klp_shadow_find(obj, id);
	void *data = s ? s->data : NULL;
	klp_shadow_unlock_irqrestore(flags);
	return data;
}

static void *__klp_shadow_get_or_alloc(void *obj, unsigned long id, size_t size, gfp_t gfp_flags,
				       klp_shadow_ctor_t ctor, void *ctor_data, int warn_on_exist)
{
	struct klp_shadow *new_shadow, *s;
	void *shadow_data;
	uint64_t flags;

	if (klp_shadow_nested()) {
		WARN(1, "shadow variable <%p, %lx> allocated from a shadow constructor or destructor\n", obj, id);
		return NULL;
	}

	/* Check if the shadow variable already exists */
	shadow_data = klp_shadow_get(obj, id);
	if (shadow_data)
		goto exists;

	/*
	 * Allocate a new shadow variable. Fill it with zeroes by default.
	 * More complex setting can be done by @ctor function. But it is
	 * called only when the buffer is really used (under klp_shadow_lock).
	 */
	if (size > (size_t)-1 - sizeof(*new_shadow))
		new_shadow = NULL;
	else
		new_shadow = kzalloc(size + sizeof(*new_shadow), gfp_flags);
	if (!new_shadow) {
		__atomic_fetch_add(&counts.nomem, 1, __ATOMIC_RELAXED);
		return NULL;
	}

	/* the self-test's stand-in for another CPU attaching <obj, id> right now */
	if (unlikely(klp_shadow_race_hook))
		klp_shadow_race_hook(obj, id);

	/* Look for <obj, id> again under the lock */
	flags = klp_shadow_lock_irqsave();
	s = klp_shadow_find(obj, id);
	if (unlikely(s)) {
		/* Shadow variable was found, throw away speculative allocation. */
		shadow_data = s->data;
		counts.races++;
		klp_shadow_unlock_irqrestore(flags);
		kfree(new_shadow);
		goto exists;
	}

	new_shadow->obj = obj;
	new_shadow->id = id;

	if (ctor) {
		int err = ctor(obj, new_shadow->data, ctor_data);
		if (err) {
			counts.ctor_failures++;
			klp_shadow_unlock_irqrestore(flags);
			kfree(new_shadow);
			printk("livepatch: Failed to construct shadow variable <%p, %lx> (%d)\n", obj, id, err);
			return NULL;
		}
	}

	/* No <obj, id> found, so attach the newly allocated one */
	unsigned int b = klp_shadow_bucket(obj);
	new_shadow->next = klp_shadow_hash[b];
	klp_shadow_hash[b] = new_shadow;
	counts.live++;
	counts.allocs++;
	klp_shadow_unlock_irqrestore(flags);

	return new_shadow->data;

exists:
	if (warn_on_exist) {
		__atomic_fetch_add(&counts.duplicates, 1, __ATOMIC_RELAXED);
		WARN(1, "Duplicate shadow variable <%p, %lx>\n", obj, id);
		return NULL;
	}

	return shadow_data;
}

/**
 * klp_shadow_alloc() - allocate and add a new shadow variable
 * @obj:	pointer to parent object
 * @id:		data identifier
 * @size:	size of attached data
 * @gfp_flags:	GFP mask for allocation
 * @ctor:	custom constructor to initialize the shadow data (optional)
 * @ctor_data:	pointer to any data needed by @ctor (optional)
 *
 * Allocates @size bytes for new shadow variable data using @gfp_flags.
 * The data are zeroed by default. They are further initialized by @ctor
 * function if it is not NULL. The new shadow variable is then added
 * to the global hashtable.
 *
 * If an existing <obj, id> shadow variable can be found, this routine will
 * issue a WARN, exit early and return NULL.
 *
 * This function guarantees that the constructor function is called only when
 * the variable did not exist before. The cost is that @ctor is called
 * in atomic context under a spin lock.
 *
 * Return: the shadow variable data element, NULL on duplicate or
 * failure.
 */
void *klp_shadow_alloc(void *obj, unsigned long id, size_t size, gfp_t gfp_flags, klp_shadow_ctor_t ctor,
		       void *ctor_data)
{
	return __klp_shadow_get_or_alloc(obj, id, size, gfp_flags, ctor, ctor_data, 1);
}

/**
 * klp_shadow_get_or_alloc() - get existing or allocate a new shadow variable
 * @obj:	pointer to parent object
 * @id:		data identifier
 * @size:	size of attached data
 * @gfp_flags:	GFP mask for allocation
 * @ctor:	custom constructor to initialize the shadow data (optional)
 * @ctor_data:	pointer to any data needed by @ctor (optional)
 *
 * Returns a pointer to existing shadow data if an <obj, id> shadow
 * variable is already present. Otherwise, it creates a new shadow
 * variable like klp_shadow_alloc().
 *
 * This function guarantees that only one shadow variable exists with the given
 * @id for the given @obj. It also guarantees that the constructor function
 * will be called only when the variable did not exist before. The cost is
 * that @ctor is called in atomic context under a spin lock.
 *
 * Return: the shadow variable data element, NULL on failure.
 */
void *klp_shadow_get_or_alloc(void *obj, unsigned long id, size_t size, gfp_t gfp_flags, klp_shadow_ctor_t ctor,
			      void *ctor_data)
{
	return __klp_shadow_get_or_alloc(obj, id, size, gfp_flags, ctor, ctor_data, 0);
}

/* klp_shadow_free_struct: unlink *pp, call dtor, free it; klp_shadow_lock held */
static void klp_shadow_free_struct(struct klp_shadow **pp, klp_shadow_dtor_t dtor)
{
	struct klp_shadow *shadow = *pp;
	*pp = shadow->next;
	counts.live--;
	counts.frees++;
	if (dtor)
		dtor(shadow->obj, shadow->data);
	kfree(shadow);
}

/**
 * klp_shadow_free() - detach and free a <obj, id> shadow variable
 * @obj:	pointer to parent object
 * @id:		data identifier
 * @dtor:	custom callback that can be used to unregister the variable
 *		and/or free data that the shadow variable points to (optional)
 *
 * This function releases the memory for this <obj, id> shadow variable
 * instance, callers should stop referencing it accordingly.
 */
void klp_shadow_free(void *obj, unsigned long id, klp_shadow_dtor_t dtor)
{
	if (klp_shadow_nested()) {
		WARN(1, "shadow variable <%p, %lx> freed from a shadow constructor or destructor\n", obj, id);
		return;
	}
	uint64_t flags = klp_shadow_lock_irqsave();

	/* Delete <obj, id> from hash */
	for (struct klp_shadow **pp = &klp_shadow_hash[klp_shadow_bucket(obj)]; *pp; pp = &(*pp)->next) {
		if (klp_shadow_match(*pp, obj, id)) {
			klp_shadow_free_struct(pp, dtor);
			break;
		}
	}

	klp_shadow_unlock_irqrestore(flags);
}

/**
 * klp_shadow_free_all() - detach and free all <*, id> shadow variables
 * @id:		data identifier
 * @dtor:	custom callback that can be used to unregister the variable
 *		and/or free data that the shadow variable points to (optional)
 *
 * This function releases the memory for all <*, id> shadow variable
 * instances, callers should stop referencing them accordingly.
 */
void klp_shadow_free_all(unsigned long id, klp_shadow_dtor_t dtor)
{
	if (klp_shadow_nested()) {
		WARN(1, "shadow variables <*, %lx> freed from a shadow constructor or destructor\n", id);
		return;
	}
	uint64_t flags = klp_shadow_lock_irqsave();

	/* Delete all <*, id> from hash */
	for (unsigned int i = 0; i < ARRAY_SIZE(klp_shadow_hash); i++) {
		struct klp_shadow **pp = &klp_shadow_hash[i];
		while (*pp) {
			if ((*pp)->id == id)
				klp_shadow_free_struct(pp, dtor);
			else
				pp = &(*pp)->next;
		}
	}

	klp_shadow_unlock_irqrestore(flags);
}

/* klp_shadow_count: how many <*, id> variables there are (the self-test's census) */
uint64_t klp_shadow_count(unsigned long id)
{
	uint64_t n = 0;
	uint64_t flags = klp_shadow_lock_irqsave();
	for (unsigned int i = 0; i < ARRAY_SIZE(klp_shadow_hash); i++)
		for (struct klp_shadow *s = klp_shadow_hash[i]; s; s = s->next)
			n += s->id == id;
	klp_shadow_unlock_irqrestore(flags);
	return n;
}

/*
 * klp_shadow_census_begin: the counts and, for the lowest
 * KLP_SHADOW_CENSUS_IDS ids in use, how many variables each has. Returns
 * with klp_shadow_lock held (so a caller can read other counters in the same
 * instant, as /proc/klp_shadow does with kmalloc's); the caller must call
 * klp_shadow_census_end with the value returned, and call no shadow
 * function in between.
 */
uint64_t klp_shadow_census_begin(struct klp_shadow_census *c)
{
	memset(c, 0, sizeof(*c));
	uint64_t flags = klp_shadow_lock_irqsave();
	c->counts = counts;
	for (unsigned int i = 0; i < ARRAY_SIZE(klp_shadow_hash); i++) {
		for (struct klp_shadow *s = klp_shadow_hash[i]; s; s = s->next) {
			unsigned int k = 0;
			while (k < c->nr_ids && c->ids[k].id < s->id)
				k++;
			if (k < c->nr_ids && c->ids[k].id == s->id) {
				c->ids[k].count++;
				continue;
			}
			if (k >= KLP_SHADOW_CENSUS_IDS) {
				c->other++;
				continue;
			}
			if (c->nr_ids == KLP_SHADOW_CENSUS_IDS) { /* the highest id listed leaves the list */
				c->other += c->ids[KLP_SHADOW_CENSUS_IDS - 1].count;
				c->nr_ids--;
			}
			memmove(&c->ids[k + 1], &c->ids[k], (c->nr_ids - k) * sizeof(c->ids[0]));
			c->ids[k].id = s->id;
			c->ids[k].count = 1;
			c->nr_ids++;
		}
	}
	return flags;
}

void klp_shadow_census_end(uint64_t flags) { klp_shadow_unlock_irqrestore(flags); }
