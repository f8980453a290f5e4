// SPDX-License-Identifier: GPL-2.0
/*
 * vfs.c: a tiny path-based VFS: /proc (static and per-pid files), /tmp (a
 * few small RAM files) and /sys/kernel/livepatch (sysfs.c). Files are
 * rendered whole into a seq_file on read, as procfs single_open() does.
 */
#include "kernel.h"

#define PATH_MAX_LEN 256
#define TMP_FILES 16
#define TMP_NAME_LEN 32
#define TMP_FILE_SIZE 4096
#define LP_DIR "/sys/kernel/livepatch"

static int version_show(struct seq_file *m, void *v)
{
	(void)v;
	seq_printf(m, "%s\n", kernel_version_string);
	return 0;
}

static int uptime_show(struct seq_file *m, void *v)
{
	(void)v;
	uint64_t ns = ktime_get_ns();
	uint64_t idle = 0;
	for (unsigned int i = 0; i < nr_cpus_online; i++)
		idle += percpu[i].idle_ticks;
	idle = idle * (NSEC_PER_SEC / HZ);
	seq_printf(m, "%lu.%02lu %lu.%02lu\n", ns / NSEC_PER_SEC, (ns % NSEC_PER_SEC) / 10000000, idle / NSEC_PER_SEC,
		   (idle % NSEC_PER_SEC) / 10000000);
	return 0;
}

int proc_stat_show(struct seq_file *m, void *v)
{
	(void)v;
	uint64_t tt = 0, ti = 0;
	for (unsigned int i = 0; i < nr_cpus_online; i++) {
		tt += percpu[i].ticks;
		ti += percpu[i].idle_ticks;
	}
	seq_printf(m, "cpu  %lu 0 0 %lu 0 0 0 0 0 0\n", tt - ti, ti);
	for (unsigned int i = 0; i < nr_cpus_online; i++) {
		struct percpu *p = &percpu[i];
		seq_printf(m, "cpu%u %lu 0 0 %lu 0 0 0 0 0 0\n", i, p->ticks - p->idle_ticks, p->idle_ticks);
	}
	uint64_t irqs = 0;
	for (unsigned int i = 0; i < nr_cpus_online; i++)
		irqs += percpu[i].irqs;
	seq_printf(m, "intr %lu\n", irqs);
	seq_printf(m, "ctxt %lu\n", sched_ctx_switches_total());
	seq_printf(m, "btime 0\n");
	seq_printf(m, "processes %u\n", nr_tasks_alive());
	for (unsigned int i = 0; i < nr_cpus_online; i++) {
		struct percpu *p = &percpu[i];
		seq_printf(m, "cpu%u_ticks %lu\ncpu%u_ctxt %lu\ncpu%u_ipis %lu\n", i, p->ticks, i, p->ctx_switches, i,
			   p->ipis);
	}
	return 0;
}

static const char *state_name(uint32_t s)
{
	switch (s) {
	case KLP_TASK_RUNNING:
		return "R";
	case KLP_TASK_SLEEPING:
		return "S";
	case KLP_TASK_DEAD:
		return "X";
	}
	return "?";
}

static int tasks_show(struct seq_file *m, void *v)
{
	(void)v;
	seq_printf(m, "  PID CPU S  SWITCHES     TICKS NAME             WCHAN\n");
	for (unsigned int i = 0; i < KLP_MAX_TASKS; i++) {
		struct task *t = &task_table[i];
		uint32_t st = READ_ONCE(t->state);
		if (st != KLP_TASK_RUNNING && st != KLP_TASK_SLEEPING)
			continue;
		const char *wchan = "-";
		uint64_t pcs[MAX_STACK_DEPTH];
		if (st == KLP_TASK_SLEEPING) {
			int n = task_stack(t, pcs, MAX_STACK_DEPTH);
			/* first frame outside the scheduler and sleep helpers */
			for (int k = 0; k < n; k++) {
				const char *s = kallsyms_lookup(k ? pcs[k] - 1 : pcs[k], NULL, NULL);
				if (s && strcmp(s, "klp_switch_to") && strcmp(s, "schedule") && strcmp(s, "sleep_until") &&
				    strcmp(s, "msleep") && strcmp(s, "wait_for_completion_timeout")) {
					wchan = s;
					break;
				}
			}
		}
		seq_printf(m, "%5u %3u %s %9lu %9lu %-16s %s\n", t->pid, t->cpu, state_name(st), t->nr_switches,
			   t->run_ticks, t->name, wchan);
	}
	return 0;
}

