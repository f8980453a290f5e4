package livepatch

// state.go is Linux's kernel/livepatch/state.c on the host: the system
// states patches declare (struct klp_state, Documentation/livepatch/
// system-state.rst). The map, state.c -> this package and the guest:
//
//	klp_get_state             getState here; the guest's klp_get_state
//	                          (guestkernel/kernel/state.c), which the
//	                          callbacks call, walks the patch's own array
//	klp_get_prev_state        the guest's klp_get_prev_state, over the list
//	                          this file publishes (klp_patch_list)
//	klp_is_state_compatible   isStateCompatible
//	klp_is_patch_compatible   (*Manager).isPatchCompatible, at enable
//
// and core.c's klp_patches list with transition.c's klp_transition_patch,
// which klp_get_prev_state walks in Linux: the host owns them, so it
// publishes them into the guest (guestkernel.PatchListWriter): the guest
// addresses of each listed patch's struct klp_patch and klp_state array,
// and which one is in transition. The list follows Linux's lifetimes:
// a patch joins it when its enable starts (klp_init_patch, before
// pre_patch) and leaves it when its disable completes (after post_unpatch,
// klp_free_patch_async) or its enable is cancelled; the patches an atomic
// replace removes stay listed, with their images in the patch area, until
// the replacing patch's post_patch callbacks have run
// (klp_free_replaced_patches_async comes after klp_complete_transition):
// that is where test_klp_state2's post_patch takes their state over.

import (
	"fmt"
	"syscall"

	"klp-kvm/guestkernel"
)

// State is a struct klp_state of a patch, as the patch object declares it:
// a system state the patch modifies, by its id, in a version. Its data
// pointer lives in the guest (the callbacks set it), not here.
type State struct {
	ID      uint64 `json:"id"`
	Version uint32 `json:"version"`
}

// getState is klp_get_state: p's state of that id, or nil.
func getState(p *Patch, id uint64) *State {
	for i := range p.States {
		if p.States[i].ID == id {
			return &p.States[i]
		}
	}
	return nil
}

// isStateCompatible is klp_is_state_compatible: can p handle old, a state
// an installed patch modified? A patch that has the state must have it in
// at least old's version; one that does not have it may come only without
// atomic replace (a cumulative patch must handle every modified state,
// a non-cumulative one may leave it to the patch below).
func isStateCompatible(p *Patch, old State) bool {
	st := getState(p, old.ID)
	if st == nil {
		return !p.Replace
	}
	return st.Version >= old.Version
}

// isPatchCompatible is klp_is_patch_compatible, which Linux's
// klp_enable_patch checks first: p must not break the system states of
// the installed (enabled) patches. The error, EINVAL as in Linux, names
// the first state p cannot handle, the patch that modified it and both
// versions. m.mu must be held.
func (m *Manager) isPatchCompatible(op string, p *Patch) error {
	m.mustHold()
	for _, old := range m.patches {
		if old == p || !old.Enabled {
			continue
		}
		for _, st := range old.States {
			if isStateCompatible(p, st) {
				continue
			}
			why := "this atomic replace patch does not handle it"
			if mine := getState(p, st.ID); mine != nil {
				why = fmt.Sprintf("this patch has it in version %d, older", mine.Version)
			}
			return errorf(op, p.Name, syscall.EINVAL,
				"not compatible with the already installed livepatches: %s modified system state %d in version %d, and %s",
				old.Name, st.ID, st.Version, why)
		}
	}
	return nil
}

// patchListEntry is p as klp_patch_list lists it: its image must be in
// the patch area.
func patchListEntry(p *Patch) guestkernel.PatchListEntry {
	if p.image == nil {
		return guestkernel.PatchListEntry{}
	}
	return guestkernel.PatchListEntry{Patch: p.image.PatchAddr, States: p.image.StatesAddr}
}

// beginPatchList publishes klp_patch_list for the transition of p that
// starts (Linux: p is on klp_patches and is klp_transition_patch): the
// enabled patches below it, oldest first, then p, in transition. They
// stay listed as they are until endPatchList, whatever the switch does to
// the stack meanwhile. p's image must be loaded. Nothing to do for a
// guest kernel without klp_patch_list (from before klp_state: no
// patch can call klp_get_prev_state there). m.mu must be held.
func (m *Manager) beginPatchList(op string, p *Patch) error {
	m.mustHold()
	if m.plist == nil {
		return nil
	}
	var l guestkernel.PatchList
	for _, q := range m.patches {
		if q == p {
			break
		}
		if q.Enabled {
			l.Patches = append(l.Patches, patchListEntry(q))
		}
	}
	l.Patches = append(l.Patches, patchListEntry(p))
	l.Transition = len(l.Patches) - 1
	m.plistOpen = true
	if err := m.plist.Write(l); err != nil {
		return &Error{Op: op, Patch: p.Name, Errno: syscall.EIO, Detail: "klp_patch_list (the guest's list of installed patches)", Err: err}
	}
	return nil
}

// endPatchList publishes klp_patch_list once the transition that
// beginPatchList opened is over (its last callbacks ran): the enabled
// patches, none in transition. It must come before the image of any
// patch the list showed leaves the patch area. A write that fails is
// logged, not returned: the switch is made, and the list matters only
// during a transition, whose beginPatchList writes it whole again.
// Nothing to do when no transition opened one. m.mu must be held.
func (m *Manager) endPatchList() {
	m.mustHold()
	if m.plist == nil || !m.plistOpen {
		return
	}
	m.plistOpen = false
	if err := m.writePatchList(); err != nil {
		m.logf("livepatch: %v", err)
	}
}

// writePatchList writes klp_patch_list with the enabled patches, none in
// transition. m.mu must be held (New's own call comes before the Manager
// is shared).
func (m *Manager) writePatchList() error {
	l := guestkernel.PatchList{Transition: -1}
	for _, q := range m.patches {
		if q.Enabled {
			l.Patches = append(l.Patches, patchListEntry(q))
		}
	}
	if err := m.plist.Write(l); err != nil {
		return fmt.Errorf("klp_patch_list (the guest's list of installed patches): %w", err)
	}
	return nil
}
