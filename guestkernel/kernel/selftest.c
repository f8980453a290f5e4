// SPDX-License-Identifier: GPL-2.0
/*
 * selftest.c: in-guest checks, run when the command line has
 * "klp.selftest". Powers off with 0 when all pass, 1 otherwise; each check
 * prints "selftest: <name>: ok|FAIL ...".
 */
#include "kernel.h"

static int failures;

/*
 * selftest_report prints one check's line, "selftest: <prefix><name>:
 * ok|FAIL <details>", and returns 1 when it failed: the one body of every
 * self-test's check() (this file's and shadow_selftest.c's).
 */
int selftest_report(int ok, const char *prefix, const char *name, const char *fmt, ...)
{
	char buf[200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	printk("selftest: %s%s: %s %s\n", prefix, name, ok ? "ok" : "FAIL", buf);
	return !ok;
}

#define check(ok, name, ...) (failures += selftest_report(ok, "", name, __VA_ARGS__))

/* bench_expect: what bench_fn_i must return (see scripts/genbench) */
static unsigned long bench_expect(unsigned int i, unsigned long x)
{
	const struct bench_const *k = &bench_consts[i];
	switch (k->variant) {
	case 0:
		return (x ^ k->c) * k->m + i;
	case 1:
		return ((x << k->s) | (x >> (64 - k->s))) + k->c;
	case 2:
		return (x * k->m) ^ (x >> k->s) ^ k->c;
	default:
		return x + k->c - (x >> k->s) * k->m;
	}
}

static volatile uint64_t counter_loops;
static void counter_thread(void *arg)
{
	(void)arg;
	for (int i = 0; i < 20; i++) {
		counter_loops++;
		msleep(1);
	}
}

static uint64_t pair_calls(void) { return stat_sum(klp_stats.pair_calls); }

static void selftest_thread(void *arg)
{
	(void)arg;
	char buf[1024];
	struct seq_file m;
	printk("selftest: start\n");

	/* SMP: every CPU online and ticking */
	/* a slow emulator may merge timer periods: wait for 5 ticks, up to 5 s */
	int ticking = 0;
	uint64_t t0 = ktime_get_ns();
	while (!ticking && ktime_get_ns() - t0 < 5 * NSEC_PER_SEC) {
		msleep(10);
		ticking = 1;
		for (unsigned int i = 0; i < nr_cpus_online; i++)
			if (READ_ONCE(percpu[i].ticks) < 5)
				ticking = 0;
	}
	check(nr_cpus_online == nr_cpus_boot && ticking, "smp", "%u/%u CPUs online, all ticking: %d", nr_cpus_online,
	      nr_cpus_boot, ticking);

	/* sleep length */
	t0 = ktime_get_ns();
	msleep(20);
	uint64_t dt = ktime_get_ns() - t0;
	check(dt >= 20 * NSEC_PER_MSEC, "msleep", "msleep(20) took %lu us", dt / 1000);

	/* preemption: a hog spinning on this CPU must not starve a sleeper on it */
	unsigned int cpu = smp_processor_id();
	uint64_t loops0 = klp_stats.hog_loops;
	counter_loops = 0;
	hog_start(cpu);
	struct task *ct = kthread_create_on(cpu, counter_thread, NULL, "st_counter");
	t0 = ktime_get_ns();
	/* generous deadline: under a loaded emulator ticks arrive late */
	while (counter_loops < 20 && ktime_get_ns() - t0 < 30 * NSEC_PER_SEC)
		msleep(5);
	hog_stop();
	check(ct && counter_loops == 20 && klp_stats.hog_loops > loops0, "preempt",
	      "counter %lu/20 beside a hog in %lu ms (hog loops %lu)", counter_loops,
	      (ktime_get_ns() - t0) / NSEC_PER_MSEC, klp_stats.hog_loops - loops0);

	/* consistency pair: workers call it, nobody sees mixed versions */
	uint64_t c0 = pair_calls();
	t0 = ktime_get_ns();
	while (pair_calls() - c0 < 1000 && ktime_get_ns() - t0 < 5 * NSEC_PER_SEC)
		msleep(5);
	unsigned long r = klp_pair_a();
	check(pair_calls() - c0 >= 1000 && stat_sum(klp_stats.pair_violations) == 0 && r == ((1UL << 16) | 1),
	      "pair", "calls +%lu violations %lu a()=%lx", pair_calls() - c0, stat_sum(klp_stats.pair_violations),
	      r);

	/* duplicate local names, both reachable */
	check(klp_dup_a_value(1) == 1001 && klp_dup_b_value(2) == 2002, "dup", "%d %d", klp_dup_a_value(1),
	      klp_dup_b_value(2));

	/* the scale set computes what the generator says */
	int bad = -1;
	for (unsigned int i = 0; i < BENCH_NR_FNS && bad < 0; i++) {
		unsigned long x = 0x123456789abcdefUL + i;
		if (bench_fns[i](x) != bench_expect(i, x))
			bad = (int)i;
	}
	check(bad < 0 && BENCH_NR_FNS >= 1024, "bench", "%d functions, first bad %d", BENCH_NR_FNS, bad);

	/* park: the parker sleeps inside klp_park_fn and its stack shows it */
	park_set(1);
	t0 = ktime_get_ns();
	while (READ_ONCE(klp_stats.parked) < 1 && ktime_get_ns() - t0 < 2 * NSEC_PER_SEC)
		msleep(5);
	msleep(20);
	struct task *pk = parker_task();
	uint64_t pcs[MAX_STACK_DEPTH];
	int n = pk ? task_stack(pk, pcs, MAX_STACK_DEPTH) : 0;
	int in_park = stack_has_function(pcs, n, "klp_park_fn") && stack_has_function(pcs, n, "parker_thread");
	check(READ_ONCE(klp_stats.parked) == 1 && in_park, "park", "parked %d, stack has klp_park_fn: %d (%d frames)",
	      klp_stats.parked, in_park, n);
	park_set(0);
	t0 = ktime_get_ns();
	while (READ_ONCE(klp_stats.parked) != 0 && ktime_get_ns() - t0 < 2 * NSEC_PER_SEC)
		msleep(5);
	check(READ_ONCE(klp_stats.parked) == 0, "unpark", "parked %d", klp_stats.parked);

	/* VFS */
	seq_init(&m, buf, sizeof(buf));
	int err = vfs_read("/proc/cmdline", &m);
	check(!err && m.count == strlen(saved_command_line) + 1 && !strncmp(buf, saved_command_line, m.count - 1),
	      "cmdline", "err %d '%s'", err, buf);
	seq_init(&m, buf, sizeof(buf));
	err = vfs_list("/sys/kernel/livepatch", &m);
	check(!err, "sysfs", "err %d, %d patches", err, lp_sysfs_nr_patches());
	seq_init(&m, buf, sizeof(buf));
	check(vfs_read("/nonexistent", &m) == -ENOENT && vfs_write("/proc/version", "x", 1) == -EACCES &&
		      vfs_write("/tmp/st", "hello", 5) == 0 && vfs_read("/tmp/st", &m) == 0 && m.count == 5,
	      "vfs", "errors and /tmp");

	/* kallsyms */
	uint64_t a = kallsyms_lookup_name("cmdline_proc_show");
	uint64_t off;
	const char *s = kallsyms_lookup((uint64_t)cmdline_proc_show + 3, &off, NULL);
	check(a == (uint64_t)cmdline_proc_show && s && !strcmp(s, "cmdline_proc_show") && off == 3, "kallsyms",
	      "%lx %s+%lu", a, s ? s : "?", s ? off : 0);

	/* fentry: patchable functions start with the 5-byte NOP */
	const uint8_t *p = (const uint8_t *)cmdline_proc_show;
	check(p[0] == 0x0f && p[1] == 0x1f && p[2] == 0x44 && p[3] == 0 && p[4] == 0, "fentry", "%02x %02x %02x %02x %02x",
	      p[0], p[1], p[2], p[3], p[4]);

	/* shadow variables: their own checks (shadow_selftest.c) */
	int sf = shadow_selftest();
	check(sf == 0, "shadow", "%d shadow-variable checks failed", sf);

	printk("selftest: %s (%d failures)\n", failures ? "FAIL" : "PASS", failures);
	power_off(failures ? 1 : 0);
}

void selftest_start(void)
{
	kthread_create_on(0, selftest_thread, NULL, "selftest");
}
