#!/usr/bin/env bash
# run.sh: Linux's own livepatch next to klp-kvm, in the nested tier's VM
# (README.md). From anywhere in the repository:
#
#   test/compare-linux/run.sh [OUTDIR]      # default OUTDIR: ${TMPDIR:-/tmp}/klp-kvm-compare-linux
#
# 1. test/nested/prepare.sh: QEMU and the Debian kernel (cached);
# 2. the linux-headers package of exactly that kernel (apt; needs root or
#    sudo), and make;
# 3. builds module/livepatch-sample.ko against those headers;
# 4. go test -tags comparelinux -run TestCompareLinux: boots the VM, which
#    measures Linux's livepatch and runs klp-kvm bench --engine kvm, and
#    prints both side by side (OUTDIR/compare.txt, compare.json).
#
# Knobs: KLP_COMPARE_CPUS (the VM sizes, one VM each: "1 2"),
# KLP_COMPARE_CYCLES (cycles per mode on each side, 20), KLP_COMPARE_WARMUP
# (uncounted cycles before them on each side, 1),
# KLP_COMPARE_ITERATIONS (klp-kvm bench's measured cycles, as many),
# KLP_COMPARE_COLD (klp-kvm extra cold enables, 4), KLP_COMPARE_MODES
# ("idle busy"), KLP_COMPARE_SIDES ("linux klp-kvm"; one alone for working
# on it), KLP_COMPARE_TRACE=1 (an execution trace and CPU profile of
# klp-kvm's bench in the VM, into OUTDIR), KLP_COMPARE_TIMEOUT (each VM,
# 30m), and the nested tier's KLP_KVM_NESTED_CACHE, _CPU, _ACCEL.
#
# The Linux-guest mode (README.md, "Inside one Linux guest"):
#
#   test/compare-linux/run.sh --linux-guest [OUTDIR]
#
# runs test/linux's TestLinuxCompare in the nested tier's 1-CPU VM: a
# Debian guest booted by klp-kvm on nested kvm_amd (1, then 2 vCPUs) in
# which Linux's own livepatch (livepatch-sample.ko loaded inside it) and
# klp-kvm (the same .ko, from the host) switch the same function; prints
# both side by side (OUTDIR/guest-compare.txt, guest-compare.json,
# guest-run-N.log). Needs no headers (the .ko is test/linux's). Knobs:
# KLP_COMPARE_RUNS (fresh VMs one after the other, 1),
# KLP_E2E_LINUX_COMPARE_CYCLES (cycles per side and mode, 15),
# KLP_COMPARE_GUEST_LOGS (only report these earlier runs' logs).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
mode=vm
if [ "${1:-}" = "--linux-guest" ]; then
	mode=linux-guest
	shift
fi
out=${1:-${TMPDIR:-/tmp}/klp-kvm-compare-linux}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export DEBIAN_FRONTEND=noninteractive
as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
say() { echo "run.sh: $*"; }

start=$(date +%s)
if [ "$mode" = linux-guest ]; then
	[ -n "${KLP_COMPARE_GUEST_LOGS:-}" ] || bash "$root/test/nested/prepare.sh"
	cd "$root"
	KLP_COMPARE_OUT="$out" go test -tags comparelinux -run '^TestCompareLinuxGuest$' -count=1 -v -timeout 4h \
		./test/compare-linux/ >"$out/test.log" 2>&1 || {
		tail -60 "$out/test.log" >&2
		say "failed after $(( $(date +%s) - start ))s; the whole log is $out/test.log" >&2
		exit 1
	}
	cat "$out/guest-compare.txt"
	say "done in $(( $(date +%s) - start ))s; logs: $out/test.log, $out/guest-run-*.log"
	exit 0
fi
bash "$root/test/nested/prepare.sh"

cache="${KLP_KVM_NESTED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/klp-kvm/nested}"
kver=$(cat "$cache/current/version")
# The Debian package version of the cached kernel, from the version string
# its bzImage header points to (setup header field kernel_version, at
# 0x20e, an offset from 0x200): "6.1.0-57-amd64 (...) #1 SMP ... Debian 6.1.192-3 (...)".
vmlinuz="$cache/current/vmlinuz"
voff=$(( $(od -An -tu2 -j $((0x20e)) -N2 "$vmlinuz" | tr -d ' ') + 0x200 ))
kstring=$(dd if="$vmlinuz" bs=1 skip="$voff" count=256 status=none | tr '\0' '\n' | head -1)
debver=$(sed -n 's/.* Debian \([^ ]*\) .*/\1/p' <<<"$kstring")
say "VM kernel $kver, Debian package version ${debver:-unknown} ($kstring)"

hdr="linux-headers-$kver"
installed=$(dpkg-query -W -f='${Version}' "$hdr" 2>/dev/null || true)
if [ -z "$installed" ]; then
	if ! apt-cache policy "$hdr" 2>/dev/null | grep -q 'Candidate: [^(]'; then
		as_root apt-get update -qq
	fi
	cand=$(apt-cache policy "$hdr" 2>/dev/null | sed -n 's/ *Candidate: //p')
	if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
		say "missing: $hdr (the headers of the VM's kernel $kver, Debian $debver) is not in apt's lists." >&2
		say "The cached kernel is older than the archive: KLP_KVM_NESTED_REFRESH=1 test/nested/prepare.sh moves it to the current one, whose headers apt has." >&2
		exit 1
	fi
	if [ -n "$debver" ] && [ "$cand" != "$debver" ]; then
		say "missing: $hdr version $debver; apt offers $cand, built for another upload of $kver (its symbol CRCs may not match)." >&2
		say "KLP_KVM_NESTED_REFRESH=1 test/nested/prepare.sh moves the cached kernel to apt's current one." >&2
		exit 1
	fi
	say "installing $hdr $cand (apt)"
	as_root apt-get install -y -qq --no-install-recommends "$hdr" >/dev/null
	installed=$cand
elif [ -n "$debver" ] && [ "$installed" != "$debver" ]; then
	say "missing: $hdr version $debver (installed: $installed, another upload of $kver): apt-get install $hdr=$debver, or refresh the cached kernel (KLP_KVM_NESTED_REFRESH=1 test/nested/prepare.sh)" >&2
	exit 1
fi
command -v make >/dev/null || as_root apt-get install -y -qq --no-install-recommends make >/dev/null

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp "$here/module/livepatch-sample.c" "$here/module/Kbuild" "$build/"
say "building livepatch-sample.ko against $hdr $installed"
make -s -C "/usr/src/$hdr" M="$build" modules
strip --strip-debug "$build/livepatch-sample.ko" # 250 KB of DWARF the VM need not load
cp "$build/livepatch-sample.ko" "$out/"
prep=$(( $(date +%s) - start ))
say "prepared in ${prep}s; the VM run follows (a few minutes)"

cd "$root"
KLP_COMPARE_MODULE="$out/livepatch-sample.ko" KLP_COMPARE_OUT="$out" \
	go test -tags comparelinux -run '^TestCompareLinux$' -count=1 -v -timeout 60m ./test/compare-linux/ >"$out/test.log" 2>&1 || {
	tail -60 "$out/test.log" >&2
	say "failed after $(( $(date +%s) - start ))s; the whole log is $out/test.log" >&2
	exit 1
}
cat "$out/compare.txt"
say "done in $(( $(date +%s) - start ))s (preparing ${prep}s); log: $out/test.log"
