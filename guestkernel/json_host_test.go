package guestkernel

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGuestJSONParserHosted compiles the guest agent's JSON parser for the
// host with AddressSanitizer and UBSan and feeds it valid, truncated,
// mutated and hostile inputs: requests come from the host side of COM2,
// so the parser must hold against anything.
func TestGuestJSONParserHosted(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc: hosted JSON parser test skipped")
	}
	bin := filepath.Join(t.TempDir(), "json_harness")
	args := []string{"-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-Iinclude", "-Ikernel",
		"-Wall", "-o", bin, "testdata/json_harness.c", "kernel/json.c", "kernel/seq.c", "kernel/lib.c"}
	if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		if strings.Contains(string(out), "asan") || strings.Contains(string(out), "sanitize") {
			t.Skipf("gcc cannot build with sanitizers here: %s", out)
		}
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	seeds := []string{
		`{"execute":"guest-ping"}`,
		`{"execute":"guest-file-write","arguments":{"path":"/tmp/a","data":"x\n\"\\\u00e9\u4e2d"},"id":7}`,
		`{"execute":"guest-call","arguments":{"addr":18446744072098938880,"arg":"0x10"},"id":"s"}`,
		`{"execute":"sysfs-reply","arguments":{"id":1,"errno":16}}`,
		`[1,2,3,{"a":[true,false,null,-1.5e3]}]`,
		`"\u12"`, `{"a":}`, `{"a" 1}`, `{`, `}`, `"`, `\`, ``, ` `, `nul`, `{"a":"\`,
		strings.Repeat("[", 300) + strings.Repeat("]", 300),
		strings.Repeat(`{"a":`, 20) + "1" + strings.Repeat("}", 20),
		"{" + strings.Repeat(`"k":1,`, 400) + `"z":2}`,
		`{"s":"` + strings.Repeat(`\u00ff`, 3000) + `"}`,
	}
	rng := rand.New(rand.NewSource(1))
	var inputs [][]byte
	for _, s := range seeds {
		inputs = append(inputs, []byte(s))
		for i := 0; i <= len(s) && i < 200; i++ {
			inputs = append(inputs, []byte(s[:i])) // every truncation
		}
	}
	alphabet := []byte(`{}[]":,\u0123456789abcdefxtrnl-+.eE ` + "\x00\x7f\xff\n")
	for i := 0; i < 20000; i++ {
		base := []byte(seeds[rng.Intn(len(seeds))])
		b := append([]byte(nil), base...)
		for k := rng.Intn(8); k >= 0; k-- {
			if len(b) == 0 {
				b = append(b, alphabet[rng.Intn(len(alphabet))])
				continue
			}
			p := rng.Intn(len(b))
			switch rng.Intn(3) {
			case 0:
				b[p] = alphabet[rng.Intn(len(alphabet))]
			case 1:
				b = append(b[:p], b[p+1:]...)
			default:
				b = append(b[:p], append([]byte{alphabet[rng.Intn(len(alphabet))]}, b[p:]...)...)
			}
		}
		inputs = append(inputs, b)
	}
	var in bytes.Buffer
	for _, b := range inputs {
		var h [4]byte
		binary.LittleEndian.PutUint32(h[:], uint32(len(b)))
		in.Write(h[:])
		in.Write(b)
	}
	cmd := exec.Command(bin)
	cmd.Stdin = &in
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("harness: %v\n%s", err, tail(stderr.String(), 4000))
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(inputs) {
		t.Fatalf("%d results for %d inputs", len(lines), len(inputs))
	}
	// the valid seeds parse, the broken ones do not
	want := map[string]bool{seeds[0]: true, seeds[1]: true, seeds[2]: true, seeds[3]: true, seeds[4]: true,
		`"\u12"`: false, `{"a":}`: false, `{`: false, ``: false, strings.Repeat("[", 300) + strings.Repeat("]", 300): false}
	for i, b := range inputs {
		if ok, known := want[string(b)]; known && ok != !strings.HasPrefix(lines[i], "-") {
			t.Errorf("%q: parse result %s", b, lines[i])
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
