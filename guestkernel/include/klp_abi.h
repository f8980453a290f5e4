/* SPDX-License-Identifier: GPL-2.0 */
/*
 * klp_abi.h: the guest kernel's introspection ABI for the klp-kvm host.
 *
 * Three structures live in guest memory at the addresses of the ELF symbols
 * of the same name. All are statically initialised (.data), so the host can
 * read their header from the ELF file before the guest has run a single
 * instruction, and all carry magic, version and size: the host must check
 * all three and refuse anything else. Everything the host reads through them
 * is untrusted guest data: bound every count by the capacity in the header
 * and every pointer by the task's stack bounds.
 *
 * Shared between the guest (C) and the host (Go, guestkernel/abi.go); a Go
 * test compiles this header and checks sizes and offsets.
 *
 * ---------------------------------------------------------------------------
 * 1. struct klp_guest_abi (symbol "klp_guest_abi", written by the guest)
 *
 * Tasks live in one static table of task_capacity entries of task_stride
 * bytes at task_table. Slots [0, nr_tasks) have been used at least once;
 * a slot whose state is KLP_TASK_UNUSED or KLP_TASK_DEAD holds no task.
 * Field offsets within a task are given by the off_* members so that the
 * task structure may grow without breaking the host.
 *
 * A task that is not running on a CPU (on_cpu == -1) was switched out by
 * klp_switch_to(): saved_rip is an address inside klp_switch_to, saved_rbp
 * the frame pointer of that frame and saved_rsp the stack pointer. The
 * frame chain is the usual one: [rbp] = caller's rbp, [rbp+8] = return
 * address; it ends with rbp == 0 (the thread entry trampoline clears it).
 * A task that was preempted by an interrupt has an interrupt frame on its
 * stack. The walk reaches it through a frame record F whose return address
 * [F+8] equals irq_frame_ret (the return address of the entry code's call
 * to its C handler). F's saved frame pointer A = [F] is a record the entry
 * code pushed: [A] = interrupted RBP, [A+8] = interrupted RIP, so a plain
 * frame walk goes on into the interrupted code; the interrupted context's
 * registers are at A + irq_regs_off as a struct klp_irq_regs. A function
 * interrupted before its "push %rbp; mov %rsp,%rbp" has its caller's
 * return address only at the interrupted RSP (klp_irq_regs.rsp), not on
 * the chain: a reliable walker must look there too.
 *
 * Return addresses point after their call instruction, which may be past
 * the end of a noreturn caller: symbolize them at address - 1.
 *
 * For a task running on a CPU (on_cpu >= 0, and cpu_current[on_cpu]
 * points to it) the saved_* fields are stale: use the vCPU's registers.
 * If a paused vCPU's RIP is inside klp_switch_to, cpu_current and on_cpu
 * may be in flux: treat that CPU as busy and retry later.
 *
 * 2. struct klp_sysfs_state (symbol "klp_sysfs_state", written by the host)
 *
 * The host owns the livepatch state and writes it here; the guest only
 * reads it to render /sys/kernel/livepatch. It is a seqlock: the host makes
 * seq odd, writes everything else, then makes seq even (seq+2 overall);
 * a guest reader retries when seq is odd or changed while it read. The
 * counts are bounded by the KLP_SYSFS_MAX_* capacities (the guest clamps
 * them too). Patches are listed in stack order; patch i owns objects
 * [first_obj, first_obj+nr_objs), object j owns funcs [first_func,
 * first_func+nr_funcs). Names are NUL-terminated within their arrays
 * (a name that fills its array is cut by the guest at the array's end).
 *
 * 3. struct klp_patch_list (symbol "klp_patch_list", written by the host)
 *
 * Linux's klp_patches list and klp_transition_patch, for the state API
 * (kernel/state.c: klp_get_prev_state). The host lists the patches Linux
 * would have on klp_patches, oldest first: the enabled ones, the one whose
 * enable or disable is in progress from its start (before pre_patch or
 * pre_unpatch) to its end (after post_patch or post_unpatch), and, until
 * the end of an atomic replace, the patches it replaces. Each entry gives
 * the guest addresses of the patch's struct klp_patch and of its klp_state
 * array (0: the patch has none); both lie in the patch area. transition is
 * 1 + the index of klp_transition_patch, 0 when no transition is in
 * progress. Same seqlock as klp_sysfs_state; the guest clamps nr_patches
 * to max_patches. (Linux's sysfs shows no states, and neither does
 * /sys/kernel/livepatch: this list is for the state API only.)
 * ---------------------------------------------------------------------------
 */
