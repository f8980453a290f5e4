package elfpatch

// The guest-side layout of guestkernel/include/livepatch.h (x86-64 LP64).
// The header's _Static_asserts pin the same numbers, and TestABIMatchesHeader
// compiles the header to check them where gcc is present.
const (
	klpFuncSize      = 24
	klpFuncOldName   = 0
	klpFuncNewFunc   = 8
	klpFuncOldSympos = 16

	klpCallbacksSize = 32

	klpObjectSize      = 48
	klpObjectName      = 0
	klpObjectFuncs     = 8
	klpObjectCallbacks = 16

	klpStateSize    = 24
	klpStateID      = 0
	klpStateVersion = 8
	klpStateData    = 16

	// struct klp_patch of PatchABI2 (KLP_PATCH_ABI 2).
	klpPatchSize    = 32
	klpPatchMod     = 0
	klpPatchObjs    = 8
	klpPatchStates  = 16
	klpPatchReplace = 24

	// struct klp_patch of PatchABI1, before klp_state.
	klpPatch1Size    = 24
	klpPatch1Replace = 16

	// struct klp_patch_ref, what KLP_PATCH puts in .klp.patch: the
	// pointer, then KLP_PATCH_ABI. An object of PatchABI1 has the pointer
	// only.
	klpPatchRefSize  = 16
	klpPatchRefABI   = 8
	klpPatchRef1Size = 8

	// Section names of the module-name and patch-pointer conventions
	// (KLP_MODULE_NAME and KLP_PATCH in livepatch.h).
	modnameSection = ".klp.modname"
	patchSection   = ".klp.patch"

	// VmlinuxObject is the name of the kernel proper (klp_object.name NULL).
	VmlinuxObject = "vmlinux"

	// maxModuleName is Linux's MODULE_NAME_LEN - 1.
	maxModuleName = 55
)

// The layouts of struct klp_patch (Patch.ABI), told apart by what
// KLP_PATCH put in .klp.patch.
const (
	// PatchABI1 is the layout before klp_state: .klp.patch holds only the
	// pointer (8 bytes) and struct klp_patch is { mod, objs, replace }
	// (24 bytes). Such objects load as patches without states.
	PatchABI1 = 1
	// PatchABI2 is livepatch.h's KLP_PATCH_ABI 2: .klp.patch holds the
	// pointer and the number 2 (16 bytes), and struct klp_patch is
	// { mod, objs, states, replace } (32 bytes), Linux's order.
	PatchABI2 = 2
)
