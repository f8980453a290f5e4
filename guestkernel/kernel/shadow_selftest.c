// SPDX-License-Identifier: GPL-2.0
/*
 * shadow_selftest.c: the shadow variable API (shadow.c) checked in the
 * guest. The sequence of Linux's lib/livepatch/test_klp_shadow_vars.c
 * (get on an empty table, alloc of three <obj, id> pairs, get of each,
 * get_or_alloc twice, free, free_all), with the checks that module leaves
 * to the log of its caller made here, and what it does not test: alloc of
 * an existing pair (WARN, NULL), zeroed data, a refusing ctor, -ENOMEM,
 * the race the re-check under the lock is for, ctor and dtor calling back
 * in, variables sharing buckets, and vCPUs racing get_or_alloc on the
 * same pairs and alloc/free on their own.
 *
 * Runs in klp.selftest mode (selftest.c) and on demand ("echo selftest >
 * /proc/klp_shadow" starts it in a thread of its own; /proc/klp_shadow
 * shows "selftest: running", then the result). Each check prints "selftest: shadow-<name>: ok|FAIL
 * ..."; shadow_selftest() returns the number that failed. It uses ids
 * of its own (SHADOW_TEST_ID...), so the shadow-variable demo
 * (shadow_mod.c, ids 1 and 2) may run meanwhile.
 */
#include "kernel.h"
#include "klp_shadow.h"

#define SHADOW_TEST_ID 0x1234UL
#define SHADOW_PAIRS_ID 0x5678UL
#define SHADOW_SMP_ID 0x9abcUL
#define SHADOW_CHURN_ID 0x9abdUL
#define SHADOW_PAIRS 16
#define SHADOW_SMP_OBJS 64
#define SHADOW_SMP_MIN_ROUNDS 4
#define SHADOW_SMP_MAX_ROUNDS 200
#define SHADOW_SMP_MS 300 /* rounds after the minimum stop then */
#define SHADOW_SMP_THREADS KLP_MAX_CPUS

static int failures;

#define check(ok, name, ...) (failures += selftest_report(ok, "shadow-", name, __VA_ARGS__))

/* the objects shadowed: any address will do, these are never dereferenced */
static char objs[64];
static int ctor_calls, dtor_calls;
static void *dtor_obj, *dtor_data;

/* Shadow variable constructor - remember simple pointer data (as Linux's test) */
static int shadow_ctor(void *obj, void *shadow_data, void *ctor_data)
{
	int **shadow_int = shadow_data;
	*shadow_int = ctor_data;
	ctor_calls++;
	return 0;
}

static void shadow_dtor(void *obj, void *shadow_data)
{
	dtor_calls++;
	dtor_obj = obj;
	dtor_data = shadow_data;
}

static int refusing_ctor(void *obj, void *shadow_data, void *ctor_data) { return -EINVAL; }

/*
 * nested_ctor: calls back into the API under klp_shadow_lock: get must
 * work (it stores what get returns for ctor_data's <obj, id>), alloc must
 * WARN and return NULL rather than deadlock.
 */
static void *nested_alloc;
static int nested_ctor(void *obj, void *shadow_data, void *ctor_data)
{
	void **out = shadow_data;
	*out = klp_shadow_get(ctor_data, SHADOW_TEST_ID);
	nested_alloc = klp_shadow_alloc(ctor_data, SHADOW_TEST_ID + 7, 8, GFP_ATOMIC, NULL, NULL);
	return 0;
}

static void *nested_dtor_get;
static void nested_dtor(void *obj, void *shadow_data) { nested_dtor_get = klp_shadow_get(objs, SHADOW_TEST_ID + 1); }

/*
 * race_hook: "another CPU" attaches <race_obj, id> (data: &race_var2) in
 * the window, once; other callers (the demo may run meanwhile) pass by.
 */
static int race_var2;
static void *volatile race_obj;
static void race_hook(void *obj, unsigned long id)
{
	if (obj != race_obj)
		return;
	race_obj = NULL;
	klp_shadow_race_hook = NULL;
	klp_shadow_alloc(obj, id, sizeof(int *), GFP_ATOMIC, shadow_ctor, &race_var2);
}

static int all_zero(const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i])
			return 0;
	return 1;
}

