# bench/lib.sh — what the bench scripts share; sourced, not run. The caller
# sets $out (a directory for the processes' output) and started=() (the
# PIDs it must stop), and traps EXIT to stop_all.

# stop_pid PID: TERM, wait up to 5 s, then KILL; PID leaves $started.
stop_pid() {
	local pid=$1 i p keep=()
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	for p in "${started[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
	started=("${keep[@]}")
}

# stop_all: every process in $started.
stop_all() {
	local p
	for p in "${started[@]}"; do stop_pid "$p"; done
}

port_free() { ! ss -ltnH "sport = :$1" | grep -q .; }

# wait_port PORT PID: until something accepts on PORT, while PID lives.
wait_port() {
	local i
	for i in $(seq 100); do
		kill -0 "$2" 2>/dev/null || { echo "process $2 for port $1 died" >&2; return 1; }
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.05
	done
	echo "nothing listens on port $1" >&2
	return 1
}

# start NAME CORE PORT COMMAND...: runs COMMAND on CPU core CORE ("-": any)
# with its output in $out/NAME.out and .err, adds it to $started and
# waits until it accepts on PORT; sets $pid. The lock descriptors (8, 9)
# are not the command's to keep.
start() {
	local name=$1 core=$2 p=$3
	shift 3
	port_free "$p" || { echo "port $p is taken; set PORT" >&2; exit 1; }
	[[ $core == - ]] || set -- taskset -c "$core" "$@"
	"$@" >"$out/$name.out" 2>"$out/$name.err" 8>&- 9>&- &
	pid=$!
	started+=("$pid")
	wait_port "$p" "$pid" || { cat "$out/$name.err" >&2; exit 1; }
}
