#!/usr/bin/env bash
# Compares mailproxy with nginx's mail proxy and HAProxy (mode tcp) on the
# same fake IMAP backend, with the same client, on this machine.
#
#   bench/compare/run.sh                          5 rounds of every target, about 8 minutes
#   ROUNDS=3 bench/compare/run.sh
#   TARGETS="direct mailproxy nginx" bench/compare/run.sh
#   OUT=/tmp/cmp bench/compare/run.sh              keep configs, logs and raw results there
#   REV=HEAD bench/compare/run.sh                  mailproxy as committed (git archive), not the work tree
#   PHASES=login bench/compare/run.sh              only some of the phases idle,fetch,login
#
# Targets (TARGETS, space-separated; the default is all of them):
#   direct              the client talks to the backend itself
#   mailproxy           mailproxy, logging at warn and forward_client = false
#                       (nginx and HAProxy log nothing per session and send no ID)
#   mailproxy-defaults  mailproxy as configured out of the box: an info line per
#                       session (to a file) and an IMAP ID to the backend per login
#   mailproxy-info      the info lines without the ID (tells the two costs apart)
#   nginx               nginx's mail proxy, 2 workers, default proxy_buffer (one page),
#                       auth_http answered by bench/compare/authhttp
#   haproxy             HAProxy, mode tcp, 2 threads, defaults (no splicing)
#   nginx-buf64k        nginx with proxy_buffer 64k
#   haproxy-splice      HAProxy with option splice-auto
#
# What it does: installs nginx, its mail module and HAProxy from Debian's
# packages if they are missing (with policy-rc.d denying service starts, so
# no system service is started or touched); builds mailproxy and the three
# helpers under bench/compare/ (fakeimap: the backend; authhttp: nginx's
# auth_http; client: the load); starts the backend and the auth responder
# once; then for each round and each target (in an order rotated every
# round) starts the proxy afresh on 127.0.0.1, runs the client's three phases
# against it (idle sessions, FETCH, logins) and stops it. Everything listens
# on 127.0.0.1 high ports (PORT, default 41100, and the next few; away from the realmail harness's 21xxx-22xxx); every
# process it started is stopped by PID when it exits, however it exits.
# Configs, logs and the raw RESULT lines stay in OUT. At the end it prints
# the medians over the rounds as a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=${ROUNDS:-5}
targets=(${TARGETS:-direct mailproxy mailproxy-defaults mailproxy-info nginx nginx-buf64k haproxy haproxy-splice})
fetch_n=${FETCH_N:-1000}   # FETCHes of 1 MiB per round
login_n=${LOGIN_N:-4000}   # logins per round, 16 at a time
idle_n=${IDLE_N:-2000}     # idle sessions per round
phases=${PHASES:-idle,fetch,login}
rev=${REV:-}
port=${PORT:-41100}
out=${OUT:-$(mktemp -d /tmp/mailproxy-compare.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)

back_port=$((port + 43)) proxy_port=$((port + 44)) auth_port=$((port + 80))

# --- what is started, and stopping it -------------------------------------

started=()         # PIDs this script started and has not stopped yet
source bench/lib.sh
policy_created=""  # a policy-rc.d this script put there

cleanup() {
	local p
	for p in "${started[@]}"; do stop_pid "$p"; done
	if [[ -n $policy_created ]]; then rm -f "$policy_created"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- installing ----------------------------------------------------------

mail_module=/usr/lib/nginx/modules/ngx_mail_module.so
need=()
command -v nginx >/dev/null || need+=(nginx)
if ! nginx -V 2>&1 | grep -q -- '--with-mail ' && [[ ! -e $mail_module ]]; then need+=(libnginx-mod-mail); fi
command -v haproxy >/dev/null || need+=(haproxy)
if ((${#need[@]})); then
	[[ $(id -u) == 0 ]] || { echo "need root to install: ${need[*]}" >&2; exit 1; }
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		# Debian's way of saying "do not start the services you install".
		policy_created=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\nexit 101\n' >"$policy_created"
		chmod 755 "$policy_created"
	fi
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
	if [[ -n $policy_created ]]; then rm -f "$policy_created"; policy_created=""; fi
fi
load_mail=""
if ! nginx -V 2>&1 | grep -q -- '--with-mail '; then load_mail="load_module $mail_module;"; fi

# An idle session holds 2 descriptors in the proxy (6 in mailproxy, whose
# splice pipes linger), one in the client and one in the backend.
hard=$(ulimit -Hn); [[ $hard == unlimited ]] && hard=65536
ulimit -n "$hard" 2>/dev/null || true
if (($(ulimit -n) < 6 * idle_n + 1000)); then
	idle_n=$((($(ulimit -n) - 1000) / 6))
	echo "descriptor limit $(ulimit -n): IDLE_N lowered to $idle_n" >&2
fi

# --- building ------------------------------------------------------------

bin=$out/bin
mkdir -p "$bin"
go build -o "$bin/" ./bench/compare/fakeimap ./bench/compare/authhttp ./bench/compare/client
if [[ -n $rev ]]; then
	version=$(git rev-parse --short "$rev")
	rm -rf "$out/src" && mkdir -p "$out/src"
	git archive "$rev" | tar -x -C "$out/src"
	(cd "$out/src" && go build -o "$bin/" ./cmd/mailproxy)
else
	version=$(git rev-parse --short HEAD)
	[[ -z $(git status --porcelain -- cmd protocols proxy routing tls internal go.mod go.sum) ]] || version+="+work-tree-changes"
	go build -o "$bin/" ./cmd/mailproxy
fi

# --- starting ------------------------------------------------------------


write_mailproxy_config() { # FILE LEVEL FORWARD_CLIENT
	cat >"$1" <<-EOF
		[log]
		level = "$2"

		[admin]
		listen = ""

		[limits]
		auth_failure_delay = "0s"
		max_connections = 100000
		max_connections_per_ip = 100000

		[[listener]]
		name = "imap"
		protocol = "imap"
		address = "127.0.0.1:$proxy_port"
		pool = "main"

		[[pool]]
		name = "main"

		[[pool.backend]]
		name = "mail1"
		imap = "127.0.0.1:$back_port"
		forward_client = $3
	EOF
}

write_nginx_config() { # DIR EXTRA
	cat >"$1/nginx.conf" <<-EOF
		$load_mail
		daemon off;
		master_process on;
		worker_processes 2;
		worker_rlimit_nofile 20000;
		pid $1/nginx.pid;
		error_log $1/error.log warn;
		events { worker_connections 10000; }
		mail {
		    server_name bench.local;
		    auth_http 127.0.0.1:$auth_port/auth;
		    proxy_pass_error_message on;
		    imap_capabilities IMAP4rev1;
		    $2
		    server {
		        listen 127.0.0.1:$proxy_port;
		        protocol imap;
		        proxy on;
		        starttls off;
		    }
		}
	EOF
}

write_haproxy_config() { # FILE EXTRA
	cat >"$1" <<-EOF
		global
		    maxconn 6000
		    nbthread 2
		defaults
		    mode tcp
		    timeout connect 5s
		    timeout client 30m
		    timeout server 30m
		    $2
		frontend imap
		    bind 127.0.0.1:$proxy_port
		    default_backend mail
		backend mail
		    server mail1 127.0.0.1:$back_port
	EOF
}

# start_target NAME: starts the proxy (none for direct); sets $proxy_pid
# ("" for direct), $aux ("" or the auth responder) and $addr.
start_target() {
	local t=$1 dir=$out/$1
	mkdir -p "$dir"
	proxy_pid="" aux="" addr=127.0.0.1:$proxy_port
	case $t in
	direct) addr=127.0.0.1:$back_port; return ;;
	mailproxy | mailproxy-defaults | mailproxy-info)
		case $t in
		mailproxy) write_mailproxy_config "$dir/mailproxy.toml" warn false ;;
		mailproxy-info) write_mailproxy_config "$dir/mailproxy.toml" info false ;;
		*) write_mailproxy_config "$dir/mailproxy.toml" info true ;;
		esac
		start "$t" - "$proxy_port" "$bin/mailproxy" run -config "$dir/mailproxy.toml"
		;;
	nginx | nginx-buf64k)
		local extra=""
		[[ $t == nginx-buf64k ]] && extra="proxy_buffer 64k;"
		write_nginx_config "$dir" "$extra"
		nginx -t -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
		start "$t" - "$proxy_port" nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
		aux=$auth_pid
		;;
	haproxy | haproxy-splice)
		local extra=""
		[[ $t == haproxy-splice ]] && extra="option splice-auto"
		write_haproxy_config "$dir/haproxy.cfg" "$extra"
		haproxy -c -q -f "$dir/haproxy.cfg"
		start "$t" - "$proxy_port" haproxy -db -f "$dir/haproxy.cfg"
		;;
	*) echo "unknown target $t" >&2; exit 2 ;;
	esac
	proxy_pid=$pid
}

