// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * state.c: system states modified by livepatches, after Linux's
 * kernel/livepatch/state.c (Petr Mladek). Patches call klp_get_state()
 * and klp_get_prev_state() (include/livepatch.h) from their callbacks or
 * their new code, as in Linux; docs/states.md says when to use them.
 *
 * klp_get_state() is Linux's: it walks the patch's own states array.
 * klp_get_prev_state() walks the installed patches up to the one in
 * transition, which Linux finds on its klp_patches list and in
 * klp_transition_patch. Here the host owns the patches, so it publishes
 * that list in klp_patch_list (include/klp_abi.h): for each patch Linux
 * would list, oldest first, the addresses of its struct klp_patch and of
 * its klp_state array, and which patch is in transition. The host keeps it
 * as Linux keeps klp_patches: a patch is on it from the start of its
 * enable (before pre_patch) to the end of its disable (after
 * post_unpatch), and the patches an atomic replace removes stay on it
 * until the replacing patch's post_patch callbacks have run (Linux frees
 * them after klp_complete_transition), so that klp_get_prev_state() finds
 * their states there: the "taking over" of test_klp_state2.c.
 *
 * The host's part is livepatch/state.go (klp_is_patch_compatible and the
 * list); the version check needs nothing from the guest.
 */
#include "kernel.h"
#include "livepatch.h"

/* every state of a patch: its array ends with an id of 0 */
#define klp_for_each_state(patch, state) for (state = (patch)->states; state && state->id; state++)

/*
 * klp_get_state: the entry of patch's states array whose id is id, or NULL
 * when the patch does not declare that state. For the patch's callbacks
 * and its new code alike.
 */
struct klp_state *klp_get_state(struct klp_patch *patch, unsigned long id)
{
	struct klp_state *state;

	klp_for_each_state(patch, state)
		if (state->id == id)
			return state;
	return NULL;
}

/* klp_states_get is klp_get_state on a states array the host published. */
static struct klp_state *klp_states_get(struct klp_state *states, unsigned long id)
{
	struct klp_patch p = { .states = states };

	return klp_get_state(&p, id);
}

/* a published states array must lie in the patch area, aligned */
static int klp_states_plausible(uint64_t addr)
{
	uint64_t base = boot_info_copy.patch_area_virt, size = boot_info_copy.patch_area_size;

	return addr && !(addr & 7) && addr >= base && addr - base < size;
}

/*
 * klp_patch_list_read copies the host's list (entries, count and the
 * transition index) under its seqlock; -EAGAIN if the host kept writing.
 */
static int klp_patch_list_read(struct klp_patch_list_entry *list, uint32_t *nr, uint32_t *transition)
{
	const volatile struct klp_patch_list *pl = &klp_patch_list;

	for (int tries = 0; tries < 2000; tries++) {
		uint32_t seq = __atomic_load_n(&klp_patch_list.seq, __ATOMIC_ACQUIRE);
		if (seq & 1) {
			if (tries > 100 && irqs_enabled())
				msleep(1);
			else
				cpu_relax();
			continue;
		}
		uint32_t n = min(pl->nr_patches, (uint32_t)KLP_SYSFS_MAX_PATCHES);
		uint32_t t = pl->transition;
		for (uint32_t i = 0; i < n; i++) {
			list[i].patch = pl->patches[i].patch;
			list[i].states = pl->patches[i].states;
		}
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&klp_patch_list.seq, __ATOMIC_ACQUIRE) == seq) {
			*nr = n;
			*transition = t > n ? 0 : t;
			return 0;
		}
	}
	return -EAGAIN;
}

/*
 * klp_get_prev_state: the state of that id as the installed patches below
 * the one in transition left it: the entry of the newest of them that
 * declares it (several non-cumulative patches may; the newest knows best),
 * or NULL if none does. It has a meaning only while a patch is being
 * enabled or disabled, that is from the callbacks; called at any other
 * time it WARNs once and returns NULL.
 */
struct klp_state *klp_get_prev_state(unsigned long id)
{
	static int warned;
	struct klp_patch_list_entry list[KLP_SYSFS_MAX_PATCHES];
	struct klp_state *found = NULL;
	uint32_t nr, transition;

	if (klp_patch_list_read(list, &nr, &transition)) {
		WARN(1, "klp_patch_list: the host kept writing it\n");
		return NULL;
	}
	/* WARN_ON_ONCE(!klp_transition_patch) */
	if (!transition) {
		if (!__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
			WARN(1, "klp_get_prev_state(%lu) outside a livepatch transition\n", id);
		return NULL;
	}

	/* the patches below the one in transition, oldest first: the last match wins */
	for (uint32_t i = 0; i + 1 < transition; i++) {
		if (!list[i].states)
			continue;
		if (!klp_states_plausible(list[i].states)) {
			WARN(1, "klp_patch_list: states of entry %u at 0x%lx, outside the patch area\n", i,
			     list[i].states);
			continue;
		}
		struct klp_state *state = klp_states_get((struct klp_state *)list[i].states, id);
		if (state)
			found = state;
	}
	return found;
}
