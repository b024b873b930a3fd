#!/bin/sh
# Installs what the tests need when it is missing: qemu-img, qemu-io and
# qemu-storage-daemon (the reference daemon and the truth for image data),
# nbdinfo and nbdcopy (NBD clients), fio and nbdkit (benchmarks). On Debian/Ubuntu it
# uses apt-get (as root, or through sudo); elsewhere it says what to install.
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

[ -z "$missing" ] && exit 0
pkgs=$(printf '%s\n' $missing | sort -u | tr '\n' ' ')
echo "deps: missing tools; installing Debian packages: $pkgs"
if command -v apt-get >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ]; then
		SUDO=""
	elif command -v sudo >/dev/null 2>&1; then
		SUDO="sudo"
	else
		echo "deps: not root and no sudo: install these packages by hand: $pkgs" >&2
		exit 1
	fi
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $pkgs >/dev/null
	exit 0
fi
echo "deps: no apt-get here. Install qemu-img, qemu-io and qemu-storage-daemon (QEMU 7.2 tools)," >&2
echo "      nbdinfo and nbdcopy (libnbd) and fio with your package manager, then run make test again." >&2
exit 1
