// SPDX-License-Identifier: GPL-2.0
/*
 * shell.c: the command shell, on the COM1 console and behind the agent's
 * guest-exec. Commands write through a struct out, so the same code serves
 * both. Quoting: '...' and "..."; redirection: > and >> after echo.
 */
#include "kernel.h"

#define SHELL_LINE_MAX 512
#define SHELL_MAX_ARGS 16
#define CAT_BUF_SIZE VFS_MAX_FILE

int vfs_append(const char *path, const char *data, size_t n);

void oprintf(struct out *o, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 1)
		n = sizeof(buf) - 1;
	o->write(o, buf, (size_t)n);
}

/*
 * split: words into store (NUL-separated), honouring quotes; ">" and ">>"
 * are words of their own even when written against their neighbours.
 */
static int split(const char *r, char *store, size_t storesz, char **argv, int max)
{
	int argc = 0;
	size_t w = 0;
	for (;;) {
		while (*r == ' ' || *r == '\t')
			r++;
		if (!*r)
			break;
		if (argc == max || w + 3 >= storesz)
			return -E2BIG;
		argv[argc++] = store + w;
		if (*r == '>') {
			store[w++] = *r++;
			if (*r == '>')
				store[w++] = *r++;
			store[w++] = 0;
			continue;
		}
		char q = 0;
		while (*r && (q || (*r != ' ' && *r != '\t' && *r != '>'))) {
			if (!q && (*r == '"' || *r == '\'')) {
				q = *r++;
				continue;
			}
			if (q && *r == q) {
				q = 0;
				r++;
				continue;
			}
			if (w + 2 >= storesz)
				return -E2BIG;
			store[w++] = *r++;
		}
		if (q)
			return -EINVAL;
		store[w++] = 0;
	}
	return argc;
}

/* one buffer for cat/ls output: the shell runs on one thread at a time per caller */
static char cat_buf[2][CAT_BUF_SIZE];
static volatile uint32_t cat_buf_busy[2];

static char *buf_get(int *slot)
{
	for (;;) {
		for (int i = 0; i < 2; i++)
			if (!__atomic_exchange_n(&cat_buf_busy[i], 1, __ATOMIC_ACQUIRE)) {
				*slot = i;
				return cat_buf[i];
			}
		msleep(1);
	}
}

static void buf_put(int slot) { __atomic_store_n(&cat_buf_busy[slot], 0, __ATOMIC_RELEASE); }

static int cmd_cat(int argc, char **argv, struct out *o)
{
	int status = 0, slot;
	char *b = buf_get(&slot);
	for (int i = 1; i < argc; i++) {
		struct seq_file m;
		seq_init(&m, b, CAT_BUF_SIZE);
		int err = vfs_read(argv[i], &m);
		if (err) {
			oprintf(o, "cat: %s: %s\n", argv[i], strerror(err));
			status = 1;
			continue;
		}
		o->write(o, m.buf, m.count);
	}
	buf_put(slot);
	return status;
}

static int cmd_ls(int argc, char **argv, struct out *o)
{
	int status = 0, slot;
	char *b = buf_get(&slot);
	for (int i = 1; i < argc || i == 1; i++) {
		const char *p = i < argc ? argv[i] : "/";
		struct seq_file m;
		seq_init(&m, b, CAT_BUF_SIZE);
		int err = vfs_list(p, &m);
		if (err) {
			oprintf(o, "ls: cannot access '%s': %s\n", p, strerror(err));
			status = 2;
			continue;
		}
		if (argc > 2)
			oprintf(o, "%s:\n", p);
		o->write(o, m.buf, m.count);
		if (i + 1 >= argc)
			break;
	}
	buf_put(slot);
	return status;
}

static int cmd_echo(int argc, char **argv, struct out *o)
{
	char buf[SHELL_LINE_MAX + 2];
	size_t n = 0;
	const char *target = NULL;
	int append = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], ">") || !strcmp(argv[i], ">>")) {
			if (i + 1 >= argc) {
				oprintf(o, "sh: syntax error near unexpected token `newline'\n");
				return 2;
			}
			append = argv[i][1] == '>';
			target = argv[++i];
			continue;
		}
		if (argv[i][0] == '>') {
			append = argv[i][1] == '>';
			target = argv[i] + (append ? 2 : 1);
			continue;
		}
		size_t l = strlen(argv[i]);
		if (n && n < SHELL_LINE_MAX)
			buf[n++] = ' ';
		if (n + l > SHELL_LINE_MAX)
			l = SHELL_LINE_MAX - n;
		memcpy(buf + n, argv[i], l);
		n += l;
	}
	buf[n++] = '\n';
	if (!target) {
		o->write(o, buf, n);
		return 0;
	}
	int err = append ? vfs_append(target, buf, n) : vfs_write(target, buf, n);
	if (!err)
		return 0;
	if (err == -ENOENT || err == -EACCES || err == -EISDIR || err == -ENOTDIR || err == -ENAMETOOLONG)
		oprintf(o, "sh: %s: %s\n", target, strerror(err));
	else
		oprintf(o, "sh: echo: write error: %s\n", strerror(err));
	return 1;
}

