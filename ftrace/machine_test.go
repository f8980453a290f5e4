package ftrace

import "klp-kvm/kvm"

// The machine compares text clusters in place: without it a Commit
// would silently go back to reading the clusters out first.
var _ equalVirt = (*kvm.Machine)(nil)
