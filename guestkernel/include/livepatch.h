/* SPDX-License-Identifier: GPL-2.0 */
/*
 * livepatch.h: what a klp-kvm patch author sees, in the shape of Linux's
 * include/linux/livepatch.h.
 *
 * A patch is an ET_REL object compiled with the guest kernel's flags. It
 * defines struct klp_func[] and struct klp_object[] (both ended by an
 * all-zero entry), optionally struct klp_state[] (ended by a zero id), and
 * one struct klp_patch, exactly like a Linux livepatch module, and then
 * names them to the host:
 *
 *	KLP_MODULE_NAME("livepatch_sample");	(optional, see below)
 *	KLP_PATCH(patch);			(replaces module_init + klp_enable_patch)
 *
 * The host (klp-kvm, package elfpatch) never runs code in the patch to find
 * these: it reads the structures from the object's data and relocations.
 *
 * Layout contract: the structures below hold only what the patch author
 * fills in. Linux's internal fields (kobj, stack_node, old_addr, patched,
 * transition, ...) are host state in klp-kvm and are deliberately absent,
 * so the guest-side layout is small and fixed (see the _Static_asserts,
 * mirrored by elfpatch's Go constants and checked by a Go test).
 *
 * Module name: KLP_MODULE_NAME("x") puts the NUL-terminated string "x" into
 * section .klp.modname. Without it, the host uses the object file's stem with
 * '-' replaced by '_' (what kbuild does: livepatch-sample.o ->
 * livepatch_sample). The name is what /sys/kernel/livepatch/<name> shows.
 *
 * Kernel symbols: a plain extern declaration resolves against the guest
 * kernel's global symbols. A local (static) or ambiguous kernel symbol is
 * reached Linux's way, through a symbol named .klp.sym.<object>.<name>,<sympos>:
 *
 *	extern int orig_dup(int) __asm__(KLP_SYM("vmlinux", "klp_dup_fn", "2"));
 *
 * sympos counts the symbols of that name in ascending address order (as
 * /proc/kallsyms lists them), from 1; 0 means "the only one" and is an error
 * when the name is ambiguous.
 */
#ifndef KLP_LIVEPATCH_H
#define KLP_LIVEPATCH_H

#ifndef __ASSEMBLER__

#ifndef __cplusplus
#include <stdbool.h>
#endif

struct module;
struct klp_object;

/* THIS_MODULE exists so that .mod = THIS_MODULE compiles as in Linux; the
 * host ignores .mod (the name comes from KLP_MODULE_NAME or the file name). */
#ifndef THIS_MODULE
#define THIS_MODULE ((struct module *)0)
#endif

/*
 * struct klp_func - function structure for live patching
 * @old_name:	name of the function to be patched
 * @new_func:	pointer to the patched function code
 * @old_sympos:	a hint indicating which symbol position the old function
 *		can be found (optional, 0 = the only one)
 */
struct klp_func {
	const char *old_name;
	void *new_func;
	unsigned long old_sympos;
};

/*
 * struct klp_callbacks - pre/post live-(un)patch callback structure
 * The host runs them in the guest around the (un)patching of their object;
 * a non-zero return from pre_patch aborts enabling the patch.
 */
struct klp_callbacks {
	int (*pre_patch)(struct klp_object *obj);
	void (*post_patch)(struct klp_object *obj);
	void (*pre_unpatch)(struct klp_object *obj);
	void (*post_unpatch)(struct klp_object *obj);
};

/*
 * struct klp_object - kernel object structure for live patching
 * @name:	module name (or NULL for vmlinux)
 * @funcs:	function entries for functions to be patched in the object
 * @callbacks:	functions to be executed pre/post (un)patching
 */
struct klp_object {
	const char *name;
	struct klp_func *funcs;
	struct klp_callbacks callbacks;
};

/*
 * struct klp_state - state of the system modified by the livepatch
 * @id:		system state identifier (non-zero)
 * @version:	version of the change
 * @data:	custom data
 *
 * A patch lists the system states it modifies in klp_patch.states, an
 * array ended by an entry whose id is 0, exactly as in Linux
 * (Documentation/livepatch/system-state.rst). With atomic replace, the
 * host refuses to enable a patch that does not know every state of the
 * patches it would replace, in at least their version (EINVAL, Linux's
 * klp_is_patch_compatible). The callbacks find the states with
 * klp_get_state() and klp_get_prev_state() (below); see
 * docs/states.md.
 */
struct klp_state {
	unsigned long id;
	unsigned int version;
	void *data;
};

