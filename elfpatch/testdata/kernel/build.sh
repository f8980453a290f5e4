#!/bin/sh
# Rebuilds the fixture kernel (vmlinux) and the test-only patch objects under
# ../patches with the host's gcc and ld. Outputs are committed: tests never
# need a compiler. Run from anywhere: sh elfpatch/testdata/kernel/build.sh
set -eu
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
sh ./gen-bench.sh
$CC $BASE -c head.S -o "$tmp/head.o"
$CC $BASE $CLONES -c main.c -o "$tmp/main.o"
$CC $BASE $NOCLONES -c dup.c -o "$tmp/dup.o"
$CC $BASE $NOCLONES -c dup2.c -o "$tmp/dup2.o"
$CC $BASE $NOCLONES -c bench.c -o "$tmp/bench.o"
ld -m elf_x86_64 -nostdlib -static --build-id=none -z noexecstack \
	-T kernel.lds -o vmlinux "$tmp/head.o" "$tmp/main.o" "$tmp/dup.o" \
	"$tmp/dup2.o" "$tmp/bench.o"

cd ../patches
for src in *.c *.S; do
	[ -e "$src" ] || continue
	$CC $BASE $NOCLONES -I../../../guestkernel/include -c "$src" -o "${src%.*}.o"
done
