// SPDX-License-Identifier: GPL-2.0
/*
 * abi.c: the structures the host finds by symbol (include/klp_abi.h). All
 * are initialised statically so the host can validate them in the ELF file
 * before boot.
 */
#include "kernel.h"

extern char irq_frame_ret[];

struct klp_guest_abi klp_guest_abi = {
	.magic = KLP_GUEST_ABI_MAGIC,
	.version = KLP_GUEST_ABI_VERSION,
	.size = sizeof(struct klp_guest_abi),
	.task_table = (uint64_t)task_table,
	.task_stride = sizeof(struct task),
	.task_capacity = KLP_MAX_TASKS,
	.nr_tasks = 0,
	.name_len = KLP_TASK_NAME_LEN,
	.off_state = __builtin_offsetof(struct task, state),
	.off_pid = __builtin_offsetof(struct task, pid),
	.off_name = __builtin_offsetof(struct task, name),
	.off_saved_rsp = __builtin_offsetof(struct task, saved_rsp),
	.off_saved_rbp = __builtin_offsetof(struct task, saved_rbp),
	.off_saved_rip = __builtin_offsetof(struct task, saved_rip),
	.off_stack_base = __builtin_offsetof(struct task, stack_base),
	.off_stack_size = __builtin_offsetof(struct task, stack_size),
	.off_on_cpu = __builtin_offsetof(struct task, on_cpu),
	.off_cpu = __builtin_offsetof(struct task, cpu),
	.cpu_current = (uint64_t)cpu_current_task,
	.nr_cpus = 0,
	.max_cpus = KLP_MAX_CPUS,
	.irq_frame_ret = (uint64_t)irq_frame_ret,
	.irq_regs_off = 16,
	.irq_regs_size = sizeof(struct klp_irq_regs),
	.switch_to = (uint64_t)klp_switch_to,
	.switch_to_size = 0, /* set at boot: the linker knows it, C does not */
};

struct klp_sysfs_state klp_sysfs_state = {
	.magic = KLP_SYSFS_MAGIC,
	.version = KLP_SYSFS_VERSION,
	.size = sizeof(struct klp_sysfs_state),
	.max_patches = KLP_SYSFS_MAX_PATCHES,
	.max_objs = KLP_SYSFS_MAX_OBJS,
	.max_funcs = KLP_SYSFS_MAX_FUNCS,
};

struct klp_patch_list klp_patch_list = {
	.magic = KLP_PATCH_LIST_MAGIC,
	.version = KLP_PATCH_LIST_VERSION,
	.size = sizeof(struct klp_patch_list),
	.max_patches = KLP_SYSFS_MAX_PATCHES,
};
