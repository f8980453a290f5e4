/* SPDX-License-Identifier: GPL-2.0 */
/* kernel.h: internal interfaces of the klp-kvm guest kernel. */
#ifndef KLP_KERNEL_H
#define KLP_KERNEL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "boot_info.h"
#include "kernel_api.h"
#include "klp_abi.h"
#include "offsets.h"

#define KERNEL_VIRT_BASE 0xffffffff80000000UL
#define HZ 1000
#define NSEC_PER_SEC 1000000000UL
#define NSEC_PER_MSEC 1000000UL
#define TIME_SLICE_TICKS 4

#define VEC_TIMER 32
#define VEC_RESCHED 0xf0
#define VEC_SPURIOUS 0xff

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define barrier() __asm__ __volatile__("" ::: "memory")
#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define __noreturn __attribute__((noreturn))
#define __unused __attribute__((unused))
#define min(a, b) ((a) < (b) ? (a) : (b))
#define max(a, b) ((a) > (b) ? (a) : (b))

/* errno values (Linux numbering) */
#define EPERM 1
#define ENOENT 2
#define EIO 5
#define E2BIG 7
#define EAGAIN 11
#define ENOMEM 12
#define EACCES 13
#define EFAULT 14
#define EBUSY 16
#define EEXIST 17
#define ENODEV 19
#define ENOTDIR 20
#define EISDIR 21
#define EINVAL 22
#define ENOSPC 28
#define ERANGE 34
#define ENOSYS 38
#define ENAMETOOLONG 36
#define ETIMEDOUT 110
const char *strerror(int err);
const char *errno_name(int err);

