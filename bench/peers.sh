#!/usr/bin/env bash
# bench/peers.sh [-quick] — mailproxy against the proxies users would pick
# instead, in front of the real backends of the integration suite (two
# Dovecots and a Postfix, integration/realmail/start.sh), and writes
# BENCHMARKS.md at the top of the repository.
#
#   bench/peers.sh            3 rounds (about 10 minutes)
#   bench/peers.sh -quick     1 round, fewer operations (under 3 minutes)
#   ROUNDS=5 bench/peers.sh   more rounds
#   OUT=/tmp/p bench/peers.sh keep configs, logs and the raw RESULT lines there
#   ROWS="smtp pop3" TARGETS="direct mailproxy haproxy" bench/peers.sh -quick
#                             only these rows and targets, for trying a change
#                             (rows: imap-login imaps-login fetch smtp pop3 idle)
#
# Targets: direct (the backends themselves), mailproxy (this work tree,
# defaults except log level warn), nginx's mail module (with
# bench/compare/authhttp as its auth_http service), HAProxy (mode tcp; it
# terminates TLS on the IMAPS port so that TLS logins compare like for
# like) and Dovecot's own proxy (a third Dovecot, passdb proxy=y,
# high-performance login processes). nginx, its mail module and HAProxy
# are installed from Debian's packages when missing, with a policy-rc.d
# that keeps the packages from starting system services; Dovecot and
# Postfix by integration/realmail/install.sh.
#
# Placement: the proxy under test (with its helpers: nginx's auth_http)
# runs on core 0 (taskset), the backends, the fake IMAP backend of the idle
# rows and the load client on core 1, as a proxy runs in production on a
# machine of its own. Every round starts each target afresh, in an order
# rotated every round, and runs every workload against it; a row's ratio is
# the target's rate over the direct rate of the same round. The table
# gives the median ratio over the rounds and the spread (min–max).
#
# Runs as root (Dovecot and Postfix switch users; taskset; installing).
# Holds /tmp/mailproxy-realmail.lock (the harness's fixed ports) and
# /tmp/mailproxy-bench.lock (a timed measurement) for the whole run. Every
# process it starts is stopped by PID when it exits, however it exits.
# Listens on 127.0.0.1 ports 31500-31599, below the ephemeral range where
# a client connection could hold one (PORT moves them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=0
[[ ${1:-} == -quick ]] && quick=1
if ((quick)); then
	rounds=${ROUNDS:-1} login_n=200 tls_n=150 pop3_n=200 smtp_n=150 fetch_n=30 idle_n=500
	idle_wait=8s cpu_window=3s
else
	rounds=${ROUNDS:-3} login_n=1500 tls_n=1000 pop3_n=1000 smtp_n=600 fetch_n=100 idle_n=1000
	idle_wait=10s cpu_window=10s
fi
# LOGIN_N, TLS_N, FETCH_N, SMTP_N, POP3_N: other operation counts
login_n=${LOGIN_N:-$login_n} tls_n=${TLS_N:-$tls_n} fetch_n=${FETCH_N:-$fetch_n}
smtp_n=${SMTP_N:-$smtp_n} pop3_n=${POP3_N:-$pop3_n}
conc=${CONC:-8}
# idle_wait > mailproxy's park_after (250ms) and the settling of its memory release
port=${PORT:-31500}
[[ $(id -u) == 0 ]] || { echo "bench/peers.sh: run as root (Dovecot, Postfix, taskset, apt-get)" >&2; exit 1; }
[[ $(nproc) -ge 2 ]] || { echo "bench/peers.sh: needs 2 cores (proxy on core 0, the rest on core 1)" >&2; exit 1; }

