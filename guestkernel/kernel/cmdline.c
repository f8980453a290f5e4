// SPDX-License-Identifier: GPL-2.0
/*
 * cmdline.c: /proc/cmdline, as Linux fs/proc/cmdline.c renders it. This is
 * the function samples/livepatch/livepatch-sample.c replaces.
 */
#include "kernel.h"

__patchable int cmdline_proc_show(struct seq_file *m, void *v)
{
	(void)v;
	seq_printf(m, "%s\n", saved_command_line);
	return 0;
}
