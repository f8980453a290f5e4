// SPDX-License-Identifier: GPL-2.0
/*
 * agent.c: the guest agent on COM2, JSON lines in the QEMU Guest Agent
 * style. One reader thread owns the receive side: it answers the host's
 * replies to guest events (sysfs-reply) at once and queues every other
 * line for a worker thread, which executes commands in order and writes
 * the responses. The reader never blocks on a command, so a command blocked
 * on the host (a sysfs write from guest-exec) cannot stop the reply it
 * waits for from being read. guest-call requests go to a worker of their
 * own (agent_caller): the host runs a patch's callbacks with guest-call
 * while it handles a sysfs write that a guest-file-write or guest-exec on
 * the main worker is still waiting for, and a single worker would queue
 * the callback behind the very command that waits for it. A request may
 * carry "id" (any number or string): it is echoed in the response so the
 * host can match them, in whatever order they complete.
 */
#include "json.h"

#define AGENT_LINE_MAX 8192
#define AGENT_QUEUE 32
#define AGENT_CALL_QUEUE 4 /* guest-call requests waiting for agent_caller */
#define AGENT_CALL_LINE 512 /* a guest-call request is one short object */
#define AGENT_MAX_TOKENS 256
#define AGENT_PENDING 8
#define AGENT_ID_MAX 64
#define FILE_BUF_SIZE VFS_MAX_FILE
#define REPLY_BUF_SIZE (2 * VFS_MAX_FILE + 1024)
#define EXEC_BUF_SIZE 32768

uint64_t agent_requests, agent_errors;

/* ---- transmit: a sleeping lock, replies can be long ---- */
static volatile uint32_t tx_locked;

static void tx_lock(void)
{
	while (__atomic_exchange_n(&tx_locked, 1, __ATOMIC_ACQUIRE))
		msleep(1);
}

static void tx_unlock(void) { __atomic_store_n(&tx_locked, 0, __ATOMIC_RELEASE); }

static void agent_send(const char *s, size_t n)
{
	tx_lock();
	uart_write(PORT_COM2, s, n, 0);
	uart_write(PORT_COM2, "\n", 1, 0);
	tx_unlock();
}

/* ---- request queue (reader -> worker) ---- */
struct agent_job {
	size_t len;
	int too_large;
	char line[AGENT_LINE_MAX];
};
static struct agent_job jobs[AGENT_QUEUE];
static volatile uint32_t q_head, q_tail; /* head: next to run, tail: next free */
static spinlock_t q_lock = SPINLOCK_INIT;
static struct task *worker_task;

/* ---- guest-call queue (reader -> caller); also under q_lock ---- */
struct call_job {
	size_t len;
	char line[AGENT_CALL_LINE];
};
static struct call_job calls[AGENT_CALL_QUEUE];
static volatile uint32_t c_head, c_tail;
static struct task *caller_task;

/* ---- pending guest events waiting for the host ---- */
struct pending {
	int used;
	uint64_t id;
	int err;
	struct completion done;
};
static struct pending pendings[AGENT_PENDING];
static spinlock_t pend_lock = SPINLOCK_INIT;
static uint64_t next_event_id = 1;

static void send_error(const char *idraw, const char *cls, const char *desc, int err)
{
	char buf[512];
	struct seq_file m;
	seq_init(&m, buf, sizeof(buf));
	seq_puts(&m, "{\"error\":{\"class\":\"");
	seq_puts(&m, cls);
	seq_puts(&m, "\",\"desc\":\"");
	json_escape(&m, desc, strlen(desc));
	seq_puts(&m, "\"");
	if (err)
		seq_printf(&m, ",\"errno\":%d,\"errno_name\":\"%s\"", err, errno_name(err));
	seq_puts(&m, "}");
	if (idraw && *idraw)
		seq_printf(&m, ",\"id\":%s", idraw);
	seq_puts(&m, "}");
	__atomic_fetch_add(&agent_errors, 1, __ATOMIC_RELAXED);
	agent_send(m.buf, m.count);
}

