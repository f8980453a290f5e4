// SPDX-License-Identifier: GPL-2.0
/* main.c: boot of the bootstrap CPU and the others, heap, command line. */
#include "kernel.h"

#define MSR_GS_BASE 0xc0000101

struct boot_info boot_info_copy;
char saved_command_line[BOOT_INFO_CMDLINE_MAX];
uint32_t nr_cpus_online;
uint32_t nr_cpus_boot;
uint64_t heap_start, heap_end, heap_next;
static spinlock_t heap_lock = SPINLOCK_INIT;
extern volatile uint32_t ap_release;
extern char _end[];
int selftest_mode;

const char kernel_version_string[] = "Linux version 6.1.0-klp-kvm (klp-kvm guest kernel) #1 SMP PREEMPT";

void idt_init(void);
void idt_load(void);
void time_init(void);
void sched_init(unsigned int ncpus);

/* kmalloc_pages: page-aligned bump allocation; nothing is ever freed. */
void *kmalloc_pages(size_t bytes)
{
	bytes = (bytes + 4095) & ~4095UL;
	uint64_t f = spin_lock_irqsave(&heap_lock);
	void *p = NULL;
	if (heap_next + bytes <= heap_end && heap_next + bytes > heap_next) {
		p = (void *)heap_next;
		heap_next += bytes;
	}
	spin_unlock_irqrestore(&heap_lock, f);
	if (p)
		memset(p, 0, bytes);
	return p;
}

/*
 * cmdline_get: value of "key=value" in the command line ("" for a bare
 * "key"), NULL if absent. Returned in a static buffer per call site use.
 */
const char *cmdline_get(const char *key)
{
	static char val[128];
	size_t kl = strlen(key);
	const char *s = saved_command_line;
	while (*s) {
		while (*s == ' ')
			s++;
		const char *w = s;
		while (*s && *s != ' ')
			s++;
		size_t wl = s - w;
		if (wl >= kl && strncmp(w, key, kl) == 0 && (wl == kl || w[kl] == '=')) {
			size_t vl = wl == kl ? 0 : wl - kl - 1;
			if (vl >= sizeof(val))
				vl = sizeof(val) - 1;
			memcpy(val, w + kl + (wl == kl ? 0 : 1), vl);
			val[vl] = 0;
			return val;
		}
	}
	return NULL;
}

static notrace void percpu_setup(unsigned int cpu)
{
	struct percpu *pc = &percpu[cpu];
	pc->self = pc;
	pc->cpu = cpu;
	wrmsr(MSR_GS_BASE, (uint64_t)pc);
	idt_load();
	sched_init_cpu(cpu);
}

static int boot_info_valid(const struct boot_info *bi)
{
	return bi->magic == BOOT_INFO_MAGIC && bi->version == BOOT_INFO_VERSION &&
	       bi->size >= sizeof(struct boot_info);
}

notrace __noreturn void kernel_main_bsp(const struct boot_info *bi, uint64_t cpu)
{
	uart_init(PORT_COM1);
	if (!boot_info_valid(bi)) {
		console_write("klp-kvm: bad boot_info, powering off\n", 37);
		power_off(101);
	}
	memcpy(&boot_info_copy, bi, sizeof(boot_info_copy));
	boot_info_copy.cmdline[BOOT_INFO_CMDLINE_MAX - 1] = 0;
	strlcpy(saved_command_line, boot_info_copy.cmdline, sizeof(saved_command_line));
	nr_cpus_boot = boot_info_copy.nr_cpus ? boot_info_copy.nr_cpus : 1;
	if (nr_cpus_boot > KLP_MAX_CPUS)
		nr_cpus_boot = KLP_MAX_CPUS;

	/* heap: from the end of the image to the patch area (or RAM end) */
	uint64_t limit = boot_info_copy.ram_size;
	if (boot_info_copy.patch_area_phys && boot_info_copy.patch_area_phys < limit)
		limit = boot_info_copy.patch_area_phys;
	if (limit > 512UL << 20)
		limit = 512UL << 20; /* the kernel high map covers 512 MiB */
	heap_start = ((uint64_t)_end + 4095) & ~4095UL;
	heap_next = heap_start;
	heap_end = KERNEL_VIRT_BASE + limit;
	if (heap_end < heap_start)
		heap_end = heap_start;

	klp_guest_abi.switch_to_size = (uint64_t)klp_switch_to_end - (uint64_t)klp_switch_to;
	time_init();
	idt_init();
	sched_init(nr_cpus_boot);
	percpu_setup((unsigned int)cpu);
	apic_init_cpu();
	percpu[cpu].online = 1;
	__atomic_fetch_add(&nr_cpus_online, 1, __ATOMIC_SEQ_CST);

	printk("%s\n", kernel_version_string);
	printk("Command line: %s\n", saved_command_line);
	printk("smp: %u CPUs, RAM %lu MiB, heap %lu KiB, tsc %lu Hz\n", nr_cpus_boot,
	       boot_info_copy.ram_size >> 20, (heap_end - heap_start) >> 10, boot_tsc_hz);

	__atomic_store_n(&ap_release, 1, __ATOMIC_SEQ_CST);
	/* 2 s of ktime, whatever the TSC rate (it was 2e9 TSC cycles: 0.77 s at 2.6 GHz) */
	uint64_t deadline = ktime_get_ns() + 2 * NSEC_PER_SEC;
	while (READ_ONCE(nr_cpus_online) < nr_cpus_boot && ktime_get_ns() < deadline)
		cpu_relax();
	if (nr_cpus_online < nr_cpus_boot)
		printk("smp: only %u of %u CPUs came up\n", nr_cpus_online, nr_cpus_boot);
	klp_guest_abi.nr_cpus = nr_cpus_online;
	uart_init(PORT_COM2);

	selftest_mode = cmdline_get("klp.selftest") != NULL;
	workloads_start();
	shadow_mod_init();
	agent_start();
	shell_start();
	if (selftest_mode)
		selftest_start();
	klp_guest_abi.boot_ns = ktime_get_ns();
	printk("klp-kvm guest up: %u CPUs\n", nr_cpus_online);
	irq_enable();
	cpu_idle_loop();
}

notrace __noreturn void kernel_main_ap(const struct boot_info *bi, uint64_t cpu)
{
	(void)bi;
	if (cpu >= nr_cpus_boot) {
		/* more vCPUs than the kernel supports: stay parked */
		for (;;)
			__asm__ __volatile__("cli; hlt");
	}
	percpu_setup((unsigned int)cpu);
	apic_init_cpu();
	percpu[cpu].online = 1;
	__atomic_fetch_add(&nr_cpus_online, 1, __ATOMIC_SEQ_CST);
	irq_enable();
	cpu_idle_loop();
}