#ifndef KLP_ABI_H
#define KLP_ABI_H

#define KLP_GUEST_ABI_MAGIC 0x31304942414c504bULL /* "KLPABI01" little endian */
#define KLP_GUEST_ABI_VERSION 1

#define KLP_SYSFS_MAGIC 0x53465359534c504bULL /* "KLPSYSFS" little endian */
#define KLP_SYSFS_VERSION 1

#define KLP_PATCH_LIST_MAGIC 0x5453494c50504c4bULL /* "KLPPLIST" little endian */
#define KLP_PATCH_LIST_VERSION 1

#define KLP_MAX_CPUS 16
#define KLP_MAX_TASKS 128
#define KLP_TASK_NAME_LEN 16
#define KLP_STACK_SIZE 16384

/* task states (the state field of a task) */
#define KLP_TASK_UNUSED 0   /* free slot */
#define KLP_TASK_RUNNING 1  /* running or runnable */
#define KLP_TASK_SLEEPING 2 /* blocked: on a wait, a timed sleep or parked */
#define KLP_TASK_DEAD 3     /* exited, slot not yet reused */

#define KLP_SYSFS_MAX_PATCHES 32
#define KLP_SYSFS_MAX_OBJS 64
#define KLP_SYSFS_MAX_FUNCS 2048
#define KLP_SYSFS_NAME_LEN 64      /* patch and object names */
#define KLP_SYSFS_FUNC_NAME_LEN 56 /* function names */

#ifndef __ASSEMBLER__
#include <stdint.h>

struct klp_guest_abi {
	uint64_t magic;          /*   0: KLP_GUEST_ABI_MAGIC */
	uint32_t version;        /*   8: KLP_GUEST_ABI_VERSION */
	uint32_t size;           /*  12: sizeof(struct klp_guest_abi) */
	uint64_t task_table;     /*  16: kernel virtual address of task slot 0 */
	uint32_t task_stride;    /*  24: bytes between task slots */
	uint32_t task_capacity;  /*  28: number of slots in the table */
	uint32_t nr_tasks;       /*  32: slots [0, nr_tasks) used at least once (live) */
	uint32_t name_len;       /*  36: bytes of the name field (NUL-padded) */
	uint32_t off_state;      /*  40: uint32_t KLP_TASK_* */
	uint32_t off_pid;        /*  44: uint32_t, unique, never reused */
	uint32_t off_name;       /*  48: char[name_len] */
	uint32_t off_saved_rsp;  /*  52: uint64_t RSP at the last switch-out */
	uint32_t off_saved_rbp;  /*  56: uint64_t RBP at the last switch-out */
	uint32_t off_saved_rip;  /*  60: uint64_t RIP at the last switch-out */
	uint32_t off_stack_base; /*  64: uint64_t lowest address of the stack */
	uint32_t off_stack_size; /*  68: uint64_t stack bytes (top = base + size) */
	uint32_t off_on_cpu;     /*  72: int32_t CPU it runs on, -1 if switched out */
	uint32_t off_cpu;        /*  76: uint32_t CPU whose run queue owns it */
	uint64_t cpu_current;    /*  80: address of uint64_t[max_cpus]: task address per CPU */
	uint32_t nr_cpus;        /*  88: CPUs online (live; 0 until boot is done) */
	uint32_t max_cpus;       /*  92: entries in cpu_current */
	uint64_t irq_frame_ret;  /*  96: return address marking an interrupt frame record */
	uint32_t irq_regs_off;   /* 104: struct klp_irq_regs at frame rbp + irq_regs_off */
	uint32_t irq_regs_size;  /* 108: sizeof(struct klp_irq_regs) */
	uint64_t switch_to;      /* 112: address of klp_switch_to */
	uint64_t switch_to_size; /* 120: its size in bytes */
	uint64_t boot_ns;        /* 128: guest clock (ns) when boot finished (live) */
	uint64_t ticks;          /* 136: timer ticks on CPU 0 (live) */
};