/* ---- commands ---- */
static char file_buf[FILE_BUF_SIZE];
static char reply_buf[REPLY_BUF_SIZE];
static char arg_path[512];
static char arg_data[AGENT_LINE_MAX];
static char exec_buf[EXEC_BUF_SIZE];

static void reply_begin(struct seq_file *m) { seq_init(m, reply_buf, sizeof(reply_buf)); }

static void reply_end(struct seq_file *m, const char *idraw)
{
	if (idraw && *idraw)
		seq_printf(m, ",\"id\":%s", idraw);
	seq_puts(m, "}");
	if (m->overflow) {
		send_error(idraw, "GenericError", "reply too large", E2BIG);
		return;
	}
	agent_send(m->buf, m->count);
}

struct exec_out {
	struct seq_file m;
};

static void exec_write(struct out *o, const char *s, size_t n)
{
	struct exec_out *e = o->ctx;
	seq_write(&e->m, s, n);
}

static const char *const commands[] = { "guest-ping", "guest-sync", "guest-info", "guest-file-read",
					"guest-file-write", "guest-exec", "guest-call", "sysfs-reply" };

/*
 * guest_call: run a host-loaded function (a patch's callback) with one
 * argument. Only addresses inside the patch area qualify: anything else
 * would let the agent channel jump anywhere in the kernel.
 */
static int guest_call(uint64_t addr, uint64_t arg, uint64_t *ret)
{
	uint64_t base = boot_info_copy.patch_area_virt, size = boot_info_copy.patch_area_size;
	if (!base || !size || addr < base || addr - base >= size)
		return -EFAULT;
	unsigned long (*fn)(unsigned long) = (unsigned long (*)(unsigned long))addr;
	*ret = fn(arg);
	return 0;
}

/*
 * do_guest_call answers one guest-call request. It runs on agent_caller,
 * concurrently with cmd_dispatch on agent_worker, so it uses no static
 * buffer: its reply is built on its own stack.
 */
static void do_guest_call(const char *line, const char *idraw, const struct jtok *t, int nt, int args)
{
	char buf[160];
	struct seq_file m;
	uint64_t addr, a = 0, ret;
	int at = json_get(line, t, nt, args, "arg");
	if (json_u64(line, t, json_get(line, t, nt, args, "addr"), &addr) || (at >= 0 && json_u64(line, t, at, &a))) {
		send_error(idraw, "GenericError", "guest-call: \"addr\" (unsigned integer) required, \"arg\" optional",
			   EINVAL);
		return;
	}
	int err = guest_call(addr, a, &ret);
	if (err) {
		char desc[160];
		snprintf(desc, sizeof(desc), "guest-call: 0x%lx is outside the patch area [0x%lx, +0x%lx)", addr,
			 boot_info_copy.patch_area_virt, boot_info_copy.patch_area_size);
		send_error(idraw, "GenericError", desc, -err);
		return;
	}
	seq_init(&m, buf, sizeof(buf));
	seq_printf(&m, "{\"return\":{\"value\":%lu}", ret);
	if (idraw && *idraw)
		seq_printf(&m, ",\"id\":%s", idraw);
	seq_puts(&m, "}");
	agent_send(m.buf, m.count);
}

