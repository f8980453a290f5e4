// SPDX-License-Identifier: GPL-2.0
/* apic.c: x2APIC timer tick and IPIs, the clock, power off. */
#include "kernel.h"

#define MSR_APIC_BASE 0x1b
#define APIC_BASE_EN (1UL << 11)
#define APIC_BASE_EXTD (1UL << 10)
#define MSR_X2APIC_ID 0x802
#define MSR_X2APIC_EOI 0x80b
#define MSR_X2APIC_SVR 0x80f
#define MSR_X2APIC_ICR 0x830
#define MSR_X2APIC_LVTT 0x832
#define MSR_X2APIC_TMICT 0x838
#define MSR_X2APIC_TDCR 0x83e
#define LVT_PERIODIC (1u << 17)

uint64_t boot_tsc_hz;
static uint64_t boot_tsc0;

/*
 * ktime_get_ns: TSC-based when the host told us its rate, else derived
 * from CPU 0's tick count (1 ms resolution).
 */
notrace uint64_t ktime_get_ns(void)
{
	if (boot_tsc_hz) {
		uint64_t t = rdtsc() - boot_tsc0;
		return (t / boot_tsc_hz) * NSEC_PER_SEC + ((t % boot_tsc_hz) * NSEC_PER_SEC) / boot_tsc_hz;
	}
	return READ_ONCE(percpu[0].ticks) * (NSEC_PER_SEC / HZ);
}

void udelay(unsigned long us)
{
	uint64_t end = ktime_get_ns() + (uint64_t)us * 1000;
	while (ktime_get_ns() < end)
		cpu_relax();
}

notrace void time_init(void)
{
	boot_tsc_hz = boot_info_copy.tsc_hz;
	boot_tsc0 = rdtsc();
}

notrace void apic_init_cpu(void)
{
	uint64_t base = rdmsr(MSR_APIC_BASE);
	if ((base & (APIC_BASE_EN | APIC_BASE_EXTD)) != (APIC_BASE_EN | APIC_BASE_EXTD))
		wrmsr(MSR_APIC_BASE, base | APIC_BASE_EN | APIC_BASE_EXTD);
	this_cpu()->apic_id = (uint32_t)rdmsr(MSR_X2APIC_ID);
	wrmsr(MSR_X2APIC_SVR, 0x100 | VEC_SPURIOUS);
	uint64_t hz = boot_info_copy.apic_bus_hz ? boot_info_copy.apic_bus_hz : 1000000000ULL;
	wrmsr(MSR_X2APIC_TDCR, 0xb); /* divide by 1 */
	wrmsr(MSR_X2APIC_LVTT, LVT_PERIODIC | VEC_TIMER);
	wrmsr(MSR_X2APIC_TMICT, hz / HZ);
}

notrace void apic_eoi(void) { wrmsr(MSR_X2APIC_EOI, 0); }

/* Fixed-vector IPI to one CPU (physical destination = its APIC ID). */
notrace void apic_send_ipi(unsigned int cpu, unsigned int vector)
{
	if (cpu >= KLP_MAX_CPUS)
		return;
	uint64_t dest = percpu[cpu].apic_id;
	__atomic_fetch_add(&percpu[cpu].ipis, 1, __ATOMIC_RELAXED);
	wrmsr(MSR_X2APIC_ICR, (dest << 32) | (vector & 0xff));
}

notrace __noreturn void power_off(uint32_t code)
{
	for (;;) {
		outl(PORT_POWEROFF, code);
		irq_disable();
		__asm__ __volatile__("hlt");
	}
}
