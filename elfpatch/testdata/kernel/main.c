/*
 * Fixture "kernel" for elfpatch tests: independent of the real guest kernel,
 * with the same API names the sample patches use, plus things a real vmlinux
 * has: local duplicates, notrace functions, data objects and gcc clones
 * (.isra/.constprop/.part/.cold), which this file is compiled to produce
 * (no -fno-partial-inlining, with -freorder-blocks-and-partition).
 */
#define notrace __attribute__((no_instrument_function))
#define noinline __attribute__((noinline))
#define unlikely(x) __builtin_expect(!!(x), 0)

struct seq_file {
	char *buf;
	unsigned long size, count;
};

struct guest_abi {
	unsigned long version, ntasks;
};
struct guest_abi klp_guest_abi = { 1, 0 };

volatile unsigned long sink;
volatile unsigned long klp_callback_counter; /* bumped by livepatch-callbacks */

int seq_printf(struct seq_file *m, const char *fmt, ...)
{
	unsigned long i;

	for (i = 0; fmt[i] && m->count < m->size; i++)
		m->buf[m->count++] = fmt[i];
	return 0;
}

static const char cmdline[] = "console=ttyS0";

int cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", cmdline);
	return 0;
}

static noinline int klp_dup_fn(int x)
{
	return x * 3;
}

unsigned long klp_pair_b(void)
{
	return 1;
}

unsigned long klp_pair_a(void)
{
	return (1UL << 16) | klp_pair_b();
}

void klp_park_fn(void)
{
	sink++;
}

notrace unsigned long fixture_notrace_fn(unsigned long x)
{
	return x + sink;
}

/* .isra: only one field of the struct is used, so IPA-SRA passes it alone. */
static noinline unsigned long sum_count(struct seq_file *m)
{
	unsigned long i, s = 0;

	for (i = 0; i < m->count; i++)
		s += i ^ sink;
	return s;
}

/* .constprop: always called with the same constant. */
static noinline unsigned long scale(unsigned long x, unsigned long k)
{
	unsigned long i, s = 0;

	for (i = 0; i < k; i++)
		s += (x >> i) ^ sink;
	return s;
}

/* .cold: the unlikely branch goes to a separate .text.unlikely fragment. */
noinline void __attribute__((cold)) fixture_report(unsigned long v)
{
	sink = v;
}

unsigned long fixture_check(unsigned long x)
{
	if (unlikely(x > 1000)) {
		fixture_report(x);
		sink += x * 7;
		fixture_report(x + 1);
		return 0;
	}
	return x + 1;
}

/* .part: a cheap early exit inlined into callers, the rest split off. */
static unsigned long slow_path(unsigned long x)
{
	unsigned long i, s = 0;

	if (x == 0)
		return 0;
	for (i = 0; i < x; i++) {
		s += sink * i;
		s ^= s >> 3;
		s += sink;
		sink = s;
	}
	for (i = 0; i < x; i++) {
		s += sink * i;
		s ^= s << 5;
		sink = s;
	}
	return s;
}

unsigned long fixture_use1(unsigned long x) { return slow_path(x) + 1; }
unsigned long fixture_use2(unsigned long x) { return slow_path(x + 2) + 3; }
unsigned long fixture_use3(unsigned long x) { return slow_path(x * 5) + 7; }

unsigned long fixture_clones(struct seq_file *m)
{
	return sum_count(m) + sum_count(m + 1) + scale(sink, 5) + scale(sink + 1, 5);
}

extern int dup_entry(int x);
extern unsigned long bench_all(unsigned long x);

notrace void start_kernel(void)
{
	struct seq_file m = { 0, 0, 0 };

	cmdline_proc_show(&m, 0);
	sink = klp_dup_fn((int)sink) + dup_entry(4) + klp_pair_a() + fixture_clones(&m) +
	       fixture_check(sink) + fixture_use1(sink) + fixture_use2(sink) +
	       fixture_use3(sink) + fixture_notrace_fn(1) + bench_all(1);
	klp_park_fn();
}