static int cmd_ps(struct out *o)
{
	int slot;
	char *b = buf_get(&slot);
	struct seq_file m;
	seq_init(&m, b, CAT_BUF_SIZE);
	vfs_read("/proc/tasks", &m);
	o->write(o, m.buf, m.count);
	buf_put(slot);
	return 0;
}

static int cmd_stack(int argc, char **argv, struct out *o)
{
	uint64_t pid;
	if (argc != 2 || parse_u64(argv[1], strlen(argv[1]), &pid) || pid > UINT32_MAX) {
		oprintf(o, "usage: stack PID\n");
		return 2;
	}
	struct task *t = task_by_pid((uint32_t)pid);
	if (!t) {
		oprintf(o, "stack: %lu: no such task\n", pid);
		return 1;
	}
	if (t == current_task() || READ_ONCE(t->on_cpu) != -1) {
		oprintf(o, "stack: %lu: running on CPU %d\n", pid, t->on_cpu);
		return 1;
	}
	char buf[4096];
	uint64_t pcs[MAX_STACK_DEPTH];
	struct seq_file m;
	seq_init(&m, buf, sizeof(buf));
	seq_print_stack(&m, pcs, task_stack(t, pcs, MAX_STACK_DEPTH));
	o->write(o, m.buf, m.count);
	return 0;
}

static int onoff(const char *s, int *v)
{
	if (!strcmp(s, "on") || !strcmp(s, "1")) {
		*v = 1;
		return 0;
	}
	if (!strcmp(s, "off") || !strcmp(s, "0")) {
		*v = 0;
		return 0;
	}
	return -1;
}

static void dmesg_emit(void *ctx, const char *s, size_t n)
{
	struct out *o = ctx;
	o->write(o, s, n);
}

static const char help_text[] =
	"commands:\n"
	"  help                 this text\n"
	"  ls [PATH...]         list a directory\n"
	"  cat FILE...          print files\n"
	"  echo [ARG...] [> FILE | >> FILE]\n"
	"  ps                   tasks (also /proc/tasks)\n"
	"  stack PID            a sleeping task's stack (also /proc/PID/stack)\n"
	"  uptime               time since boot\n"
	"  dmesg                kernel log\n"
	"  uname [-a]           kernel version\n"
	"  park on|off          hold the parker thread inside klp_park_fn()\n"
	"  workers on|off       start/stop the patchable-function workers\n"
	"  hog [CPU] | hog stop an endless loop thread (preemption demo)\n"
	"  sleep MS             sleep\n"
	"  int3                 raise a breakpoint exception (reported, harmless)\n"
	"  oops                 execute ud2: oops report and panic (powers off with 100)\n"
	"  true | false         exit status 0 | 1\n"
	"  poweroff [CODE]      power the machine off\n";

