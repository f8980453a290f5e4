package hw

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"klp-kvm/kvm/engine"
)

// This file holds every use of unsafe in package hw: pointers handed to the
// kernel, and the atomic view of kvm_run.immediate_exit.

// ioctl issues one ioctl and returns the kernel's result and errno,
// reissuing it after EINTR (see maxIntrRetries). Not for KVM_RUN.
func ioctl(fd int, req, arg uintptr) (uintptr, unix.Errno) {
	for i := 0; ; i++ {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if errno != unix.EINTR || i == maxIntrRetries {
			return r, errno
		}
	}
}

// runIoctl is KVM_RUN. unix.Syscall (not RawSyscall) tells the Go scheduler
// that the thread blocks, so a long guest run does not hold a P.
func runIoctl(fd int) unix.Errno {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ioctlRun, 0)
	return errno
}

// runWord returns the first 32-bit word of kvm_run, which holds
// request_interrupt_window (byte 0) and immediate_exit (byte 1). Go has no
// 8-bit atomics; the word is 8-aligned (start of a page) and bytes 2-3 are
// padding, so an atomic OR/AND on it sets and clears immediate_exit alone.
func runWord(run []byte) *uint32 {
	return (*uint32)(unsafe.Pointer(&run[0]))
}

// immediateExitBit is immediate_exit (byte 1) within runWord, little endian.
const immediateExitBit = 1 << (8 * runImmediateExit)

func setImmediateExit(w *uint32) { atomic.OrUint32(w, immediateExitBit) }

// clearImmediateExit clears immediate_exit and says whether it was set.
func clearImmediateExit(w *uint32) bool {
	return atomic.AndUint32(w, ^uint32(immediateExitBit))&immediateExitBit != 0
}

// sliceAddr is the user-space address of b's first byte, for
// kvm_userspace_memory_region.userspace_addr.
func sliceAddr(b []byte) uintptr {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}

// msrIoctl issues KVM_GET_MSRS or KVM_SET_MSRS for msrs and returns how
// many entries the kernel processed (it stops at the first MSR it rejects).
// engine.MSR has struct kvm_msr_entry's layout (checked by a test), so the
// entries are copied into one buffer behind the struct kvm_msrs header.
func msrIoctl(fd int, req uintptr, msrs []engine.MSR) (int, unix.Errno) {
	// struct kvm_msrs { __u32 nmsrs; __u32 pad; struct kvm_msr_entry entries[]; }
	buf := make([]uint64, 1+2*len(msrs))
	buf[0] = uint64(len(msrs)) // nmsrs in the low half, pad 0
	for i, m := range msrs {
		buf[1+2*i] = uint64(m.Index)
		buf[2+2*i] = m.Data
	}
	r, errno := ioctl(fd, req, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return 0, errno
	}
	n := int(r)
	if n > len(msrs) {
		n = len(msrs)
	}
	for i := 0; i < n; i++ {
		msrs[i].Data = buf[2+2*i]
	}
	return n, 0
}

// setGuestDebug issues KVM_SET_GUEST_DEBUG.
func setGuestDebug(fd int, d *kvmGuestDebug) error {
	if _, errno := ioctl(fd, ioctlSetGuestDebug, uintptr(unsafe.Pointer(d))); errno != 0 {
		return errno
	}
	return nil
}

// vcpuEventsIoctl issues KVM_GET_VCPU_EVENTS or KVM_SET_VCPU_EVENTS.
func vcpuEventsIoctl(fd int, req uintptr, ev *vcpuEvents) unix.Errno {
	_, errno := ioctl(fd, req, uintptr(unsafe.Pointer(ev)))
	return errno
}

// translateIoctl issues KVM_TRANSLATE for t.LinearAddress.
func translateIoctl(fd int, t *translation) unix.Errno {
	_, errno := ioctl(fd, ioctlTranslate, uintptr(unsafe.Pointer(t)))
	return errno
}

// createPIT2 issues KVM_CREATE_PIT2 with cfg.
func createPIT2(fd int, cfg *pitConfig) unix.Errno {
	_, errno := ioctl(fd, ioctlCreatePIT2, uintptr(unsafe.Pointer(cfg)))
	return errno
}