/* test_klp_shadow_vars.c's sequence, and the single-threaded extras */
static void shadow_api_checks(void)
{
	char *obj = objs;
	unsigned long id = SHADOW_TEST_ID;
	size_t size = sizeof(int *);
	gfp_t gfp_flags = GFP_KERNEL;
	int var1, var2, var3, var4;
	int **sv1, **sv2, **sv3, **sv4;
	void *ret;

	/* With an empty shadow variable hash table, expect not to find any matches. */
	ret = klp_shadow_get(obj, id);
	check(!ret && klp_shadow_count(id) == 0 && klp_shadow_count(id + 1) == 0, "get-empty", "%p", ret);

	/* Allocate a few shadow variables with different <obj> and <id>. */
	ctor_calls = 0;
	sv1 = klp_shadow_alloc(obj, id, size, gfp_flags, shadow_ctor, &var1);
	sv2 = klp_shadow_alloc(obj + 1, id, size, gfp_flags, shadow_ctor, &var2);
	sv3 = klp_shadow_alloc(obj, id + 1, size, gfp_flags, shadow_ctor, &var3);
	check(sv1 && sv2 && sv3 && sv1 != sv2 && sv2 != sv3 && sv1 != sv3 && ctor_calls == 3 &&
		      klp_shadow_count(id) == 2 && klp_shadow_count(id + 1) == 1,
	      "alloc", "%p %p %p, %d ctor calls", sv1, sv2, sv3, ctor_calls);
	if (!sv1 || !sv2 || !sv3)
		return;

	/* Verify we can find our new shadow variables and that they point to expected data. */
	check(klp_shadow_get(obj, id) == sv1 && *sv1 == &var1 && klp_shadow_get(obj + 1, id) == sv2 &&
		      *sv2 == &var2 && klp_shadow_get(obj, id + 1) == sv3 && *sv3 == &var3 &&
		      !klp_shadow_get(obj + 2, id) && !klp_shadow_get(obj + 1, id + 1),
	      "get", "each <obj, id> finds its own data, others none");

	/* Allocate or get a few more, this time with the same <obj>, <id>. The second invocation should return the same shadow var. */
	sv4 = klp_shadow_get_or_alloc(obj + 2, id, size, gfp_flags, shadow_ctor, &var4);
	ret = klp_shadow_get_or_alloc(obj + 2, id, size, gfp_flags, shadow_ctor, &var1);
	check(sv4 && ret == sv4 && *sv4 == &var4 && ctor_calls == 4, "get-or-alloc",
	      "%p then %p, data -> %s, %d ctor calls", sv4, ret, sv4 && *sv4 == &var4 ? "var4" : "?", ctor_calls);
	if (!sv4)
		return;

	/* klp_shadow_alloc of an existing <obj, id>: -EEXIST, WARN and NULL; the existing one left alone */
	uint64_t w0 = nr_warnings;
	ret = klp_shadow_alloc(obj, id, size, gfp_flags, shadow_ctor, &var2);
	check(!ret && nr_warnings == w0 + 1 && ctor_calls == 4 && klp_shadow_get(obj, id) == sv1 && *sv1 == &var1,
	      "alloc-exists", "%p, %lu warnings, %d ctor calls", ret, nr_warnings - w0, ctor_calls);

	/* data are zeroed without a ctor, and 16-byte aligned */
	unsigned char *z = klp_shadow_alloc(obj + 3, id, 100, gfp_flags, NULL, NULL);
	check(z && all_zero(z, 100) && ((uintptr_t)z & 15) == 0, "zeroed", "%p", z);

	/* a ctor that refuses: NULL, nothing attached */
	ret = klp_shadow_alloc(obj + 4, id, size, gfp_flags, refusing_ctor, NULL);
	check(!ret && !klp_shadow_get(obj + 4, id), "ctor-fails", "%p", ret);

	/* -ENOMEM: NULL, ctor not called, nothing attached; a size that overflows too */
	int c0 = ctor_calls;
	ret = klp_shadow_alloc(obj + 5, id, (size_t)1 << 45, gfp_flags, shadow_ctor, &var1);
	void *ret2 = klp_shadow_get_or_alloc(obj + 5, id, (size_t)-8, gfp_flags, shadow_ctor, &var1);
	check(!ret && !ret2 && ctor_calls == c0 && !klp_shadow_get(obj + 5, id), "nomem", "%p %p", ret, ret2);

	/*
	 * The race the re-check under the lock is for: <obj, id> attached by
	 * someone else between the speculative allocation and the lock
	 * (klp_shadow_race_hook stands in for the other CPU). get_or_alloc
	 * returns the other one's variable, alloc WARNs; either way the
	 * speculative allocation is freed and the loser's ctor never runs.
	 */
	struct klp_shadow_census cs;
	klp_shadow_census_end(klp_shadow_census_begin(&cs));
	uint64_t races0 = cs.counts.races;
	struct kmalloc_stats km0, km1;
	kmalloc_stats(&km0);
	c0 = ctor_calls;
	race_obj = obj + 7;
	klp_shadow_race_hook = race_hook;
	ret = klp_shadow_get_or_alloc(obj + 7, id, size, gfp_flags, shadow_ctor, &var1);
	int **other = klp_shadow_get(obj + 7, id);
	w0 = nr_warnings;
	race_obj = obj + 8;
	klp_shadow_race_hook = race_hook;
	ret2 = klp_shadow_alloc(obj + 8, id, size, gfp_flags, shadow_ctor, &var1);
	int **other2 = klp_shadow_get(obj + 8, id);
	kmalloc_stats(&km1);
	klp_shadow_census_end(klp_shadow_census_begin(&cs));
	check(ret && ret == other && *other == &race_var2 && !ret2 && other2 && *other2 == &race_var2 && nr_warnings == w0 + 1 &&
		      ctor_calls == c0 + 2 && cs.counts.races == races0 + 2 && km1.objects == km0.objects + 2 &&
		      !klp_shadow_race_hook,
	      "race", "get_or_alloc %p (other's %p), alloc %p, %d ctor calls, %lu races, %ld kmalloc objects", ret,
	      other, ret2, ctor_calls - c0, cs.counts.races - races0, (long)(km1.objects - km0.objects));

	/* ctor and dtor call back in: get works, alloc WARNs and returns NULL */
	w0 = nr_warnings;
	nested_alloc = (void *)1;
	void **nv = klp_shadow_alloc(obj + 6, id, sizeof(void *), gfp_flags, nested_ctor, obj);
	check(nv && *nv == sv1 && !nested_alloc && nr_warnings == w0 + 1 && !klp_shadow_get(obj, id + 7), "nested",
	      "ctor's get %p (sv1 %p), ctor's alloc %p, %lu warnings", nv ? *nv : NULL, sv1, nested_alloc,
	      nr_warnings - w0);

	/* Free the <obj=*, id> shadow variables and check that we can no longer find them. */
	dtor_calls = 0;
	klp_shadow_free(obj, id, shadow_dtor); /* sv1 */
	int freed1 = dtor_calls == 1 && dtor_obj == obj && dtor_data == sv1 && !klp_shadow_get(obj, id);
	klp_shadow_free(obj, id, shadow_dtor); /* gone: no dtor call */
	klp_shadow_free(obj + 1, id, shadow_dtor); /* sv2 */
	klp_shadow_free(obj + 2, id, shadow_dtor); /* sv4 */
	check(freed1 && dtor_calls == 3 && !klp_shadow_get(obj + 1, id) && !klp_shadow_get(obj + 2, id) &&
		      klp_shadow_count(id) == 4, /* obj + 3, 6, 7 and 8 */
	      "free", "%d dtor calls, %lu left", dtor_calls, klp_shadow_count(id));

	/* We should still find an <id+1> variable; a dtor can look it up. */
	klp_shadow_free(obj + 6, id, nested_dtor);
	check(klp_shadow_get(obj, id + 1) == sv3 && *sv3 == &var3 && nested_dtor_get == sv3, "free-keeps-others",
	      "%p, dtor's get %p", sv3, nested_dtor_get);

	/* free_all of id frees obj + 3, 7 and 8's and nothing of id+1; then id+1's too */
	dtor_calls = 0;
	klp_shadow_free_all(id, shadow_dtor);
	int all1 = dtor_calls == 3 && klp_shadow_count(id) == 0 && klp_shadow_get(obj, id + 1) == sv3;
	klp_shadow_free_all(id + 1, shadow_dtor); /* sv3 */
	check(all1 && dtor_calls == 4 && dtor_data == sv3 && !klp_shadow_get(obj, id + 1) &&
		      klp_shadow_count(id + 1) == 0,
	      "free-all", "%d dtor calls", dtor_calls);
}

