#!/usr/bin/env bash
# bench/store.sh — logins per second through mailproxy with the routing
# table in Redis against the memory table (issue 13, item 6), and the
# latency of a login's routing decision with Redis; writes the "store"
# section of BENCHMARKS.md, or with BACKEND=dovecot the "store-real" one
# (bench/peers.sh keeps both).
#
#   bench/store.sh                  7 rounds (about 3 minutes), fake backend
#   BACKEND=dovecot bench/store.sh  12 rounds (about 3 minutes), real Dovecots
#   ROUNDS=3 N=4000 bench/store.sh
#   OUT=/tmp/s bench/store.sh   keep configs, logs and the RESULT lines there
#   NOWRITE=1 bench/store.sh    print the table, leave BENCHMARKS.md alone
#
# Placement, as a proxy runs in production: mailproxy on core 0 of its own
# (taskset); redis-server, the fake IMAP backend (bench/compare/fakeimap)
# and the load client (bench/peers/load) on core 1. Every round runs
# mailproxy twice, afresh, with [store] type "memory" and type "redis"
# (the order alternates between rounds, so that a drift of the machine
# hits both alike); the Redis store is emptied before each redis run, so
# that both start from an empty table. A run is WARM logins of other users
# (connections, goroutines and the store's pool warmed up), then N logins
# (connect, greeting, LOGIN, LOGOUT; 8 at a time) spread over USERS
# distinct users: each user's first login is one the table has never seen,
# the others come back to a lingering binding. The ratio is redis over
# memory of the same round; the table gives every round, the median and
# the spread. The routing decision's latency is read from mailproxy's own
# histogram (mailproxy_store_seconds{op="acquire"}: one observation per
# login, the wait for the store's answer included) over the N logins,
# and once more after the rounds with one login at a time (below
# saturation: the decision's own latency).
#
# BACKEND=dovecot: the backends are the integration suite's two real
# Dovecots on one Maildir (integration/realmail/start.sh, on core 1 with
# redis-server and the load client; mailproxy still alone on core 0), as in
# production, where a backend forks an imap process per login. Fewer
# logins per run (N=600 over USERS=200 of the harness's users user0..,
# so a third are first logins; the warm-up uses user200.. (WARM=40 logins),
# which the measured logins never use). Core 1's column then counts the
# Dovecots' processes (masters, login and imap processes, the children
# they reaped) instead of the fake backend. Runs as root (Dovecot switches
# users) and also holds /tmp/mailproxy-realmail.lock (the harness's fixed
# ports), taken before the bench lock, as bench/peers.sh does.
#
# Holds /tmp/mailproxy-bench.lock. Loopback only, ports 31720-31723 (PORT
# moves them), below the ephemeral range. Every process it starts is
# stopped by PID when it exits, however it exits; redis-server runs with a
# directory of its own under OUT and no persistence.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

backend=${BACKEND:-fake}
case $backend in
fake) rounds=${ROUNDS:-7} n=${N:-20000} users=${USERS:-5000} warm=${WARM:-500} lat_n=$n ;;
dovecot)
	rounds=${ROUNDS:-12} n=${N:-600} users=${USERS:-200} warm=${WARM:-40} lat_n=300
	# The harness provisions user0..user219: the measured logins use
	# user0..user(USERS-1), the warm-up user200..user219.
	((users >= 1 && users <= 200)) || { echo "bench/store.sh: BACKEND=dovecot: USERS 1-200 (the harness's users)" >&2; exit 1; }
	((n <= 5000)) || { echo "bench/store.sh: BACKEND=dovecot: N up to 5000 (Dovecot does about 100 logins/s)" >&2; exit 1; }
	[[ $(id -u) == 0 ]] || { echo "bench/store.sh: BACKEND=dovecot runs as root (Dovecot switches users)" >&2; exit 1; }
	;;
