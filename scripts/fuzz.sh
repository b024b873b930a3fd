#!/bin/sh
# Runs every Go fuzz target of ./pkg/... for FUZZTIME each (default 60s;
# the nightly form is FUZZTIME=10m), one after the other: go test runs
# one -fuzz target per package per invocation. Prints a line of figures
# per target and fails if any target found a failing input (written to
# the package's testdata/fuzz/<Target>/ by go test: commit it with the
# fix as the regression seed).
#
#   FUZZTIME=10m scripts/fuzz.sh         the nightly form
#   FUZZ=FuzzHeader scripts/fuzz.sh      only targets matching a regexp
#   FUZZPARALLEL=1 scripts/fuzz.sh       fuzz workers per target (default:
#                                        GOMAXPROCS, go test's default)
#   FUZZLOGDIR=dir scripts/fuzz.sh       keep each target's go test output
#   FUZZMINIMIZETIME=60s scripts/fuzz.sh time to minimize one input (10s:
#                                        go test's 60s let the whole-image
#                                        qcow2 targets, at ~20 ms an input,
#                                        spend whole runs minimizing)
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-60s}
FUZZ=${FUZZ:-.}
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-10s}
par=""
[ -n "${FUZZPARALLEL:-}" ] && par="-parallel=$FUZZPARALLEL"

if [ -n "${FUZZLOGDIR:-}" ]; then
	log=$FUZZLOGDIR
	mkdir -p "$log"
else
	log=$(mktemp -d)
	trap 'rm -rf "$log"' EXIT
fi

# "go test -list" prints a package's targets, then "ok <package> <time>".
$GO test -list '^Fuzz' ./pkg/... | awk '/^Fuzz/ { t = t " " $1 } /^ok/ { if (t != "") print $2 t; t = "" }' >"$log/targets"

failed=0
printf '%-16s %-14s %12s %10s %12s  %s\n' target package execs execs/s interesting result
while read -r pkg targets; do
	for t in $targets; do
		echo "$t" | grep -Eq -- "$FUZZ" || continue
		out="$log/$t.out"
		status=ok
		crash="$log/$t.crash"
		mkdir -p "$crash"
		FUZZCRASHDIR=$crash $GO test -run='^$' -fuzz="^$t\$" -fuzztime="$FUZZTIME" -fuzzminimizetime="$FUZZMINIMIZETIME" $par "$pkg" >"$out" 2>&1 || status=fail
		if [ $status = fail ] && ! grep -q 'Failing input written to' "$out" &&
			grep -q 'context deadline exceeded' "$out"; then
			# golang/go#75804 (fixed in Go 1.27): the coordinator can report
			# its own -fuzztime deadline as a failure. No input failed.
			status="ok (go#75804)"
		fi
		# The last progress line: "fuzz: elapsed: 60s, execs: N (R/sec),
		# new interesting: K (total: T)".
		last=$(grep '^fuzz: elapsed:' "$out" | tail -n 1)
		secs=$(echo "$last" | sed -n 's/^fuzz: elapsed: \([0-9hms]*\),.*/\1/p')
		execs=$(echo "$last" | sed -n 's/.* execs: \([0-9]*\) .*/\1/p')
		new=$(echo "$last" | sed -n 's/.*new interesting: \([0-9]*\) .*/\1/p')
		rate=$(awk -v e="${execs:-0}" -v s="$secs" 'BEGIN {
			n = 0; t = 0
			while (match(s, /^[0-9]+[hms]/)) {
				v = substr(s, 1, RLENGTH - 1); u = substr(s, RLENGTH, 1)
				t += v * (u == "h" ? 3600 : u == "m" ? 60 : 1); s = substr(s, RLENGTH + 1)
			}
			printf "%d", (t > 0 ? e / t : 0) }')
		printf '%-16s %-14s %12s %10s %12s  %s\n' "$t" "${pkg#*/pkg/}" "${execs:-0}" "$rate" "${new:-0}" "$status"
		case $status in
		fail)
			failed=1
			sed -n '/--- FAIL/,$p' "$out" | head -n 60
			# What a fuzzing process printed as it died (see fuzzcheck).
			find "$crash" -type f -size +0 -exec head -n 80 {} \;
			;;
		esac
	done
done <"$log/targets"
exit $failed
