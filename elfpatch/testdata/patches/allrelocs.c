/*
 * Test patch exercising every accepted relocation type against both the
 * patch's own sections and the fixture kernel's symbols:
 *   R_X86_64_64    pointers in the klp structs, a kernel address in data
 *   R_X86_64_PC32  rip-relative loads of kernel data and of patch data
 *   R_X86_64_PLT32 calls to kernel functions
 *   R_X86_64_32S   -mcmodel=kernel immediate addresses (strings, kernel data)
 *   R_X86_64_32    an absolute kernel symbol (fixture_abs_small = 0x1234),
 *                  from the asm statement below
 */
#include "livepatch.h"

struct seq_file;
struct guest_abi;
extern int seq_printf(struct seq_file *m, const char *fmt, ...);
extern unsigned long klp_pair_b(void);
extern volatile unsigned long sink;
extern struct guest_abi klp_guest_abi;
extern int klp_dup_fn_1(int) __asm__(KLP_SYM("vmlinux", "klp_dup_fn", "1"));

unsigned long patch_counter;
struct guest_abi *const abi_ptr = &klp_guest_abi;	/* R_X86_64_64 -> kernel */

static unsigned long abs_small(void)
{
	unsigned int v;

	asm("movl $fixture_abs_small, %0" : "=r"(v));	/* R_X86_64_32 */
	return v;
}

static int new_cmdline_proc_show(struct seq_file *m, void *v)
{
	patch_counter++;					/* PC32 -> patch */
	seq_printf(m, "%s %lu\n", "allrelocs", sink);		/* 32S, PC32, PLT32 */
	return (int)(unsigned long)&klp_guest_abi + klp_dup_fn_1(1);	/* 32S, PLT32 .klp.sym */
}

static unsigned long new_klp_pair_b(void)
{
	return abs_small() + klp_pair_b() + (unsigned long)abi_ptr;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = new_cmdline_proc_show, },
	{ .old_name = "klp_pair_b", .new_func = new_klp_pair_b, .old_sympos = 1, },
	{ }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

KLP_MODULE_NAME("allrelocs");
KLP_PATCH(patch);
