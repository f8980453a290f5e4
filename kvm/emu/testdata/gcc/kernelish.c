/* Freestanding code in the style of the guest kernel, compiled by
 * TestGCCOutputImplemented with the guest kernel's flags (docs/architecture.md) to check that the
 * interpreter implements every instruction gcc emits for it. */
#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>

typedef struct { volatile int locked; } spinlock_t;

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

void spin_lock(spinlock_t *l)
{
	while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
		while (l->locked)
			cpu_relax();
}

int spin_trylock(spinlock_t *l)
{
	int old = 0;
	return __atomic_compare_exchange_n(&l->locked, &old, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

void spin_unlock(spinlock_t *l) { __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE); }

long atomic_add_return(long *p, long v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
void atomic_or(unsigned long *p, unsigned long v) { __atomic_or_fetch(p, v, __ATOMIC_SEQ_CST); }
void atomic_and(unsigned long *p, unsigned long v) { __atomic_and_fetch(p, v, __ATOMIC_SEQ_CST); }
void atomic_inc(int *p) { __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST); }
int atomic_dec_and_test(int *p) { return __atomic_sub_fetch(p, 1, __ATOMIC_SEQ_CST) == 0; }
int test_and_clear_bit(long nr, unsigned long *addr)
{
	unsigned char c;
	__asm__ volatile("lock btrq %2, %1; setc %0" : "=qm"(c), "+m"(*addr) : "Ir"(nr) : "memory");
	return c;
}
int test_and_set_bit(long nr, unsigned long *addr)
{
	unsigned char c;
	__asm__ volatile("lock btsq %2, %1; setc %0" : "=qm"(c), "+m"(*addr) : "Ir"(nr) : "memory");
	return c;
}
unsigned __int128 cas128(unsigned __int128 *p, unsigned __int128 o, unsigned __int128 n)
{
	__atomic_compare_exchange_n(p, &o, n, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	return o;
}

void *memcpy(void *d, const void *s, size_t n)
{
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return d;
}
void *memset(void *d, int c, size_t n)
{
	void *r = d;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return r;
}
void *memmove(void *d, const void *s, size_t n)
{
	unsigned char *dp = d;
	const unsigned char *sp = s;
	if (dp < sp) {
		while (n--)
			*dp++ = *sp++;
	} else {
		while (n--)
			dp[n] = sp[n];
	}
	return d;
}
int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;
	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}
size_t strlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }
int strcmp(const char *a, const char *b) { while (*a && *a == *b) a++, b++; return (unsigned char)*a - (unsigned char)*b; }
char *strncpy(char *d, const char *s, size_t n) { size_t i; for (i = 0; i < n && s[i]; i++) d[i] = s[i]; for (; i < n; i++) d[i] = 0; return d; }

struct big { long a[16]; };
void copy_big(struct big *d, const struct big *s) { *d = *s; }
void zero_big(struct big *d) { *d = (struct big){0}; }

unsigned long udiv(unsigned long a, unsigned long b) { return a / b; }
long sdiv(long a, long b) { return a % b; }
unsigned udiv32(unsigned a, unsigned b) { return a / b + a % b; }
unsigned long div10(unsigned long a) { return a / 10; }
long sdiv7(long a) { return a / 7; }
unsigned long mulhi(unsigned long a, unsigned long b) { return (unsigned long)(((unsigned __int128)a * b) >> 64); }
__int128 smul(long a, long b) { return (__int128)a * b; }
int ctz(unsigned long x) { return __builtin_ctzl(x); }
int clz(unsigned long x) { return __builtin_clzl(x); }
int ctz32(unsigned x) { return __builtin_ctz(x); }
int ffs_(int x) { return __builtin_ffs(x); }
int popc(unsigned long x) { return __builtin_popcountl(x); }
unsigned long bswap(unsigned long x) { return __builtin_bswap64(x); }
unsigned bswap32(unsigned x) { return __builtin_bswap32(x); }
unsigned short bswap16(unsigned short x) { return __builtin_bswap16(x); }
unsigned long rotl(unsigned long x, int n) { return x << n | x >> (64 - n); }
long sar(long x, int n) { return x >> n; }
int sel(int a, int b, int c) { return a < b ? c : b; }
long minl(long a, long b) { return a < b ? a : b; }
int is_neg(long a) { return a < 0; }
int parity(unsigned x) { return __builtin_parity(x); }
long absl(long x) { return x < 0 ? -x : x; }
int sx8(signed char c) { return c; }
unsigned long zx16(unsigned short c) { return c; }
long sx32(int c) { return c; }
int overflow_add(long a, long b, long *r) { return __builtin_add_overflow(a, b, r); }
int overflow_mul(long a, long b, long *r) { return __builtin_mul_overflow(a, b, r); }
unsigned long shift_var(unsigned long a, unsigned long b, int n) { return (a << n) | (b >> (64 - n)); }
unsigned char bits8(unsigned char a) { return (unsigned char)(a * 3 + (a >> 2)); }
short mul16(short a, short b) { return a * b; }

