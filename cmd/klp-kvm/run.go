package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"klp-kvm/api"
	"klp-kvm/guestkernel"
	"klp-kvm/kvm"
	"klp-kvm/livepatch"
	"klp-kvm/vmm"
)

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	engineName := fs.String("engine", "auto", "execution engine: auto, kvm or emu")
	cpus := fs.Int("cpus", 2, "number of vCPUs")
	mem := fs.Int("mem", 0, "guest RAM in MiB (default 128, 512 for a Linux bzImage)")
	kernelPath := fs.String("kernel", "", "guest kernel: klp-kvm's ELF or a Linux bzImage (default: the embedded guest kernel)")
	initrdPath := fs.String("initrd", "", "initial ramdisk of a Linux bzImage guest")
	cmdline := fs.String("cmdline", "", "guest kernel command line (default console=ttyS0; for a Linux bzImage "+kvm.DefaultLinuxCmdline+")")
	sock := fs.String("api", "", "control API socket (default $KLP_KVM_API, else ./klp-kvm.sock)")
	console := fs.String("console", "stdio", "guest console: stdio, none, or a file to write it to")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "klp-kvm run: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	image, err := loadKernel(*kernelPath)
	if err != nil {
		fmt.Fprintf(stderr, "klp-kvm run: %v\n", err)
		return 1 // README: a file that cannot be read is a failure, not usage
	}
	var initrd []byte
	if *initrdPath != "" {
		if initrd, err = os.ReadFile(*initrdPath); err != nil {
			fmt.Fprintf(stderr, "klp-kvm run: initrd: %v\n", err)
			return 1
		}
	}
	if *cmdline == "" && !kvm.IsLinuxKernel(image) {
		*cmdline = "console=ttyS0" // a Linux guest's default is kvm's
	}
	cfg := vmm.Config{Engine: *engineName, CPUs: *cpus, MemMiB: *mem, Kernel: image, Initrd: initrd, Cmdline: *cmdline, Events: stderr}
	var quit chan struct{}
	switch *console {
	case "stdio":
		cfg.Console = stdout
		if term.IsTerminal(int(os.Stdin.Fd())) {
			old, err := term.MakeRaw(int(os.Stdin.Fd()))
			if err == nil {
				defer term.Restore(int(os.Stdin.Fd()), old)
				// In raw mode the terminal no longer maps \n to \r\n.
				cfg.Console, cfg.Events = crlfWriter{stdout}, crlfWriter{stderr}
				fmt.Fprint(stderr, "klp-kvm: console attached; Ctrl-A x quits\r\n")
			}
			quit = make(chan struct{})
			cfg.ConsoleIn = &escapeReader{r: os.Stdin, quit: quit}
		} else {
			cfg.ConsoleIn = os.Stdin
		}
	case "none":
	default:
		f, err := os.Create(*console)
		if err != nil {
			fmt.Fprintf(stderr, "klp-kvm run: console: %v\n", err)
			return 2
		}
		defer f.Close()
		cfg.Console = f
	}
	v, err := vmm.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "klp-kvm run: %v\n", err)
		return 1
	}
	defer v.Close()
	fmt.Fprintf(cfg.Events, "klp-kvm: %s\n", v.EngineWhy)
	if v.NoLivepatch != nil {
		// A kernel without klp_guest_abi / klp_sysfs_state (e.g. a test
		// guest) still runs; it just cannot be live patched.
		fmt.Fprintf(cfg.Events, "klp-kvm: live patching unavailable for this kernel: %v\n", v.NoLivepatch)
	}

	// The guest starts before the API socket exists, so a request that
	// finds the socket finds a started guest: the handler holds it until
	// the agent is ready.
	if err := v.Start(); err != nil {
		fmt.Fprintf(stderr, "klp-kvm run: %v\n", err)
		return 1
	}
	path := api.SocketPath(*sock)
	l, err := api.Listen(path)
	if err != nil {
		fmt.Fprintf(stderr, "klp-kvm run: %v\n", err)
		return 1
	}
	defer l.Close() // removes the socket file, if it is still ours
	l.Logf = func(format string, args ...any) { fmt.Fprintf(cfg.Events, format+"\n", args...) }
	srv := api.NewServer(v.Handler()) // timeouts, header and concurrency caps
	go srv.Serve(l)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	stopped := make(chan struct{}) // the API is drained and the guest told to stop
	go func() {
		defer close(stopped)
		// On a signal or Ctrl-A x, operations in flight finish or roll back
		// (each within its own deadline) before the guest stops; when the
		// guest stopped by itself, they fail at once saying so.
		grace := shutdownGrace
		select {
		case s := <-sigs:
			fmt.Fprintf(stderr, "\r\nklp-kvm: %v: finishing operations in progress, then stopping the guest\r\n", s)
		case <-quit:
			fmt.Fprint(stderr, "\r\nklp-kvm: Ctrl-A x: finishing operations in progress, then stopping the guest\r\n")
		case <-v.Stopped():
			grace = stoppedGrace
		}
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			fmt.Fprintf(stderr, "klp-kvm: API requests still running after %v: %v\r\n", grace, err)
		}
		if err := v.Drain(ctx); err != nil {
			fmt.Fprintf(stderr, "klp-kvm: %v\r\n", err)
		}
		v.Machine.Stop()
	}()
	defer func() { <-stopped }()
	code, err := v.Wait()
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "\r\nklp-kvm run: %v\r\n", err)
		return 1
	case code != 0:
		fmt.Fprintf(stderr, "\r\nklp-kvm: guest powered off with code %d\r\n", code)
		return 1
	}
	return 0
}

