// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * klp-two.c - two struct klp_patch in one module, for linuxpatch's tests:
 * which one the init hands to klp_enable_patch is not visible without
 * running it, so the host must refuse the module rather than guess. A
 * file_operations with .owner = THIS_MODULE is there too: it holds
 * THIS_MODULE at the same offset as klp_patch.mod and must not be taken
 * for one.
 */

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>
#include <linux/fs.h>

static int new_show(struct seq_file *m, void *v)
{
	seq_puts(m, "two\n");
	return 0;
}

static struct klp_func funcs_a[] = {
	{ .old_name = "cmdline_proc_show", .new_func = new_show, }, { }
};

static struct klp_func funcs_b[] = {
	{ .old_name = "version_proc_show", .new_func = new_show, }, { }
};

static struct klp_object objs_a[] = {
	{ .funcs = funcs_a, }, { }
};

static struct klp_object objs_b[] = {
	{ .funcs = funcs_b, }, { }
};

static struct klp_patch patch_a = {
	.mod = THIS_MODULE,
	.objs = objs_a,
};

static struct klp_patch patch_b = {
	.mod = THIS_MODULE,
	.objs = objs_b,
};

static ssize_t two_read(struct file *f, char __user *buf, size_t n, loff_t *off)
{
	return 0;
}

const struct file_operations klp_two_fops = {
	.owner = THIS_MODULE,
	.read = two_read,
};

static int klp_two_init(void)
{
	return klp_enable_patch(jiffies & 1 ? &patch_a : &patch_b);
}

static void klp_two_exit(void)
{
}

module_init(klp_two_init);
module_exit(klp_two_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
