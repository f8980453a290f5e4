/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kernel_api.h: the guest kernel functions and data that live patches may
 * use (the "exported symbols" of the klp-kvm guest kernel). Patch objects are
 * compiled against this header with the kernel's flags; every name here is
 * a global symbol of vmlinux.
 */
#ifndef KLP_KERNEL_API_H
#define KLP_KERNEL_API_H

#include <stddef.h>
#include <stdint.h>

#ifndef notrace
/* notrace: no fentry call site, so the function cannot be live patched. */
#define notrace __attribute__((__no_instrument_function__, __section__(".text.notrace")))
#endif
#ifndef noinline
#define noinline __attribute__((__noinline__))
#endif
/*
 * __patchable: a function meant to be live patched. noipa keeps gcc from
 * cloning it (.isra/.constprop), folding it with an identical one or
 * propagating facts about it into its callers, any of which would make a
 * replacement of it silently incomplete.
 */
#ifndef __patchable
#define __patchable __attribute__((__noinline__, __noipa__))
#endif

struct seq_file;

/* seq_file output (procfs style): append formatted text to m. */
int seq_printf(struct seq_file *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int seq_puts(struct seq_file *m, const char *s);

/*
 * Kernel log: the dmesg ring buffer and the console (COM1). Returns bytes.
 * As in Linux, a format may start with a log level (KERN_ERR "..."): the
 * ring keeps every message, the console shows those whose level is below
 * console_loglevel; a message without one has default_message_loglevel.
 */
int printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define KERN_SOH "\001"
#define KERN_EMERG KERN_SOH "0"
#define KERN_ALERT KERN_SOH "1"
#define KERN_CRIT KERN_SOH "2"
#define KERN_ERR KERN_SOH "3"
#define KERN_WARNING KERN_SOH "4"
#define KERN_NOTICE KERN_SOH "5"
#define KERN_INFO KERN_SOH "6"
#define KERN_DEBUG KERN_SOH "7"

/*
 * Linux's console_printk[]: console_loglevel, default_message_loglevel,
 * minimum_console_loglevel, default_console_loglevel, as
 * /proc/sys/kernel/printk shows them (and sets them, by a write).
 */
extern int console_printk[4];
#define console_loglevel (console_printk[0])
#define default_message_loglevel (console_printk[1])
#define minimum_console_loglevel (console_printk[2])
#define default_console_loglevel (console_printk[3])
#define CONSOLE_LOGLEVEL_DEFAULT 7     /* anything more serious than KERN_DEBUG */
#define CONSOLE_LOGLEVEL_MOTORMOUTH 15 /* everything */
#define MESSAGE_LOGLEVEL_DEFAULT 4

/*
 * pr_info/pr_err: printk at KERN_INFO/KERN_ERR with the caller's pr_fmt
 * prefix, as in Linux: a file that wants one defines pr_fmt(fmt) before
 * including this header.
 */
#ifndef pr_fmt
#define pr_fmt(fmt) fmt
#endif
#define pr_info(fmt, ...) printk(KERN_INFO pr_fmt(fmt), ##__VA_ARGS__)
#define pr_err(fmt, ...) printk(KERN_ERR pr_fmt(fmt), ##__VA_ARGS__)

/* Sleep (scheduled out) for at least ms milliseconds. */
void msleep(unsigned int ms);
/* Busy-wait for at least us microseconds. */
void udelay(unsigned long us);
/* Nanoseconds since boot. */
uint64_t ktime_get_ns(void);

/*
 * Memory (Linux's slab API): kmalloc returns size bytes, 16-byte aligned,
 * or NULL when out of memory; kzalloc also zeroes them; kfree(NULL) does
 * nothing. The allocator never sleeps, so every gfp_t behaves alike; the
 * flags exist so that code ported from Linux keeps its arguments.
 */
typedef unsigned int gfp_t;
#define GFP_KERNEL 0x0cc0u
#define GFP_ATOMIC 0x0820u
#define GFP_NOWAIT 0x0800u
void *kmalloc(size_t size, gfp_t flags);
void *kzalloc(size_t size, gfp_t flags);
void kfree(const void *p);

/*
 * jiffies: milliseconds since boot (the guest's HZ is 1000), advanced on
 * CPU 0's tick. Compare with time_after()/time_before(), as in Linux.
 */
extern volatile unsigned long jiffies;
#define KLP_HZ 1000
static inline unsigned long msecs_to_jiffies(unsigned int ms) { return ms * (KLP_HZ / 1000); }
#define time_after(a, b) ((long)((b) - (a)) < 0)
#define time_before(a, b) time_after(b, a)

/* The kernel command line, as /proc/cmdline shows it. */
extern char saved_command_line[];

/* Renders /proc/cmdline: seq_printf(m, "%s\n", saved_command_line). */
int cmdline_proc_show(struct seq_file *m, void *v);

/*
 * Consistency pair: klp_pair_b() returns KLP_PAIR_B_VERSION; klp_pair_a()
 * busy-loops briefly, calls klp_pair_b() and returns
 * (KLP_PAIR_A_VERSION << 16) | klp_pair_b(). A caller that sees
 * (r >> 16) != (r & 0xffff) has observed a half-applied patch.
 */
#define KLP_PAIR_A_VERSION 1
#define KLP_PAIR_B_VERSION 1
unsigned long klp_pair_a(void);
unsigned long klp_pair_b(void);

/*
 * A thread entering klp_park_fn() stays inside it, sleeping, while the
 * park flag is set (shell "park on|off", /proc/klp_park).
 */
void klp_park_fn(void);
extern volatile int klp_park_flag;

/*
 * A counter with no meaning to the kernel, shown in /proc/klp_selftest as
 * "callback_counter": patch callbacks bump it to prove they ran.
 */
extern volatile unsigned long klp_callback_counter;

/* bench_fn_0000 .. bench_fn_NNNN (generated). */
#include "bench_fns.h"

#endif /* KLP_KERNEL_API_H */