/* noipa: keep one copy under its own name (no .constprop clone) */
static __attribute__((__noipa__)) void cmd_dispatch(const char *line, const char *idraw, const struct jtok *t, int nt)
{
	char name[64];
	int ex = json_get(line, t, nt, 0, "execute");
	if (ex < 0 || json_str(line, t, ex, name, sizeof(name)) < 0) {
		send_error(idraw, "GenericError", "expected {\"execute\": \"<command>\", \"arguments\": {...}}", EINVAL);
		return;
	}
	int args = json_get(line, t, nt, 0, "arguments");
	if (args >= 0 && t[args].type != J_OBJ) {
		send_error(idraw, "GenericError", "\"arguments\" must be an object", EINVAL);
		return;
	}
	struct seq_file m;
	if (!strcmp(name, "guest-call")) {
		/* normally routed to agent_caller by the reader; same answer here */
		do_guest_call(line, idraw, t, nt, args);
	} else if (!strcmp(name, "guest-ping")) {
		reply_begin(&m);
		seq_puts(&m, "{\"return\":{}");
		reply_end(&m, idraw);
	} else if (!strcmp(name, "guest-sync")) {
		int64_t id;
		if (json_int(line, t, json_get(line, t, nt, args, "id"), &id)) {
			send_error(idraw, "GenericError", "guest-sync: \"id\" (integer) required", EINVAL);
			return;
		}
		reply_begin(&m);
		seq_printf(&m, "{\"return\":%ld", id);
		reply_end(&m, idraw);
	} else if (!strcmp(name, "guest-info")) {
		reply_begin(&m);
		seq_puts(&m, "{\"return\":{\"version\":\"");
		json_escape(&m, kernel_version_string, strlen(kernel_version_string));
		seq_printf(&m, "\",\"cpus\":%u,\"uptime_ms\":%lu,\"tasks\":%u,\"ticks\":%lu,\"requests\":%lu,\"errors\":%lu",
			   nr_cpus_online, ktime_get_ns() / NSEC_PER_MSEC, nr_tasks_alive(), percpu[0].ticks,
			   agent_requests, agent_errors);
		seq_puts(&m, ",\"supported_commands\":[");
		for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
			seq_printf(&m, "%s\"%s\"", i ? "," : "", commands[i]);
		seq_puts(&m, "]}");
		reply_end(&m, idraw);
	} else if (!strcmp(name, "guest-file-read")) {
		if (json_str(line, t, json_get(line, t, nt, args, "path"), arg_path, sizeof(arg_path)) < 0) {
			send_error(idraw, "GenericError", "guest-file-read: \"path\" (string) required", EINVAL);
			return;
		}
		struct seq_file f;
		seq_init(&f, file_buf, sizeof(file_buf));
		int err = vfs_read(arg_path, &f);
		if (err) {
			char desc[600];
			snprintf(desc, sizeof(desc), "%s: %s", arg_path, strerror(err));
			send_error(idraw, "GenericError", desc, -err);
			return;
		}
		reply_begin(&m);
		seq_puts(&m, "{\"return\":{\"content\":\"");
		json_escape(&m, f.buf, f.count);
		seq_printf(&m, "\",\"count\":%lu,\"truncated\":%s}", (unsigned long)f.count, f.overflow ? "true" : "false");
		reply_end(&m, idraw);
	} else if (!strcmp(name, "guest-file-write")) {
		int dl;
		if (json_str(line, t, json_get(line, t, nt, args, "path"), arg_path, sizeof(arg_path)) < 0 ||
		    (dl = json_str(line, t, json_get(line, t, nt, args, "data"), arg_data, sizeof(arg_data))) < 0) {
			send_error(idraw, "GenericError", "guest-file-write: \"path\" and \"data\" (strings) required",
				   EINVAL);
			return;
		}
		int err = vfs_write(arg_path, arg_data, (size_t)dl);
		if (err) {
			char desc[600];
			snprintf(desc, sizeof(desc), "%s: write error: %s", arg_path, strerror(err));
			send_error(idraw, "GenericError", desc, -err);
			return;
		}
		reply_begin(&m);
		seq_printf(&m, "{\"return\":{\"count\":%d}", dl);
		reply_end(&m, idraw);
	} else if (!strcmp(name, "guest-exec")) {
		if (json_str(line, t, json_get(line, t, nt, args, "cmd"), arg_data, sizeof(arg_data)) < 0) {
			send_error(idraw, "GenericError", "guest-exec: \"cmd\" (string) required", EINVAL);
			return;
		}
		static struct exec_out eo;
		seq_init(&eo.m, exec_buf, sizeof(exec_buf));
		struct out o = { exec_write, &eo };
		int status = shell_exec(arg_data, &o);
		reply_begin(&m);
		seq_puts(&m, "{\"return\":{\"output\":\"");
		json_escape(&m, eo.m.buf, eo.m.count);
		seq_printf(&m, "\",\"status\":%d,\"truncated\":%s}", status, eo.m.overflow ? "true" : "false");
		reply_end(&m, idraw);
	} else {
		char desc[128];
		snprintf(desc, sizeof(desc), "The command %s has not been found", name);
		send_error(idraw, "CommandNotFound", desc, 0);
	}
}

