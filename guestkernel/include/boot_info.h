/* SPDX-License-Identifier: GPL-2.0 */
/*
 * boot_info: what the klp-kvm host hands the guest kernel at entry.
 *
 * Shared between the guest (C) and the host (Go, kvm/bootinfo.go); a Go
 * test compiles this header and checks that sizes and offsets agree.
 *
 * Boot protocol (the host does all of it before the first instruction):
 *  - CPU in 64-bit long mode, paging on (CR0.PG|PE|WP, CR4.PAE|OSFXSR, EFER.LME|LMA|NXE),
 *    interrupts off (RFLAGS = 0x2), CS = 0x08 (64-bit code), DS/ES/SS/FS/GS = 0x10.
 *  - Page tables (in low memory, below BOOT_LOW_END):
 *      identity map of all RAM (virt == phys, 2 MiB pages, RW, executable);
 *      kernel high map 0xffffffff80000000 + p -> p for p < 512 MiB;
 *      patch area at patch_area_virt -> patch_area_phys (RW, executable).
 *  - Every vCPU starts at the ELF entry with RDI = physical (== identity
 *    virtual) address of struct boot_info, RSI = cpu index (0..nr_cpus-1),
 *    RSP = 0: the entry code must set up its own stack from RSI.
 *  - RAM below BOOT_LOW_END belongs to the host's boot structures; the
 *    kernel may use RAM from the end of its image up to patch_area_phys.
 *    It must never touch the patch area: the host owns it.
 */
#ifndef KLP_BOOT_INFO_H
#define KLP_BOOT_INFO_H

#ifdef __ASSEMBLER__
#define BOOT_INFO_MAGIC 0x31544f4f42504c4b
#else
#include <stdint.h>
#define BOOT_INFO_MAGIC 0x31544f4f42504c4bULL /* "KLPBOOT1" little endian */
#endif
#define BOOT_INFO_VERSION 1
#define BOOT_INFO_CMDLINE_MAX 1024
#define BOOT_LOW_END 0x100000 /* 1 MiB */

/* I/O ports of the klp-kvm machine. */
#define PORT_COM1 0x3f8     /* console 16550 */
#define PORT_COM2 0x2f8     /* agent channel 16550 */
#define PORT_POWEROFF 0xf4  /* 32-bit OUT: power off with this exit code */

#ifndef __ASSEMBLER__
struct boot_info {
	uint64_t magic;            /* BOOT_INFO_MAGIC */
	uint32_t version;          /* BOOT_INFO_VERSION */
	uint32_t size;             /* sizeof(struct boot_info) */
	uint32_t nr_cpus;          /* vCPUs started at the entry */
	uint32_t flags;            /* none defined yet, 0 */
	uint64_t ram_size;         /* bytes of RAM from physical 0 */
	uint64_t patch_area_phys;  /* host-owned patch area, 2 MiB aligned */
	uint64_t patch_area_size;
	uint64_t patch_area_virt;  /* 0xffffffffa0000000 */
	uint64_t apic_bus_hz;      /* x2APIC timer input clock (before TDCR divide) */
	uint64_t tsc_hz;           /* RDTSC rate, 0 if unknown */
	uint32_t cmdline_len;      /* bytes in cmdline, excluding the NUL */
	uint32_t reserved;
	char cmdline[BOOT_INFO_CMDLINE_MAX]; /* NUL-terminated */
};
#endif

#endif /* KLP_BOOT_INFO_H */
