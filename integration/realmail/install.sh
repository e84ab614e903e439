#!/usr/bin/env bash
# Installs what the real-backend harness needs: Dovecot (IMAP, POP3, LMTP,
# ManageSieve with Pigeonhole), Postfix,
# swaks (with TLS), curl, python3, openssl, and iproute2 for the network
# namespace tests. Idempotent: does nothing when all are there.
#
# The packages must not leave a *system* Dovecot or Postfix running: the
# harness runs its own instances on loopback high ports, and a system one
# would grab ports 25/110/143 on every address. So:
#   * postfix is preseeded "No configuration" (no main.cf, no system instance);
#   * while installing, a policy-rc.d that forbids service starts is put in
#     place if the machine has none (removed afterwards);
#   * afterwards, a master pid that appeared during this install (and was not
#     there before) is stopped with `dovecot stop` / `postfix stop`.
# Must run as root (apt-get).
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# libnet-ssleay-perl + libio-socket-ssl-perl: swaks --tls (STARTTLS) needs them.
for p in dovecot-imapd dovecot-pop3d dovecot-lmtpd dovecot-managesieved postfix swaks curl openssl libnet-ssleay-perl libio-socket-ssl-perl; do
  pkg_installed "$p" || need_pkgs+=("$p")
done
# python3 may come from elsewhere (pyenv, /usr/local); only install if absent.
have python3 || need_pkgs+=(python3)
# iproute2: `ip netns` for the pair's failover test (integration/failover_linux_test.go).
have ip || need_pkgs+=(iproute2)
# chromium: the status page test drives it headless; systemd: systemd-analyze
# verifies dist/mailproxy.service.
for p in chromium systemd; do pkg_installed "$p" || need_pkgs+=("$p"); done

if [ "${#need_pkgs[@]}" -eq 0 ]; then
  echo "realmail/install.sh: all packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "realmail/install.sh: need root to install: ${need_pkgs[*]}" >&2
  exit 1
fi

# Returns the pid in $1 when that process is alive, else nothing.
live_pid() {
  local f=$1 pid
  [ -r "$f" ] || return 0
  pid=$(tr -dc '0-9' <"$f")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}
DOVECOT_PIDFILE=/run/dovecot/master.pid
POSTFIX_PIDFILE=/var/spool/postfix/pid/master.pid
dovecot_before=$(live_pid "$DOVECOT_PIDFILE")
postfix_before=$(live_pid "$POSTFIX_PIDFILE")

# Forbid service starts during the install, unless the admin already has a
# policy (then respect theirs and rely on the check below).
POLICY=/usr/sbin/policy-rc.d
policy_added=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# temporary, from mailproxy integration/realmail/install.sh\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  policy_added=1
fi
cleanup() { if [ "$policy_added" = 1 ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
echo "postfix postfix/mailname string localhost" | debconf-set-selections

echo "realmail/install.sh: installing ${need_pkgs[*]}"
# Other installs may hold the dpkg lock for a while: wait rather than fail.
apt-get -o DPkg::Lock::Timeout=600 update
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${need_pkgs[@]}"

# Stop a system instance only if this install started it.
dovecot_after=$(live_pid "$DOVECOT_PIDFILE")
if [ -n "$dovecot_after" ] && [ -z "$dovecot_before" ]; then
  echo "realmail/install.sh: package install started system dovecot (pid $dovecot_after); stopping it"
  dovecot stop || true
fi
postfix_after=$(live_pid "$POSTFIX_PIDFILE")
if [ -n "$postfix_after" ] && [ -z "$postfix_before" ]; then
  echo "realmail/install.sh: package install started system postfix (pid $postfix_after); stopping it"
  postfix stop || true
fi
echo "realmail/install.sh: done"
