#!/bin/sh
# Prints the go build flags for the optional drivers this machine can
# build: "-tags ceph" (the rbd driver, cgo with librbd and librados) when
# their development headers are installed and cgo works. Prints nothing
# otherwise, and the build stays pure Go.
set -u
GO=${GO:-go}
[ "$($GO env CGO_ENABLED 2>/dev/null)" = 1 ] || exit 0
for h in /usr/include/rbd/librbd.h /usr/include/rados/librados.h; do
	[ -f "$h" ] || exit 0
done
echo "-tags ceph"
