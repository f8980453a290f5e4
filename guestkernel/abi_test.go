package guestkernel

import (
	"bufio"
	"bytes"
	"klp-kvm/kvm"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCLayout compiles include/boot_info.h and include/klp_abi.h with the
// host's gcc and compares every size and offset with the Go mirrors.
func TestCLayout(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc: C layout not checked")
	}
	want := map[string]int{
		"sizeof(struct klp_guest_abi)": GuestABISize,
		"klp_guest_abi.magic":          offABIMagic, "klp_guest_abi.version": offABIVersion, "klp_guest_abi.size": offABISize,
		"klp_guest_abi.task_table": offABITaskTable, "klp_guest_abi.task_stride": offABITaskStride,
		"klp_guest_abi.task_capacity": offABITaskCapacity, "klp_guest_abi.nr_tasks": offABINrTasks,
		"klp_guest_abi.name_len": offABINameLen, "klp_guest_abi.off_state": offABIOffState,
		"klp_guest_abi.off_pid": offABIOffPid, "klp_guest_abi.off_name": offABIOffName,
		"klp_guest_abi.off_saved_rsp": offABIOffSavedRSP, "klp_guest_abi.off_saved_rbp": offABIOffSavedRBP,
		"klp_guest_abi.off_saved_rip": offABIOffSavedRIP, "klp_guest_abi.off_stack_base": offABIOffStackBase,
		"klp_guest_abi.off_stack_size": offABIOffStackSize, "klp_guest_abi.off_on_cpu": offABIOffOnCPU,
		"klp_guest_abi.off_cpu": offABIOffCPU, "klp_guest_abi.cpu_current": offABICPUCurrent,
		"klp_guest_abi.nr_cpus": offABINrCPUs, "klp_guest_abi.max_cpus": offABIMaxCPUs,
		"klp_guest_abi.irq_frame_ret": offABIIRQFrameRet, "klp_guest_abi.irq_regs_off": offABIIRQRegsOff,
		"klp_guest_abi.irq_regs_size": offABIIRQRegsSize, "klp_guest_abi.switch_to": offABISwitchTo,
		"klp_guest_abi.switch_to_size": offABISwitchToSize, "klp_guest_abi.boot_ns": offABIBootNS,
		"klp_guest_abi.ticks": offABITicks, "sizeof(struct klp_irq_regs)": IRQRegsSize,
		"klp_irq_regs.rbp": 8 * 8, "klp_irq_regs.rip": 17 * 8, "klp_irq_regs.rsp": 20 * 8,

		"sizeof(struct klp_sysfs_state)": SysfsStateSize, "sizeof(struct klp_sysfs_patch)": SysfsPatchSize,
		"sizeof(struct klp_sysfs_object)": SysfsObjSize, "sizeof(struct klp_sysfs_func)": SysfsFuncSize,
		"klp_sysfs_state.magic": offSSMagic, "klp_sysfs_state.version": offSSVersion, "klp_sysfs_state.size": offSSSize,
		"klp_sysfs_state.seq": offSSSeq, "klp_sysfs_state.max_patches": offSSMaxPatches,
		"klp_sysfs_state.max_objs": offSSMaxObjs, "klp_sysfs_state.max_funcs": offSSMaxFuncs,
		"klp_sysfs_state.nr_patches": offSSNrPatches, "klp_sysfs_state.nr_objs": offSSNrObjs,
		"klp_sysfs_state.nr_funcs": offSSNrFuncs, "klp_sysfs_state.generation": offSSGeneration,
		"klp_sysfs_state.patches": offSSPatches, "klp_sysfs_state.objs": offSSObjs, "klp_sysfs_state.funcs": offSSFuncs,
		"klp_sysfs_patch.name": offSPName, "klp_sysfs_patch.enabled": offSPEnabled,
		"klp_sysfs_patch.transition": offSPTransition, "klp_sysfs_patch.force": offSPForce,
		"klp_sysfs_patch.replace": offSPReplace, "klp_sysfs_patch.stack_order": offSPStackOrder,
		"klp_sysfs_patch.first_obj": offSPFirstObj, "klp_sysfs_patch.nr_objs": offSPNrObjs,
		"klp_sysfs_object.name": offSOName, "klp_sysfs_object.patched": offSOPatched,
		"klp_sysfs_object.first_func": offSOFirstFunc, "klp_sysfs_object.nr_funcs": offSONrFuncs,
		"klp_sysfs_func.name": offSFName, "klp_sysfs_func.sympos": offSFSympos,
		"KLP_SYSFS_MAX_PATCHES": SysfsMaxPatches, "KLP_SYSFS_MAX_OBJS": SysfsMaxObjs,
		"KLP_SYSFS_MAX_FUNCS": SysfsMaxFuncs, "KLP_SYSFS_NAME_LEN": SysfsNameLen,
		"KLP_SYSFS_FUNC_NAME_LEN": SysfsFuncNameLen, "KLP_SYSFS_VERSION": SysfsVersion,
		"KLP_GUEST_ABI_VERSION": GuestABIVersion, "KLP_MAX_CPUS": MaxCPUs, "KLP_MAX_TASKS": MaxTasks,
		"KLP_TASK_NAME_LEN": TaskNameLen, "KLP_STACK_SIZE": StackSize,
		"KLP_TASK_UNUSED": TaskUnused, "KLP_TASK_RUNNING": TaskRunning, "KLP_TASK_SLEEPING": TaskSleeping,
		"KLP_TASK_DEAD": TaskDead,

		"sizeof(struct klp_patch_list)": PatchListSize, "sizeof(struct klp_patch_list_entry)": PatchListEntrySize,
		"klp_patch_list.magic": offPLMagic, "klp_patch_list.version": offPLVersion, "klp_patch_list.size": offPLSize,
		"klp_patch_list.seq": offPLSeq, "klp_patch_list.max_patches": offPLMaxPatches,
		"klp_patch_list.nr_patches": offPLNrPatches, "klp_patch_list.transition": offPLTransition,
		"klp_patch_list.patches": offPLPatches, "klp_patch_list_entry.patch": offPLEPatch,
		"klp_patch_list_entry.states": offPLEStates, "KLP_PATCH_LIST_VERSION": PatchListVersion,
	}
	var src strings.Builder
	src.WriteString("#include <stdio.h>\n#include <stddef.h>\n#include \"boot_info.h\"\n#include \"klp_abi.h\"\nint main(void) {\n")
	for k := range want {
		var expr string
		switch {
		case strings.HasPrefix(k, "sizeof("):
			expr = k
		case strings.Contains(k, "."):
			parts := strings.SplitN(k, ".", 2)
			expr = "offsetof(struct " + parts[0] + ", " + parts[1] + ")"
		default:
			expr = k
		}
		src.WriteString("\tprintf(\"%s\\t%llu\\n\", \"" + k + "\", (unsigned long long)(" + expr + "));\n")
	}
	src.WriteString("\tprintf(\"magic %llx %llx %llx %llx\\n\", (unsigned long long)BOOT_INFO_MAGIC, (unsigned long long)KLP_GUEST_ABI_MAGIC, (unsigned long long)KLP_SYSFS_MAGIC, (unsigned long long)KLP_PATCH_LIST_MAGIC);\n\treturn 0;\n}\n")
	dir := t.TempDir()
	c := filepath.Join(dir, "layout.c")
	if err := os.WriteFile(c, []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "layout")
	if out, err := exec.Command("gcc", "-Wall", "-Iinclude", "-o", bin, c).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Split(sc.Text(), "\t")
		if strings.HasPrefix(f[0], "magic ") {
			f = strings.Fields(f[0])
			for i, m := range []uint64{kvm.BootInfoMagic, GuestABIMagic, SysfsMagic, PatchListMagic} {
				if f[1+i] != strconv.FormatUint(m, 16) {
					t.Errorf("magic %d: C %s, Go %x", i, f[1+i], m)
				}
			}
			continue
		}
		v, _ := strconv.Atoi(f[1])
		got[f[0]] = v
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("%s: C says %d, Go says %d", k, g, w)
		}
	}
}