/*
 * shared buckets: pairs of objects that hash to the same bucket (found by
 * scanning addresses, which are only keys and never dereferenced). Every
 * variable found with its own data; freeing the first or the second of a
 * bucket's chain takes only that one; free_all the rest.
 */
static void shadow_bucket_checks(void)
{
	static uint16_t first[KLP_SHADOW_BUCKETS]; /* 1 + offset of the first key seen in each bucket */
	void *keys[2 * SHADOW_PAIRS];
	unsigned long id = SHADOW_PAIRS_ID;
	int np = 0, made = 0, found = 0, kept = 0, same = 0;
	memset(first, 0, sizeof(first));
	for (unsigned int i = 0; i < 2 * KLP_SHADOW_BUCKETS && np < SHADOW_PAIRS; i++) {
		void *k = (void *)((uintptr_t)objs + i);
		unsigned int b = klp_shadow_bucket_of(k);
		if (!first[b]) {
			first[b] = (uint16_t)(i + 1);
		} else if (first[b] != 0xffff) {
			keys[2 * np] = (void *)((uintptr_t)objs + first[b] - 1);
			keys[2 * np + 1] = k;
			first[b] = 0xffff;
			np++;
		}
	}
	for (int i = 0; i < 2 * np; i++) {
		unsigned long *v = klp_shadow_alloc(keys[i], id, sizeof(*v), GFP_KERNEL, NULL, NULL);
		if (v) {
			*v = (unsigned long)i;
			made++;
		}
	}
	for (int i = 0; i < 2 * np; i++) {
		unsigned long *v = klp_shadow_get(keys[i], id);
		found += v && *v == (unsigned long)i;
		same += (i & 1) && klp_shadow_bucket_of(keys[i]) == klp_shadow_bucket_of(keys[i - 1]);
	}
	/* the second of a pair went in last, so it heads the chain: free heads in half the pairs, tails in the rest */
	for (int p = 0; p < np; p++)
		klp_shadow_free(keys[2 * p + (p < np / 2)], id, NULL);
	for (int i = 0; i < 2 * np; i++) {
		int p = i / 2, freed = (i & 1) == (p < np / 2);
		unsigned long *v = klp_shadow_get(keys[i], id);
		kept += freed ? !v : (v && *v == (unsigned long)i);
	}
	dtor_calls = 0;
	klp_shadow_free_all(id, shadow_dtor);
	check(np == SHADOW_PAIRS && same == np && made == 2 * np && found == 2 * np && kept == 2 * np &&
		      dtor_calls == np && klp_shadow_count(id) == 0,
	      "shared-buckets", "%d pairs sharing a bucket, %d made, %d found, %d right after freeing one of each, %d freed by free_all",
	      np, made, found, kept, dtor_calls);
}

