package patchbuild

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// FixSpec is what a fix of the corpus (guestkernel/fixes/*.diff) says about
// itself in the trailers of its message, before the diff: what the builder
// must make of it, and how a guest shows that the patch works. The unit
// tests check the first half on the build alone; the end-to-end test boots
// a guest, runs the checks before loading the patch, with it, and after
// unloading it.
//
//	Kind: static-function            free text: what the fix exercises
//	Expect-Changed: pid_file_show    the exact set of klp_func targets
//	Expect-New: status_line.constprop   functions the patch carries (names without clone numbers)
//	Expect-Data: tmp_writes          data the patch carries
//	Expect-Refused: KIND SYMBOL [~ REGEXP]   a refusal (and nothing written)
//	Expect-Warning: KIND SYMBOL [~ REGEXP]
//	Expect-Error: REGEXP             the build fails (the diff does not apply...) with this message
//	Enable: EBUSY                    enabling must fail with this errno
//	Write: PATH DATA                 guest-file-write before the checks
//	Check: CMD                       a guest shell command (or a quoted Go string); the next lines test its output:
//	Before: REGEXP / Before-Not: REGEXP   unpatched (and again after unloading)
//	After: REGEXP / After-Not: REGEXP     patched
type FixSpec struct {
	Subject  string
	Kind     string
	Changed  []string
	New      []string
	Data     []string
	Refused  []Expect
	Warnings []Expect
	Errors   []*regexp.Regexp
	Enable   string
	Writes   [][2]string
	Checks   []Check
}

// Expect is an expected refusal or warning.
type Expect struct {
	Kind, Symbol string
	Message      *regexp.Regexp // nil: any
}

// Check is one guest command and what its output must (not) match.
type Check struct {
	Cmd                 string
	Before, After       []*regexp.Regexp
	BeforeNot, AfterNot []*regexp.Regexp
}

// Matches reports whether p has the refusal or warning e.
func (e Expect) Matches(p Problem) bool {
	return p.Kind == e.Kind && p.Symbol == e.Symbol && (e.Message == nil || e.Message.MatchString(p.Reason))
}

// ParseFixSpec reads the trailers before the first file of a diff.
func ParseFixSpec(diff []byte) (*FixSpec, error) {
	s := &FixSpec{}
	for i, line := range strings.Split(string(diff), "\n") {
		if strings.HasPrefix(line, "diff --git ") || strings.HasPrefix(line, "--- ") {
			break
		}
		if i == 0 {
			s.Subject = strings.TrimSpace(line)
			continue
		}
		key, val, ok := strings.Cut(line, ": ")
		if !ok || strings.ContainsAny(key, " \t") || key == "" {
			continue
		}
		val = strings.TrimSpace(val)
		bad := func(err error) error { return fmt.Errorf("line %d (%s): %v", i+1, key, err) }
		last := func() (*Check, error) {
			if len(s.Checks) == 0 {
				return nil, bad(fmt.Errorf("no Check: before it"))
			}
			return &s.Checks[len(s.Checks)-1], nil
		}
		switch key {
		case "Kind":
			s.Kind = val
		case "Expect-Changed":
			s.Changed = append(s.Changed, strings.Fields(val)...)
		case "Expect-New":
			s.New = append(s.New, strings.Fields(val)...)
		case "Expect-Data":
			s.Data = append(s.Data, strings.Fields(val)...)
		case "Expect-Refused", "Expect-Warning":
			e, err := parseExpect(val)
			if err != nil {
				return nil, bad(err)
			}
			if key == "Expect-Refused" {
				s.Refused = append(s.Refused, e)
			} else {
				s.Warnings = append(s.Warnings, e)
			}
		case "Expect-Error":
			re, err := regexp.Compile(val)
			if err != nil {
				return nil, bad(err)
			}
			s.Errors = append(s.Errors, re)
		case "Enable":
			s.Enable = val
		case "Write":
			p, d, _ := strings.Cut(val, " ")
			s.Writes = append(s.Writes, [2]string{p, d})
		case "Check":
			if strings.HasPrefix(val, `"`) { // a Go string: for bytes a trailer cannot hold
				u, err := strconv.Unquote(val)
				if err != nil {
					return nil, bad(err)
				}
				val = u
			}
			s.Checks = append(s.Checks, Check{Cmd: val})
		case "Before", "After", "Before-Not", "After-Not":
			c, err := last()
			if err != nil {
				return nil, err
			}
			re, err := regexp.Compile(val)
			if err != nil {
				return nil, bad(err)
			}
			switch key {
			case "Before":
				c.Before = append(c.Before, re)
			case "After":
				c.After = append(c.After, re)
			case "Before-Not":
				c.BeforeNot = append(c.BeforeNot, re)
			case "After-Not":
				c.AfterNot = append(c.AfterNot, re)
			}
		}
	}
	return s, nil
}

func parseExpect(val string) (Expect, error) {
	head, msg, hasMsg := strings.Cut(val, " ~ ")
	f := strings.Fields(head)
	if len(f) < 2 {
		return Expect{}, fmt.Errorf("want KIND SYMBOL [~ REGEXP], got %q", val)
	}
	e := Expect{Kind: f[0], Symbol: strings.Join(f[1:], " ")}
	if hasMsg {
		re, err := regexp.Compile(strings.TrimSpace(msg))
		if err != nil {
			return Expect{}, err
		}
		e.Message = re
	}
	return e, nil
}
