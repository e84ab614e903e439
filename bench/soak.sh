#!/usr/bin/env bash
# bench/soak.sh — the idle soak: about 10,000 logged-in IMAP sessions, every
# other one over implicit TLS, all in IDLE, through mailproxy on loopback,
# held for HOLD (default 60s); records memory and CPU per session and the
# first reply of every parked session in BENCHMARKS.md (its "Soak"
# section; bench/peers.sh keeps it).
#
#   bench/soak.sh              N sessions (default: 10,000, or what the
#                              descriptor limit allows), HOLD=60s
#   N=2000 HOLD=10s bench/soak.sh
#   OUT=/tmp/s bench/soak.sh   keep configs, logs and the RESULT line there
#
# mailproxy runs with its defaults (park_after 250ms) on core 0; the fake IMAP
# backend (bench/compare/fakeimap, which holds IDLE until DONE) and the
# load client on core 1. Each session: connect, (TLS,) LOGIN, IDLE. 10 s
# after the last one the proxy's RSS is read (the sessions have parked and
# mailproxy has given back the login burst's memory), then its CPU over
# HOLD; then each session sends DONE and the time to its tagged OK (the
# relay resuming from parked) is recorded, and it logs out. Bounded: every
# I/O has a deadline and the load gives up after 10 minutes. Holds
# /tmp/mailproxy-bench.lock; ports 31690-31692, below the ephemeral range (PORT moves them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
hold=${HOLD:-60s}
port=${PORT:-31690}
out=${OUT:-$(mktemp -d /tmp/mp-soak.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=$out/bin

# Two descriptors per session in the proxy (and one each in the client and
# the backend, separate processes). Raised to the hard limit; a process
# that may not go above it (no CAP_SYS_RESOURCE) gets fewer sessions.
ulimit -n "$(ulimit -Hn)"
limit=$(ulimit -n)
max=$(((limit - 40) / 2))
n=${N:-$((max < 10000 ? max : 10000))}
((n <= max)) || { echo "bench/soak.sh: N=$n needs $((2 * n + 40)) descriptors, the limit is $limit" >&2; exit 1; }

exec 9>/tmp/mailproxy-bench.lock
echo "waiting for /tmp/mailproxy-bench.lock" >&2
flock 9

started=()
source bench/lib.sh
trap stop_all EXIT
trap 'exit 130' INT TERM

mkdir -p "$bin"
version=$(git rev-parse --short HEAD)
[[ -z $(git status --porcelain -- cmd protocols proxy routing tls internal go.mod go.sum) ]] || version+="+work-tree-changes"
go build -o "$bin/" ./cmd/mailproxy ./bench/peers/load ./bench/compare/fakeimap
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
	-keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null

start fakeimap 1 "$port" "$bin/fakeimap" -addr "127.0.0.1:$port" -size 1024
cat >"$out/mailproxy.toml" <<EOF
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
EOF
taskset -c 0 "$bin/mailproxy" run -config "$out/mailproxy.toml" >"$out/mailproxy.out" 2>&1 9>&- &
mp=$!
started+=($mp)
wait_port $((port + 1)) $mp

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
taskset -c 1 "$bin/load" -mode soak -label "target=mailproxy" -pids "$mp" -n "$n" -conc 32 -users 1000 \
	-addr 127.0.0.1:$((port + 1)) -tls-addr 127.0.0.1:$((port + 2)) -idle-wait 10s -hold "$hold" -deadline 10m |
	tee "$out/result.txt"
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
line=$(grep '^RESULT' "$out/result.txt")
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }

section=$(
	cat <<EOF
<!-- soak:begin -->
## Soak: $(kv sessions) idle IMAP sessions through mailproxy

Written by \`bench/soak.sh\` (N=$n HOLD=$hold) on $(date -u +%F), mailproxy $version with its defaults (park_after 250ms, log level warn), on core 0; fake backend and load client on core 1; $(nproc) cores, Linux $(uname -r); load average $load_before before, $load_after after (the machine is shared).

| | |
| --- | --- |
| sessions | $(kv sessions) ($(kv tls) over implicit TLS), all in IDLE, opened in $(kv open_secs) s |
| proxy RSS: before, 10 s after the last login, after the hold | $(kv rss_before_kib) KiB, $(kv rss_parked_kib) KiB, $(kv rss_held_kib) KiB |
| memory per session (RSS growth / sessions, half TLS) | $(awk -v b="$(kv rss_per_session_b)" 'BEGIN {printf "%.1f KiB", b / 1024}') |
| descriptors per session | $(kv fds_per_session) |
| proxy CPU while idle, over $(kv hold_secs) s | $(kv idle_cpu_pct) % of one core ($(kv idle_cpu_us_per_session_s) µs per session per second) |
| proxy CPU per login (TLS half, IDLE included) | $(kv login_cpu_us) µs |
| first reply of a parked session (DONE to tagged OK, client side) | median $(kv done_ok_us_p50) µs, 99th percentile $(kv done_ok_us_p99) µs, max $(kv done_ok_us_max) µs |

The descriptor limit of this machine is $limit per process and may not be raised here (no CAP_SYS_RESOURCE): a proxy needs two per session, hence the number of sessions.
<!-- soak:end -->
EOF
)
f=$root/BENCHMARKS.md
[[ -f $f ]] || printf '# Benchmarks\n' >"$f"
if grep -q '<!-- soak:begin -->' "$f"; then
	awk -v s="$section" '/<!-- soak:begin -->/ {print s; skip = 1; next} /<!-- soak:end -->/ {skip = 0; next} !skip' "$f" >"$f.new"
else
	{ cat "$f"; echo; echo "$section"; } >"$f.new"
fi
mv "$f.new" "$f"
echo "BENCHMARKS.md: soak section written; raw result in $out/result.txt"
