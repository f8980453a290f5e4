// SPDX-License-Identifier: GPL-2.0
/*
 * klp-busy: load for test/linux's TestLinuxLivepatchBusy (issue 17).
 *
 * One kernel thread per online CPU, bound to it, reads /proc/cmdline in a
 * loop through the normal path (filp_open + kernel_read, so seq_read calls
 * cmdline_proc_show in the thread): the function livepatch-sample replaces
 * is entered by kernel code on every vCPU while the host switches it. Each
 * read is classified as the text the module saw at load ("original"), the
 * sample's "this has been live patched" ("patched") or anything else
 * ("other"); the counters are read-only module parameters under
 * /sys/module/klp_busy/parameters/. rmmod stops the threads.
 *
 * The threads yield at every read (cond_resched) and sleep 1-2 ms every
 * sleep_every reads, so the guest's agent and user space still run.
 */
#include <linux/atomic.h>
#include <linux/cpumask.h>
#include <linux/delay.h>
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/string.h>

#define PATCHED "this has been live patched\n"
#define BUFSZ 512

static atomic_long_t reads, reads_original, reads_patched, reads_other, read_errors;

static int get_counter(char *buf, const struct kernel_param *kp)
{
	return scnprintf(buf, PAGE_SIZE, "%ld\n", atomic_long_read(kp->arg));
}

static const struct kernel_param_ops counter_ops = {
	.get = get_counter,
};

module_param_cb(reads, &counter_ops, &reads, 0444);
MODULE_PARM_DESC(reads, "reads of /proc/cmdline by the threads");
module_param_cb(reads_original, &counter_ops, &reads_original, 0444);
MODULE_PARM_DESC(reads_original, "reads that gave the text read at load");
module_param_cb(reads_patched, &counter_ops, &reads_patched, 0444);
MODULE_PARM_DESC(reads_patched, "reads that gave livepatch-sample's text");
module_param_cb(reads_other, &counter_ops, &reads_other, 0444);
MODULE_PARM_DESC(reads_other, "reads that gave anything else");
module_param_cb(read_errors, &counter_ops, &read_errors, 0444);
MODULE_PARM_DESC(read_errors, "failed opens and reads");

static unsigned int sleep_every = 32;
module_param(sleep_every, uint, 0444);
MODULE_PARM_DESC(sleep_every, "sleep 1-2 ms every this many reads (0: never)");

static int threads;
module_param(threads, int, 0444);
MODULE_PARM_DESC(threads, "kernel threads running");

static char original[BUFSZ];
static ssize_t original_len;
static struct task_struct *tasks[NR_CPUS];
static char *bufs[NR_CPUS];

/* read_cmdline reads /proc/cmdline into buf as user space would. */
static ssize_t read_cmdline(char *buf)
{
	struct file *f;
	loff_t pos = 0;
	ssize_t n;

	f = filp_open("/proc/cmdline", O_RDONLY, 0);
	if (IS_ERR(f))
		return PTR_ERR(f);
	n = kernel_read(f, buf, BUFSZ, &pos);
	filp_close(f, NULL);
	return n;
}

static int busy_thread(void *data)
{
	char *buf = data;
	unsigned long n = 0;
	ssize_t len;

	while (!kthread_should_stop()) {
		len = read_cmdline(buf);
		atomic_long_inc(&reads);
		if (len <= 0)
			atomic_long_inc(&read_errors);
		else if (len == sizeof(PATCHED) - 1 && !memcmp(buf, PATCHED, len))
			atomic_long_inc(&reads_patched);
		else if (len == original_len && !memcmp(buf, original, len))
			atomic_long_inc(&reads_original);
		else
			atomic_long_inc(&reads_other);
		if (len <= 0 || (sleep_every && ++n % sleep_every == 0))
			usleep_range(1000, 2000);
		else
			cond_resched();
	}
	return 0;
}

static void stop_threads(void)
{
	int cpu;

	for_each_possible_cpu(cpu) {
		if (tasks[cpu])
			kthread_stop(tasks[cpu]);
		tasks[cpu] = NULL;
		kfree(bufs[cpu]);
		bufs[cpu] = NULL;
	}
	threads = 0;
}

static int klp_busy_init(void)
{
	struct task_struct *t;
	int cpu;

	original_len = read_cmdline(original);
	if (original_len <= 0)
		return original_len < 0 ? original_len : -EIO;
	if (original_len == sizeof(PATCHED) - 1 && !memcmp(original, PATCHED, original_len))
		pr_info("klp_busy: /proc/cmdline is already the patched text\n");

	for_each_online_cpu(cpu) {
		bufs[cpu] = kmalloc(BUFSZ, GFP_KERNEL);
		if (!bufs[cpu]) {
			stop_threads();
			return -ENOMEM;
		}
		t = kthread_create_on_cpu(busy_thread, bufs[cpu], cpu, "klp_busy/%u");
		if (IS_ERR(t)) {
			stop_threads();
			return PTR_ERR(t);
		}
		tasks[cpu] = t;
		threads++;
		wake_up_process(t);
	}
	pr_info("klp_busy: %d threads reading /proc/cmdline\n", threads);
	return 0;
}

static void klp_busy_exit(void)
{
	stop_threads();
	pr_info("klp_busy: %ld reads (%ld original, %ld patched, %ld other, %ld errors)\n",
		atomic_long_read(&reads), atomic_long_read(&reads_original),
		atomic_long_read(&reads_patched), atomic_long_read(&reads_other),
		atomic_long_read(&read_errors));
}

module_init(klp_busy_init);
module_exit(klp_busy_exit);
MODULE_DESCRIPTION("kernel threads calling cmdline_proc_show, for klp-kvm's busy live-patch test");
MODULE_LICENSE("GPL");