int shell_exec(const char *line_in, struct out *o)
{
	char store[2 * SHELL_LINE_MAX];
	char *argv[SHELL_MAX_ARGS];
	if (strnlen(line_in, SHELL_LINE_MAX) >= SHELL_LINE_MAX) {
		oprintf(o, "sh: line too long\n");
		return 2;
	}
	int argc = split(line_in, store, sizeof(store), argv, SHELL_MAX_ARGS);
	if (argc < 0) {
		oprintf(o, "sh: %s\n", argc == -E2BIG ? "too many arguments" : "unterminated quote");
		return 2;
	}
	if (argc == 0)
		return 0;
	const char *c = argv[0];
	if (!strcmp(c, "help")) {
		o->write(o, help_text, sizeof(help_text) - 1);
		return 0;
	}
	if (!strcmp(c, "ls"))
		return cmd_ls(argc, argv, o);
	if (!strcmp(c, "cat"))
		return cmd_cat(argc, argv, o);
	if (!strcmp(c, "echo"))
		return cmd_echo(argc, argv, o);
	if (!strcmp(c, "ps"))
		return cmd_ps(o);
	if (!strcmp(c, "stack"))
		return cmd_stack(argc, argv, o);
	if (!strcmp(c, "true"))
		return 0;
	if (!strcmp(c, "false"))
		return 1;
	if (!strcmp(c, "uptime")) {
		uint64_t ns = ktime_get_ns();
		oprintf(o, "up %lu.%03lu s, %u CPUs, %u tasks\n", ns / NSEC_PER_SEC, (ns % NSEC_PER_SEC) / NSEC_PER_MSEC,
			nr_cpus_online, nr_tasks_alive());
		return 0;
	}
	if (!strcmp(c, "uname")) {
		oprintf(o, "%s\n", argc > 1 ? kernel_version_string : "Linux");
		return 0;
	}
	if (!strcmp(c, "dmesg")) {
		dmesg_read(dmesg_emit, o);
		return 0;
	}
	if (!strcmp(c, "park") || !strcmp(c, "workers")) {
		int v;
		if (argc != 2 || onoff(argv[1], &v)) {
			oprintf(o, "usage: %s on|off\n", c);
			return 2;
		}
		if (c[0] == 'p')
			park_set(v);
		else
			WRITE_ONCE(workers_enabled, v);
		return 0;
	}
	if (!strcmp(c, "hog")) {
		if (argc == 2 && !strcmp(argv[1], "stop")) {
			hog_stop();
			return 0;
		}
		uint64_t cpu = smp_processor_id();
		if (argc == 2 && (parse_u64(argv[1], strlen(argv[1]), &cpu) || cpu >= nr_cpus_online)) {
			oprintf(o, "hog: bad CPU %s\n", argv[1]);
			return 2;
		}
		if (hog_start((unsigned int)cpu)) {
			oprintf(o, "hog: cannot start\n");
			return 1;
		}
		oprintf(o, "hog started on CPU %lu\n", cpu);
		return 0;
	}
	if (!strcmp(c, "sleep")) {
		uint64_t ms;
		if (argc != 2 || parse_u64(argv[1], strlen(argv[1]), &ms) || ms > 600000) {
			oprintf(o, "usage: sleep MS\n");
			return 2;
		}
		msleep((unsigned int)ms);
		return 0;
	}
	if (!strcmp(c, "int3")) {
		__asm__ __volatile__("int3");
		return 0;
	}
	if (!strcmp(c, "oops")) {
		printk("oops: executing ud2 on request\n");
		__asm__ __volatile__("ud2");
		return 1;
	}
	if (!strcmp(c, "poweroff")) {
		uint64_t code = 0;
		if (argc == 2 && (parse_u64(argv[1], strlen(argv[1]), &code) || code > 255)) {
			oprintf(o, "usage: poweroff [0-255]\n");
			return 2;
		}
		printk("reboot: Power down (%lu)\n", code);
		power_off((uint32_t)code);
	}
	oprintf(o, "sh: %s: command not found\n", c);
	return 127;
}

/* ---- the console shell ---- */
static void console_out(struct out *o, const char *s, size_t n)
{
	(void)o;
	console_write(s, n);
}

static void shell_thread(void *arg)
{
	(void)arg;
	struct out o = { console_out, NULL };
	char line[SHELL_LINE_MAX];
	size_t n = 0;
	unsigned int idle_ms = 1;
	console_write("# ", 2);
	for (;;) {
		int c = uart_getc(PORT_COM1);
		if (c < 0) {
			idle_ms = min(idle_ms + 1, 10u);
			msleep(idle_ms);
			continue;
		}
		idle_ms = 1;
		if (c == '\r' || c == '\n') {
			console_write("\n", 1);
			line[n] = 0;
			int st = shell_exec(line, &o);
			(void)st;
			n = 0;
			console_write("# ", 2);
		} else if (c == 0x7f || c == 0x08) {
			if (n) {
				n--;
				console_write("\b \b", 3);
			}
		} else if (c == 0x03) { /* ^C */
			n = 0;
			console_write("^C\n# ", 5);
		} else if (c >= 0x20 && c < 0x7f && n + 1 < sizeof(line)) {
			char ch = (char)c;
			line[n++] = ch;
			console_write(&ch, 1);
		}
	}
}

void shell_start(void) { kthread_create_on(0, shell_thread, NULL, "shell"); }
