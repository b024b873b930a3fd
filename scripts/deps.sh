#!/bin/sh
# Installs what the tests need when it is missing: qemu-img, qemu-io and
# qemu-storage-daemon (the reference daemon and the truth for image data),
# nbdinfo and nbdcopy (NBD clients), fio and nbdkit (benchmarks), dot
# (graphviz: the cookbook's graph pictures, made and checked by make docs/lint). On Debian/Ubuntu it
# uses apt-get (as root, or through sudo); elsewhere it says what to install.
# Then, optionally, what the rbd driver and its tests need: a one-node Ceph
# cluster's daemons and tools (ceph-mon, ceph-osd, ceph-common), librbd's
# and librados' headers (make build adds -tags ceph when they are there)
# and qemu-block-extra (qemu-storage-daemon's and qemu-img's rbd driver).
# Where those cannot be installed the rbd tests skip with the reason.
set -eu

missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need qemu-img qemu-utils
need qemu-io qemu-utils
need qemu-storage-daemon qemu-system-common
need nbdinfo libnbd-bin
need nbdcopy libnbd-bin
need fio fio
need nbdkit nbdkit
need dot graphviz

# The rbd driver's: optional.
optional=""
want() { command -v "$1" >/dev/null 2>&1 || optional="$optional $2"; }
want ceph-mon ceph-mon
want ceph-osd ceph-osd
want ceph ceph-common
want rbd ceph-common
[ -f /usr/include/rbd/librbd.h ] || optional="$optional librbd-dev"
[ -f /usr/include/rados/librados.h ] || optional="$optional librados-dev"
rbdmod=""
for f in /usr/lib/*/qemu/block-rbd.so /usr/lib/qemu/block-rbd.so; do [ -f "$f" ] && rbdmod=1; done
[ -n "$rbdmod" ] || optional="$optional qemu-block-extra"

[ -z "$missing$optional" ] && exit 0
if command -v apt-get >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ]; then
		SUDO=""
	elif command -v sudo >/dev/null 2>&1; then
		SUDO="sudo"
	else
		echo "deps: not root and no sudo: install these packages by hand:$missing$optional" >&2
		[ -z "$missing" ] && exit 0
		exit 1
	fi
	$SUDO apt-get update -qq
	if [ -n "$missing" ]; then
		pkgs=$(printf '%s\n' $missing | sort -u | tr '\n' ' ')
		echo "deps: missing tools; installing Debian packages: $pkgs"
		DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $pkgs >/dev/null
	fi
	if [ -n "$optional" ]; then
		pkgs=$(printf '%s\n' $optional | sort -u | tr '\n' ' ')
		echo "deps: for the rbd driver and its tests; installing Debian packages: $pkgs"
		DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null ||
			echo "deps: could not install $pkgs: blockd builds without rbd and the rbd tests skip" >&2
	fi
	exit 0
fi
[ -z "$missing" ] && { echo "deps: for the rbd driver, install:$optional (the rbd tests skip without them)" >&2; exit 0; }
echo "deps: no apt-get here. Install qemu-img, qemu-io and qemu-storage-daemon (QEMU 7.2 tools)," >&2
echo "      nbdinfo and nbdcopy (libnbd) and fio with your package manager, then run make test again." >&2
exit 1
