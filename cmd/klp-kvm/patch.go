package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"klp-kvm/api"
	"klp-kvm/guestkernel"
	"klp-kvm/klperr"
	"klp-kvm/livepatch"
)

const patchUsage = `usage: klp-kvm patch load|register OBJ [--force] [--deadline D] [--conservative] [--json]
       klp-kvm patch enable|disable|unload NAME [--force] [--deadline D] [--conservative] [--json]
       klp-kvm patch unregister NAME [--json]
       klp-kvm patch list [--json]
Flags may stand before or after the operation and its argument; --api SOCK
(default $KLP_KVM_API, else ./klp-kvm.sock) names the control API socket.
OBJ is a patch object file, or the name of an embedded sample (e.g.
livepatch-sample). Exit status: 0 ok, 1 refused or failed, 2 usage.`

// cmdPatch is `klp-kvm patch`: livepatch operations through the API.
func cmdPatch(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("patch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, patchUsage); fs.PrintDefaults() }
	sock := fs.String("api", "", "control API socket (default $KLP_KVM_API, else ./klp-kvm.sock)")
	force := fs.Bool("force", false, "skip the consistency check (like writing 1 to .../force)")
	deadline := fs.Duration("deadline", 0, "how long to retry a blocked transition (default 5s)")
	conservative := fs.Bool("conservative", false, "scan every stack word instead of the frame-pointer chain")
	asJSON := fs.Bool("json", false, "print JSON")
	rest, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "klp-kvm patch: "+format+"\n%s\n", append(a, patchUsage)...)
		return 2
	}
	if len(rest) == 0 {
		return usage("which operation?")
	}
	if *deadline < 0 {
		return usage("--deadline %v: not a duration to wait", *deadline)
	}
	op := rest[0]
	opts := api.OpRequest{Force: *force, DeadlineMS: int64(*deadline / time.Millisecond), Conservative: *conservative}
	if *deadline > 0 && opts.DeadlineMS == 0 {
		opts.DeadlineMS = 1 // under a millisecond: the shortest wait, not the default
	}
	switch op {
	case "list":
		if len(rest) != 1 {
			return usage("list takes no argument, got %q", rest[1])
		}
		var st livepatch.Status
		if rc := call(stderr, *sock, func(ctx context.Context, c *api.Client) (err error) {
			st, err = c.Patches(ctx)
			return err
		}); rc != 0 {
			return rc
		}
		if *asJSON {
			return printJSON(stdout, st)
		}
		printPatches(stdout, st)
		return 0
	case "load", "register":
		if len(rest) != 2 {
			return usage("%s takes one patch object (a file or an embedded sample)", op)
		}
		data, hint, err := readPatchObject(op, rest[1])
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		req := api.PatchRequest{Op: op, Object: data, Name: hint, Force: opts.Force, DeadlineMS: opts.DeadlineMS,
			Conservative: opts.Conservative}
		var rep api.OpReply
		if rc := call(stderr, *sock, func(ctx context.Context, c *api.Client) (err error) {
			rep, err = c.AddPatch(ctx, req)
			return err
		}); rc != 0 {
			return rc
		}
		return printOp(stdout, rep, *asJSON)
	case "enable", "disable", "unregister", "unload":
		if len(rest) != 2 {
			return usage("%s takes one patch name", op)
		}
		name := rest[1]
		var rep api.OpReply
		if rc := call(stderr, *sock, func(ctx context.Context, c *api.Client) (err error) {
			switch op {
			case "enable":
				rep, err = c.Enable(ctx, name, opts)
			case "disable":
				rep, err = c.Disable(ctx, name, opts)
			case "unload":
				rep, err = c.Unload(ctx, name, opts)
			default: // unregister
				rep, err = c.Unregister(ctx, name)
			}
			return err
		}); rc != 0 {
			return rc
		}
		return printOp(stdout, rep, *asJSON)
	}
	return usage("unknown operation %q", op)
}

