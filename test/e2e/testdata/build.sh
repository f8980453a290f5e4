#!/bin/sh
# Rebuilds testdata/bootguest reproducibly: both steps run in a scratch
# directory with relative names, because as/ld record file names.
set -e
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$here/bootguest.S" "$here/bootguest.ld" "$tmp/"
cd "$tmp"
as --64 -o bootguest.o bootguest.S
ld -T bootguest.ld -z noexecstack --no-warn-rwx-segments -o bootguest bootguest.o
cp bootguest "${1:-$here/bootguest}"
