package guestkernel

import "klp-kvm/kvm"

// The machine gives a View its physical reads: without them every frame
// record would again cost a page-table walk, silently.
var _ PhysMemory = (*kvm.Machine)(nil)