int sw(int x)
{
	switch (x) {
	case 0: return 11;
	case 1: return 22;
	case 2: return 35;
	case 3: return 47;
	case 4: return 51;
	case 5: return 68;
	case 6: return 71;
	case 7: return 89;
	case 9: return 3;
	default: return -1;
	}
}

int vsnprintf_(char *buf, size_t n, const char *fmt, va_list ap)
{
	size_t i = 0;
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			if (i + 1 < n) buf[i] = *fmt;
			i++;
			continue;
		}
		fmt++;
		if (*fmt == 'd' || *fmt == 'x') {
			unsigned long v = *fmt == 'd' ? (unsigned long)va_arg(ap, long) : va_arg(ap, unsigned long);
			char tmp[24];
			int k = 0;
			unsigned base = *fmt == 'd' ? 10 : 16;
			do { tmp[k++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
			while (k--) { if (i + 1 < n) buf[i] = tmp[k]; i++; }
		} else if (*fmt == 's') {
			const char *s = va_arg(ap, const char *);
			while (*s) { if (i + 1 < n) buf[i] = *s; i++; s++; }
		}
	}
	if (n) buf[i < n ? i : n - 1] = 0;
	return (int)i;
}

int snprintf_(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf_(buf, n, fmt, ap);
	va_end(ap);
	return r;
}

struct task { struct task *next; long state; unsigned long rsp, rbp, rip; int cpu; char name[16]; };
struct task tasks[64];
__thread int dummy_tls;
struct percpu { struct task *current; int id; long ticks; };
static inline struct percpu *this_cpu(void)
{
	struct percpu *p;
	__asm__ volatile("mov %%gs:0, %0" : "=r"(p));
	return p;
}
long tick(void) { return ++this_cpu()->ticks; }
struct task *pick_next(int cpu)
{
	for (int i = 0; i < 64; i++)
		if (tasks[i].state == 0 && tasks[i].cpu == cpu)
			return &tasks[i];
	return 0;
}
void (*handlers[8])(long);
void dispatch(int i, long v) { if (handlers[i & 7]) handlers[i & 7](v); }

static inline unsigned long read_cr3(void) { unsigned long v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline void write_cr3(unsigned long v) { __asm__ volatile("mov %0, %%cr3" :: "r"(v) : "memory"); }
static inline unsigned long read_cr0(void) { unsigned long v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline unsigned long read_cr2(void) { unsigned long v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline void wrmsr(unsigned msr, unsigned long v) { __asm__ volatile("wrmsr" :: "c"(msr), "a"((unsigned)v), "d"((unsigned)(v >> 32))); }
static inline unsigned long rdmsr(unsigned msr) { unsigned lo, hi; __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr)); return lo | (unsigned long)hi << 32; }
static inline unsigned long rdtsc(void) { unsigned lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return lo | (unsigned long)hi << 32; }
static inline void outb(unsigned short p, unsigned char v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(p)); }
static inline unsigned char inb(unsigned short p) { unsigned char v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline void outl(unsigned short p, unsigned v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(p)); }
struct dtr { unsigned short limit; unsigned long base; } __attribute__((packed));

void sys_stuff(struct dtr *g, struct dtr *i, unsigned long *out)
{
	__asm__ volatile("lgdt %0" :: "m"(*g));
	__asm__ volatile("lidt %0" :: "m"(*i));
	__asm__ volatile("ltr %w0" :: "r"(0x18));
	__asm__ volatile("invlpg (%0)" :: "r"(out) : "memory");
	__asm__ volatile("swapgs");
	__asm__ volatile("cli; sti; hlt");
	__asm__ volatile("mfence; lfence; sfence" ::: "memory");
	__asm__ volatile("int3; int $0x80; ud2");
	unsigned a, b, c, d;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
	out[0] = read_cr3() + read_cr0() + read_cr2() + rdtsc() + rdmsr(0x1b) + a + b + c + d;
	write_cr3(out[1]);
	wrmsr(0x832, out[2]);
	outb(0x3f8, (unsigned char)out[3]);
	outl(0xf4, (unsigned)out[4]);
	out[5] = inb(0x3fd);
	unsigned long fl;
	__asm__ volatile("pushfq; pop %0; cli" : "=r"(fl) :: "memory");
	__asm__ volatile("push %0; popfq" :: "r"(fl) : "memory", "cc");
	__asm__ volatile("pushq $0x08; lea 1f(%%rip), %%rax; push %%rax; lretq; 1:" ::: "rax", "memory");
	__asm__ volatile("mov %%rsp, %%rax; pushq $0x10; push %%rax; pushfq; pushq $0x08; lea 1f(%%rip), %%rax; push %%rax; iretq; 1:" ::: "rax", "memory");
	__asm__ volatile("mov %0, %%ds; mov %0, %%es; mov %0, %%ss; mov %0, %%fs; mov %0, %%gs" :: "r"(0x10));
	__asm__ volatile("cld; std; cld; clc; stc; cmc");
}