/*
 * struct klp_patch - patch structure for live patching
 * @mod:	THIS_MODULE (ignored by the host)
 * @objs:	object entries for kernel objects to be patched
 * @states:	system states that can get modified (NULL: none)
 * @replace:	replace all actively used patches (atomic replace)
 */
struct klp_patch {
	struct module *mod;
	struct klp_object *objs;
	struct klp_state *states;
	bool replace;
};

/*
 * The layout of these structures, as KLP_PATCH records it for the host
 * (KLP_PATCH_ABI, below). 1 was the layout before klp_state: a
 * struct klp_patch of 24 bytes { mod, objs, replace }, and .klp.patch
 * holding just the pointer. The host still loads such objects, as
 * patches without states.
 */
#define KLP_PATCH_ABI 2

/* The host's decoder depends on these exact offsets (elfpatch/abi.go). */
_Static_assert(sizeof(struct klp_func) == 24, "klp_func layout");
_Static_assert(sizeof(struct klp_callbacks) == 32, "klp_callbacks layout");
_Static_assert(sizeof(struct klp_object) == 48, "klp_object layout");
_Static_assert(__builtin_offsetof(struct klp_object, callbacks) == 16, "klp_object layout");
_Static_assert(sizeof(struct klp_state) == 24, "klp_state layout");
_Static_assert(__builtin_offsetof(struct klp_state, version) == 8, "klp_state layout");
_Static_assert(__builtin_offsetof(struct klp_state, data) == 16, "klp_state layout");
_Static_assert(sizeof(struct klp_patch) == 32, "klp_patch layout");
_Static_assert(__builtin_offsetof(struct klp_patch, objs) == 8, "klp_patch layout");
_Static_assert(__builtin_offsetof(struct klp_patch, states) == 16, "klp_patch layout");
_Static_assert(__builtin_offsetof(struct klp_patch, replace) == 24, "klp_patch layout");

#define KLP_STRINGIFY_(x) #x
#define KLP_STRINGIFY(x) KLP_STRINGIFY_(x)

/*
 * KLP_SYM(obj, name, pos): the assembler name of Linux's
 * .klp.sym.<obj>.<name>,<pos> symbol, quoted because the comma would
 * otherwise split an operand. Use it as an asm label on an extern.
 */
#define KLP_SYM(obj, name, pos) "\".klp.sym." obj "." name "," pos "\""

/* KLP_MODULE_NAME("name"): the patch's name (see the header comment). */
#define KLP_MODULE_NAME(str)                                                  \
	static const char __klp_modname[]                                     \
		__attribute__((used, section(".klp.modname"), aligned(1))) = str

/*
 * KLP_PATCH(patch): names the patch's struct klp_patch to the host, and
 * the layout it was compiled with: a struct klp_patch_ref (a pointer, then
 * KLP_PATCH_ABI) in section .klp.patch, exactly one per object. (An object
 * of the first layout has only the 8-byte pointer there.)
 */
struct klp_patch_ref {
	struct klp_patch *patch;
	unsigned long abi;
};
_Static_assert(sizeof(struct klp_patch_ref) == 16, "klp_patch_ref layout");

#define KLP_PATCH(p)                                                          \
	static const struct klp_patch_ref __klp_patch_ref                     \
		__attribute__((used, section(".klp.patch"), aligned(8))) =    \
			{ &(p), KLP_PATCH_ABI }

/*
 * System states (Linux's kernel/livepatch/state.c; the guest kernel's
 * kernel/state.c), for the callbacks and the new code:
 *
 * klp_get_state(patch, id): patch's struct klp_state of that id, or NULL.
 * klp_get_prev_state(id): the struct klp_state of that id of the latest
 *	already installed patch that has one (the patches below the one in
 *	transition), or NULL. Only during a transition, that is from the
 *	callbacks: outside one it WARNs and returns NULL, as in Linux.
 */
struct klp_state *klp_get_state(struct klp_patch *patch, unsigned long id);
struct klp_state *klp_get_prev_state(unsigned long id);

/* Shadow variables: klp_shadow_get, klp_shadow_alloc, ... (klp_shadow.h). */
#include "klp_shadow.h"

/* Bytes of the fentry NOP at the start of every patchable function: a new
 * function that must call the original body calls old + KLP_FENTRY_SIZE,
 * since a call to the entry itself would be redirected back to it. */
#define KLP_FENTRY_SIZE 5

#endif /* __ASSEMBLER__ */
#endif /* KLP_LIVEPATCH_H */
