#!/bin/sh
# Rebuilds linuxpatch's test modules (testdata/*/*.ko) out of tree against
# the Debian linux-headers of the kernel they are for, as README.md says.
#
#   linuxpatch/testdata/build.sh [KERNEL_RELEASE]     (default 6.1.0-57-amd64)
#
# Uses /usr/src/linux-headers-<release> when it is there; otherwise fetches
# linux-headers-<release>, linux-headers-<common> and linux-kbuild-<major.minor>
# with `apt-get download` and unpacks them with `dpkg-deb -x` into a
# temporary directory (nothing is installed system-wide); LINUXPATCH_FETCH=1
# takes that path even when /usr/src has the headers. Needs gcc (the
# one the kernel was built with: gcc-12 for Debian 12), make, and apt lists
# that know the headers' version.
set -eu
rel=${1:-6.1.0-57-amd64}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
# Modules are built in a fixed directory, and an unpacked headers tree is
# mapped back to /usr/src, so that the debug info (which names paths) and
# the build id are the same on every machine: the .ko files are
# reproducible.
out=${TMPDIR:-/tmp}/linuxpatch-testdata
trap 'rm -rf "$tmp" "$out"' EXIT
kcflags=

kdir=/usr/src/linux-headers-$rel
if [ ! -d "$kdir" ] || [ "${LINUXPATCH_FETCH:-}" = 1 ]; then
	flavour=${rel##*-}            # amd64
	common=${rel%-"$flavour"}-common  # 6.1.0-57-common
	mm=$(echo "$rel" | cut -d. -f1,2)  # 6.1
	mkdir -p "$tmp/debs" "$tmp/root"
	chmod 755 "$tmp" "$tmp/debs" # apt-get download runs as _apt where it can
	(cd "$tmp/debs" && apt-get download -qq "linux-headers-$rel" "linux-headers-$common" "linux-kbuild-$mm")
	for d in "$tmp"/debs/*.deb; do dpkg-deb -x "$d" "$tmp/root"; done
	kdir=$tmp/root/usr/src/linux-headers-$rel
	kcflags="-ffile-prefix-map=$tmp/root/=/"
	# The headers' symlinks point into /usr/src and /usr/lib: repoint them
	# into the unpacked tree.
	for l in $(find "$tmp/root/usr/src" -maxdepth 2 -type l); do
		t=$(readlink "$l")
		case "$t" in /*) ln -sfn "$tmp/root$t" "$l" ;; esac
	done
fi
[ -f "$kdir/Makefile" ] || { echo "no kernel headers at $kdir" >&2; exit 1; }

for src in "$here"/*/Kbuild; do
	dir=$(dirname "$src")
	name=$(basename "$dir")
	b=$out/$name
	rm -rf "$b"
	mkdir -p "$b"
	cp "$dir"/*.c "$dir/Kbuild" "$b/"
	warn=
	grep -q KBUILD_MODPOST_WARN "$dir/Kbuild" && warn=KBUILD_MODPOST_WARN=1
	make -s -C "$kdir" M="$b" KCFLAGS="$kcflags" $warn modules
	cp "$b/$name.ko" "$dir/$name.ko"
	echo "built $dir/$name.ko"
done