/* ---- vCPUs racing ---- */
static volatile int smp_ctor_calls[SHADOW_SMP_OBJS];
static char smp_own[SHADOW_SMP_THREADS][SHADOW_SMP_OBJS];
static volatile int smp_errors, smp_done, smp_go, smp_rounds;
static uint64_t smp_deadline;

static int smp_ctor(void *obj, void *shadow_data, void *ctor_data)
{
	__atomic_fetch_add(&smp_ctor_calls[(char *)obj - objs], 1, __ATOMIC_RELAXED);
	return 0;
}

static void smp_thread(void *arg)
{
	unsigned int t = (unsigned int)(uintptr_t)arg;
	while (!READ_ONCE(smp_go))
		msleep(1);
	/* at least SHADOW_SMP_MIN_ROUNDS, then until the deadline: slow platforms do less */
	int r = 0;
	for (; r < SHADOW_SMP_MIN_ROUNDS || (r < SHADOW_SMP_MAX_ROUNDS && ktime_get_ns() < smp_deadline); r++) {
		for (int k = 0; k < SHADOW_SMP_OBJS; k++) {
			/* everyone on the same pairs: one variable each, one ctor call each */
			uint64_t *n = klp_shadow_get_or_alloc(&objs[k], SHADOW_SMP_ID, sizeof(*n), GFP_KERNEL, smp_ctor, NULL);
			if (!n)
				__atomic_fetch_add(&smp_errors, 1, __ATOMIC_RELAXED);
			else
				__atomic_fetch_add(n, 1, __ATOMIC_RELAXED);
			/* each on its own pairs, in buckets the others use too */
			void *own = &smp_own[t][k];
			if (!klp_shadow_alloc(own, SHADOW_CHURN_ID, 24, GFP_KERNEL, NULL, NULL))
				__atomic_fetch_add(&smp_errors, 1, __ATOMIC_RELAXED);
			if ((k & 15) == 0)
				yield(); /* a thread sharing this CPU gets in between */
			klp_shadow_free(own, SHADOW_CHURN_ID, NULL);
		}
	}
	__atomic_fetch_add(&smp_rounds, r, __ATOMIC_SEQ_CST);
	__atomic_fetch_add(&smp_done, 1, __ATOMIC_SEQ_CST);
}

