/*
 * Test patch of the first struct klp_patch layout (elfpatch.PatchABI1), as
 * every patch object built before klp_state was: livepatch.h's structures
 * and KLP_PATCH as they were then, copied here. struct klp_patch has no
 * states and its replace is at offset 16; .klp.patch holds only the
 * pointer. The host still loads such an object, as a patch without states
 * (replace set, to check that it is read where this layout has it).
 */
#include <stdbool.h>

struct module;
struct klp_object;

struct klp_func {
	const char *old_name;
	void *new_func;
	unsigned long old_sympos;
};

struct klp_callbacks {
	int (*pre_patch)(struct klp_object *obj);
	void (*post_patch)(struct klp_object *obj);
	void (*pre_unpatch)(struct klp_object *obj);
	void (*post_unpatch)(struct klp_object *obj);
};

struct klp_object {
	const char *name;
	struct klp_func *funcs;
	struct klp_callbacks callbacks;
};

struct klp_patch {
	struct module *mod;
	struct klp_object *objs;
	bool replace;
};

_Static_assert(sizeof(struct klp_patch) == 24, "the first klp_patch layout");

#define KLP_PATCH(p)                                                          \
	static struct klp_patch *const __klp_patch_ptr                        \
		__attribute__((used, section(".klp.patch"), aligned(8))) = &(p)

static void new_park(void)
{
}

static int pre_patch(struct klp_object *obj)
{
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "klp_park_fn", .new_func = new_park, }, { }
};
static struct klp_object objs[] = {
	{ .funcs = funcs, .callbacks = { .pre_patch = pre_patch, }, }, { }
};
static struct klp_patch patch = { .objs = objs, .replace = true, };

static const char __klp_modname[] __attribute__((used, section(".klp.modname"), aligned(1))) = "abi1";
KLP_PATCH(patch);