/*
 * The registers the interrupt entry code saves, in memory order (lowest
 * address first), followed by the hardware frame (rip, cs, rflags, rsp, ss).
 */
struct klp_irq_regs {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error_code;
	uint64_t rip, cs, rflags, rsp, ss;
};

struct klp_sysfs_patch {
	char name[KLP_SYSFS_NAME_LEN]; /*  0: patch (module) name, the directory */
	uint8_t enabled;               /* 64: 0/1 */
	uint8_t transition;            /* 65: 0/1 */
	uint8_t force;                 /* 66: 0/1 (as Linux: reads back 0 once applied) */
	uint8_t replace;               /* 67: 0/1 */
	uint32_t stack_order;          /* 68: 1-based position in the patch stack */
	uint32_t first_obj;            /* 72: index into objs */
	uint32_t nr_objs;              /* 76 */
};

struct klp_sysfs_object {
	char name[KLP_SYSFS_NAME_LEN]; /*  0: "vmlinux" or a module name */
	uint32_t patched;              /* 64: 0/1 */
	uint32_t first_func;           /* 68: index into funcs */
	uint32_t nr_funcs;             /* 72 */
	uint32_t reserved;             /* 76: 0 */
};

struct klp_sysfs_func {
	char name[KLP_SYSFS_FUNC_NAME_LEN]; /*  0: old_name */
	uint32_t sympos;                    /* 56: old_sympos (0 = unique) */
	uint32_t reserved;                  /* 60: 0 */
};

struct klp_sysfs_state {
	uint64_t magic;      /*  0: KLP_SYSFS_MAGIC (set by the guest image) */
	uint32_t version;    /*  8: KLP_SYSFS_VERSION */
	uint32_t size;       /* 12: sizeof(struct klp_sysfs_state) */
	uint32_t seq;        /* 16: seqlock sequence, odd while the host writes */
	uint32_t max_patches;/* 20: KLP_SYSFS_MAX_PATCHES */
	uint32_t max_objs;   /* 24: KLP_SYSFS_MAX_OBJS */
	uint32_t max_funcs;  /* 28: KLP_SYSFS_MAX_FUNCS */
	uint32_t nr_patches; /* 32 */
	uint32_t nr_objs;    /* 36 */
	uint32_t nr_funcs;   /* 40 */
	uint32_t generation; /* 44: host's change counter, informational */
	struct klp_sysfs_patch patches[KLP_SYSFS_MAX_PATCHES]; /* 48 */
	struct klp_sysfs_object objs[KLP_SYSFS_MAX_OBJS];
	struct klp_sysfs_func funcs[KLP_SYSFS_MAX_FUNCS];
};

struct klp_patch_list_entry {
	uint64_t patch;  /* 0: its struct klp_patch */
	uint64_t states; /* 8: its klp_state array (klp_patch.states), 0 if none */
};

struct klp_patch_list {
	uint64_t magic;       /*  0: KLP_PATCH_LIST_MAGIC (set by the guest image) */
	uint32_t version;     /*  8: KLP_PATCH_LIST_VERSION */
	uint32_t size;        /* 12: sizeof(struct klp_patch_list) */
	uint32_t seq;         /* 16: seqlock sequence, odd while the host writes */
	uint32_t max_patches; /* 20: KLP_SYSFS_MAX_PATCHES */
	uint32_t nr_patches;  /* 24 */
	uint32_t transition;  /* 28: 1 + index of klp_transition_patch, 0 if none */
	struct klp_patch_list_entry patches[KLP_SYSFS_MAX_PATCHES]; /* 32 */
};

extern struct klp_guest_abi klp_guest_abi;
extern struct klp_sysfs_state klp_sysfs_state;
extern struct klp_patch_list klp_patch_list;
#endif /* __ASSEMBLER__ */

#endif /* KLP_ABI_H */
