#!/bin/sh
# Rebuilds the fixture kernel (vmlinux) and the test-only patch objects under
# ../patches with the host's gcc and ld, byte for byte with Debian 12's gcc
# 12.2 and binutils 2.40. Outputs are committed: tests never need a compiler
# to use them, but TestTestdataReproducible (elfpatch) runs this into a
# temporary directory and compares. bench.c is generated, with the guest
# kernel's scale-test functions, by guestkernel/scripts/genbench.
#
#   sh elfpatch/testdata/kernel/build.sh [OUT]
#
# writes OUT/kernel/vmlinux and OUT/patches/*.o; OUT defaults to
# elfpatch/testdata (in place). Run from anywhere.
set -eu
out=${1:-$(dirname "$0")/..}
mkdir -p "$out/kernel" "$out/patches"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")"
CC=${CC:-gcc}
BASE="-std=gnu11 -O2 -ffreestanding -fno-pic -fno-pie -mno-red-zone -mcmodel=kernel
 -mgeneral-regs-only -mno-sse -mno-mmx -mno-80387 -fno-stack-protector
 -fno-omit-frame-pointer -pg -mfentry -mrecord-mcount -mnop-mcount
 -fcf-protection=none -ffunction-sections -fdata-sections
 -fno-asynchronous-unwind-tables -fno-unwind-tables -fno-common -fno-ident
 -ffile-prefix-map=$PWD=."
# main.c wants gcc's clones, so it keeps partial inlining and hot/cold splitting.
CLONES="-fpartial-inlining -freorder-blocks-and-partition"
NOCLONES="-fno-partial-inlining -fno-reorder-blocks-and-partition"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$CC $BASE -c head.S -o "$tmp/head.o"
$CC $BASE $CLONES -c main.c -o "$tmp/main.o"
$CC $BASE $NOCLONES -c dup.c -o "$tmp/dup.o"
$CC $BASE $NOCLONES -c dup2.c -o "$tmp/dup2.o"
$CC $BASE $NOCLONES -c bench.c -o "$tmp/bench.o"
ld -m elf_x86_64 -nostdlib -static --build-id=none -z noexecstack \
	-T kernel.lds -o "$out/kernel/vmlinux" "$tmp/head.o" "$tmp/main.o" "$tmp/dup.o" \
	"$tmp/dup2.o" "$tmp/bench.o"

cd ../patches
for src in *.c *.S; do
	[ -e "$src" ] || continue
	$CC $BASE $NOCLONES -I../../../guestkernel/include -c "$src" -o "$out/patches/${src%.*}.o"
done