out=${OUT:-$(mktemp -d /tmp/mp-peers.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm_dir=$out/rm # the realmail harness; short: unix socket paths
bin=$out/bin

exec 8>/tmp/mailproxy-realmail.lock 9>/tmp/mailproxy-bench.lock
echo "waiting for /tmp/mailproxy-realmail.lock and /tmp/mailproxy-bench.lock" >&2
flock 8
flock 9

# --- what is started, and stopping it --------------------------------------

started=() # PIDs this script started and has not stopped yet
source bench/lib.sh
dovecot_confs=()
policy_created=""

cleanup() {
	local p c
	for p in "${started[@]}"; do stop_pid "$p"; done
	for c in "${dovecot_confs[@]}"; do dovecot -c "$c" stop 2>/dev/null || true; done
	[[ -f $rm_dir/env ]] && integration/realmail/stop.sh "$rm_dir" || true
	[[ -n $policy_created ]] && rm -f "$policy_created"
	true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- installing --------------------------------------------------------------

integration/realmail/install.sh >"$out/install.log" 2>&1 || { cat "$out/install.log" >&2; exit 1; }
mail_module=/usr/lib/nginx/modules/ngx_mail_module.so
need=()
command -v nginx >/dev/null || need+=(nginx)
if ! nginx -V 2>&1 | grep -q -- '--with-mail ' && [[ ! -e $mail_module ]]; then need+=(libnginx-mod-mail); fi
command -v haproxy >/dev/null || need+=(haproxy)
if ((${#need[@]})); then
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		policy_created=/usr/sbin/policy-rc.d # Debian's "do not start what you install"
		printf '#!/bin/sh\nexit 101\n' >"$policy_created"
		chmod 755 "$policy_created"
	fi
	apt-get -o DPkg::Lock::Timeout=600 update >>"$out/install.log" 2>&1
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${need[@]}" >>"$out/install.log" 2>&1
	if [[ -n $policy_created ]]; then rm -f "$policy_created"; policy_created=""; fi
fi
load_mail=""
nginx -V 2>&1 | grep -q -- '--with-mail ' || load_mail="load_module $mail_module;"

# An idle row holds 1000 sessions: 2 descriptors each in the proxy, one in
# the client and one in the fake backend.
ulimit -n "$(ulimit -Hn)"

# --- building ------------------------------------------------------------------

mkdir -p "$bin"
version=$(git rev-parse --short HEAD)
[[ -z $(git status --porcelain -- cmd protocols proxy routing tls internal go.mod go.sum) ]] || version+="+work-tree-changes"
go build -o "$bin/" ./cmd/mailproxy ./bench/peers/load ./bench/compare/authhttp ./bench/compare/fakeimap

# --- backends (core 1) -----------------------------------------------------------


# Output to a file, not a pipe: the daemons would hold a pipe open.
taskset -c 1 integration/realmail/start.sh "$rm_dir" >"$out/realmail.log" 2>&1 8>&- 9>&- || { cat "$out/realmail.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$rm_dir/env"
imap_a=127.0.0.1:$DOVECOT_A_IMAP_PORT imap_b=127.0.0.1:$DOVECOT_B_IMAP_PORT
pop3_a=127.0.0.1:$DOVECOT_A_POP3_PORT pop3_b=127.0.0.1:$DOVECOT_B_POP3_PORT
smtp_a=127.0.0.1:$POSTFIX_SMTP_PORT

# The FETCH row's message: 10 MiB in user199's INBOX, as a Maildir file.
fetch_user=user199
md=$rm_dir/mail/$fetch_user
mkdir -p "$md/cur" "$md/new" "$md/tmp"
{
	printf 'From: bench@example.test\r\nTo: %s@example.test\r\nSubject: 10 MiB\r\n\r\n' "$fetch_user"
	head -c $((10 << 20)) /dev/zero | tr '\0' 'x' | fold -w 78 | sed 's/$/\r/'
} | head -c $((10 << 20)) >"$md/new/1.bench:2," || true # head ends the pipe early on purpose
chown -R mail:mail "$md"

fake=127.0.0.1:$((port + 90))
start fakeimap 1 $((port + 90)) "$bin/fakeimap" -addr "$fake" -size 1024

# --- the targets (core 0) ----------------------------------------------------------

cert=$rm_dir/tls/cert.pem key=$rm_dir/tls/key.pem
cat "$cert" "$key" >"$out/haproxy.pem"

# Each target's ports, in order: imap imaps pop3 smtp idle idle-tls ("-": none).
declare -A ports=(
	[direct]="$imap_a,$imap_b $imap_a,$imap_b $pop3_a,$pop3_b $smtp_a - -"
	[mailproxy]="$((port + 1)) $((port + 2)) $((port + 3)) $((port + 4)) $((port + 5)) $((port + 6))"
	[nginx]="$((port + 11)) $((port + 12)) $((port + 13)) $((port + 14)) $((port + 11)) $((port + 12))"
	[haproxy]="$((port + 21)) $((port + 22)) $((port + 23)) $((port + 24)) $((port + 25)) $((port + 26))"
	[dovecot]="$((port + 31)) $((port + 32)) $((port + 33)) - $((port + 31)) $((port + 32))"
)
auth_port=$((port + 19))

write_mailproxy() { # DIR
	cat >"$1/mailproxy.toml" <<-EOF
		[log]
		level = "warn"

		[admin]
		listen = ""

		[tls]
		cert = "$cert"
		key = "$key"

		[limits]
		max_connections = 100000
		max_connections_per_ip = 100000
		auth_failure_delay = "0s"

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

		[[listener]]
		name = "pop3"
		protocol = "pop3"
		address = "127.0.0.1:$((port + 3))"
		pool = "main"

		[[listener]]
		name = "smtp"
		protocol = "smtp"
		address = "127.0.0.1:$((port + 4))"
		pool = "main"

		[[listener]]
		name = "idle"
		protocol = "imap"
		address = "127.0.0.1:$((port + 5))"
		pool = "fake"

		[[listener]]
		name = "idle-tls"
		protocol = "imap"
		address = "127.0.0.1:$((port + 6))"
		tls = "implicit"
		pool = "fake"

		[[pool]]
		name = "main"

		[[pool.backend]]
		name = "dovecot-a"
		imap = "$imap_a"
		pop3 = "$pop3_a"
		smtp = "$smtp_a"

		[[pool.backend]]
		name = "dovecot-b"
		imap = "$imap_b"
		pop3 = "$pop3_b"
		smtp = "$smtp_a"

		[[pool]]
		name = "fake"

		[[pool.backend]]
		name = "fake"
		imap = "$fake"
	EOF
}

write_nginx() { # DIR
	cat >"$1/nginx.conf" <<-EOF
		$load_mail
		daemon off;
		master_process on;
		worker_processes 1;
		worker_rlimit_nofile 19000;
		pid $1/nginx.pid;
		error_log $1/error.log warn;
		events { worker_connections 20000; }
		mail {
		    server_name mail.example.test;
		    auth_http 127.0.0.1:$auth_port/auth;
		    proxy_pass_error_message on;
		    ssl_certificate $cert;
		    ssl_certificate_key $key;
		    imap_capabilities IMAP4rev1;
		    smtp_auth none;
		    server { listen 127.0.0.1:$((port + 11)); protocol imap; starttls off; }
		    server { listen 127.0.0.1:$((port + 12)) ssl; protocol imap; }
		    server { listen 127.0.0.1:$((port + 13)); protocol pop3; starttls off; }
		    server { listen 127.0.0.1:$((port + 14)); protocol smtp; starttls off; xclient on; }
		}
	EOF
}

write_haproxy() { # FILE
	cat >"$1" <<-EOF
		global
		    maxconn 8000
		    nbthread 1
		defaults
		    mode tcp
		    timeout connect 5s
		    timeout client 30m
		    timeout server 30m
		frontend imap
		    bind 127.0.0.1:$((port + 21))
		    bind 127.0.0.1:$((port + 22)) ssl crt $out/haproxy.pem
		    default_backend imap
		frontend pop3
		    bind 127.0.0.1:$((port + 23))
		    default_backend pop3
		frontend smtp
		    bind 127.0.0.1:$((port + 24))
		    default_backend smtp
		frontend idle
		    bind 127.0.0.1:$((port + 25))
		    bind 127.0.0.1:$((port + 26)) ssl crt $out/haproxy.pem
		    default_backend fake
		backend imap
		    server a $imap_a
		    server b $imap_b
		backend pop3
		    server a $pop3_a
		    server b $pop3_b
		backend smtp
		    server a $smtp_a
		backend fake
		    server fake $fake
	EOF
}

write_dovecot() { # DIR
	local d=$1 i
	mkdir -p "$d/run" "$d/state"
	: >"$d/imap.passwd"
	: >"$d/pop3.passwd"
	# Users as the load spreads them (user N on the backend N mod 2),
	# idle users on the fake backend.
	for ((i = 0; i < 200; i++)); do
		local b=$imap_a p=$pop3_a
		((i % 2)) && b=$imap_b p=$pop3_b
		echo "user$i:::::::proxy=y host=127.0.0.1 port=${b#*:} nopassword=y" >>"$d/imap.passwd"
		echo "user$i:::::::proxy=y host=127.0.0.1 port=${p#*:} nopassword=y" >>"$d/pop3.passwd"
	done
	for ((i = 0; i < idle_n; i++)); do
		echo "idle$i:::::::proxy=y host=127.0.0.1 port=${fake#*:} nopassword=y"
	done >>"$d/imap.passwd"
	cat >"$d/dovecot.conf" <<-EOF
		instance_name = dovecot-proxy-bench
		base_dir = $d/run
		state_dir = $d/state
		listen = 127.0.0.1
		protocols = imap pop3
		log_path = $d/dovecot.log
		ssl = yes
		ssl_cert = <$cert
		ssl_key = <$key
		disable_plaintext_auth = no
		auth_mechanisms = plain login
		default_internal_user = dovecot
		default_login_user = dovenull
		default_client_limit = 9000
		default_vsz_limit = 2G
		passdb {
		  driver = passwd-file
		  args = $d/%s.passwd
		}
		service imap-login {
		  inet_listener imap {
		    port = $((port + 31))
		  }
		  inet_listener imaps {
		    port = $((port + 32))
		    ssl = yes
		  }
		  service_count = 0
		  process_min_avail = 1
		}
		service pop3-login {
		  inet_listener pop3 {
		    port = $((port + 33))
		  }
		  inet_listener pop3s {
		    port = 0
		  }
		  service_count = 0
		  process_min_avail = 1
		}
	EOF
}

# start_target NAME: sets $proxy_pids (the processes under test, for the
# load's CPU and memory figures; "" for direct).
start_target() {
	local t=$1 dir=$out/$1
	mkdir -p "$dir"
	proxy_pids=""
	case $t in
	direct) ;;
	mailproxy)
		write_mailproxy "$dir"
		start mailproxy 0 $((port + 1)) "$bin/mailproxy" run -config "$dir/mailproxy.toml"
		proxy_pids=$pid
		;;
	nginx)
		write_nginx "$dir"
		start authhttp 0 "$auth_port" "$bin/authhttp" -addr "127.0.0.1:$auth_port" \
			-backend "$imap_a,$imap_b" -pop3 "$pop3_a,$pop3_b" -smtp "$smtp_a" -idle "$fake"
		proxy_pids=$pid
		nginx -t -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
		start nginx 0 $((port + 11)) nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
		proxy_pids+=,$pid
		;;
	haproxy)
		write_haproxy "$dir/haproxy.cfg"
		haproxy -c -q -f "$dir/haproxy.cfg"
		start haproxy 0 $((port + 21)) haproxy -db -f "$dir/haproxy.cfg"
		proxy_pids=$pid
		;;
	dovecot)
		write_dovecot "$dir"
		dovecot_confs+=("$dir/dovecot.conf")
		taskset -c 0 dovecot -c "$dir/dovecot.conf" 8>&- 9>&-
		local i
		for i in $(seq 100); do [[ -s $dir/run/master.pid ]] && break; sleep 0.05; done # the daemon writes it
		proxy_pids=$(cat "$dir/run/master.pid")
		wait_port $((port + 31)) "$proxy_pids"
		;;
	esac
}

stop_target() {
	case $1 in
	direct) ;;
	dovecot)
		dovecot -c "$out/dovecot/dovecot.conf" stop
		local i
		for i in $(seq 100); do [[ ! -e $out/dovecot/run/master.pid ]] && port_free $((port + 31)) && break; sleep 0.1; done
		;;
	*) local p; for p in "${started[@]:1}"; do stop_pid "$p"; done ;; # all but fakeimap
	esac
}