static void shadow_smp_checks(void)
{
	unsigned int nthreads = max(nr_cpus_online, 2u); /* two on one CPU race through preemption */
	if (nthreads > SHADOW_SMP_THREADS)
		nthreads = SHADOW_SMP_THREADS;
	for (int k = 0; k < SHADOW_SMP_OBJS; k++)
		smp_ctor_calls[k] = 0;
	smp_errors = 0;
	smp_done = 0;
	smp_go = 0;
	smp_rounds = 0;
	uint64_t races0 = 0;
	struct klp_shadow_census c;
	klp_shadow_census_end(klp_shadow_census_begin(&c));
	races0 = c.counts.races;
	unsigned int started = 0;
	for (unsigned int t = 0; t < nthreads; t++)
		started += kthread_create_on(t % nr_cpus_online, smp_thread, (void *)(uintptr_t)t, "st_shadow") != NULL;
	uint64_t t0 = ktime_get_ns();
	smp_deadline = t0 + SHADOW_SMP_MS * NSEC_PER_MSEC;
	WRITE_ONCE(smp_go, 1);
	/* generous: a loaded emulator is slow */
	while (READ_ONCE(smp_done) < (int)started && ktime_get_ns() - t0 < 120 * NSEC_PER_SEC)
		msleep(5);
	int done = READ_ONCE(smp_done);
	int counts_ok = 0, ctors_ok = 0;
	for (int k = 0; k < SHADOW_SMP_OBJS; k++) {
		uint64_t *n = klp_shadow_get(&objs[k], SHADOW_SMP_ID);
		counts_ok += n && *n == (uint64_t)smp_rounds;
		ctors_ok += smp_ctor_calls[k] == 1;
	}
	klp_shadow_census_end(klp_shadow_census_begin(&c));
	check(started == nthreads && done == (int)started && !smp_errors && counts_ok == SHADOW_SMP_OBJS &&
		      ctors_ok == SHADOW_SMP_OBJS && klp_shadow_count(SHADOW_CHURN_ID) == 0,
	      "smp",
	      "%d/%u threads done, %d rounds in %lu ms, %d errors, %d/%d counts right, %d/%d ctors once, %lu races lost",
	      done, nthreads, smp_rounds, (ktime_get_ns() - t0) / NSEC_PER_MSEC, smp_errors, counts_ok, SHADOW_SMP_OBJS,
	      ctors_ok, SHADOW_SMP_OBJS, c.counts.races - races0);
	if (done == (int)started)
		klp_shadow_free_all(SHADOW_SMP_ID, NULL);
}

int shadow_selftest(void)
{
	static volatile int busy;
	if (__atomic_exchange_n(&busy, 1, __ATOMIC_ACQUIRE))
		return -EBUSY;
	failures = 0;
	uint64_t t0 = ktime_get_ns();
	struct kmalloc_stats k0, k1;
	kmalloc_stats(&k0);
	shadow_api_checks();
	shadow_bucket_checks();
	shadow_smp_checks();
	kmalloc_stats(&k1);
	int leftover = 0;
	for (unsigned long id = SHADOW_TEST_ID; id <= SHADOW_TEST_ID + 7; id++)
		leftover += (int)klp_shadow_count(id);
	leftover += (int)(klp_shadow_count(SHADOW_PAIRS_ID) + klp_shadow_count(SHADOW_SMP_ID) +
			  klp_shadow_count(SHADOW_CHURN_ID));
	check(leftover == 0, "nothing-left", "%d variables of the test's ids left, kmalloc objects %ld", leftover,
	      (long)(k1.objects - k0.objects));
	printk("selftest: shadow: %s (%d failures) in %lu ms\n", failures ? "FAIL" : "PASS", failures,
	       (ktime_get_ns() - t0) / NSEC_PER_MSEC);
	int f = failures;
	__atomic_store_n(&busy, 0, __ATOMIC_RELEASE);
	return f;
}