static int park_show(struct seq_file *m, void *v)
{
	(void)v;
	seq_printf(m, "%d\n", READ_ONCE(klp_park_flag) ? 1 : 0);
	return 0;
}

static int bool_arg(const char *data, size_t n, int *out)
{
	while (n && (data[n - 1] == '\n' || data[n - 1] == ' '))
		n--;
	if (n == 1 && (data[0] == '0' || data[0] == '1')) {
		*out = data[0] == '1';
		return 0;
	}
	if ((n == 2 && !strncmp(data, "on", 2)) || (n == 1 && (data[0] == 'y' || data[0] == 'Y'))) {
		*out = 1;
		return 0;
	}
	if ((n == 3 && !strncmp(data, "off", 3)) || (n == 1 && (data[0] == 'n' || data[0] == 'N'))) {
		*out = 0;
		return 0;
	}
	return -EINVAL;
}

static int park_write(const char *data, size_t n)
{
	int on;
	int err = bool_arg(data, n, &on);
	if (err)
		return err;
	park_set(on);
	return 0;
}

struct proc_entry {
	const char *name;
	int (*show)(struct seq_file *m, void *v);
	int (*write)(const char *data, size_t n);
};

static const struct proc_entry proc_entries[] = {
	{ "cmdline", cmdline_proc_show, NULL },
	{ "klp_park", park_show, park_write },
	{ "klp_selftest", proc_selftest_show, NULL },
	{ "klp_shadow", shadow_mod_show, shadow_mod_write },
	{ "stat", proc_stat_show, NULL },
	{ "sys/kernel/printk", printk_sysctl_show, printk_sysctl_write },
	{ "tasks", tasks_show, NULL },
	{ "uptime", uptime_show, NULL },
	{ "version", version_show, NULL },
};

/* ---- /tmp ---- */
struct tmp_file {
	int used;
	char name[TMP_NAME_LEN];
	size_t len;
	char data[TMP_FILE_SIZE];
};
static struct tmp_file tmp_files[TMP_FILES];
static spinlock_t tmp_lock = SPINLOCK_INIT;

static struct tmp_file *tmp_find(const char *name)
{
	for (int i = 0; i < TMP_FILES; i++)
		if (tmp_files[i].used && !strcmp(tmp_files[i].name, name))
			return &tmp_files[i];
	return NULL;
}

static int tmp_write(const char *name, const char *data, size_t n, int append)
{
	if (!*name || strchr(name, '/'))
		return -ENOENT;
	if (strlen(name) >= TMP_NAME_LEN)
		return -ENAMETOOLONG;
	uint64_t f = spin_lock_irqsave(&tmp_lock);
	struct tmp_file *t = tmp_find(name);
	if (!t) {
		for (int i = 0; i < TMP_FILES && !t; i++)
			if (!tmp_files[i].used)
				t = &tmp_files[i];
		if (!t) {
			spin_unlock_irqrestore(&tmp_lock, f);
			return -ENOSPC;
		}
		t->used = 1;
		t->len = 0;
		strlcpy(t->name, name, sizeof(t->name));
	}
	if (!append)
		t->len = 0;
	int err = 0;
	if (t->len + n > TMP_FILE_SIZE) {
		n = TMP_FILE_SIZE - t->len;
		err = -ENOSPC;
	}
	memcpy(t->data + t->len, data, n);
	t->len += n;
	spin_unlock_irqrestore(&tmp_lock, f);
	return err;
}

/* ---- path handling ---- */

