// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * shadow_mod.c - Shadow variables, buggy subsystem demo: the guest kernel's
 * port of Linux's samples/livepatch/livepatch-shadow-mod.c (Joe Lawrence).
 *
 * A kernel thread allocates a dummy object every ALLOC_PERIOD ms and frees
 * the expired ones every CLEANUP_PERIOD ms. dummy_alloc() also allocates a
 * small buffer, "leak", and forgets it: one leaked buffer per dummy. The
 * patches patches/livepatch-shadow-fix1.c (attaches the buffer to its dummy
 * as a shadow variable, SV_LEAK, and frees it with the dummy) and
 * livepatch-shadow-fix2.c (adds a per-dummy counter, SV_COUNTER, on top)
 * correct and extend it without changing struct dummy. The story, as in
 * Linux's sample (docs/shadow-variables.md):
 *
 *	echo 1 > /proc/klp_shadow          (or klp.shadow_mod on the command line)
 *	klp-kvm patch load livepatch-shadow-fix1.o   -> "leaked" stops growing
 *	klp-kvm patch load livepatch-shadow-fix2.o   -> "check counter = N" in dmesg
 *	klp-kvm patch disable livepatch_shadow_fix2
 *	klp-kvm patch disable livepatch_shadow_fix1  -> its post_unpatch frees every SV_LEAK
 *	echo 0 > /proc/klp_shadow          (Linux's rmmod: frees the dummies left)
 *
 * /proc/klp_shadow shows the demo's counters, the shadow variables by id,
 * kmalloc's counters and WARNs, read in one instant: the thread holds
 * dummy_list_lock across each alloc and each cleanup pass (Linux holds its
 * mutex only around the list), and every other kmalloc/kfree of the demo's
 * objects happens under the shadow lock (klp_shadow_free_all), which the
 * read holds too. So at every read, with nothing else using kmalloc:
 *
 *	kmalloc_objects = live + leaked + shadow_vars + (buffers the SV_LEAK
 *	                  variables hold, one each: shadow_id_1)
 *
 * which is how a test tells that nothing leaked beyond "leaked".
 *
 * Writes: "1" or "on" starts the thread (created on first use), "0" or
 * "off" stops it and frees every dummy left (Linux's module exit),
 * "selftest" starts the shadow API self-test (shadow_selftest.c) in a
 * thread; "selftest:" here shows "running", then its result.
 */
#include "kernel.h"
#include "shadow_mod.h"

/* dummy_list_lock: Linux's dummy_list_mutex; also guards stats and running */
static struct list_head dummy_list = { &dummy_list, &dummy_list };
static spinlock_t dummy_list_lock = SPINLOCK_INIT;
static struct {
	uint64_t allocated; /* dummies allocated */
	uint64_t freed;     /* dummies freed */
	uint64_t live;      /* dummies on the list */
	uint64_t leaked;    /* buffers dummy_alloc() forgot */
	uint64_t failures;  /* dummy_alloc() returned NULL */
	uint64_t cleanups;  /* cleanup passes */
} stats;
static volatile int running;
static int created;
static struct task *shadow_mod_task;
static volatile int selftest_running;
static volatile int selftest_result = -1; /* -1: not run; else failures, or -EBUSY */

static inline void list_add(struct list_head *n, struct list_head *head)
{
	n->next = head->next;
	n->prev = head;
	head->next->prev = n;
	head->next = n;
}

static inline void list_del(struct list_head *e)
{
	e->prev->next = e->next;
	e->next->prev = e->prev;
	e->next = e->prev = NULL;
}

__patchable struct dummy *dummy_alloc(void)
{
	struct dummy *d;
	void *leak;

	d = kzalloc(sizeof(*d), GFP_KERNEL);
	if (!d)
		return NULL;

	d->jiffies_expire = jiffies + msecs_to_jiffies(EXPIRE_PERIOD);

	/* Oops, forgot to save leak! */
	leak = kzalloc(sizeof(int), GFP_KERNEL);
	if (leak)
		stats.leaked++; /* the demo counts its own bug (caller holds dummy_list_lock) */

	printk("%s: dummy @ %p, expires @ %lx\n", __func__, d, d->jiffies_expire);

	return d;
}

__patchable void dummy_free(struct dummy *d)
{
	printk("%s: dummy @ %p, expired = %lx\n", __func__, d, d->jiffies_expire);

	kfree(d);
}

__patchable bool dummy_check(struct dummy *d, unsigned long jiffies)
{
	return time_after(jiffies, d->jiffies_expire);
}

/*
 * alloc_work_func: allocates new dummy structures, allocates additional
 *                  memory, aptly named "leak", but doesn't keep
 *                  permanent record of it.
 */
static void alloc_work_func(void)
{
	uint64_t f = spin_lock_irqsave(&dummy_list_lock);
	if (running) { /* not after a stop's cleanup */
		struct dummy *d = dummy_alloc();
		if (d) {
			list_add(&d->list, &dummy_list);
			stats.allocated++;
			stats.live++;
		} else {
			stats.failures++;
		}
	}
	spin_unlock_irqrestore(&dummy_list_lock, f);
}

/* free_dummies: frees the expired dummies, or all of them; dummy_list_lock held */
static void free_dummies(unsigned long j, int all)
{
	for (struct list_head *e = dummy_list.next, *tmp = e->next; e != &dummy_list; e = tmp, tmp = e->next) {
		struct dummy *d = (struct dummy *)((char *)e - __builtin_offsetof(struct dummy, list));
		/* Kick out and free any expired dummies */
		if (all || dummy_check(d, j)) {
			list_del(&d->list);
			dummy_free(d);
			stats.freed++;
			stats.live--;
		}
	}
}

/*
 * cleanup_work_func: frees dummy structures. Without knowledge of
 *                    "leak", it leaks the additional memory that
 *                    alloc_work_func created.
 */
static void cleanup_work_func(void)
{
	unsigned long j = jiffies;
	printk("%s: jiffies = %lx\n", __func__, j);

	uint64_t f = spin_lock_irqsave(&dummy_list_lock);
	free_dummies(j, 0);
	stats.cleanups++;
	spin_unlock_irqrestore(&dummy_list_lock, f);
}

/* The two delayed works of the Linux module, as one thread with two deadlines. */
static void shadow_mod_thread(void *arg)
{
	(void)arg;
	for (;;) {
		while (!READ_ONCE(running))
			sleep_until(ktime_get_ns() + 100 * NSEC_PER_MSEC, "shadow_mod_off");
		uint64_t now = ktime_get_ns();
		uint64_t next_alloc = now + ALLOC_PERIOD * NSEC_PER_MSEC;
		uint64_t next_cleanup = now + CLEANUP_PERIOD * NSEC_PER_MSEC;
		while (READ_ONCE(running)) {
			sleep_until(min(next_alloc, next_cleanup), "shadow_mod");
			now = ktime_get_ns();
			if (now >= next_alloc) {
				alloc_work_func();
				next_alloc = now + ALLOC_PERIOD * NSEC_PER_MSEC;
			}
			if (now >= next_cleanup) {
				cleanup_work_func();
				next_cleanup = now + CLEANUP_PERIOD * NSEC_PER_MSEC;
			}
		}
	}
}

static int shadow_mod_start(void)
{
	uint64_t f = spin_lock_irqsave(&dummy_list_lock);
	WRITE_ONCE(running, 1);
	int create = !created;
	created = 1;
	spin_unlock_irqrestore(&dummy_list_lock, f);
	if (create) {
		struct task *t = kthread_create_on(nr_cpus_online - 1, shadow_mod_thread, NULL, "shadow_mod");
		if (!t) {
			f = spin_lock_irqsave(&dummy_list_lock);
			WRITE_ONCE(running, 0);
			created = 0;
			spin_unlock_irqrestore(&dummy_list_lock, f);
			return -ENOMEM;
		}
		WRITE_ONCE(shadow_mod_task, t);
	} else if (READ_ONCE(shadow_mod_task)) {
		wake_up_process(shadow_mod_task);
	}
	return 0;
}

/* shadow_mod_stop: Linux's module exit: no more work, then cleanup residual dummies */
static void shadow_mod_stop(void)
{
	uint64_t f = spin_lock_irqsave(&dummy_list_lock);
	WRITE_ONCE(running, 0);
	free_dummies(jiffies, 1);
	spin_unlock_irqrestore(&dummy_list_lock, f);
	struct task *t = READ_ONCE(shadow_mod_task);
	if (t)
		wake_up_process(t);
}

void shadow_mod_init(void)
{
	if (cmdline_get("klp.shadow_mod"))
		shadow_mod_start();
}

int shadow_mod_show(struct seq_file *m, void *v)
{
	(void)v;
	struct klp_shadow_census c;
	struct kmalloc_stats k;
	/* one instant: the demo's counters, the shadow variables and kmalloc's (see the top) */
	uint64_t f = spin_lock_irqsave(&dummy_list_lock);
	__typeof__(stats) s = stats;
	int on = running;
	uint64_t sf = klp_shadow_census_begin(&c);
	kmalloc_stats(&k);
	klp_shadow_census_end(sf);
	spin_unlock_irqrestore(&dummy_list_lock, f);

	seq_printf(m, "running: %d\n", on);
	seq_printf(m, "alloc_period_ms: %d\n", ALLOC_PERIOD);
	seq_printf(m, "allocated: %lu\n", s.allocated);
	seq_printf(m, "freed: %lu\n", s.freed);
	seq_printf(m, "live: %lu\n", s.live);
	seq_printf(m, "leaked: %lu\n", s.leaked);
	seq_printf(m, "alloc_failures: %lu\n", s.failures);
	seq_printf(m, "cleanups: %lu\n", s.cleanups);
	seq_printf(m, "shadow_vars: %lu\n", c.counts.live);
	for (unsigned int i = 0; i < c.nr_ids; i++)
		seq_printf(m, "shadow_id_%lu: %lu\n", c.ids[i].id, c.ids[i].count);
	if (c.other)
		seq_printf(m, "shadow_id_other: %lu\n", c.other);
	seq_printf(m, "shadow_allocs: %lu\n", c.counts.allocs);
	seq_printf(m, "shadow_frees: %lu\n", c.counts.frees);
	seq_printf(m, "shadow_races: %lu\n", c.counts.races);
	seq_printf(m, "shadow_duplicates: %lu\n", c.counts.duplicates);
	seq_printf(m, "shadow_ctor_failures: %lu\n", c.counts.ctor_failures);
	seq_printf(m, "shadow_nomem: %lu\n", c.counts.nomem);
	seq_printf(m, "kmalloc_objects: %lu\n", k.objects);
	seq_printf(m, "kmalloc_bytes: %lu\n", k.bytes);
	seq_printf(m, "kmalloc_allocs: %lu\n", k.allocs);
	seq_printf(m, "kmalloc_frees: %lu\n", k.frees);
	seq_printf(m, "kmalloc_failures: %lu\n", k.failures);
	seq_printf(m, "kmalloc_bad_frees: %lu\n", k.bad_frees);
	seq_printf(m, "kmalloc_pages: %lu\n", k.pages);
	seq_printf(m, "warnings: %lu\n", nr_warnings);
	int st = READ_ONCE(selftest_result);
	if (READ_ONCE(selftest_running))
		seq_printf(m, "selftest: running\n");
	else if (st == -1)
		seq_printf(m, "selftest: not run\n");
	else if (st < 0)
		seq_printf(m, "selftest: not run: %s\n", strerror(-st));
	else
		seq_printf(m, "selftest: %s (%d failures)\n", st ? "FAIL" : "PASS", st);
	return 0;
}

/* the shadow API self-test on demand, in a thread: it takes seconds where exits are slow */
static void shadow_selftest_thread(void *arg)
{
	(void)arg;
	WRITE_ONCE(selftest_result, shadow_selftest());
	__atomic_store_n(&selftest_running, 0, __ATOMIC_RELEASE);
}

int shadow_mod_write(const char *data, size_t n)
{
	while (n && (data[n - 1] == '\n' || data[n - 1] == ' '))
		n--;
	if ((n == 1 && data[0] == '1') || (n == 2 && !strncmp(data, "on", 2)))
		return shadow_mod_start();
	if ((n == 1 && data[0] == '0') || (n == 3 && !strncmp(data, "off", 3))) {
		shadow_mod_stop();
		return 0;
	}
	if (n == 8 && !strncmp(data, "selftest", 8)) {
		if (__atomic_exchange_n(&selftest_running, 1, __ATOMIC_ACQUIRE))
			return -EBUSY;
		if (!kthread_create_on(0, shadow_selftest_thread, NULL, "shadow_selftest")) {
			__atomic_store_n(&selftest_running, 0, __ATOMIC_RELEASE);
			return -ENOMEM;
		}
		return 0;
	}
	return -EINVAL;
}