*) echo "bench/store.sh: BACKEND fake or dovecot" >&2; exit 1 ;;
esac
conc=8
port=${PORT:-31720}
redis_port=$port fake_port=$((port + 1)) imap_port=$((port + 2)) admin_port=$((port + 3))
((rounds >= 1 && rounds <= 50 && n >= 100 && n <= 200000)) || { echo "bench/store.sh: ROUNDS 1-50, N 100-200000" >&2; exit 1; }
[[ $(nproc) -ge 2 ]] || { echo "bench/store.sh: needs 2 cores (mailproxy on core 0, the rest on core 1)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "bench/store.sh: needs redis-server (integration/redisstore/install.sh)" >&2; exit 1; }

out=${OUT:-$(mktemp -d /tmp/mp-store.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=$out/bin
rm_dir=$out/rm # the realmail harness; short: unix socket paths

if [[ $backend == dovecot ]]; then
	exec 8>/tmp/mailproxy-realmail.lock
	echo "waiting for /tmp/mailproxy-realmail.lock" >&2
	flock 8
fi
exec 9>/tmp/mailproxy-bench.lock
echo "waiting for /tmp/mailproxy-bench.lock" >&2
flock 9

started=() # PIDs this script started and has not stopped yet
source bench/lib.sh
cleanup() {
	local p
	for p in "${started[@]}"; do stop_pid "$p"; done
	[[ -f $rm_dir/env ]] && integration/realmail/stop.sh "$rm_dir" || true
	true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$bin"
version=$(git rev-parse --short HEAD)
[[ -z $(git status --porcelain -- cmd protocols proxy routing tls internal go.mod go.sum) ]] || version+="+work-tree-changes"
go build -o "$bin/" ./cmd/mailproxy ./bench/peers/load ./bench/compare/fakeimap

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime of one process
# utime + stime + the reaped children's of PIDS and their live descendants:
# a forked process that ended in between is in its reaper's cutime/cstime.
tree_ticks() {
	local todo=("$@") all=() p
	while ((${#todo[@]})); do
		p=${todo[0]} todo=("${todo[@]:1}")
		all+=("$p")
		todo+=($(cat /proc/"$p"/task/*/children 2>/dev/null))
	done
	for p in "${all[@]}"; do
		# comm may hold spaces: the fields after the last ")".
		sed 's/.*) //' "/proc/$p/stat" 2>/dev/null || true
	done | awk '{s += $12 + $13 + $14 + $15} END {print s + 0}'
}
# The CPU seconds of the processes this shell waited for: times runs in
# this shell (not in a $(...) subshell, which has children of its own).
children_cpu() { awk 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] }; print s }' "$out/times"; }
rcli() { redis-cli -h 127.0.0.1 -p "$redis_port" "$@"; }

mkdir -p "$out/redis"
if [[ $backend == dovecot ]]; then
	integration/realmail/install.sh >"$out/install.log" 2>&1 || { cat "$out/install.log" >&2; exit 1; }
	# Output to a file, not a pipe: the daemons would hold a pipe open.
	taskset -c 1 integration/realmail/start.sh "$rm_dir" >"$out/realmail.log" 2>&1 8>&- 9>&- || { cat "$out/realmail.log" >&2; exit 1; }
	# shellcheck disable=SC1091
	. "$rm_dir/env"
	backend_pids=("$DOVECOT_A_PID" "$DOVECOT_B_PID")
	pool_backends=$(printf '[[pool.backend]]\nname = "dovecot-a"\nimap = "127.0.0.1:%s"\n\n[[pool.backend]]\nname = "dovecot-b"\nimap = "127.0.0.1:%s"' "$DOVECOT_A_IMAP_PORT" "$DOVECOT_B_IMAP_PORT")
	load_users=(-user user -users "$users") warm_users=(-user user -user0 200 -users 20)
fi
start redis 1 "$redis_port" redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$out/redis" \
	--save "" --appendonly no --daemonize no --logfile "$out/redis/redis.log"
redis_pid=$pid
if [[ $backend == fake ]]; then
	start fakeimap 1 "$fake_port" "$bin/fakeimap" -addr "127.0.0.1:$fake_port" -size 1024
	backend_pids=("$pid")
	pool_backends=$(printf '[[pool.backend]]\nname = "fake"\nimap = "127.0.0.1:%s"' "$fake_port")
	load_users=(-user u -users "$users") warm_users=(-user warm -users "$warm")
fi

write_config() { # STORE
	cat >"$out/mailproxy-$1.toml" <<-EOF
		[log]
		level = "warn"

		[admin]
		listen = "127.0.0.1:$admin_port"

		[limits]
		max_connections = 100000
		max_connections_per_ip = 100000
		auth_failure_delay = "0s"

		[[listener]]
		name = "imap"
		protocol = "imap"
		address = "127.0.0.1:$imap_port"
		pool = "main"

		[[pool]]
		name = "main"

		$pool_backends

		[store]
		type = "$1"
	EOF
	if [[ $1 == redis ]]; then
		cat >>"$out/mailproxy-$1.toml" <<-EOF
			address = "127.0.0.1:$redis_port"
			instance = "bench"
			prefix = "bench:"
		EOF
	fi
}
write_config memory
write_config redis

# The histogram's buckets of the acquire op: "le count" lines.
acquire_buckets() {
	curl -fsS "http://127.0.0.1:$admin_port/metrics" |
		sed -n 's/^mailproxy_store_seconds_bucket{le="\([^"]*\)",op="acquire"} \([0-9.e+]*\)$/\1 \2/p;
			s/^mailproxy_store_seconds_bucket{op="acquire",le="\([^"]*\)"} \([0-9.e+]*\)$/\1 \2/p'
}

run() { # STORE ROUND [CONC [N]]: one run, its RESULT line appended to results.txt
	local store=$1 r=$2 c=${3:-$conc} nn=${4:-$n} mp b0 b1 r0 r1 f0 f1 l0 l1 p99
	[[ $store == redis ]] && rcli flushall >/dev/null
	start "mailproxy-$store" 0 "$imap_port" "$bin/mailproxy" run -config "$out/mailproxy-$store.toml"
	mp=$pid
	wait_port "$admin_port" "$mp"
	taskset -c 1 "$bin/load" -mode imap-login -addr "127.0.0.1:$imap_port" -n "$warm" -conc "$conc" \
		"${warm_users[@]}" -deadline 1m >/dev/null
	b0=$(acquire_buckets)
	times >"$out/times"
	r0=$(cpu_ticks "$redis_pid") f0=$(tree_ticks "${backend_pids[@]}") l0=$(children_cpu)
	line=$(taskset -c 1 "$bin/load" -mode imap-login -label "store=$store round=$r conc=$c" -pids "$mp" \
		-addr "127.0.0.1:$imap_port" -n "$nn" -conc "$c" "${load_users[@]}" -deadline 3m)
	times >"$out/times"
	r1=$(cpu_ticks "$redis_pid") f1=$(tree_ticks "${backend_pids[@]}") l1=$(children_cpu)
	b1=$(acquire_buckets)
	# The smallest bucket bound holding 99% of this run's decisions.
	p99=$(join <(sort <<<"$b0") <(sort <<<"$b1") | sort -g | awk '
		{ le[NR] = $1; c[NR] = $3 - $2; k = NR }
		END {
			if (k == 0 || c[k] == 0) { print "n/a"; exit }
			for (i = 1; i <= k; i++) if (c[i] >= 0.99 * c[k]) { print le[i]; exit }
		}')
	echo "$line p99_le_s=$p99 $(awk -v a="$r0" -v b="$r1" -v fa="$f0" -v fb="$f1" -v la="$l0" -v lb="$l1" -v n="$nn" \
		'BEGIN {printf "redis_cpu_us=%.1f backend_cpu_us=%.1f load_cpu_us=%.1f", (b - a) * 1e6 / 100 / n, (fb - fa) * 1e6 / 100 / n, (lb - la) * 1e6 / n}')" |
		tee -a "$out/results.txt"
	stop_pid "$mp"
}

{
	echo "# $(date -u +%FT%TZ) backend=$backend rounds=$rounds n=$n users=$users warm=$warm conc=$conc version=$version"
} >"$out/results.txt"
loads=()
for ((r = 1; r <= rounds; r++)); do
	loads+=("$(cut -d' ' -f1 /proc/loadavg)")
	if ((r % 2)); then order="memory redis"; else order="redis memory"; fi
	for s in $order; do run "$s" "$r"; done
done
# The decision's latency below saturation: one login at a time.
run redis latency 1 "$lat_n"

table=$(awk -v real="$([[ $backend == dovecot ]] && echo 1)" '
function med(a, k,    i, j, t) {
	for (i = 2; i <= k; i++)
		for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	lo = a[1]; hi = a[k]
	return (k % 2) ? a[(k+1)/2] : (a[k/2] + a[k/2+1]) / 2
}
/^RESULT/ {
	delete kv
	for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
	r = kv["round"]; s = kv["store"]
	if (r == "latency") { lat = kv["p99_le_s"]; latrate = kv["rate"]; next }
	rate[s, r] = kv["rate"]; cpu[s, r] = kv["proxy_cpu_us"]; core1[s, r] = kv["backend_cpu_us"] + kv["fake_cpu_us"] + kv["load_cpu_us"] + kv["redis_cpu_us"]
	if (s == "redis") { p99[r] = kv["p99_le_s"]; rcpu[r] = kv["redis_cpu_us"] }
	if (r > nr) nr = r
}
END {
	print "| round | memory, logins/s | redis, logins/s | redis ÷ memory | core 0: mailproxy CPU per login, memory / redis, µs | core 1: load client + backend + redis-server CPU per login, memory / redis, µs | of which redis-server | routing decision p99 (redis) |"
	print "| --- | --- | --- | --- | --- | --- | --- | --- |"
	k = 0
	for (r = 1; r <= nr; r++) {
		if (!((("memory", r) in rate) && (("redis", r) in rate))) continue
		q = rate["redis", r] / rate["memory", r]
		ratio[++k] = q; m[k] = rate["memory", r]; d[k] = rate["redis", r]
		cm[k] = cpu["memory", r]; cr[k] = cpu["redis", r]; rc[k] = rcpu[r]; c1m[k] = core1["memory", r]; c1r[k] = core1["redis", r]
		printf "| %d | %.0f | %.0f | %.2f | %.0f / %.0f | %.0f / %.0f | %.0f | ≤ %s ms |\n", r, rate["memory", r], rate["redis", r], q, cpu["memory", r], cpu["redis", r], core1["memory", r], core1["redis", r], rcpu[r], (p99[r] == "n/a") ? "n/a" : p99[r] * 1000
		if (p99[r] == "n/a" || p99[r] == "+Inf" || p99[r] + 0 > worst) worst = (p99[r] == "n/a" || p99[r] == "+Inf") ? 1e9 : p99[r] + 0
	}
	if (k == 0) exit
	mr = med(m, k); mlo = lo; mhi = hi
	dr = med(d, k); dlo = lo; dhi = hi
	cmm = med(cm, k); crm = med(cr, k); rcm = med(rc, k); c1mm = med(c1m, k); c1lo = lo; c1hi = hi; c1rm = med(c1r, k)
	q = med(ratio, k)
	printf "| **median (min–max)** | %.0f (%.0f–%.0f) | %.0f (%.0f–%.0f) | **%.2f** (%.2f–%.2f) | %.0f / %.0f | %.0f / %.0f | %.0f | worst round: ≤ %s ms |\n", mr, mlo, mhi, dr, dlo, dhi, q, lo, hi, cmm, crm, c1mm, c1rm, rcm, (worst >= 1e9) ? "n/a" : worst * 1000
	if (real && c1rm > 0) printf "\nThe CPU of the store itself on core 1 (redis-server, median): %.0f of %.0f µs per login (%.1f%%), so with core 1 the bound the CPU allows a ratio of %.2f; the rounds spread more than that because the machine is shared (core 1 per login moved between %.0f and %.0f µs in the memory runs, where the store is idle).\n", rcm, c1rm, 100 * rcm / c1rm, 1 - rcm / c1rm, c1lo, c1hi
	if (lat != "") printf "\nRouting decision p99 with Redis, one login at a time (%.0f logins/s, mailproxy not saturated): **≤ %s ms**.\n", latrate, (lat == "n/a" || lat == "+Inf") ? "n/a" : lat * 1000
}' "$out/results.txt")

loadavg=$(printf '%s\n' "${loads[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%s–%s (median %s)", a[1], a[NR], a[int((NR+1)/2)]}')
cmd=bench/store.sh
for v in ROUNDS N USERS WARM; do [[ -z ${!v:-} ]] || cmd="$v=${!v} $cmd"; done
if [[ $backend == dovecot ]]; then
	cmd="BACKEND=dovecot $cmd" mark=store-real
	sat_text="The p99 column is 8 logins at a time (the Dovecots' core busy, mailproxy's not); the line under the table is one login at a time, after the rounds."
	title="Routing table in Redis against the memory table, real Dovecot backends (issue 13, item 6)"
	backends="the two Dovecots of integration/realmail/start.sh (one Maildir, $(dovecot --version | cut -d' ' -f1); a pool of both)"
	users_text="the harness's users user0..user$((users - 1)) (the warm-up: user200..user219)"
	backend_col="Dovecots (every process of both instances)"
	read_text="With real backends core 1 is bound by Dovecot, which forks an imap process per login (its CPU per login is most of core 1's column), and mailproxy's core has time to spare: the store's cost on core 0 then costs no logins, and on core 1 redis-server's share is small beside Dovecot's. In production the mail servers, not the proxy, bound the logins as they do here; the fake-backend section above is the worst case, where mailproxy's own core is the bound and the store's CPU shows in full."
else
	mark=store
	sat_text="The p99 column is at saturation (mailproxy's core busy, so a reply waits for the core); the line under the table is one login at a time, after the rounds."
	title="Routing table in Redis against the memory table (issue 13, item 6)"
	backends="the fake IMAP backend (bench/compare/fakeimap)"
	users_text="$users users (u0..)"
	backend_col="fake backend"
	read_text="How to read it: when mailproxy's core and the other core are both busy, the rate follows the CPU per login on each, so the ratio is near the smaller of memory ÷ redis of the two CPU columns. The store's cost on core 0 is mailproxy's side of a round trip to Redis per login and its part in the releases; on core 1 it is redis-server (its Lua scripts, one acquire and one release per login) and the load client and backend sharing their core with a third process. In production Redis runs on a machine of its own, so only core 0's share is on the proxy's machine; the backends are real mail servers (\`BACKEND=dovecot bench/store.sh\`, the store-real section)."
fi
table=${table/core 1: load client + backend + redis-server/core 1: load client + $backend_col + redis-server}
section=$(
	cat <<EOF
<!-- $mark:begin -->
## $title

Written by \`$cmd\` on $(date -u +%F) (raw results: \`$out/results.txt\`).

- **Machine:** $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), Linux $(uname -r), $(redis-server --version | cut -d' ' -f1-3 | sed 's/v=//'); load average at the start of each round: $loadavg (the machine is shared).
- **Placement:** mailproxy $version on core 0 (defaults, log level warn); redis-server (loopback, no persistence), $backends and the load client on core 1.
- **Load:** per run, mailproxy started afresh ($warm warm-up logins of other users first), then $n logins (connect, greeting, LOGIN, LOGOUT), $conc at a time, over $users_text: each user's first login is new to the table, the rest find its lingering binding. Each round runs memory and redis back to back, the order alternating; the Redis store is emptied before each redis run.
- **Targets:** redis ÷ memory ≥ 0.90; a routing decision's p99 under 1 ms (the smallest bucket of mailproxy_store_seconds{op="acquire"} that holds 99% of the run's decisions; one observation per login, from the call to the store's answer, the wait for a batch and for the core included). $sat_text

$table

$read_text
<!-- $mark:end -->
EOF
)
echo
echo "$table"
echo
if [[ -z ${NOWRITE:-} ]]; then
	f=$root/BENCHMARKS.md
	[[ -f $f ]] || printf '# Benchmarks\n' >"$f"
	if grep -q "<!-- $mark:begin -->" "$f"; then
		awk -v s="$section" -v b="<!-- $mark:begin -->" -v e="<!-- $mark:end -->" '$0 == b {print s; skip = 1; next} $0 == e {skip = 0; next} !skip' "$f" >"$f.new"
	else
		{ cat "$f"; echo; echo "$section"; } >"$f.new"
	fi
	mv "$f.new" "$f"
	echo "BENCHMARKS.md: $mark section written; raw results in $out/results.txt"
else
	echo "raw results in $out/results.txt"
fi
