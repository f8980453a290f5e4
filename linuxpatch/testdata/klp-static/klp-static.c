// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * klp-static.c - a livepatch module of klp-kvm's own, for linuxpatch's tests.
 *
 * What livepatch-sample.c does not have:
 *  - two functions in vmlinux, one with an explicit old_sympos;
 *  - a call to a static, non-exported kernel function (cmdline_proc_show):
 *    built as a plain undefined symbol, which linuxpatch's tests rewrite into
 *    a SHN_LIVEPATCH symbol .klp.sym.vmlinux.cmdline_proc_show,1 and a
 *    .klp.rela.vmlinux..text section, as kpatch-build emits them;
 *  - a second klp_object (a module, nfsd);
 *  - callbacks, a klp_state and replace = true.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

/* static in fs/proc/cmdline.c: reached through a .klp.sym relocation. */
extern int cmdline_proc_show(struct seq_file *m, void *v);

static int livepatch_version_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "klp-static: ");
	return cmdline_proc_show(m, v);
}

static int livepatch_loadavg_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "0.00 0.00 0.00 1/1 1\n");
	return 0;
}

static int livepatch_nfsd_show(struct seq_file *m, void *v)
{
	seq_puts(m, "patched\n");
	return 0;
}

static int pre_patch(struct klp_object *obj)
{
	return 0;
}

static void post_unpatch(struct klp_object *obj)
{
}

static struct klp_func funcs[] = {
	{
		.old_name = "version_proc_show",
		.new_func = livepatch_version_proc_show,
	}, {
		.old_name = "loadavg_proc_show",
		.new_func = livepatch_loadavg_proc_show,
		.old_sympos = 1,
	}, { }
};

static struct klp_func nfsd_funcs[] = {
	{
		.old_name = "nfsd_show",
		.new_func = livepatch_nfsd_show,
	}, { }
};

static struct klp_object objs[] = {
	{
		.funcs = funcs,
		.callbacks = {
			.pre_patch = pre_patch,
			.post_unpatch = post_unpatch,
		},
	}, {
		.name = "nfsd",
		.funcs = nfsd_funcs,
	}, { }
};

static struct klp_state states[] = {
	{
		.id = 1,
		.version = 2,
	}, { }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	.states = states,
	.replace = true,
};

static int klp_static_init(void)
{
	return klp_enable_patch(&patch);
}

static void klp_static_exit(void)
{
}

module_init(klp_static_init);
module_exit(klp_static_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