start backend - "$back_port" "$bin/fakeimap" -addr "127.0.0.1:$back_port" -size $((1 << 20))
back_pid=$pid
start authhttp - "$auth_port" "$bin/authhttp" -addr "127.0.0.1:$auth_port" -backend "127.0.0.1:$back_port"
auth_pid=$pid

{
	echo "# $(date -u +%FT%TZ) $(nproc) cores, $(uname -r), $(go version | cut -d' ' -f3)"
	echo "# nginx $(nginx -v 2>&1 | sed 's/.*\///'), haproxy $(haproxy -v | head -1 | cut -d' ' -f3), mailproxy $version"
	echo "# rounds=$rounds phases=$phases fetch_n=$fetch_n login_n=$login_n idle_n=$idle_n targets=${targets[*]}"
} | tee "$out/results.txt"

n=${#targets[@]}
for ((r = 1; r <= rounds; r++)); do
	for ((i = 0; i < n; i++)); do
		t=${targets[$(((i + r - 1) % n))]}
		echo "# round $r: $t, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/results.txt"
		start_target "$t"
		"$bin/client" -addr "$addr" -target "$t" -round "$r" \
			-proxy-pids "$proxy_pid" -aux-pids "$aux" -backend-pid "$back_pid" -phases "$phases" \
			-fetch-n "$fetch_n" -login-n "$login_n" -idle-n "$idle_n" -deadline 5m |
			tee -a "$out/results.txt"
		[[ -n $proxy_pid ]] && stop_pid "$proxy_pid"
	done
done

# --- medians -------------------------------------------------------------

echo
echo "Medians of $rounds rounds (min-max in brackets); CPU figures are per op, of that process only:"
echo
awk -v targets="${targets[*]}" '
function median(key,    k, i, j, t, a) {
	k = cnt[key]
	if (k == 0) return ""
	for (i = 1; i <= k; i++) a[i] = val[key, i] + 0
	for (i = 2; i <= k; i++)
		for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	lo[key] = a[1]; hi[key] = a[k]
	return (k % 2) ? a[(k+1)/2] : (a[k/2] + a[k/2+1]) / 2
}
function cell(t, phase, metric, f,    key, m) {
	key = t SUBSEP phase SUBSEP metric
	m = median(key)
	if (m == "" || (t == "direct" && metric !~ /^(MBps|logins_per_s|backend_|client_)/) || (metric == "aux_cpu_us" && t !~ /^nginx/)) return " – |"
	return sprintf(" " f " (" f "-" f ") |", m, lo[key], hi[key])
}
function row(label, phase, metric, f,    i, s, any) {
	if (f == "") f = "%.0f"
	for (i = 1; i <= nt; i++) if (cnt[t[i] SUBSEP phase SUBSEP metric] > 0) any = 1
	if (!any) return
	s = "| " label " |"
	for (i = 1; i <= nt; i++) s = s cell(t[i], phase, metric, f)
	print s
}
/^RESULT/ {
	delete kv
	for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
	for (k in kv) {
		key = kv["target"] SUBSEP kv["phase"] SUBSEP k
		val[key, ++cnt[key]] = kv[k]
	}
}
END {
	nt = split(targets, t, " ")
	s = "| |"; u = "| --- |"
	for (i = 1; i <= nt; i++) { s = s " " t[i] " |"; u = u " --- |" }
	print s; print u
	row("FETCH 1 MiB, MB/s", "fetch", "MBps")
	row("FETCH: proxy CPU per MiB, µs", "fetch", "proxy_cpu_us")
	row("FETCH: backend CPU per MiB, µs", "fetch", "backend_cpu_us")
	row("FETCH: client CPU per MiB, µs", "fetch", "client_cpu_us")
	row("logins/s, 16 clients", "login", "logins_per_s")
	row("login: proxy CPU per login, µs", "login", "proxy_cpu_us")
	row("login: auth_http CPU per login, µs", "login", "aux_cpu_us")
	row("login: backend CPU per login, µs", "login", "backend_cpu_us")
	row("login: client CPU per login, µs", "login", "client_cpu_us")
	row("idle: proxy RSS per session, B", "idle", "rss_b_per_session")
	row("idle: proxy RSS before, KiB", "idle", "rss_before_kib")
	row("idle: proxy fds per session", "idle", "fds_per_session", "%.2f")
}' "$out/results.txt"
echo
echo "raw results, configs and logs: $out"