// readPatchObject reads OBJ for op: a file, else an embedded sample by
// name. It returns the bytes and the file name the server may name the
// patch by; its errors are whole messages, in klperr's form
// ("klp-kvm patch: load x.o: empty file, not a patch object: invalid
// argument (EINVAL)").
func readPatchObject(op, obj string) ([]byte, string, error) {
	fail := func(errno syscall.Errno, detail string) ([]byte, string, error) {
		return nil, "", errors.New(klperr.Format("klp-kvm patch", op, obj, nil, errno, detail, nil))
	}
	f, err := os.Open(obj)
	if errors.Is(err, fs.ErrNotExist) && !strings.Contains(obj, "/") {
		b, gerr := guestkernel.Patch(obj)
		if gerr != nil {
			return fail(syscall.ENOENT, "no such file, and no embedded sample of that name (have: "+
				strings.Join(guestkernel.PatchNames(), ", ")+")")
		}
		return b, strings.TrimSuffix(obj, ".o") + ".o", nil
	}
	if err != nil {
		return fail(klperr.Errno(err), "")
	}
	defer f.Close()
	fi, err := f.Stat()
	switch {
	case err != nil:
		return fail(klperr.Errno(err), "")
	case fi.IsDir():
		return fail(syscall.EISDIR, "a directory, not a patch object")
	case !fi.Mode().IsRegular():
		return fail(syscall.EINVAL, "not a regular file")
	case fi.Size() == 0:
		return fail(syscall.EINVAL, "empty file, not a patch object")
	case fi.Size() > api.MaxPatchObject:
		return fail(syscall.EFBIG, fmt.Sprintf("%d bytes, more than the %d MiB a patch object may have", fi.Size(), api.MaxPatchObject>>20))
	}
	b, err := io.ReadAll(io.LimitReader(f, api.MaxPatchObject+1))
	if err != nil {
		return fail(klperr.Errno(err), "")
	}
	return b, filepath.Base(obj), nil
}

func printOp(w io.Writer, rep api.OpReply, asJSON bool) int {
	if asJSON {
		if rc := printJSON(w, rep); rc != 0 {
			return rc
		}
		return callbackStatus(rep)
	}
	fmt.Fprintf(w, "%s %s: ok", rep.Op, rep.Patch)
	// An unload of a disabled patch only unregisters: nothing switched,
	// nothing to tell.
	if r := rep.Result; r != nil && (r.Attempts > 0 || r.Funcs > 0) {
		fmt.Fprintf(w, " (%d functions switched in a %v pause, %d attempt(s), %v in all", r.Funcs,
			r.PauseWindow.Round(time.Microsecond), r.Attempts, r.Total.Round(time.Microsecond))
		if r.Steps > 0 {
			fmt.Fprintf(w, ", %d progress round(s) letting blocking vCPUs out (%v)", r.Steps, r.StepTime.Round(time.Microsecond))
		}
		if r.Forced {
			fmt.Fprint(w, ", forced")
		}
		if r.ResumeErr != "" {
			fmt.Fprintf(w, ", but the guest did not resume: %s", r.ResumeErr)
		}
		if len(r.Replaced) > 0 {
			fmt.Fprintf(w, ", replaced %s", strings.Join(r.Replaced, ", "))
		}
		fmt.Fprint(w, ")")
	}
	fmt.Fprintln(w)
	if rep.CallbackError != "" {
		fmt.Fprintf(w, "but a callback failed: %s\n", rep.CallbackError)
	}
	return callbackStatus(rep)
}

// callbackStatus is the exit status of a reply: 1 when the switch happened
// but a callback failed (the state is the one asked for; the failure is
// not hidden from scripts), else 0.
func callbackStatus(rep api.OpReply) int {
	if rep.CallbackError != "" {
		return 1
	}
	return 0
}

func printPatches(w io.Writer, st livepatch.Status) {
	if len(st.Patches) == 0 {
		fmt.Fprintln(w, "no patches")
	}
	for _, p := range st.Patches {
		state := "disabled"
		if p.Enabled {
			state = "enabled"
		}
		if p.Transition {
			state += ", in transition"
		}
		var flags []string
		if p.Replace {
			flags = append(flags, "replace")
		}
		if p.Forced {
			flags = append(flags, "forced")
		}
		extra := ""
		if len(flags) > 0 {
			extra = " [" + strings.Join(flags, ",") + "]"
		}
		fmt.Fprintf(w, "%d %s: %s%s\n", p.StackOrder, p.Name, state, extra)
		// The system states it declares (Linux shows them nowhere; the
		// host's enable checks them: klp_is_patch_compatible).
		for _, s := range p.States {
			fmt.Fprintf(w, "    state %d version %d\n", s.ID, s.Version)
		}
		for _, o := range p.Objects {
			for _, f := range o.Funcs {
				pos := f.OldSympos
				if pos == 0 {
					pos = 1
				}
				if f.NewAddr != 0 {
					fmt.Fprintf(w, "    %s/%s,%d -> %s at %#x\n", o.Name, f.OldName, pos, f.NewName, f.NewAddr)
				} else {
					fmt.Fprintf(w, "    %s/%s,%d -> %s\n", o.Name, f.OldName, pos, f.NewName)
				}
			}
		}
	}
	fmt.Fprintf(w, "patch area: %d of %d bytes in use, %d sites redirected\n", st.PatchAreaInUse, st.PatchAreaSize, len(st.Redirected))
}