// shutdownGrace bounds how long run waits, on a signal, for API requests
// and guest-initiated transitions in flight: longer than a transition's
// default deadline (5 s) plus its callbacks, so a normal one completes or
// rolls back. stoppedGrace is the same once the guest stopped by itself:
// the requests then fail at once, and only need to be answered.
const (
	shutdownGrace = 30 * time.Second
	stoppedGrace  = 2 * time.Second
)

func loadKernel(path string) ([]byte, error) {
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("kernel: %w", err)
		}
		return b, nil
	}
	return guestkernel.Vmlinux(), nil
}

// crlfWriter turns \n into \r\n for a terminal in raw mode.
type crlfWriter struct{ w io.Writer }

func (c crlfWriter) Write(p []byte) (int, error) {
	for i, b := range p {
		var err error
		if b == '\n' {
			_, err = c.w.Write([]byte{'\r', '\n'})
		} else {
			_, err = c.w.Write(p[i : i+1])
		}
		if err != nil {
			return i, err
		}
	}
	return len(p), nil
}

// escapeReader passes terminal input to the guest, QEMU style: Ctrl-A x
// quits, Ctrl-A a sends a literal Ctrl-A.
type escapeReader struct {
	r       io.Reader
	quit    chan struct{}
	escaped bool
}

func (e *escapeReader) Read(p []byte) (int, error) {
	for {
		buf := make([]byte, len(p))
		n, err := e.r.Read(buf)
		out := p[:0]
		for _, b := range buf[:n] {
			switch {
			case e.escaped:
				e.escaped = false
				switch b {
				case 'x', 'X':
					close(e.quit)
					return 0, io.EOF
				case 'a':
					out = append(out, 0x01)
				default:
					out = append(out, 0x01, b)
				}
			case b == 0x01:
				e.escaped = true
			default:
				out = append(out, b)
			}
		}
		if len(out) > 0 || err != nil {
			return len(out), err
		}
	}
}

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("api", "", "control API socket")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "klp-kvm status: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var info kvm.Info
	var lp *livepatch.Status // nil when the kernel cannot be live patched
	if code := call(stderr, *sock, func(ctx context.Context, c *api.Client) (err error) {
		if info, err = c.Machine(ctx); err != nil {
			return err
		}
		if st, err := c.Status(ctx); err == nil {
			lp = &st.Livepatch
		}
		return nil
	}); code != 0 {
		return code
	}
	if *asJSON {
		return printJSON(stdout, info)
	}
	fmt.Fprintf(stdout, "engine %s, %d MiB, up %.1fs, %s\n", info.Engine, info.MemMiB, float64(info.UptimeNS)/1e9, pausedWord(info.Paused))
	for _, v := range info.VCPUs {
		fmt.Fprintf(stdout, "  vCPU %d: %-8s exits %d", v.ID, v.State, v.Exits)
		if len(v.ExitsByReason) != 0 {
			fmt.Fprintf(stdout, " (%s)", countsText(v.ExitsByReason))
		}
		if v.Instructions != 0 {
			fmt.Fprintf(stdout, " instructions %d", v.Instructions)
		}
		if k := v.Kernel; k != nil {
			fmt.Fprintf(stdout, "; in KVM: exits %d, emulated instructions %d, halts %d, interrupts injected %d",
				k["exits"], k["insn_emulation"], k["halt_exits"], k["irq_injections"])
		}
		fmt.Fprintln(stdout)
	}
	fmt.Fprintf(stdout, "pauses %d (last window %.1f us), I/O exits %d, unknown port accesses %d\n",
		info.Pauses, float64(info.LastWindowNS)/1e3, info.IOExits, info.UnknownPorts)
	if lp != nil {
		fmt.Fprintf(stdout, "patch area: %d of %d bytes in use (%d retired, %d quarantined), %d patches",
			lp.PatchAreaInUse, lp.PatchAreaSize, lp.Retired, lp.Quarantined, len(lp.Patches))
		if lp.InTransition != "" {
			fmt.Fprintf(stdout, ", %s in transition", lp.InTransition)
		}
		fmt.Fprintln(stdout)
	}
	return 0
}

func pausedWord(p bool) string {
	if p {
		return "paused"
	}
	return "running"
}

func cmdStop(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("stop", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("api", "", "control API socket")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "klp-kvm stop: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	return call(stderr, *sock, func(ctx context.Context, c *api.Client) error { return c.Stop(ctx) })
}

// countsText prints counters as "a 1, b 2" in name order.
func countsText(m map[string]uint64) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", n, m[n])
	}
	return b.String()
}