/* normalize: absolute, no "//", no trailing '/', no "." or ".." parts */
static int normalize(const char *in, char *out)
{
	size_t o = 0;
	if (in[0] != '/')
		return -ENOENT;
	for (size_t i = 0; in[i];) {
		while (in[i] == '/')
			i++;
		if (!in[i])
			break;
		size_t s = i;
		while (in[i] && in[i] != '/')
			i++;
		size_t len = i - s;
		if (len == 1 && in[s] == '.')
			continue;
		if (len == 2 && in[s] == '.' && in[s + 1] == '.') {
			while (o > 0 && out[o - 1] != '/')
				o--;
			if (o > 0)
				o--;
			continue;
		}
		if (o + 1 + len >= PATH_MAX_LEN)
			return -ENAMETOOLONG;
		out[o++] = '/';
		memcpy(out + o, in + s, len);
		o += len;
	}
	if (o == 0)
		out[o++] = '/';
	out[o] = 0;
	return 0;
}

static const char *under(const char *path, const char *dir)
{
	size_t n = strlen(dir);
	if (strncmp(path, dir, n))
		return NULL;
	if (path[n] == 0)
		return "";
	if (path[n] == '/')
		return path + n + 1;
	return NULL;
}

static int parse_pid(const char *s, size_t n, uint32_t *pid)
{
	uint64_t v;
	if (n == 0 || n > 9 || s[0] == '0' || parse_u64(s, n, &v))
		return -ENOENT;
	*pid = (uint32_t)v;
	return 0;
}

/* /proc/<pid>[/file] */
static int proc_pid(const char *rel, struct task **t, const char **file)
{
	const char *slash = strchr(rel, '/');
	size_t n = slash ? (size_t)(slash - rel) : strlen(rel);
	uint32_t pid;
	if (parse_pid(rel, n, &pid))
		return -ENOENT;
	*t = task_by_pid(pid);
	if (!*t)
		return -ENOENT;
	*file = slash ? slash + 1 : "";
	return 0;
}

static int pid_file_show(struct task *t, const char *file, struct seq_file *m)
{
	if (!strcmp(file, "comm")) {
		seq_printf(m, "%s\n", t->name);
		return 0;
	}
	if (!strcmp(file, "status")) {
		seq_printf(m, "Name:\t%s\nState:\t%s\nPid:\t%u\nCpu:\t%u\nOnCpu:\t%d\nSwitches:\t%lu\n", t->name,
			   state_name(t->state), t->pid, t->cpu, t->on_cpu, t->nr_switches);
		return 0;
	}
	if (!strcmp(file, "stack")) {
		uint64_t pcs[MAX_STACK_DEPTH];
		int n = task_stack(t, pcs, MAX_STACK_DEPTH);
		seq_print_stack(m, pcs, n);
		return 0;
	}
	return -ENOENT;
}

int vfs_is_dir(const char *in)
{
	char path[PATH_MAX_LEN];
	const char *rel;
	if (normalize(in, path))
		return 0;
	if (!strcmp(path, "/") || !strcmp(path, "/proc") || !strcmp(path, "/sys") || !strcmp(path, "/sys/kernel") ||
	    !strcmp(path, "/tmp") || !strcmp(path, "/proc/sys") || !strcmp(path, "/proc/sys/kernel"))
		return 1;
	if ((rel = under(path, LP_DIR)))
		return lp_sysfs_is_dir(rel);
	if ((rel = under(path, "/proc"))) {
		struct task *t;
		const char *file;
		return !proc_pid(rel, &t, &file) && !*file;
	}
	return 0;
}

int vfs_read(const char *in, struct seq_file *m)
{
	char path[PATH_MAX_LEN];
	const char *rel;
	int err = normalize(in, path);
	if (err)
		return err;
	if (vfs_is_dir(path))
		return -EISDIR;
	if ((rel = under(path, LP_DIR)))
		return lp_sysfs_read(rel, m);
	if ((rel = under(path, "/tmp"))) {
		uint64_t f = spin_lock_irqsave(&tmp_lock);
		struct tmp_file *t = tmp_find(rel);
		if (t)
			seq_write(m, t->data, t->len);
		spin_unlock_irqrestore(&tmp_lock, f);
		return t ? 0 : -ENOENT;
	}
	if ((rel = under(path, "/proc"))) {
		for (size_t i = 0; i < ARRAY_SIZE(proc_entries); i++)
			if (!strcmp(rel, proc_entries[i].name))
				return proc_entries[i].show(m, NULL);
		struct task *t;
		const char *file;
		if (!proc_pid(rel, &t, &file))
			return pid_file_show(t, file, m);
	}
	return -ENOENT;
}