# load TARGET ROUND ROW ARGS...: one workload on core 1, its RESULT line kept.
load() {
	local t=$1 r=$2 row=$3
	shift 3
	taskset -c 1 "$bin/load" -label "target=$t round=$r row=$row" -pids "$proxy_pids" -conc "$conc" "$@" |
		tee -a "$out/results.txt" || echo "# $t $row failed" | tee -a "$out/results.txt"
}

rows=" ${ROWS:-imap-login imaps-login fetch smtp pop3 idle} "
row() { [[ $rows == *" $1 "* ]]; }

run_target() { # TARGET ROUND
	local t=$1 r=$2
	read -r p_imap p_imaps p_pop3 p_smtp p_idle p_idles <<<"${ports[$t]}"
	a() { [[ $1 == *:* ]] && echo "$1" || echo "127.0.0.1:$1"; }
	! row imap-login || load "$t" "$r" imap-login -mode imap-login -addr "$(a "$p_imap")" -n "$login_n"
	if ! row imaps-login; then
		:
	elif [[ $t == direct ]]; then
		load "$t" "$r" imaps-login -mode imap-login -addr "$(a "$p_imaps")" -starttls -n "$tls_n"
	else
		load "$t" "$r" imaps-login -mode imap-login -addr "$(a "$p_imaps")" -tls -n "$tls_n"
	fi
	! row fetch || load "$t" "$r" fetch -mode fetch -addr "$(a "$p_imap")" -user user -user0 199 -users 1 -n "$fetch_n"
	[[ $p_smtp == - ]] || ! row smtp || load "$t" "$r" smtp -mode smtp -addr "$(a "$p_smtp")" -n "$smtp_n" -size 10240
	! row pop3 || load "$t" "$r" pop3 -mode pop3 -addr "$(a "$p_pop3")" -n "$pop3_n"
	if [[ $p_idle != - ]] && row idle; then
		# Each idle row on a fresh proxy, so that neither finds the
		# memory the other freed.
		stop_target "$t" && start_target "$t"
		load "$t" "$r" idle -mode idle -addr "$(a "$p_idle")" -user idle -users "$idle_n" -n "$idle_n" -conc 16 -idle-wait "$idle_wait" -cpu-window "$cpu_window"
		stop_target "$t" && start_target "$t"
		load "$t" "$r" idle-tls -mode idle -addr "$(a "$p_idles")" -tls -user idle -users "$idle_n" -n "$idle_n" -conc 16 -idle-wait "$idle_wait" -cpu-window "$cpu_window"
	fi
}