/* raw text of the request's "id" if it is a short number or string */
static void get_idraw(const char *line, const struct jtok *t, int nt, char *out)
{
	out[0] = 0;
	int id = json_get(line, t, nt, 0, "id");
	if (id < 0)
		return;
	uint32_t s = t[id].start, e = t[id].end;
	if (t[id].type == J_STR) {
		s--;
		e++;
	} else if (t[id].type != J_NUM) {
		return;
	}
	if (e - s >= AGENT_ID_MAX)
		return;
	memcpy(out, line + s, e - s);
	out[e - s] = 0;
}

static struct jtok worker_toks[AGENT_MAX_TOKENS];

static void run_job(struct agent_job *j)
{
	char idraw[AGENT_ID_MAX];
	__atomic_fetch_add(&agent_requests, 1, __ATOMIC_RELAXED);
	if (j->too_large) {
		char desc[80];
		snprintf(desc, sizeof(desc), "request too large (limit %d bytes)", AGENT_LINE_MAX - 1);
		send_error(NULL, "GenericError", desc, E2BIG);
		return;
	}
	int nt = json_parse(j->line, j->len, worker_toks, AGENT_MAX_TOKENS);
	if (nt < 0) {
		send_error(NULL, "GenericError", nt == -E2BIG ? "JSON too deep or too many tokens" : "JSON parse error",
			   -nt);
		return;
	}
	if (worker_toks[0].type != J_OBJ) {
		send_error(NULL, "GenericError", "request must be a JSON object", EINVAL);
		return;
	}
	get_idraw(j->line, worker_toks, nt, idraw);
	cmd_dispatch(j->line, idraw, worker_toks, nt);
}

static void agent_worker(void *arg)
{
	(void)arg;
	for (;;) {
		while (READ_ONCE(q_head) == READ_ONCE(q_tail))
			sleep_until(ktime_get_ns() + 100 * NSEC_PER_MSEC, "agent_wait");
		run_job(&jobs[q_head % AGENT_QUEUE]);
		uint64_t f = spin_lock_irqsave(&q_lock);
		q_head++;
		spin_unlock_irqrestore(&q_lock, f);
	}
}

/* agent_caller runs queued guest-call requests, one at a time */
static struct jtok caller_toks[32];

static void run_call(struct call_job *j)
{
	char idraw[AGENT_ID_MAX];
	__atomic_fetch_add(&agent_requests, 1, __ATOMIC_RELAXED);
	int nt = json_parse(j->line, j->len, caller_toks, ARRAY_SIZE(caller_toks));
	if (nt <= 0 || caller_toks[0].type != J_OBJ) {
		send_error(NULL, "GenericError", "guest-call: malformed request", EINVAL);
		return;
	}
	get_idraw(j->line, caller_toks, nt, idraw);
	int args = json_get(j->line, caller_toks, nt, 0, "arguments");
	if (args >= 0 && caller_toks[args].type != J_OBJ) {
		send_error(idraw, "GenericError", "\"arguments\" must be an object", EINVAL);
		return;
	}
	do_guest_call(j->line, idraw, caller_toks, nt, args);
}