static int vfs_write_mode(const char *in, const char *data, size_t n, int append)
{
	char path[PATH_MAX_LEN];
	const char *rel;
	int err = normalize(in, path);
	if (err)
		return err;
	if (vfs_is_dir(path))
		return -EISDIR;
	if ((rel = under(path, LP_DIR)))
		return lp_sysfs_write(rel, data, n);
	if ((rel = under(path, "/tmp")))
		return tmp_write(rel, data, n, append);
	if ((rel = under(path, "/proc"))) {
		for (size_t i = 0; i < ARRAY_SIZE(proc_entries); i++)
			if (!strcmp(rel, proc_entries[i].name))
				return proc_entries[i].write ? proc_entries[i].write(data, n) : -EACCES;
		struct task *t;
		const char *file;
		if (!proc_pid(rel, &t, &file))
			return pid_file_show(t, file, NULL) == -ENOENT ? -ENOENT : -EACCES;
		return -EACCES; /* procfs: no new files */
	}
	return -EACCES; /* read-only tree */
}

int vfs_write(const char *path, const char *data, size_t n) { return vfs_write_mode(path, data, n, 0); }
int vfs_append(const char *path, const char *data, size_t n);
int vfs_append(const char *path, const char *data, size_t n) { return vfs_write_mode(path, data, n, 1); }

int vfs_list(const char *in, struct seq_file *m)
{
	char path[PATH_MAX_LEN];
	const char *rel;
	int err = normalize(in, path);
	if (err)
		return err;
	if (!vfs_is_dir(path)) {
		struct seq_file scratch;
		char b[1];
		seq_init(&scratch, b, sizeof(b));
		err = vfs_read(path, &scratch);
		if (err)
			return err;
		seq_printf(m, "%s\n", path);
		return 0;
	}
	if (!strcmp(path, "/"))
		return seq_puts(m, "proc/\nsys/\ntmp/\n"), 0;
	if (!strcmp(path, "/sys"))
		return seq_puts(m, "kernel/\n"), 0;
	if (!strcmp(path, "/sys/kernel"))
		return seq_puts(m, "livepatch/\n"), 0;
	if ((rel = under(path, LP_DIR)))
		return lp_sysfs_list(rel, m);
	if (!strcmp(path, "/tmp")) {
		uint64_t f = spin_lock_irqsave(&tmp_lock);
		for (int i = 0; i < TMP_FILES; i++)
			if (tmp_files[i].used)
				seq_printf(m, "%s\n", tmp_files[i].name);
		spin_unlock_irqrestore(&tmp_lock, f);
		return 0;
	}
	if (!strcmp(path, "/proc/sys"))
		return seq_puts(m, "kernel/\n"), 0;
	if (!strcmp(path, "/proc/sys/kernel"))
		return seq_puts(m, "printk\n"), 0;
	if (!strcmp(path, "/proc")) {
		for (size_t i = 0; i < ARRAY_SIZE(proc_entries); i++)
			if (!strchr(proc_entries[i].name, '/'))
				seq_printf(m, "%s\n", proc_entries[i].name);
		seq_puts(m, "sys/\n");
		for (unsigned int i = 0; i < KLP_MAX_TASKS; i++) {
			struct task *t = &task_table[i];
			uint32_t st = READ_ONCE(t->state);
			if ((st == KLP_TASK_RUNNING || st == KLP_TASK_SLEEPING) && t->pid)
				seq_printf(m, "%u/\n", t->pid);
		}
		return 0;
	}
	if ((rel = under(path, "/proc")))
		return seq_puts(m, "comm\nstack\nstatus\n"), 0;
	return -ENOENT;
}
