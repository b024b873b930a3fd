#!/bin/sh
# Runs every side-by-side benchmark (blockd against qemu-storage-daemon)
# and prints both figures with their ratio. Usage: bench/run.sh [args for nbdbench]
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
go build $(./scripts/buildtags.sh) -o bin/blockd ./cmd/blockd
echo "== NBD export, raw image =="
go run ./bench/nbdbench -blockd bin/blockd "$@"
echo "== throttle filter: rate held against the configured limit =="
go run ./bench/throttlebench -blockd bin/blockd
echo "== block jobs: stream, commit and mirror of a qcow2 chain =="
go run ./bench/jobbench -blockd bin/blockd
if [ -n "$(./scripts/buildtags.sh)" ]; then
	echo "== rbd: NBD export of an rbd node, mirror of a qcow2 image into rbd (one-node Ceph cluster) =="
	go run ./bench/rbdbench -blockd bin/blockd
fi
