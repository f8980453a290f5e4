/* Test patch: an object naming a module ("fixture_mod") besides vmlinux, and
 * a .klp.sym reference into that module. The guest has no modules, so the
 * module object cannot be resolved (ErrUnresolved naming the module). */
#include "livepatch.h"

extern int mod_fn(int) __asm__(KLP_SYM("fixture_mod", "mod_fn", "0"));

static int new_mod_fn(int x)
{
	return mod_fn(x) + 1;
}

static void new_park(void)
{
}

static struct klp_func vmlinux_funcs[] = {
	{ .old_name = "klp_park_fn", .new_func = new_park, }, { }
};
static struct klp_func mod_funcs[] = {
	{ .old_name = "mod_fn", .new_func = new_mod_fn, }, { }
};
static struct klp_object objs[] = {
	{ .funcs = vmlinux_funcs, },
	{ .name = "fixture_mod", .funcs = mod_funcs, },
	{ }
};
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

KLP_PATCH(patch);
