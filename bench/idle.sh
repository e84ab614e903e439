#!/usr/bin/env bash
# bench/idle.sh — memory per idle session through mailproxy, quickly: the
# idle rows of bench/peers.sh for mailproxy alone, plain and TLS
# separately, each on a fresh proxy, at one or more session counts, with
# the Go runtime's memory classes before and after (mailproxy built with
# -tags memdump, bench/peers/load -memdump) so that each KiB can be placed.
#
#   bench/idle.sh                   1000 sessions, plain then TLS
#   NS="1000 5000" bench/idle.sh    both counts
#   MODES=tls bench/idle.sh         TLS only (MODES: plain, tls or both)
#   OUT=/tmp/i bench/idle.sh        keep configs, logs, heap profiles there
#   PARK_AFTER=100ms bench/idle.sh  [limits] park_after other than the default
#
# As in bench/peers.sh: mailproxy with its defaults (park_after 5s, log
# level warn) on core 0, the fake IMAP backend (bench/compare/fakeimap) and
# the load client on core 1; each session connects, (TLS,) logs in, sends
# a NOOP and stays; RSS is read IDLE_WAIT (default 10s) after the last
# login. One line per run: RSS growth per session, then the growth of each
# runtime memory class per session (bytes), largest first. Heap profiles
# taken then are in OUT (go tool pprof -sample_index=inuse_space
# OUT/bin/mailproxy OUT/heap-plain-1000.pprof.1). Holds
# /tmp/mailproxy-bench.lock; ports 31695-31697 (PORT moves them).
set -euo pipefail
cd "$(dirname "$0")/.."
ns=${NS:-1000}
modes=${MODES:-both}
[[ $modes == both ]] && modes="plain tls"
wait_s=${IDLE_WAIT:-10s}
port=${PORT:-31695}
out=${OUT:-$(mktemp -d /tmp/mp-idle.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=$out/bin

ulimit -n "$(ulimit -Hn)"
limit=$(ulimit -n)
for n in $ns; do
	((2 * n + 40 <= limit)) || { echo "bench/idle.sh: $n sessions need $((2 * n + 40)) descriptors, the limit is $limit" >&2; exit 1; }
done

exec 9>/tmp/mailproxy-bench.lock
echo "waiting for /tmp/mailproxy-bench.lock" >&2
flock 9

started=()
source bench/lib.sh
trap stop_all EXIT
trap 'exit 130' INT TERM

mkdir -p "$bin"
go build -tags memdump -o "$bin/" ./cmd/mailproxy
go build -o "$bin/" ./bench/peers/load ./bench/compare/fakeimap
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
	-keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null

start fakeimap 1 "$port" "$bin/fakeimap" -addr "127.0.0.1:$port" -size 1024
park_line=
[[ -z ${PARK_AFTER:-} ]] || park_line="park_after = \"$PARK_AFTER\""
cat >"$out/mailproxy.toml" <<EOT
[log]
level = "warn"

[admin]
listen = ""

[tls]
cert = "$out/cert.pem"
key = "$out/key.pem"

[limits]
max_connections = 100000
max_connections_per_ip = 100000
auth_failure_delay = "0s"
$park_line

[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:$((port + 1))"
pool = "main"

[[listener]]
name = "imaps"
protocol = "imap"
address = "127.0.0.1:$((port + 2))"
tls = "implicit"
pool = "main"

[[pool]]
name = "main"

[[pool.backend]]
name = "fake"
imap = "127.0.0.1:$port"
EOT

for n in $ns; do
	for mode in $modes; do
		tag=$mode-$n
		MAILPROXY_HEAPPROFILE=$out/heap-$tag.pprof taskset -c 0 "$bin/mailproxy" run -config "$out/mailproxy.toml" >"$out/mailproxy-$tag.out" 2>&1 9>&- &
		mp=$!
		wait_port $((port + 1)) $mp
		args=(-addr 127.0.0.1:$((port + 1)))
		[[ $mode == tls ]] && args=(-addr 127.0.0.1:$((port + 2)) -tls)
		taskset -c 1 "$bin/load" -mode idle "${args[@]}" -label "mode=$mode" -pids "$mp" -n "$n" -conc 16 \
			-user idle -users "$n" -idle-wait "$wait_s" -cpu-window 1s -memdump >"$out/result-$tag.txt" 9>&-
		kill -TERM $mp
		wait $mp || true
		line=$(grep '^RESULT' "$out/result-$tag.txt")
		grep '^MEMDUMP' "$out/mailproxy-$tag.out" | head -2 >"$out/memdump-$tag.txt"
		awk -v n="$n" -v tag="$tag" -v line="$line" '
			BEGIN {
				split(line, f, " ")
				for (i in f) if (split(f[i], kv, "=") == 2) r[kv[1]] = kv[2]
				printf "%-11s RSS %6.0f KiB -> %6.0f KiB: %5.2f KiB/session (%.2f without file pages: %d KiB), %.2f fds/session\n", tag,
					r["rss_before_kib"], r["rss_after_kib"], r["rss_per_session_b"] / 1024,
					(r["rss_per_session_b"] - r["rss_file_growth_kib"] * 1024 / n) / 1024, r["rss_file_growth_kib"], r["fds_per_session"]
			}
			{
				for (i = 2; i <= NF; i++) {
					split($i, kv, "=")
					v[NR, kv[1]] = kv[2]
					names[kv[1]] = 1
				}
			}
			END {
				for (k in names) {
					d = (v[2, k] - v[1, k]) / n
					if (d != 0 || k ~ /total/) printf "    %9.0f  %s\n", d, k
				}
			}' "$out/memdump-$tag.txt" | { read -r head; echo "$head"; sort -k1,1nr; }
	done
done
echo "bench/idle.sh: results, memory dumps and heap profiles in $out"
