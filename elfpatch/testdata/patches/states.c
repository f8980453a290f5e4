/*
 * Test patch with system states (struct klp_state, KLP_PATCH_ABI 2): two
 * states, one whose data pointer is statically initialized to the patch's
 * own data (relocated into the image like any pointer), one to a kernel
 * symbol; and an atomic replace. No function: a patch of states and
 * callbacks only, as Linux's test_klp_state.
 */
#include "livepatch.h"

extern unsigned long sink;

static int saved;

static void post_patch(struct klp_object *obj)
{
	saved = 1;
}

static struct klp_func no_funcs[] = {
	{ }
};
static struct klp_object objs[] = {
	{ .funcs = no_funcs, .callbacks = { .post_patch = post_patch, }, }, { }
};
static struct klp_state states[] = {
	{ .id = 7, .version = 3, .data = &saved, },
	{ .id = 0x10000000001UL, .version = 1, .data = &sink, },
	{ }
};
static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	.states = states,
	.replace = true,
};

KLP_MODULE_NAME("states");
KLP_PATCH(patch);