static void agent_caller(void *arg)
{
	(void)arg;
	for (;;) {
		while (READ_ONCE(c_head) == READ_ONCE(c_tail))
			sleep_until(ktime_get_ns() + 100 * NSEC_PER_MSEC, "agent_wait");
		run_call(&calls[c_head % AGENT_CALL_QUEUE]);
		uint64_t f = spin_lock_irqsave(&q_lock);
		c_head++;
		spin_unlock_irqrestore(&q_lock, f);
	}
}

/* ---- guest events ---- */
int agent_sysfs_write_event(const char *path, const char *value, uint64_t timeout_ns)
{
	struct pending *p = NULL;
	uint64_t f = spin_lock_irqsave(&pend_lock);
	for (int i = 0; i < AGENT_PENDING && !p; i++)
		if (!pendings[i].used)
			p = &pendings[i];
	if (p) {
		p->used = 1;
		p->id = next_event_id++;
		p->err = 0;
		init_completion(&p->done);
	}
	spin_unlock_irqrestore(&pend_lock, f);
	if (!p)
		return -EBUSY;
	char buf[512];
	struct seq_file m;
	seq_init(&m, buf, sizeof(buf));
	seq_puts(&m, "{\"event\":\"sysfs-write\",\"data\":{\"path\":\"");
	json_escape(&m, path, strlen(path));
	seq_puts(&m, "\",\"value\":\"");
	json_escape(&m, value, strlen(value));
	seq_printf(&m, "\",\"id\":%lu}}", p->id);
	agent_send(m.buf, m.count);
	int r = wait_for_completion_timeout(&p->done, timeout_ns);
	f = spin_lock_irqsave(&pend_lock);
	if (!r)
		r = p->err ? -p->err : 0;
	p->used = 0;
	spin_unlock_irqrestore(&pend_lock, f);
	return r;
}

/* host's answer to an event: {"execute":"sysfs-reply","arguments":{"id":N,"errno":E}} */
static struct jtok reader_toks[32];

/*
 * try_queue_call hands a guest-call request to agent_caller. 1: queued (or
 * refused with EBUSY when its queue is full); 0: not a guest-call.
 */
static int try_queue_call(const char *line, size_t len)
{
	uint64_t f = spin_lock_irqsave(&q_lock);
	int full = c_tail - c_head >= AGENT_CALL_QUEUE;
	if (!full) {
		struct call_job *j = &calls[c_tail % AGENT_CALL_QUEUE];
		j->len = len;
		memcpy(j->line, line, len + 1);
		c_tail++;
	}
	spin_unlock_irqrestore(&q_lock, f);
	if (full) {
		char idraw[AGENT_ID_MAX];
		int nt = json_parse(line, len, reader_toks, ARRAY_SIZE(reader_toks));
		get_idraw(line, reader_toks, nt, idraw);
		send_error(idraw, "GenericError", "agent busy: guest-call queue full", EBUSY);
	} else {
		wake_up_process(caller_task);
	}
	return 1;
}

/*
 * try_reader_line handles the lines the reader answers itself: a
 * sysfs-reply (completes the waiting event) and a guest-call (queued for
 * agent_caller). 1: handled; 0: a command for agent_worker.
 */
static int try_reader_line(const char *line, size_t len)
{
	/* cheap filter before parsing: both are short lines */
	if (len >= AGENT_CALL_LINE)
		return 0;
	int nt = json_parse(line, len, reader_toks, ARRAY_SIZE(reader_toks));
	if (nt <= 0 || reader_toks[0].type != J_OBJ)
		return 0;
	char name[32];
	int ex = json_get(line, reader_toks, nt, 0, "execute");
	if (ex < 0 || json_str(line, reader_toks, ex, name, sizeof(name)) < 0)
		return 0;
	if (!strcmp(name, "guest-call"))
		return try_queue_call(line, len);
	if (strcmp(name, "sysfs-reply"))
		return 0;
	int args = json_get(line, reader_toks, nt, 0, "arguments");
	int64_t id, err;
	if (json_int(line, reader_toks, json_get(line, reader_toks, nt, args, "id"), &id) ||
	    json_int(line, reader_toks, json_get(line, reader_toks, nt, args, "errno"), &err)) {
		printk("agent: malformed sysfs-reply ignored\n");
		return 1;
	}
	if (err < 0)
		err = -err;
	if (err > 4095)
		err = EIO;
	uint64_t f = spin_lock_irqsave(&pend_lock);
	struct pending *p = NULL;
	for (int i = 0; i < AGENT_PENDING; i++)
		if (pendings[i].used && pendings[i].id == (uint64_t)id)
			p = &pendings[i];
	/* complete under the lock: a timed-out waiter may free the slot */
	if (p) {
		p->err = (int)err;
		complete(&p->done);
	}
	spin_unlock_irqrestore(&pend_lock, f);
	return 1;
}

