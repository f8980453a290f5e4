package linuxlive

import (
	"errors"
	"path"
	"strconv"
	"strings"
	"syscall"

	"klp-kvm/linuxpatch"
	"klp-kvm/livepatch"
)

// ErrSysfsWrite: a write to the guest's livepatch tree that Linux's
// sysfs refuses too: a value that is not a boolean, writing the state
// the patch is in, force with no transition of the patch (EINVAL); a read-only
// attribute (EPERM); a directory (EISDIR).
var ErrSysfsWrite = errors.New("sysfs write refused")

// SysfsWrite carries out a guest process's write to the livepatch tree
// the agent of a Linux guest shows (guestagent; the host forwards it
// from the agent's sysfs-write event), with the semantics klp-kvm's own
// guest kernel gives /sys/kernel/livepatch (livepatch.Manager.SysfsWrite)
// and the same code path as the API: rel is relative to the tree's root
// ("livepatch_sample/enabled"). Writable, as in Linux:
//
//   - <patch>/enabled: a boolean (kstrtobool's spellings); writing the
//     state the patch is in is EINVAL (Linux's enabled_store); 0
//     disables, 1 enables (klp-kvm's guests may enable a disabled
//     patch again, by the stacking rules: EBUSY otherwise); the
//     transition's deadline and check are the defaults;
//   - <patch>/force: 1 forces the patch in transition (Linux's
//     force_store): while an enable or disable of that patch retries a
//     blocked check, its next attempt switches without the check (the
//     result says forced); otherwise EINVAL (Linux's answer when the
//     patch is not klp_transition_patch).
//
// Everything else is read-only (EPERM) or absent (ENOENT). The errno of
// the returned error is the one Linux's write() would return.
func (m *Manager) SysfsWrite(rel, value string) error {
	const op = "sysfs write"
	rel = strings.Trim(path.Clean("/"+rel), "/")
	parts := strings.Split(rel, "/")
	if rel == "" {
		return sysfsErr(op, "", syscall.EISDIR, "the root is a directory")
	}
	name := parts[0]
	if len(parts) > 2 {
		return sysfsErr(op, name, syscall.EPERM, "%s is read-only", rel)
	}
	if len(parts) == 1 {
		return sysfsErr(op, name, syscall.EISDIR, "%s is a directory", rel)
	}
	attr := parts[1]
	on, perr := sysfsBool(value)
	switch attr {
	case "enabled":
		if perr != nil {
			return sysfsErr(op, name, syscall.EINVAL, "%q is not a boolean", clipValue(value))
		}
		return m.setEnabled(name, on)
	case "force":
		if perr != nil || !on {
			return sysfsErr(op, name, syscall.EINVAL, "write 1 to force a transition")
		}
		if cur := m.inTransition.Load(); cur != nil && *cur == name {
			m.forceReq.Store(true)
			return nil
		}
		if !m.known(name) {
			return errf(op, name, ErrNotFound, "")
		}
		return sysfsErr(op, name, syscall.EINVAL, "no transition of %s in progress", name)
	}
	// The rest answers from the published state, without waiting for an
	// operation in progress.
	if !m.known(name) {
		return errf(op, name, ErrNotFound, "")
	}
	switch attr {
	case "transition", "replace", "stack_order":
		return sysfsErr(op, name, syscall.EPERM, "%s is read-only", attr)
	case linuxpatch.VmlinuxObject:
		return sysfsErr(op, name, syscall.EISDIR, "%s is a directory", rel)
	}
	return sysfsErr(op, name, syscall.ENOENT, "no attribute %q", clipValue(attr))
}

// known says whether a patch of that name is registered, as of the last
// published state.
func (m *Manager) known(name string) bool {
	for _, p := range m.Status().Patches {
		if p.Name == name {
			return true
		}
	}
	return false
}

// setEnabled is a write to <patch>/enabled: the operation of Enable or
// Disable, under the same lock, after Linux's check that the state
// changes. It waits for an operation in progress, as enabled_store
// waits for klp_mutex (every operation ends within its deadline).
func (m *Manager) setEnabled(name string, on bool) error {
	const op = "sysfs write"
	m.mu.Lock()
	defer m.mu.Unlock()
	_, p := m.find(name)
	if p == nil {
		return errf(op, name, ErrNotFound, "")
	}
	if p.enabled == on {
		return sysfsErr(op, name, syscall.EINVAL, "the patch is already %s", map[bool]string{true: "enabled", false: "disabled"}[on])
	}
	defer m.publish()
	var res *livepatch.Result
	var err error
	if on {
		res, err = m.enable(name, livepatch.Options{})
	} else {
		res, err = m.disable(name, livepatch.Options{})
	}
	if err != nil {
		return err
	}
	m.last = res
	return nil
}

func sysfsErr(op, patch string, errno syscall.Errno, format string, args ...any) *Error {
	e := errf(op, patch, ErrSysfsWrite, format, args...)
	e.Errno = errno
	return e
}

// sysfsBool is the kernel's kstrtobool for the spellings klp-kvm's own
// guest accepts (livepatch's parseBool), after trailing white space.
func sysfsBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "y", "yes", "on", "true":
		return true, nil
	case "0", "n", "no", "off", "false":
		return false, nil
	}
	if v, err := strconv.ParseBool(strings.TrimSpace(s)); err == nil {
		return v, nil
	}
	return false, syscall.EINVAL
}

// clipValue bounds an untrusted value quoted in an error.
func clipValue(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
