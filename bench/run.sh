#!/usr/bin/env bash
# Runs mailproxy's speed benchmarks (integration/bench_test.go), then prints
# benchstat's tables with path=direct as the base column and the ratios
# that the speed targets are about.
#
#   bench/run.sh                 6 rounds of 1s each (about 3 minutes)
#   COUNT=10 BENCHTIME=2s bench/run.sh
#   OUT=/tmp/b bench/run.sh      keep the raw results there
#
# Everything runs on loopback in one process: client, proxy and backend
# share the machine's cores. See bench/README.md for how to read it.
set -euo pipefail
cd "$(dirname "$0")/.."

count=${COUNT:-6}
benchtime=${BENCHTIME:-1s}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
# A version the Go module proxy serves; `go run` fetches and caches it.
benchstat_pkg=golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da

go test -c -o "$out/integration.test" ./integration/
cd integration
# -count repeats each benchmark with its direct and proxy variants one
# after the other, so that a busy moment hits both.
"$out/integration.test" -test.run '^$' -test.bench 'IMAPFetch|IMAPLogin' \
	-test.benchtime "$benchtime" -test.count "$count" | tee "$out/speed.txt"
"$out/integration.test" -test.run '^$' -test.bench 'IdleSessionMemory' \
	-test.benchtime 2000x -test.count 3 | tee "$out/idle.txt"
cd ..

echo
if go run "$benchstat_pkg" -col /path "$out/speed.txt" >"$out/benchstat.txt" 2>"$out/benchstat.err"; then
	cat "$out/benchstat.txt"
else
	echo "(benchstat unavailable: $(head -1 "$out/benchstat.err"); medians below)"
fi

# Medians and ratios, computed here so that they print without benchstat.
cat "$out/speed.txt" "$out/idle.txt" | awk '
function median(key,    k, i, j, t, a) {
	k = cnt[key]
	if (k == 0) return ""
	for (i = 1; i <= k; i++) a[i] = val[key, i]
	for (i = 2; i <= k; i++)
		for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	return (k % 2) ? a[(k+1)/2] : (a[k/2] + a[k/2+1]) / 2
}
function ratio(bench, unit, target, better,    d, p) {
	d = median(bench "/path=direct" SUBSEP unit)
	p = median(bench "/path=proxy" SUBSEP unit)
	if (d == "" || p == "" || d == 0) return
	printf "%-26s %-10s direct %12.1f  proxy %12.1f  proxy/direct %.2f", bench, unit, d, p, p / d
	if (target != "") printf "  (target %s %s)", better, target
	printf "\n"
}
/^Benchmark/ {
	name = $1; sub(/^Benchmark/, "", name); sub(/-[0-9]+$/, "", name)
	for (i = 3; i + 1 <= NF; i += 2) { key = name SUBSEP $(i+1); val[key, ++cnt[key]] = $i }
}
END {
	print "\nMedians:"
	ratio("IMAPFetch", "MB/s", "0.95", ">=")
	ratio("IMAPFetch", "cpu-ns/op", "", "")
	f = median("IMAPFetch/path=forward" SUBSEP "MB/s"); d = median("IMAPFetch/path=direct" SUBSEP "MB/s")
	if (f != "" && d > 0) printf "%-26s %-10s forward/direct %.2f (the simplest Go relay, for scale)\n", "IMAPFetch", "MB/s", f / d
	ratio("IMAPFetchMem", "MB/s", "", "")
	ratio("IMAPLoginParallel", "logins/s", "0.85", ">=")
	ratio("IMAPLoginParallel", "cpu-ns/op", "", "")
	ratio("IMAPLogin", "logins/s", "", "")
	b = "IdleSessionMemory"
	if (cnt[b SUBSEP "B/session"] > 0)
		printf "%-26s heap+stack %.0f B/session (target <= 8192): heap %.0f, stacks %.0f, %.1f goroutines, %.1f fds\n", b,
			median(b SUBSEP "B/session"), median(b SUBSEP "heap-B/session"), median(b SUBSEP "stack-B/session"),
			median(b SUBSEP "goroutines/session"), median(b SUBSEP "fds/session")
}'
echo "raw results: $out"
