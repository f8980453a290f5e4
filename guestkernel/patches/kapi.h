/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The guest kernel functions the sample patches use or replace. The guest
 * kernel declares them in include/kernel_api.h; when that header exists it
 * is used, and these externs (identical prototypes) only keep the patches
 * buildable on their own. Patches are built against these names only, so a
 * renamed kernel function shows up as an unresolved symbol in
 * `klp-kvm inspect`, not as a silent mismatch.
 */
#ifndef KLP_PATCHES_KAPI_H
#define KLP_PATCHES_KAPI_H

#if __has_include("kernel_api.h")
#include "kernel_api.h"
#endif

struct seq_file;
extern int seq_printf(struct seq_file *m, const char *fmt, ...);
extern int cmdline_proc_show(struct seq_file *m, void *v);
extern unsigned long klp_pair_a(void);
extern unsigned long klp_pair_b(void);
extern void klp_park_fn(void);

#endif
