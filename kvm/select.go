package kvm

import (
	"fmt"

	"klp-kvm/kvm/emu"
	"klp-kvm/kvm/engine"
	"klp-kvm/kvm/hw"
)

// SelectEngine returns the engine called name: "kvm" (/dev/kvm, an error
// if it cannot be opened), "emu" (software), or "auto" (kvm when /dev/kvm
// opens, else emu). why says what was chosen and why, for stderr.
func SelectEngine(name string) (e engine.Engine, why string, err error) {
	switch name {
	case "kvm":
		e, err := hw.New()
		if err != nil {
			return nil, "", &Error{Op: "select engine", Kind: ErrConfig, Detail: "engine kvm", Err: err}
		}
		return e, "engine kvm (requested)", nil
	case "emu":
		return emu.New(), "engine emu (requested)", nil
	case "auto", "":
		e, err := hw.New()
		if err == nil {
			return e, "engine kvm (/dev/kvm is available)", nil
		}
		return emu.New(), fmt.Sprintf("engine emu (software; /dev/kvm unavailable: %v)", err), nil
	}
	return nil, "", errorf("select engine", ErrConfig, "unknown engine %q: want auto, kvm or emu", name)
}