/* ---- port I/O, MSRs, CPU ---- */
static inline void outb(uint16_t port, uint8_t v) { __asm__ __volatile__("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint64_t irq_save(void);
static inline void irq_restore(uint64_t f);
/*
 * inb runs with interrupts off. An IN exits to the VMM, which completes it
 * on the next run; an engine that delivered an interrupt between the exit
 * and the completion (kvm/emu did) would write the result, and move RIP,
 * inside the interrupt handler. Two instructions of cli cost nothing.
 */
static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	uint64_t f = irq_save();
	__asm__ __volatile__("inb %1, %0" : "=a"(v) : "Nd"(port));
	irq_restore(f);
	return v;
}
static inline void outl(uint16_t port, uint32_t v) { __asm__ __volatile__("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	__asm__ __volatile__("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ __volatile__("wrmsr" ::"c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}
static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}
static inline void cpu_relax(void) { __asm__ __volatile__("pause" ::: "memory"); }
static inline uint64_t irq_save(void)
{
	uint64_t f;
	__asm__ __volatile__("pushfq; popq %0; cli" : "=r"(f)::"memory");
	return f;
}
static inline void irq_restore(uint64_t f)
{
	if (f & 0x200)
		__asm__ __volatile__("sti" ::: "memory");
}
static inline void irq_enable(void) { __asm__ __volatile__("sti" ::: "memory"); }
static inline void irq_disable(void) { __asm__ __volatile__("cli" ::: "memory"); }
static inline int irqs_enabled(void)
{
	uint64_t f;
	__asm__ __volatile__("pushfq; popq %0" : "=r"(f));
	return (f & 0x200) != 0;
}

/* ---- spinlocks (always taken with interrupts off: no preemption inside) ---- */
typedef struct {
	volatile uint32_t locked;
	uint32_t owner_cpu; /* for debugging only */
} spinlock_t;
#define SPINLOCK_INIT { 0, 0 }
void spin_lock(spinlock_t *l);
void spin_unlock(spinlock_t *l);
uint64_t spin_lock_irqsave(spinlock_t *l);
void spin_unlock_irqrestore(spinlock_t *l, uint64_t flags);

/* ---- tasks and scheduling ---- */
struct task {
	/* ABI fields: offsets are exported through klp_guest_abi */
	uint32_t state;
	uint32_t pid;
	char name[KLP_TASK_NAME_LEN];
	uint64_t saved_rsp;
	uint64_t saved_rbp;
	uint64_t saved_rip;
	uint64_t stack_base;
	uint64_t stack_size;
	int32_t on_cpu;
	uint32_t cpu;
	/* private */
	struct task *rq_next;
	struct task *timer_next;
	uint64_t wake_at; /* ns, for timed sleeps */
	void (*fn)(void *);
	void *arg;
	uint64_t nr_switches;
	uint64_t run_ticks;
	int on_rq;
	int on_timer;
	int slice;
	int is_idle;
	const char *wait_reason;
};

struct runqueue {
	spinlock_t lock;
	struct task *head, *tail;
	uint32_t nr_running;
	struct task *sleepers; /* timed sleeps, unsorted */
};

struct percpu {
	struct percpu *self; /* %gs:0 */
	uint32_t cpu;
	uint32_t apic_id;
	struct task *current;
	struct task *idle;
	struct runqueue rq;
	volatile int need_resched;
	int in_irq;
	uint64_t ticks;
	uint64_t idle_ticks;
	uint64_t ctx_switches;
	uint64_t irqs;
	uint64_t ipis;
	int online;
};

extern struct percpu percpu[KLP_MAX_CPUS];
extern struct task task_table[KLP_MAX_TASKS];
extern uint64_t cpu_current_task[KLP_MAX_CPUS];
extern uint32_t nr_cpus_online;
extern uint32_t nr_cpus_boot;

static inline struct percpu *this_cpu(void)
{
	struct percpu *p;
	__asm__ __volatile__("movq %%gs:0, %0" : "=r"(p));
	return p;
}
static inline struct task *current_task(void) { return this_cpu()->current; }
static inline unsigned int smp_processor_id(void) { return this_cpu()->cpu; }

void sched_init_cpu(unsigned int cpu);
__noreturn void cpu_idle_loop(void);
struct task *kthread_create_on(unsigned int cpu, void (*fn)(void *), void *arg, const char *name);
__noreturn void kthread_exit(void);
void schedule(void);
void yield(void);
void wake_up_process(struct task *t);
/* Sleep until woken or the deadline (ns, 0 = none) passes; the caller rechecks its condition. */
void sleep_until(uint64_t deadline_ns, const char *why);
void sched_tick(void);
void sched_ipi(void);
struct task *task_by_pid(uint32_t pid);
uint32_t nr_tasks_alive(void);
void klp_switch_to(struct task *prev, struct task *next);
void klp_task_start(void);
extern char klp_switch_to_end[];
extern uint64_t sched_ctx_switches_total(void);

/* completion: one waiter, any number of completers */
struct completion {
	volatile int done;
	struct task *volatile waiter;
};
void init_completion(struct completion *c);
void complete(struct completion *c);
/* returns 0, or -ETIMEDOUT when timeout_ns (0 = forever) passed first */
int wait_for_completion_timeout(struct completion *c, uint64_t timeout_ns);

/* ---- time, APIC, SMP ---- */
extern uint64_t boot_tsc_hz;
uint64_t ktime_get_ns(void);
void apic_init_cpu(void);
void apic_eoi(void);
void apic_send_ipi(unsigned int cpu, unsigned int vector);
__noreturn void power_off(uint32_t code);

/* ---- boot info ---- */
extern struct boot_info boot_info_copy;
extern uint64_t heap_start, heap_end, heap_next;
void *kmalloc_pages(size_t bytes); /* never freed; NULL when out of memory */

/* ---- kmalloc (slab.c; kmalloc/kzalloc/kfree are in kernel_api.h) ---- */
struct kmalloc_stats {
	uint64_t objects;  /* live objects */
	uint64_t bytes;    /* bytes asked for by the live objects */
	uint64_t allocs;   /* successful kmallocs */
	uint64_t frees;    /* kfrees of live objects */
	uint64_t failures; /* kmallocs that returned NULL */
	uint64_t bad_frees; /* kfrees refused: not a live kmalloc object */
	uint64_t pages;    /* pages taken from kmalloc_pages */
};
void kmalloc_stats(struct kmalloc_stats *st);

/* ---- shadow variables (shadow.c; the API is include/klp_shadow.h) ---- */
struct klp_shadow_counts {
	uint64_t live;          /* attached variables */
	uint64_t allocs;        /* variables attached */
	uint64_t frees;         /* variables freed */
	uint64_t races;         /* speculative allocations thrown away: <obj, id> appeared meanwhile */
	uint64_t duplicates;    /* klp_shadow_alloc of an existing <obj, id> (WARN) */
	uint64_t ctor_failures; /* constructors that refused */
	uint64_t nomem;         /* allocations that failed */
};
#define KLP_SHADOW_HASH_BITS 12 /* as Linux's klp_shadow_hash */
#define KLP_SHADOW_BUCKETS (1 << KLP_SHADOW_HASH_BITS)
unsigned int klp_shadow_bucket_of(const void *obj);
#define KLP_SHADOW_CENSUS_IDS 8
struct klp_shadow_census {
	struct klp_shadow_counts counts;
	unsigned int nr_ids; /* ids listed, lowest first */
	struct {
		unsigned long id;
		uint64_t count;
	} ids[KLP_SHADOW_CENSUS_IDS];
	uint64_t other; /* variables of ids beyond the list */
};
uint64_t klp_shadow_census_begin(struct klp_shadow_census *c); /* returns with the shadow lock held */
void klp_shadow_census_end(uint64_t flags);
uint64_t klp_shadow_count(unsigned long id); /* variables of that id */
/* called, when set, between a new variable's allocation and the search under the lock (self-test) */
extern void (*volatile klp_shadow_race_hook)(void *obj, unsigned long id);
int shadow_selftest(void); /* shadow_selftest.c: failures */
int selftest_report(int ok, const char *prefix, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 4, 5))); /* selftest.c: 1 if !ok */
/* the shadow-variable demo (shadow_mod.c, include/shadow_mod.h): /proc/klp_shadow */
void shadow_mod_init(void);
int shadow_mod_show(struct seq_file *m, void *v);
int shadow_mod_write(const char *data, size_t n);

/* ---- WARN (trap.c) ---- */
void __warn(const char *func, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
extern volatile uint64_t nr_warnings;
/* WARN(cond, fmt, ...): report (message and call trace) when cond holds; the value is cond */
#define WARN(cond, ...)                                                                                               \
	({                                                                                                            \
		int __ret_warn = !!(cond);                                                                            \
		if (unlikely(__ret_warn))                                                                             \
			__warn(__func__, __VA_ARGS__);                                                                \
		__ret_warn;                                                                                           \
	})

/* ---- console, printk ---- */
void uart_init(uint16_t port);
void uart_putc(uint16_t port, char c);
void uart_write(uint16_t port, const char *s, size_t n, int crlf);
int uart_getc(uint16_t port); /* -1 if no byte is waiting */
void console_write(const char *s, size_t n);
int vprintk(const char *fmt, va_list ap);
void dmesg_read(void (*emit)(void *ctx, const char *s, size_t n), void *ctx);
int printk_sysctl_show(struct seq_file *m, void *v);  /* /proc/sys/kernel/printk */
int printk_sysctl_write(const char *data, size_t n);
__noreturn void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- string/format ---- */
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strchr(const char *s, int c);
size_t strlcpy(char *d, const char *s, size_t n);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* parse an unsigned decimal or 0x-hex number; returns 0 or -EINVAL/-ERANGE */
int parse_u64(const char *s, size_t n, uint64_t *out);

/* ---- seq_file ---- */
struct seq_file {
	char *buf;
	size_t size;
	size_t count;
	int overflow;
};
void seq_init(struct seq_file *m, char *buf, size_t size);
int seq_write(struct seq_file *m, const void *p, size_t n);
int seq_putc(struct seq_file *m, char c);
int seq_vprintf(struct seq_file *m, const char *fmt, va_list ap);

/* ---- kallsyms and stacks ---- */
struct kallsym {
	uint64_t addr;
	uint64_t name; /* address of the NUL-terminated name */
};
extern const struct kallsym kallsyms_table[];
extern const uint64_t kallsyms_count;
/* returns the name of the symbol containing addr, sets *off and *size */
const char *kallsyms_lookup(uint64_t addr, uint64_t *off, uint64_t *size);
uint64_t kallsyms_lookup_name(const char *name);
#define MAX_STACK_DEPTH 32
/* Walks a switched-out task's frame chain; returns frame count, pcs[0] = saved RIP. */
int task_stack(struct task *t, uint64_t *pcs, int max);
int stack_has_function(const uint64_t *pcs, int n, const char *name);
void seq_print_stack(struct seq_file *m, const uint64_t *pcs, int n);

/* ---- VFS ---- */
#define VFS_MAX_FILE 65536
int vfs_read(const char *path, struct seq_file *m);
int vfs_write(const char *path, const char *data, size_t n);
int vfs_list(const char *path, struct seq_file *m);
int vfs_is_dir(const char *path);
int proc_stat_show(struct seq_file *m, void *v);
int proc_selftest_show(struct seq_file *m, void *v);

/* livepatch sysfs (rendered from klp_sysfs_state) */
int lp_sysfs_read(const char *rel, struct seq_file *m);
int lp_sysfs_list(const char *rel, struct seq_file *m);
int lp_sysfs_is_dir(const char *rel);
int lp_sysfs_write(const char *rel, const char *data, size_t n);
int lp_sysfs_nr_patches(void);

/* ---- agent ---- */
void agent_start(void);
/* Send an event and wait for the host's reply; returns -errno or 0. */
int agent_sysfs_write_event(const char *path, const char *value, uint64_t timeout_ns);
extern uint64_t agent_requests, agent_errors;

/* ---- shell ---- */
struct out {
	void (*write)(struct out *o, const char *s, size_t n);
	void *ctx;
};
int shell_exec(const char *line, struct out *o); /* returns exit status */
void oprintf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void shell_start(void);

/* ---- workloads ---- */
struct klp_selftest_stats {
	/* per CPU: each worker only adds to its own counters, readers sum */
	uint64_t pair_calls[KLP_MAX_CPUS];
	uint64_t pair_violations[KLP_MAX_CPUS];
	uint64_t pair_last[KLP_MAX_CPUS];
	uint64_t bench_calls[KLP_MAX_CPUS];
	volatile uint64_t park_entries;
	volatile int32_t parked;
	volatile uint64_t hog_loops;
};
extern struct klp_selftest_stats klp_stats;
extern volatile int workers_enabled;
int klp_dup_a_value(int x);
int klp_dup_b_value(int x);
void workloads_start(void);
void park_set(int on);
struct task *parker_task(void);
uint64_t stat_sum(const uint64_t *per_cpu);
int hog_start(unsigned int cpu);
void hog_stop(void);
void selftest_start(void);
extern int selftest_mode;

/* ---- misc ---- */
extern const char kernel_version_string[];
const char *cmdline_get(const char *key); /* value of key=value, "" for a bare key, NULL if absent */

#endif /* KLP_KERNEL_H */
