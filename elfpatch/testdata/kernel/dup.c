/* Second object: another static klp_dup_fn (sympos 2 by address) and
 * another local name shared with main.c (sink_local exists in both). */
extern volatile unsigned long sink;
static unsigned long sink_local;

static __attribute__((noinline)) int klp_dup_fn(int x)
{
	return x * 5 + (int)sink;
}

int dup_entry(int x)
{
	sink_local += x;
	return klp_dup_fn(x) + (int)sink_local;
}
