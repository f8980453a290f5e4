/* Test patch: targets gcc clones and a notrace function of the fixture
 * kernel, each not patchable for its own reason. */
#include "livepatch.h"

static unsigned long f(unsigned long x)
{
	return x;
}

static struct klp_func funcs[] = {
	{ .old_name = "sum_count.isra.0", .new_func = f, },
	{ .old_name = "fixture_notrace_fn", .new_func = f, },
	{ .old_name = "fixture_check.cold", .new_func = f, },
	{ }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

KLP_MODULE_NAME("clone_target");
KLP_PATCH(patch);
