// SPDX-License-Identifier: GPL-2.0
/*
 * workload.c: what live patching must cope with. Workers on every CPU call
 * patchable functions continuously (with short sleeps, so the shell and
 * the agent stay responsive on a shared host); the consistency pair counts
 * calls that saw A and B of different versions; the parker sleeps inside
 * klp_park_fn() on request; hogs spin forever (preemption).
 */
#include "kernel.h"

volatile int klp_park_flag;
volatile unsigned long klp_callback_counter;
struct klp_selftest_stats klp_stats;
volatile int workers_enabled = 1;
static volatile int hog_stop_flag;
static struct task *parker;
static unsigned int worker_sleep_ms = 1;

__patchable unsigned long klp_pair_b(void) { return KLP_PAIR_B_VERSION; }

__patchable unsigned long klp_pair_a(void)
{
	/* a little work, so that a transition can catch a task in here */
	for (volatile int i = 0; i < 50; i++)
		;
	unsigned long b = klp_pair_b();
	return ((unsigned long)KLP_PAIR_A_VERSION << 16) | b;
}

__patchable void klp_park_fn(void)
{
	__atomic_fetch_add(&klp_stats.parked, 1, __ATOMIC_SEQ_CST);
	__atomic_fetch_add(&klp_stats.park_entries, 1, __ATOMIC_SEQ_CST);
	while (READ_ONCE(klp_park_flag))
		sleep_until(ktime_get_ns() + 100 * NSEC_PER_MSEC, "klp_park_fn");
	__atomic_fetch_sub(&klp_stats.parked, 1, __ATOMIC_SEQ_CST);
}

uint64_t stat_sum(const uint64_t *per_cpu)
{
	uint64_t n = 0;
	for (int i = 0; i < KLP_MAX_CPUS; i++)
		n += READ_ONCE(per_cpu[i]);
	return n;
}

/*
 * worker_sleep: how long a worker sleeps after a batch that took busy_ns.
 * At least worker_sleep_ms, and at least 3x the batch, so that workers
 * take at most a quarter of a CPU wherever a batch is slow: on a platform
 * that emulates every guest instruction (kvm_pvm: ~0.3M instructions/s,
 * a batch takes tens of ms) a fixed 1 ms left the workers ~98% of both
 * vCPUs and the shell and the agent waited behind them. Where a batch
 * takes microseconds (emu, hardware KVM) this is the plain 1 ms. Bounded,
 * so a batch stretched by preemption never stalls a worker for long.
 */
static unsigned int worker_sleep(uint64_t busy_ns)
{
	uint64_t ms = (3 * busy_ns + NSEC_PER_MSEC - 1) / NSEC_PER_MSEC;
	return (unsigned int)min(max(ms, (uint64_t)worker_sleep_ms), (uint64_t)100);
}

static void worker(void *arg)
{
	unsigned int cpu = (unsigned int)(uintptr_t)arg;
	unsigned int next_fn = cpu * 97;
	unsigned long acc = 0;
	for (;;) {
		if (!READ_ONCE(workers_enabled)) {
			msleep(10);
			continue;
		}
		uint64_t t0 = ktime_get_ns();
		for (int i = 0; i < 100; i++) {
			unsigned long r = klp_pair_a();
			klp_stats.pair_calls[cpu]++;
			if ((r >> 16) != (r & 0xffff))
				klp_stats.pair_violations[cpu]++;
			klp_stats.pair_last[cpu] = r;
		}
		for (int i = 0; i < 64; i++) {
			acc = bench_fns[next_fn % BENCH_NR_FNS](acc + i);
			next_fn++;
		}
		klp_stats.bench_calls[cpu] += 64;
		if (worker_sleep_ms)
			msleep(worker_sleep(ktime_get_ns() - t0));
		else
			yield();
	}
}

static void parker_thread(void *arg)
{
	(void)arg;
	for (;;) {
		while (!READ_ONCE(klp_park_flag))
			sleep_until(ktime_get_ns() + 100 * NSEC_PER_MSEC, "park_wait");
		klp_park_fn();
	}
}

struct task *parker_task(void) { return parker; }

void park_set(int on)
{
	WRITE_ONCE(klp_park_flag, on ? 1 : 0);
	if (parker)
		wake_up_process(parker);
}

static void hog_thread(void *arg)
{
	(void)arg;
	while (!READ_ONCE(hog_stop_flag))
		__atomic_fetch_add(&klp_stats.hog_loops, 1, __ATOMIC_RELAXED);
}

int hog_start(unsigned int cpu)
{
	WRITE_ONCE(hog_stop_flag, 0);
	return kthread_create_on(cpu, hog_thread, NULL, "hog") ? 0 : -ENOMEM;
}

void hog_stop(void) { WRITE_ONCE(hog_stop_flag, 1); }

int proc_selftest_show(struct seq_file *m, void *v)
{
	(void)v;
	uint64_t last = 0;
	for (unsigned int i = 0; i < nr_cpus_online; i++)
		if (klp_stats.pair_last[i])
			last = klp_stats.pair_last[i];
	seq_printf(m, "pair_calls: %lu\n", stat_sum(klp_stats.pair_calls));
	seq_printf(m, "pair_violations: %lu\n", stat_sum(klp_stats.pair_violations));
	seq_printf(m, "pair_a_version: %lu\n", last >> 16);
	seq_printf(m, "pair_b_version: %lu\n", last & 0xffff);
	seq_printf(m, "dup_fn_1: %d\n", klp_dup_a_value(1));
	seq_printf(m, "dup_fn_2: %d\n", klp_dup_b_value(2));
	seq_printf(m, "park: %d\n", READ_ONCE(klp_park_flag) ? 1 : 0);
	seq_printf(m, "parked: %d\n", READ_ONCE(klp_stats.parked));
	seq_printf(m, "park_entries: %lu\n", klp_stats.park_entries);
	seq_printf(m, "parker_pid: %u\n", parker ? parker->pid : 0);
	seq_printf(m, "bench_calls: %lu\n", stat_sum(klp_stats.bench_calls));
	seq_printf(m, "workers: %d\n", READ_ONCE(workers_enabled) ? 1 : 0);
	seq_printf(m, "hog_loops: %lu\n", klp_stats.hog_loops);
	seq_printf(m, "callback_counter: %lu\n", klp_callback_counter);
	return 0;
}

void workloads_start(void)
{
	const char *v = cmdline_get("klp.workers");
	if (v && !strcmp(v, "0"))
		workers_enabled = 0;
	v = cmdline_get("klp.worker_sleep_ms");
	uint64_t ms;
	if (v && !parse_u64(v, strlen(v), &ms) && ms <= 1000)
		worker_sleep_ms = (unsigned int)ms;
	for (unsigned int cpu = 0; cpu < nr_cpus_online; cpu++) {
		char name[KLP_TASK_NAME_LEN];
		snprintf(name, sizeof(name), "worker/%u", cpu);
		kthread_create_on(cpu, worker, (void *)(uintptr_t)cpu, name);
	}
	parker = kthread_create_on(nr_cpus_online - 1, parker_thread, NULL, "parker");
	if (cmdline_get("klp.park"))
		park_set(1);
}
