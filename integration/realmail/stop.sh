#!/usr/bin/env bash
# stop.sh DIR — stop exactly the Dovecot and Postfix instances that
# start.sh DIR started, and wait (bounded) until their processes are gone.
# Idempotent: nothing running (or no DIR/env) is success. Signals only the
# pids recorded in DIR/env or the instances' own pid files, after checking
# that each still belongs to this DIR, and their child processes.
set -uo pipefail

say() { echo "realmail/stop.sh: $*" >&2; }

[ $# -eq 1 ] || { say "usage: stop.sh DIR"; exit 2; }
[ -d "$1" ] || exit 0
DIR=$(cd "$1" && pwd -P)
[ -f "$DIR/env" ] || exit 0
# shellcheck disable=SC1091
. "$DIR/env"

pidfile() { [ -s "$1" ] && tr -dc '0-9' <"$1"; }

# is_dovecot PID CONF: PID is a live dovecot master started with -c CONF.
is_dovecot() {
  [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] &&
    tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "-c $2"
}
# is_postfix PID: PID is a live postfix master whose pid file is in our queue.
is_postfix() {
  [ -n "$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = master ] &&
    [ "$(pidfile "$POSTFIX_QUEUE_DIR/pid/master.pid")" = "$1" ]
}

# descendants PID: all processes below PID (children first-level and deeper).
descendants() {
  local all queue=("$1") p c
  all=$(ps -eo pid=,ppid=)
  while [ ${#queue[@]} -gt 0 ]; do
    p=${queue[0]}; queue=("${queue[@]:1}")
    while read -r c; do
      echo "$c"; queue+=("$c")
    done < <(awk -v pp="$p" '$2 == pp {print $1}' <<<"$all")
  done
}

watch=()
for inst in A B; do
  conf_var=DOVECOT_${inst}_CONF pid_var=DOVECOT_${inst}_PID base_var=DOVECOT_${inst}_BASE_DIR
  conf=${!conf_var:-} base=${!base_var:-}
  [ -n "$conf" ] || continue
  for pid in "${!pid_var:-}" "$(pidfile "$base/master.pid")"; do
    if is_dovecot "$pid" "$conf"; then
      mapfile -t kids < <(descendants "$pid")
      watch+=("$pid" "${kids[@]}")
      # In the background: a Dovecot master takes ~3 s to exit and
      # `dovecot stop` waits for it; stop all instances at once.
      { dovecot -c "$conf" stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null; } &
      break
    fi
  done
done
if [ -n "${POSTFIX_CONFIG_DIR:-}" ]; then
  for pid in "${POSTFIX_PID:-}" "$(pidfile "$POSTFIX_QUEUE_DIR/pid/master.pid")"; do
    if is_postfix "$pid"; then
      mapfile -t kids < <(descendants "$pid")
      watch+=("$pid" "${kids[@]}")
      { postfix -c "$POSTFIX_CONFIG_DIR" stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null; } &
      break
    fi
  done
fi
wait

[ ${#watch[@]} -gt 0 ] || exit 0

alive() { local p out=(); for p in "${watch[@]}"; do kill -0 "$p" 2>/dev/null && out+=("$p"); done; echo "${out[*]}"; }

# Masters shut their children down; give them 10 s, then TERM, then KILL the
# stragglers (each one a pid we recorded above, nothing found by name).
for ((i = 0; i < 100; i++)); do
  [ -z "$(alive)" ] && exit 0
  sleep 0.1
done
left=$(alive)
say "still running after 10s, sending TERM: $left"
# shellcheck disable=SC2086 # $left is a list of pids
kill -TERM $left 2>/dev/null
for ((i = 0; i < 20; i++)); do
  [ -z "$(alive)" ] && exit 0
  sleep 0.1
done
left=$(alive)
say "still running, sending KILL: $left"
# shellcheck disable=SC2086
kill -KILL $left 2>/dev/null
sleep 0.2
left=$(alive)
[ -z "$left" ] || { say "could not stop: $left"; exit 1; }
exit 0
