#!/usr/bin/env bash
# prepare.sh: installs what the nested KVM tier (test/nested) needs.
#
#   - qemu-system-x86 (Debian package), whose TCG emulates AMD SVM;
#   - the current Debian linux-image-*-amd64 kernel, unpacked with
#     `apt-get download` + `dpkg -x` (never installed into /boot), of which we
#     keep vmlinuz, the kvm modules and their dependencies, and modules.dep.
#
# Idempotent: a second run finds everything in the cache and does nothing.
# Cache: ${XDG_CACHE_HOME:-~/.cache}/klp-kvm/nested/<kernel-version>/ with
# a "current" symlink the Go test follows.
# Needs root (or sudo) only for apt-get install.
set -euo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/klp-kvm/nested"
mkdir -p "$cache"
export DEBIAN_FRONTEND=noninteractive

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt's lists may be missing or stale on a fresh machine; update once, only
# when a package we need is unknown.
updated=0
apt_update_once() {
	if [ "$updated" -eq 0 ]; then
		as_root apt-get update -qq
		updated=1
	fi
}

has_candidate() {
	apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [^(]'
}

# 1. QEMU. --no-install-recommends: no GUI, no OVMF; seabios and the option
# ROMs come in as hard dependencies.
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
	has_candidate qemu-system-x86 || apt_update_once
	as_root apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
fi

# 2. The kernel. A complete cached kernel is kept (any Debian kernel with
# kvm modules does), so that a warm run costs no apt look-up; set
# KLP_KVM_NESTED_REFRESH=1 to move to the current one. A cache from before
# System.map and config were kept counts as incomplete and is refilled
# (package linuxkernel's tests read both).
complete() { [ -f "$1/.complete" ] && [ -f "$1/System.map" ] && [ -f "$1/config" ]; }
if [ -z "${KLP_KVM_NESTED_REFRESH:-}" ] && complete "$cache/current"; then
	echo "prepare.sh: qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), kernel $(cat "$cache/current/version") cached in $cache/current"
	exit 0
fi
# linux-image-amd64 is the meta package that names the current
# image (e.g. linux-image-6.1.0-48-amd64).
has_candidate linux-image-amd64 || apt_update_once
image=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$image" ]; then
	echo "prepare.sh: cannot find the current kernel image via apt-cache depends linux-image-amd64" >&2
	exit 1
fi
kver=${image#linux-image-}
dest="$cache/$kver"
if complete "$dest"; then
	ln -sfn "$kver" "$cache/current"
	echo "prepare.sh: qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), kernel $kver cached in $dest"
	exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp" # apt-get download runs as _apt where it can
# The unsigned image is the same kernel without the Secure Boot signature;
# fall back to the signed one where only that exists.
(cd "$tmp" && { apt-get download -qq "$image-unsigned" 2>/dev/null || apt-get download -qq "$image"; })
deb=$(ls "$tmp"/*.deb)
dpkg -x "$deb" "$tmp/root"

mod="$tmp/root/lib/modules/$kver"
[ -d "$mod" ] || mod=$(ls -d "$tmp"/root/lib/modules/* | head -1)
rm -rf "$dest.partial"
mkdir -p "$dest.partial/modules"
cp "$tmp/root/boot/vmlinuz-$kver" "$dest.partial/vmlinuz"
# The symbol map and the build config of the same package: the fallback
# symbol source and the CONFIG_ answers of package linuxkernel.
cp "$tmp/root/boot/System.map-$kver" "$dest.partial/System.map"
cp "$tmp/root/boot/config-$kver" "$dest.partial/config"

# The package ships no modules.dep (depmod makes it at install time), so
# resolve dependencies from each module's own .modinfo "depends=" string.
# modules.load lists the kept modules, dependencies first: the in-VM /init
# loads them in that order. Modules are stored decompressed so that /init
# needs no decompressor.
declare -A modpath=() # module name ('-' and '_' are the same) -> file
while read -r f; do
	b=${f##*/}; b=${b%%.ko*}; modpath[${b//-/_}]=$f
done < <(find "$mod/kernel" -name '*.ko*')
moddeps() {
	local f=$1 raw=$1
	case "$f" in
	*.xz) raw="$tmp/dep.ko"; xz -dc "$f" >"$raw" ;;
	*.zst) raw="$tmp/dep.ko"; zstd -qdc "$f" >"$raw" ;;
	*.gz) raw="$tmp/dep.ko"; gzip -dc "$f" >"$raw" ;;
	esac
	grep -a -o 'depends=[A-Za-z0-9_,-]*' "$raw" | head -1 | sed 's/^depends=//; s/,/ /g'
}
: >"$dest.partial/modules.load"
declare -A seen=()
add() { # depth-first: dependencies before the module itself
	local name=${1//-/_} f d out
	[ -n "${seen[$name]:-}" ] && return 0
	seen[$name]=1
	f=${modpath[$name]:-}
	[ -n "$f" ] || { echo "prepare.sh: module $name not in $image" >&2; exit 1; }
	for d in $(moddeps "$f"); do add "$d"; done
	out="$dest.partial/modules/$(basename "${f%%.ko*}").ko"
	case "$f" in
	*.xz) xz -dc "$f" >"$out" ;;
	*.zst) zstd -qdc "$f" >"$out" ;;
	*.gz) gzip -dc "$f" >"$out" ;;
	*) cp "$f" "$out" ;;
	esac
	echo "$(basename "$out")" >>"$dest.partial/modules.load"
}
add kvm_amd
add kvm_intel
echo "$kver" >"$dest.partial/version"
touch "$dest.partial/.complete"
rm -rf "$dest"
mv "$dest.partial" "$dest"
ln -sfn "$kver" "$cache/current"
echo "prepare.sh: qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), kernel $kver unpacked into $dest"