static struct agent_job rx;

static void line_done(void)
{
	size_t n = rx.len;
	while (n && (rx.line[n - 1] == '\r' || rx.line[n - 1] == ' ' || rx.line[n - 1] == '\t'))
		n--;
	rx.len = n;
	rx.line[n] = 0;
	if (!rx.too_large && (n == 0 || try_reader_line(rx.line, n))) {
		rx.len = 0;
		return;
	}
	/*
	 * Queue full: wait a little for the worker (it may be blocked on the
	 * host, whose answer only this thread can read, hence the bound).
	 */
	for (int i = 0; i < 1000 && READ_ONCE(q_tail) - READ_ONCE(q_head) >= AGENT_QUEUE; i++)
		msleep(1);
	uint64_t f = spin_lock_irqsave(&q_lock);
	int full = q_tail - q_head >= AGENT_QUEUE;
	if (!full) {
		struct agent_job *j = &jobs[q_tail % AGENT_QUEUE];
		j->len = rx.len;
		j->too_large = rx.too_large;
		memcpy(j->line, rx.line, rx.len + 1);
		q_tail++;
	}
	spin_unlock_irqrestore(&q_lock, f);
	if (full) {
		/* answer with the request's id when it parses, so the host need not time out */
		char idraw[AGENT_ID_MAX] = "";
		int nt = rx.too_large ? -1 : json_parse(rx.line, rx.len, reader_toks, ARRAY_SIZE(reader_toks));
		if (nt > 0 && reader_toks[0].type == J_OBJ)
			get_idraw(rx.line, reader_toks, nt, idraw);
		send_error(idraw, "GenericError", "agent busy: request queue full", EBUSY);
	}
	else
		wake_up_process(worker_task);
	rx.len = 0;
	rx.too_large = 0;
}

static void agent_reader(void *arg)
{
	(void)arg;
	unsigned int idle_ms = 1;
	uint64_t last_rx = 0;
	for (;;) {
		int got = 0, c;
		while ((c = uart_getc(PORT_COM2)) >= 0) {
			got = 1;
			if (c == '\n') {
				line_done();
				continue;
			}
			if (rx.len + 1 >= AGENT_LINE_MAX) {
				rx.too_large = 1; /* drop the rest of this line */
				continue;
			}
			rx.line[rx.len++] = (char)c;
		}
		/*
		 * Poll without sleeping for 2 ms after traffic (a reply is often
		 * followed by the next request), then back off from 1 to 10 ms.
		 */
		uint64_t now = ktime_get_ns();
		if (got)
			last_rx = now;
		if (now - last_rx < 2 * NSEC_PER_MSEC) {
			yield();
			continue;
		}
		idle_ms = min(idle_ms + 1, 10u);
		msleep(idle_ms);
		if (got)
			idle_ms = 1;
	}
}

void agent_start(void)
{
	worker_task = kthread_create_on(0, agent_worker, NULL, "agent_worker");
	caller_task = kthread_create_on(0, agent_caller, NULL, "agent_caller");
	kthread_create_on(0, agent_reader, NULL, "agent_reader");
}
