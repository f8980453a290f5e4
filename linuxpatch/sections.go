package linuxpatch

import (
	"strings"

	"klp-kvm/elfpatch"
)

// class is what becomes of a section of the module.
type class int

const (
	classNone       class = iota // not allocated at run time: debug info, symbols, relocations
	classText                    // code: placed, read + execute
	classROData                  // placed, read-only
	classData                    // placed, read + write
	classBSS                     // placed, read + write, zero-filled
	classThisModule              // .gnu.linkonce.this_module: a zeroed area instead (see doc.go)
	classSkip                    // allocatable, deliberately not loaded (why says why)
	classRefuse                  // allocatable, and the module cannot work without a loader doing something with it
)

// Linux's special sections and what the host does with each, from
// kernel/module/main.c and arch/x86/kernel/module.c (module_finalize) of
// Linux 6.1. The reasons are user-visible (errors, reports).
var skipSections = map[string]string{
	".modinfo":          "module metadata, read by the host (name, vermagic, livepatch=Y); Linux's loader drops it from memory too",
	"__versions":        "modversions CRCs; Linux's loader drops it from memory; klp-kvm checks vermagic's release and links against the live kernel's own symbols instead",
	"__mcount_loc":      "fentry call sites: each one is made a 5-byte NOP here, as ftrace_module_init would in the guest, so the new code never calls into the guest's ftrace",
	".return_sites":     "read, not loaded: its returns stay 'jmp __x86_return_thunk' (valid as built), or jump to Config.ReturnThunk, or become 'ret' (Config.PlainReturns), as apply_returns would make them",
	".retpoline_sites":  "calls through __x86_indirect_thunk_* as built are valid; apply_retpolines only turns them into plainer indirect calls",
	".parainstructions": "paravirt sites as built call through pv_ops, which is valid on any platform; apply_paravirt only inlines them",
	".smp_locks":        "LOCK prefixes as built are correct on SMP and UP alike; the list only lets a UP kernel drop them",
	".static_call_sites": "static calls as built go through the kernel's trampoline, which the kernel keeps current; " +
		"registering the sites only turns them into direct calls",
	".ibt_endbr_seal":   "ENDBR64 instructions left as built are valid; sealing only hardens",
	"__ksymtab":         "exports: nothing in the guest links against this module",
	"__ksymtab_gpl":     "exports: nothing in the guest links against this module",
	"__kcrctab":         "export CRCs: nothing in the guest links against this module",
	"__kcrctab_gpl":     "export CRCs: nothing in the guest links against this module",
	"__ksymtab_strings": "export names: nothing in the guest links against this module",
	"__param":           "module parameter descriptors: the module never appears in the guest's /sys/module (the variables themselves are loaded)",
	".BTF":              "the module's split BTF: the kernel's BTF gives the klp struct layouts",
	".BTF_ids":          "BTF ids for the kernel's BPF verifier, which never sees this module",
}

var refuseSections = map[string]string{
	".altinstructions":      "alternatives: the right instructions depend on the guest CPU's features, which apply_alternatives would read inside the guest",
	".altinstr_replacement": "alternatives: the right instructions depend on the guest CPU's features, which apply_alternatives would read inside the guest",
	".altinstr_aux":         "alternatives: the right instructions depend on the guest CPU's features, which apply_alternatives would read inside the guest",
	"__jump_table":          "static keys (jump labels): the module's branches must be registered with the guest kernel (jump_label_add_module) to follow their keys",
	"__ex_table":            "an exception table: a fault in this code (e.g. a user-space access) must find its fixup through the guest's module list, which will not know this code, so it would oops",
	"__bug_table":           "BUG()/WARN() sites: the guest finds them through its module list; unregistered, a WARN's ud2 becomes an invalid-opcode oops",
	".init_array":           "constructors, which only a module loader runs",
	".ctors":                "constructors, which only a module loader runs",
	".data..percpu":         "per-CPU variables: the module loader allocates per-CPU space in the guest",
	"__tracepoints":         "tracepoints, registered with the guest by the module loader",
	"__tracepoints_ptrs":    "tracepoints, registered with the guest by the module loader",
	"__tracepoints_strings": "tracepoints, registered with the guest by the module loader",
	"_ftrace_events":        "trace events, registered with the guest by the module loader",
	"_ftrace_eval_map":      "trace event enums, registered with the guest by the module loader",
	"__bpf_raw_tp_map":      "BPF raw tracepoints, registered with the guest by the module loader",
	"__trace_printk_fmt":    "trace_printk formats, registered with the guest by the module loader",
	"_kprobe_blacklist":     "a kprobe blacklist, registered with the guest by the module loader",
	"__dyndbg":              "dynamic debug descriptors, registered with the guest by the module loader",
	"__dyndbg_classes":      "dynamic debug classes, registered with the guest by the module loader",
	".kunit_test_suites":    "KUnit suites, run by the module loader",
	"__srcu_struct_ptrs":    "SRCU structures, initialised by the module loader",
	".static_call.text":     "static call trampolines of the module itself, registered with the guest by the module loader",
}

