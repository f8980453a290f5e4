package applets

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	register(echo, "echo")
	register(func(context.Context, *Env, []string) int { return 0 }, "true")
	register(func(context.Context, *Env, []string) int { return 1 }, "false")
	register(sleep, "sleep")
	register(uname, "uname")
	register(head, "head")
	register(grep, "grep")
	register(syncApplet, "sync")
}

// echo: -n drops the newline; -e is accepted and interprets \n, \t, \\.
func echo(_ context.Context, env *Env, args []string) int {
	args = args[1:]
	nl, esc := true, false
	for len(args) > 0 && (args[0] == "-n" || args[0] == "-e" || args[0] == "-ne" || args[0] == "-en") {
		nl = nl && !strings.Contains(args[0], "n")
		esc = esc || strings.Contains(args[0], "e")
		args = args[1:]
	}
	s := strings.Join(args, " ")
	if esc {
		s = strings.NewReplacer(`\n`, "\n", `\t`, "\t", `\\`, `\`).Replace(s)
	}
	if nl {
		s += "\n"
	}
	io.WriteString(env.Stdout, s)
	return 0
}

// sleep NUMBER[smhd]...: the total; ended early by the context.
func sleep(ctx context.Context, env *Env, args []string) int {
	if len(args) < 2 {
		return env.usage("sleep", "missing operand")
	}
	var total time.Duration
	for _, a := range args[1:] {
		mult := time.Second
		switch {
		case strings.HasSuffix(a, "s"):
			a = a[:len(a)-1]
		case strings.HasSuffix(a, "m"):
			a, mult = a[:len(a)-1], time.Minute
		case strings.HasSuffix(a, "h"):
			a, mult = a[:len(a)-1], time.Hour
		case strings.HasSuffix(a, "d"):
			a, mult = a[:len(a)-1], 24*time.Hour
		}
		f, err := strconv.ParseFloat(a, 64)
		if err != nil || f < 0 || f > 1e9 {
			return env.usage("sleep", "invalid time interval %q", a)
		}
		total += time.Duration(f * float64(mult))
	}
	t := time.NewTimer(total)
	defer t.Stop()
	select {
	case <-t.C:
		return 0
	case <-ctx.Done():
		return 130
	}
}

func cstr(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// uname [-asnrvmo]: no flag is -s, as in coreutils.
func uname(_ context.Context, env *Env, args []string) int {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return env.errorf("uname", "%v", err)
	}
	fields := map[byte]string{'s': cstr(u.Sysname[:]), 'n': cstr(u.Nodename[:]), 'r': cstr(u.Release[:]),
		'v': cstr(u.Version[:]), 'm': cstr(u.Machine[:]), 'o': "GNU/Linux"}
	want := map[byte]bool{}
	for _, a := range args[1:] {
		if len(a) < 2 || a[0] != '-' {
			return env.usage("uname", "extra operand %q", a)
		}
		for i := 1; i < len(a); i++ {
			switch c := a[i]; c {
			case 'a':
				for _, k := range "snrvmo" {
					want[byte(k)] = true
				}
			case 's', 'n', 'r', 'v', 'm', 'o':
				want[c] = true
			default:
				return env.usage("uname", "invalid option -- '%c'", c)
			}
		}
	}
	if len(want) == 0 {
		want['s'] = true
	}
	var out []string
	for _, k := range "snrvmo" {
		if want[byte(k)] {
			out = append(out, fields[byte(k)])
		}
	}
	fmt.Fprintln(env.Stdout, strings.Join(out, " "))
	return 0
}

// open returns a reader for a file operand ("-" is stdin).
func (e *Env) open(name string) (io.ReadCloser, error) {
	if name == "-" {
		return io.NopCloser(e.Stdin), nil
	}
	return os.Open(e.path(name))
}

// head [-n N | -N | -c N] [FILE...]
func head(_ context.Context, env *Env, args []string) int {
	lines, bytes := int64(10), int64(-1)
	var files []string
	for i := 1; i < len(args); i++ {
		a := args[i]
		var err error
		switch {
		case a == "-n" || a == "-c":
			if i+1 >= len(args) {
				return env.usage("head", "option requires an argument -- '%s'", a[1:])
			}
			i++
			var v int64
			v, err = strconv.ParseInt(args[i], 10, 64)
			if a == "-n" {
				lines = v
			} else {
				bytes = v
			}
		case strings.HasPrefix(a, "-n"):
			lines, err = strconv.ParseInt(a[2:], 10, 64)
		case strings.HasPrefix(a, "-c"):
			bytes, err = strconv.ParseInt(a[2:], 10, 64)
		case len(a) > 1 && a[0] == '-' && a[1] >= '0' && a[1] <= '9':
			lines, err = strconv.ParseInt(a[1:], 10, 64)
		default:
			files = append(files, a)
		}
		if err != nil || lines < 0 {
			return env.usage("head", "invalid number in %q", a)
		}
	}
	if len(files) == 0 {
		files = []string{"-"}
	}
	st := 0
	for i, f := range files {
		r, err := env.open(f)
		if err != nil {
			st = env.errorf("head", "cannot open '%s' for reading: %v", f, unwrapPath(err))
			continue
		}
		if len(files) > 1 {
			if i > 0 {
				fmt.Fprintln(env.Stdout)
			}
			fmt.Fprintf(env.Stdout, "==> %s <==\n", f)
		}
		if bytes >= 0 {
			io.CopyN(env.Stdout, r, bytes)
		} else {
			br := bufio.NewReader(r)
			for n := int64(0); n < lines; n++ {
				l, err := br.ReadString('\n')
				io.WriteString(env.Stdout, l)
				if err != nil {
					break
				}
			}
		}
		r.Close()
	}
	return st
}

func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// grep [-ivcnqslhHEFwx] [-e PATTERN]... [PATTERN] [FILE...]: Go's RE2
// syntax, which is POSIX extended syntax without back-references; -E is
// accepted and changes nothing, -F matches fixed strings. Exit status 0:
// a line matched, 1: none, 2: an error.
func grep(_ context.Context, env *Env, args []string) int {
	var pats, files []string
	var ign, inv, count, num, quiet, silent, list, fixed, word, whole bool
	showName := -1
	opts := true
	for i := 1; i < len(args); i++ {
		a := args[i]
		if opts && a == "--" {
			opts = false
			continue
		}
		if !opts || len(a) < 2 || a[0] != '-' {
			files = append(files, a)
			continue
		}
		for j := 1; j < len(a); j++ {
			switch a[j] {
			case 'i':
				ign = true
			case 'v':
				inv = true
			case 'c':
				count = true
			case 'n':
				num = true
			case 'q':
				quiet = true
			case 's':
				silent = true
			case 'x':
				whole = true
			case 'l':
				list = true
			case 'h':
				showName = 0
			case 'H':
				showName = 1
			case 'E':
			case 'F':
				fixed = true
			case 'w':
				word = true
			case 'e':
				if j+1 < len(a) {
					pats = append(pats, a[j+1:])
				} else if i+1 < len(args) {
					i++
					pats = append(pats, args[i])
				} else {
					return env.usage("grep", "option requires an argument -- 'e'")
				}
				j = len(a)
			default:
				return env.usage("grep", "invalid option -- '%c'", a[j])
			}
		}
	}
	if pats == nil {
		if len(files) == 0 {
			return env.usage("grep", "usage: grep [OPTION]... PATTERN [FILE]...")
		}
		pats, files = []string{files[0]}, files[1:]
	}
	var alts []string
	for _, p := range pats {
		for _, l := range strings.Split(p, "\n") {
			if fixed {
				l = regexp.QuoteMeta(l)
			}
			if word {
				l = `\b(?:` + l + `)\b`
			}
			if whole {
				l = `^(?:` + l + `)$`
			}
			alts = append(alts, "(?:"+l+")")
		}
	}
	expr := strings.Join(alts, "|")
	if ign {
		expr = "(?i)" + expr
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		return env.usage("grep", "%v", err)
	}
	if len(files) == 0 {
		files = []string{"-"}
	}
	if showName < 0 {
		showName = 0
		if len(files) > 1 {
			showName = 1
		}
	}
	matched, failed := false, false
	for _, f := range files {
		r, err := env.open(f)
		if err != nil {
			if !quiet && !silent {
				env.errorf("grep", "%s: %v", f, unwrapPath(err))
			}
			failed = true
			continue
		}
		name := f
		if f == "-" {
			name = "(standard input)"
		}
		n, lineNo := 0, 0
		br := bufio.NewReader(r)
		for {
			line, err := br.ReadString('\n')
			if line == "" && err != nil {
				break
			}
			lineNo++
			text := strings.TrimSuffix(line, "\n")
			if re.MatchString(text) == inv {
				continue
			}
			n++
			matched = true
			if quiet {
				r.Close()
				return 0
			}
			if count || list {
				continue
			}
			prefix := ""
			if showName == 1 {
				prefix = name + ":"
			}
			if num {
				prefix += strconv.Itoa(lineNo) + ":"
			}
			fmt.Fprintf(env.Stdout, "%s%s\n", prefix, text)
		}
		r.Close()
		switch {
		case list && n > 0:
			fmt.Fprintln(env.Stdout, name)
		case count && showName == 1:
			fmt.Fprintf(env.Stdout, "%s:%d\n", name, n)
		case count:
			fmt.Fprintln(env.Stdout, n)
		}
	}
	switch {
	case failed && !(quiet && matched):
		return 2
	case matched:
		return 0
	}
	return 1
}

func syncApplet(context.Context, *Env, []string) int {
	unix.Sync()
	return 0
}

func init() {
	register(tail, "tail")
	register(wc, "wc")
}

// tail [-n N | -N] [FILE]: the last N lines (10).
func tail(_ context.Context, env *Env, args []string) int {
	n := 10
	var files []string
	for i := 1; i < len(args); i++ {
		a := args[i]
		var err error
		switch {
		case a == "-n" && i+1 < len(args):
			i++
			n, err = strconv.Atoi(args[i])
		case strings.HasPrefix(a, "-n"):
			n, err = strconv.Atoi(a[2:])
		case len(a) > 1 && a[0] == '-' && a[1] >= '0' && a[1] <= '9':
			n, err = strconv.Atoi(a[1:])
		case a != "-" && strings.HasPrefix(a, "-"):
			return env.usage("tail", "unsupported option %q (-n N)", a)
		default:
			files = append(files, a)
		}
		if err != nil || n < 0 {
			return env.usage("tail", "invalid number of lines in %q", a)
		}
	}
	if len(files) > 1 {
		return env.usage("tail", "one file at a time")
	}
	if len(files) == 0 {
		files = []string{"-"}
	}
	r, err := env.open(files[0])
	if err != nil {
		return env.errorf("tail", "cannot open '%s' for reading: %v", files[0], unwrapPath(err))
	}
	defer r.Close()
	ring := make([]string, 0, n)
	br := bufio.NewReader(r)
	for n > 0 {
		l, err := br.ReadString('\n')
		if l != "" {
			if len(ring) == n {
				ring = append(ring[:0], ring[1:]...)
			}
			ring = append(ring, l)
		}
		if err != nil {
			break
		}
	}
	for _, l := range ring {
		io.WriteString(env.Stdout, l)
	}
	return 0
}

// wc [-lwc] [FILE...]: lines, words, bytes, in coreutils' layout: one
// field alone for one input unpadded, else right-aligned to the width of
// the regular files' total size (7 when stdin or a pipe is among them),
// and a total line for several files.
func wc(_ context.Context, env *Env, args []string) int {
	var show []byte
	var files []string
	for _, a := range args[1:] {
		if len(a) > 1 && a[0] == '-' {
			for _, c := range []byte(a[1:]) {
				if c != 'l' && c != 'w' && c != 'c' {
					return env.usage("wc", "invalid option -- '%c'", c)
				}
				if bytes.IndexByte(show, c) < 0 {
					show = append(show, c)
				}
			}
			continue
		}
		files = append(files, a)
	}
	if len(show) == 0 {
		show = []byte("lwc")
	}
	named := len(files) > 0
	if !named {
		files = []string{"-"}
	}
	width, size := 1, int64(0)
	if len(show) > 1 || len(files) > 1 {
		for _, f := range files {
			var st os.FileInfo
			var err error
			if f == "-" {
				// a redirection from a file (wc < f) is sized like a file
				if in, ok := env.Stdin.(*os.File); ok {
					st, err = in.Stat()
				} else {
					err = os.ErrInvalid
				}
			} else {
				st, err = os.Stat(env.path(f))
			}
			if err != nil || !st.Mode().IsRegular() {
				size = -1
				break
			}
			size += st.Size()
		}
		width = len(strconv.FormatInt(size, 10))
		if size < 0 {
			width = 7
		}
	}
	var total [3]int
	print := func(c [3]int, name string) {
		var out []string
		for i, k := range "lwc" {
			if bytes.IndexByte(show, byte(k)) >= 0 {
				out = append(out, fmt.Sprintf("%*d", width, c[i]))
			}
		}
		if name != "" {
			out = append(out, name)
		}
		fmt.Fprintln(env.Stdout, strings.Join(out, " "))
	}
	st := 0
	for _, f := range files {
		r, err := env.open(f)
		if err != nil {
			st = env.errorf("wc", "%s: %v", f, unwrapPath(err))
			continue
		}
		var c [3]int
		inWord := false
		br := bufio.NewReader(r)
		for {
			b, err := br.ReadByte()
			if err != nil {
				break
			}
			c[2]++
			if b == '\n' {
				c[0]++
			}
			space := b == ' ' || b == '\n' || b == '\t' || b == '\r' || b == '\v' || b == '\f'
			if !space && !inWord {
				c[1]++
			}
			inWord = !space
		}
		r.Close()
		for i := range c {
			total[i] += c[i]
		}
		name := f
		if !named {
			name = ""
		}
		print(c, name)
	}
	if len(files) > 1 {
		print(total, "total")
	}
	return st
}