targets=(${TARGETS:-direct mailproxy nginx haproxy dovecot}) # TARGETS: a subset, for trying the script
{
	echo "# $(date -u +%FT%TZ) rounds=$rounds quick=$quick conc=$conc login_n=$login_n tls_n=$tls_n pop3_n=$pop3_n smtp_n=$smtp_n fetch_n=$fetch_n x 10 MiB idle_n=$idle_n"
} >"$out/results.txt"
loads=()
for ((r = 1; r <= rounds; r++)); do
	for ((i = 0; i < ${#targets[@]}; i++)); do
		t=${targets[$(((i + r - 1) % ${#targets[@]}))]}
		loads+=("$(cut -d' ' -f1 /proc/loadavg)")
		echo "# round $r: $t, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/results.txt"
		start_target "$t"
		run_target "$t" "$r"
		stop_target "$t"
	done
done

# --- the table ---------------------------------------------------------------------

table=$(awk '
function med(key,    k, i, j, t, a) {
	k = cnt[key]
	for (i = 1; i <= k; i++) a[i] = v[key, i] + 0
	for (i = 2; i <= k; i++)
		for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	lo = a[1]; hi = a[k]
	return (k % 2) ? a[(k+1)/2] : (a[k/2] + a[k/2+1]) / 2
}
function ratio_cell(t, row,    key, m) {
	key = t SUBSEP row
	if (cnt[key] == 0) return " n/a |"
	m = med(key)
	if (lo == hi) return sprintf(" %.2f |", m)
	return sprintf(" %.2f (%.2f–%.2f) |", m, lo, hi)
}
function abs_cell(t, row, f,    key, m) {
	key = t SUBSEP row
	if (cnt[key] == 0) return " n/a |"
	m = med(key)
	if (lo == hi) return sprintf(" " f " |", m)
	return sprintf(" " f " (" f "–" f ") |", m, lo, hi)
}
/^RESULT/ {
	delete kv
	for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
	t = kv["target"]; r = kv["round"]; row = kv["row"]
	x = (row == "fetch") ? kv["mbps"] : kv["rate"]
	if (row ~ /^idle/) {
		key = t SUBSEP row; v[key, ++cnt[key]] = kv["rss_per_session_b"] / 1024
		key = t SUBSEP row "-cpu"; v[key, ++cnt[key]] = kv["idle_cpu_pct"] * 10000 / kv["sessions"]
		next
	}
	rate[t, r, row] = x
	cpu[t, r, row] = (row == "fetch") ? kv["proxy_cpu_us_per_mib"] : kv["proxy_cpu_us"]
	rounds[r] = 1; rows[row] = 1; targets[t] = 1
}
END {
	for (r in rounds) for (row in rows) for (t in targets) {
		if (t == "direct" || !((t, r, row) in rate) || !(("direct", r, row) in rate) || rate["direct", r, row] == 0) continue
		key = t SUBSEP row; v[key, ++cnt[key]] = rate[t, r, row] / rate["direct", r, row]
		key = t SUBSEP row "-abs"; v[key, ++cnt[key]] = rate[t, r, row]
		key = t SUBSEP row "-pcpu"; v[key, ++cnt[key]] = cpu[t, r, row]
	}
	for (r in rounds) for (row in rows) if (("direct", r, row) in rate) { key = "direct" SUBSEP row "-abs"; v[key, ++cnt[key]] = rate["direct", r, row] }
	n = split("nginx haproxy dovecot mailproxy", T, " ")
	print "| workload (ratio to direct, median (min–max)) | nginx mail | HAProxy (TCP) | Dovecot proxy | mailproxy | direct |"
	print "| --- | --- | --- | --- | --- | --- |"
	split("imap-login imaps-login fetch smtp pop3", R, " ")
	L["imap-login"] = "IMAP logins/s, plain"
	L["imaps-login"] = "IMAP logins/s, implicit TLS (terminated by each proxy; direct: STARTTLS)"
	L["fetch"] = "FETCH 10 MiB, MB/s"
	L["smtp"] = "SMTP 10 KiB messages/s"
	L["pop3"] = "POP3 sessions/s"
	for (i = 1; i <= 5; i++) {
		s = "| " L[R[i]] " |"
		for (j = 1; j <= n; j++) s = s ratio_cell(T[j], R[i])
		s = s abs_cell("direct", R[i] "-abs", "%.0f")
		print s
	}
	for (i = 1; i <= 5; i++) {
		s = "| " L[R[i]] ": absolute |"
		for (j = 1; j <= n; j++) s = s abs_cell(T[j], R[i] "-abs", "%.0f")
		print s " |"
	}
	for (i = 1; i <= 5; i++) {
		s = "| " L[R[i]] ": proxy CPU µs per op" (R[i] == "fetch" ? " (per MiB)" : "") " |"
		for (j = 1; j <= n; j++) s = s abs_cell(T[j], R[i] "-pcpu", "%.0f")
		print s " – |"
	}
	s = "| memory per idle IMAP session, KiB (RSS growth / sessions) |"
	for (j = 1; j <= n; j++) s = s abs_cell(T[j], "idle", "%.1f")
	print s " – |"
	s = "| memory per idle IMAPS session, KiB (TLS terminated) |"
	for (j = 1; j <= n; j++) s = s abs_cell(T[j], "idle-tls", "%.1f")
	print s " – |"
	s = "| proxy CPU while idle, % of a core per 10,000 sessions |"
	for (j = 1; j <= n; j++) s = s abs_cell(T[j], "idle-cpu", "%.2f")
	print s " – |"
}' "$out/results.txt")

loadavg=$(printf '%s\n' "${loads[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%s–%s (median %s)", a[1], a[NR], a[int((NR+1)/2)]}')
cmd=bench/peers.sh
((quick)) && cmd+=" -quick"
[[ -z ${ROUNDS:-} ]] || cmd="ROUNDS=$ROUNDS $cmd"
cat >"$out/peers.md" <<EOF
# Benchmarks: mailproxy and the proxies users would pick instead

Written by \`$cmd\` on $(date -u +%F) (raw results: \`$out/results.txt\`).

- **Machine:** $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r); load average at the start of each target's turn: $loadavg (the machine is shared with other work, so rates move between rounds).
- **Backends:** integration/realmail (Dovecot $(dovecot --version | cut -d' ' -f1) ×2 on one Maildir, Postfix $(postconf -d -h mail_version 2>/dev/null)), and for the idle rows a fake IMAP backend (bench/compare/fakeimap) so that 1000 sessions do not need 1000 Dovecot processes.
- **Proxies:** mailproxy $version (defaults, log level warn); nginx $(nginx -v 2>&1 | sed 's/.*\///') mail module, 1 worker, auth_http by bench/compare/authhttp (its CPU and memory counted with nginx's); HAProxy $(haproxy -v | head -1 | cut -d' ' -f3) mode tcp, 1 thread, terminating TLS on the IMAPS port; Dovecot $(dovecot --version | cut -d' ' -f1) as a proxy (passdb proxy=y, login processes in high-performance mode).
- **Placement:** the proxy under test on core 0, backends and load client on core 1 (taskset). $rounds round(s), each target started afresh per round in rotated order; ratios are to the direct rate of the same round. Load: $conc connections at a time; $login_n plain and $tls_n TLS logins, $fetch_n FETCHes of a 10 MiB message, $smtp_n messages of 10 KiB (one per session), $pop3_n POP3 sessions, $idle_n idle sessions per idle row (logged in, one NOOP, RSS measured $idle_wait later, CPU over the next $cpu_window).

$table

How to read it: a ratio above 1 means the proxied path beat the direct one in that round (possible for TLS logins: direct is STARTTLS, one round trip more). The idle rows are RSS growth of all the proxy's processes (nginx: master, worker and auth_http; Dovecot: every process of the instance) over $idle_n sessions; for HAProxy and Dovecot's proxy the shared pages of their processes are counted in each process.
EOF
if [[ -n ${ROWS:-}${TARGETS:-} ]]; then # a partial run: not a table for BENCHMARKS.md
	echo
	echo "$table"
	echo
	echo "partial run (ROWS/TARGETS): BENCHMARKS.md left alone; raw results in $out"
	exit 0
fi
# The hand-written notes and the sections of bench/soak.sh and bench/store.sh
# (store, and store-real of BACKEND=dovecot) stay.
keep() { [[ -f $root/BENCHMARKS.md ]] && sed -n "/<!-- $1:begin -->/,/<!-- $1:end -->/p" "$root/BENCHMARKS.md" || true; }
notes=$(keep notes) soak=$(keep soak) store=$(keep store) store_real=$(keep store-real)
{
	cat "$out/peers.md"
	[[ -z $notes ]] || printf '\n%s\n' "$notes"
	[[ -z $soak ]] || printf '\n%s\n' "$soak"
	[[ -z $store ]] || printf '\n%s\n' "$store"
	[[ -z $store_real ]] || printf '\n%s\n' "$store_real"
} >"$root/BENCHMARKS.md"
echo
echo "$table"
echo
echo "BENCHMARKS.md written; raw results in $out"
