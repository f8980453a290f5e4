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

	klpPatchSize    = 24
	klpPatchMod     = 0
	klpPatchObjs    = 8
	klpPatchReplace = 16

	// Section names of the module-name and patch-pointer conventions
	// (KLP_MODULE_NAME and KLP_PATCH in livepatch.h).
	modnameSection = ".klp.modname"
	patchSection   = ".klp.patch"

	// VmlinuxObject is the name of the kernel proper (klp_object.name NULL).
	VmlinuxObject = "vmlinux"

	// maxModuleName is Linux's MODULE_NAME_LEN - 1.
	maxModuleName = 55
)
