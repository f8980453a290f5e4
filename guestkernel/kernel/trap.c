// SPDX-License-Identifier: GPL-2.0
/* trap.c: IDT, interrupt dispatch, exception reports. */
#include "kernel.h"

struct idt_entry {
	uint16_t off_lo;
	uint16_t sel;
	uint8_t ist;
	uint8_t type; /* 0x8e: present, DPL 0, 64-bit interrupt gate */
	uint16_t off_mid;
	uint32_t off_hi;
	uint32_t zero;
} __attribute__((packed));

_Static_assert(sizeof(struct idt_entry) == 16, "idt entry");
_Static_assert(sizeof(struct klp_irq_regs) == 22 * 8, "irq regs");

static struct idt_entry idt[256] __attribute__((aligned(16)));
extern const uint64_t isr_stub_table[];
static const uint8_t idt_vectors[] = {
	0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17,
	18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, VEC_TIMER, VEC_RESCHED, VEC_SPURIOUS,
};

static const char *const exc_names[32] = {
	"divide error", "debug", "NMI", "breakpoint", "overflow", "bound range",
	"invalid opcode", "device not available", "double fault", "coprocessor overrun",
	"invalid TSS", "segment not present", "stack fault", "general protection",
	"page fault", "reserved", "x87 FP", "alignment check", "machine check",
	"SIMD FP", "virtualization", "control protection",
};

notrace void idt_init(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(idt_vectors); i++) {
		uint64_t a = isr_stub_table[i];
		struct idt_entry *e = &idt[idt_vectors[i]];
		e->off_lo = a & 0xffff;
		e->sel = 0x08;
		e->ist = 0;
		e->type = 0x8e;
		e->off_mid = (a >> 16) & 0xffff;
		e->off_hi = a >> 32;
		e->zero = 0;
	}
}

notrace void idt_load(void)
{
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) d = { sizeof(idt) - 1, (uint64_t)idt };
	__asm__ __volatile__("lidt %0" ::"m"(d));
}

/* is_ret: addr is a return address, looked up at addr - 1 (noreturn callers) */
static notrace void print_sym(const char *what, uint64_t addr, int is_ret)
{
	uint64_t off, size;
	const char *n = kallsyms_lookup(addr - (is_ret ? 1 : 0), &off, &size);
	if (n)
		printk("%s: %016lx <%s+0x%lx/0x%lx>\n", what, addr, n, off + (is_ret ? 1 : 0), size);
	else
		printk("%s: %016lx\n", what, addr);
}

/* print_call_trace: the frame chain from fp, bounded by the current task's stack */
static notrace void print_call_trace(uint64_t fp)
{
	struct task *t = current_task();
	printk("Call Trace:\n");
	uint64_t lo = t ? t->stack_base : 0, hi = t ? t->stack_base + t->stack_size : 0;
	for (int i = 0; i < MAX_STACK_DEPTH && fp >= lo && fp + 16 <= hi && (fp & 7) == 0; i++) {
		uint64_t ret = ((uint64_t *)fp)[1];
		print_sym(" ", ret, 1);
		uint64_t next = ((uint64_t *)fp)[0];
		if (next <= fp)
			break;
		fp = next;
	}
}

static notrace void dump_regs(struct klp_irq_regs *r)
{
	uint64_t cr2;
	__asm__ __volatile__("mov %%cr2, %0" : "=r"(cr2));
	struct task *t = current_task();
	printk("CPU: %u PID: %u Comm: %s\n", smp_processor_id(), t ? t->pid : 0, t ? t->name : "?");
	print_sym("RIP", r->rip, 0);
	printk("RSP: %016lx EFLAGS: %08lx CR2: %016lx ERR: %lx\n", r->rsp, r->rflags, cr2, r->error_code);
	printk("RAX: %016lx RBX: %016lx RCX: %016lx\n", r->rax, r->rbx, r->rcx);
	printk("RDX: %016lx RSI: %016lx RDI: %016lx\n", r->rdx, r->rsi, r->rdi);
	printk("RBP: %016lx R08: %016lx R09: %016lx\n", r->rbp, r->r8, r->r9);
	printk("R10: %016lx R11: %016lx R12: %016lx\n", r->r10, r->r11, r->r12);
	printk("R13: %016lx R14: %016lx R15: %016lx\n", r->r13, r->r14, r->r15);
	/* the interrupted frame chain */
	print_call_trace(r->rbp);
}

notrace void irq_dispatch(struct klp_irq_regs *r)
{
	struct percpu *pc = this_cpu();
	pc->irqs++;
	switch (r->vector) {
	case VEC_TIMER:
		apic_eoi();
		sched_tick();
		return;
	case VEC_RESCHED:
		apic_eoi();
		sched_ipi();
		return;
	case VEC_SPURIOUS:
		return;
	case 3:
		printk("int3 at %lx on CPU %u\n", r->rip, smp_processor_id());
		print_sym("RIP", r->rip, 0);
		return;
	default:
		break;
	}
	printk("\nOops: %s (vector %lu)\n", r->vector < 32 && exc_names[r->vector] ? exc_names[r->vector] : "unknown",
	       r->vector);
	dump_regs(r);
	panic("fatal exception %lu", r->vector);
}

/*
 * __warn: what WARN() prints, as Linux's __warn() does: where, the message,
 * the caller's frame chain. The kernel goes on; nr_warnings counts them
 * (/proc/klp_shadow shows it), so a test can tell that one happened.
 */
volatile uint64_t nr_warnings;

void __warn(const char *func, const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	struct task *t = current_task();
	__atomic_fetch_add(&nr_warnings, 1, __ATOMIC_RELAXED);
	printk("------------[ cut here ]------------\n");
	printk("WARNING: CPU: %u PID: %u Comm: %s at %s\n", smp_processor_id(), t ? t->pid : 0, t ? t->name : "?",
	       func);
	printk("%s", buf);
	print_call_trace((uint64_t)__builtin_frame_address(0));
	printk("---[ end trace ]---\n");
}
