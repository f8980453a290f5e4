/* SPDX-License-Identifier: GPL-2.0 */
/*
 * offsets.h: struct task field offsets used by the assembly code. C checks
 * them with _Static_assert (kernel/sched.c), so a mismatch fails the build.
 */
#ifndef KLP_OFFSETS_H
#define KLP_OFFSETS_H

#define TASK_STATE 0
#define TASK_PID 4
#define TASK_NAME 8
#define TASK_SAVED_RSP 24
#define TASK_SAVED_RBP 32
#define TASK_SAVED_RIP 40
#define TASK_STACK_BASE 48
#define TASK_STACK_SIZE 56
#define TASK_ON_CPU 64
#define TASK_CPU 68

#define BOOT_STACK_SIZE 16384

#endif