// Ordinary sections by name prefix: the compiler's code and data, placed
// by their flags.
var ordinaryPrefixes = []string{
	".text", ".noinstr.text", ".entry.text", ".sched.text", ".cpuidle.text", ".spinlock.text",
	".kprobes.text", ".ref.text", ".rodata", ".data", ".bss", ".orc_unwind", ".orc_unwind_ip",
}

// classify decides what becomes of section s.
func classify(s *elfpatch.Section) (class, string) {
	switch s.Type {
	case elfpatch.SHT_NULL, elfpatch.SHT_RELA, elfpatch.SHT_REL, elfpatch.SHT_SYMTAB, elfpatch.SHT_STRTAB, elfpatch.SHT_SYMTAB_SHNDX, elfpatch.SHT_GROUP:
		// Linking information, never placed (a .klp.rela section may be
		// SHF_ALLOC so that Linux keeps it after loading).
		return classNone, ""
	}
	if s.Flags&elfpatch.SHF_ALLOC == 0 {
		return classNone, ""
	}
	name := s.Name
	if name == ".gnu.linkonce.this_module" {
		return classThisModule, ""
	}
	if why, ok := refuseSections[name]; ok {
		return classRefuse, why
	}
	for _, p := range []string{".init_array.", ".ctors."} {
		if strings.HasPrefix(name, p) {
			return classRefuse, "constructors, which only a module loader runs"
		}
	}
	if why, ok := skipSections[name]; ok {
		return classSkip, why
	}
	if s.Type == shtNote {
		return classSkip, "an ELF note, which only a module loader would show in the guest's sysfs"
	}
	if strings.HasPrefix(name, ".init.") || strings.HasPrefix(name, ".exit.") || name == ".init" || name == ".exit" {
		return classSkip, "init/exit code and data: the module's init and exit never run"
	}
	ordinary := false
	for _, p := range ordinaryPrefixes {
		if name == p || strings.HasPrefix(name, p+".") || strings.HasPrefix(name, p+"..") {
			ordinary = true
			break
		}
	}
	if !ordinary {
		return classRefuse, "an allocatable section this loader does not know; a module loader may give it a meaning the host cannot reproduce"
	}
	switch {
	case s.Type == elfpatch.SHT_NOBITS:
		return classBSS, ""
	case s.Type != elfpatch.SHT_PROGBITS:
		return classRefuse, "an allocatable section of an unexpected type"
	case s.Flags&elfpatch.SHF_EXECINSTR != 0:
		if s.Flags&elfpatch.SHF_WRITE != 0 {
			return classRefuse, "writable code"
		}
		return classText, ""
	case s.Flags&elfpatch.SHF_WRITE != 0:
		return classData, ""
	}
	return classROData, ""
}

const shtNote = 7

// Reserved symbol section indices.
const (
	shnUndef     = 0
	shnLivepatch = 0xff20 // Linux: resolved by the livepatch core (.klp.sym.*)
	shnAbs       = 0xfff1
	shnCommon    = 0xfff2
)
