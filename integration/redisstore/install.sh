#!/usr/bin/env bash
# Installs redis-server (Debian package) for the Redis store tests in this
# folder. Idempotent. The tests start their own redis-server on 127.0.0.1
# with their own directory and port; the package must not leave a system
# instance running on 6379, so service starts are forbidden during the
# install (a policy-rc.d, unless the machine has one) and a system instance
# this install started is stopped. Must run as root (apt-get).
set -euo pipefail

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
if pkg_installed redis-server; then
  echo "redisstore/install.sh: redis-server present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "redisstore/install.sh: need root to install redis-server" >&2
  exit 1
fi

POLICY=/usr/sbin/policy-rc.d
policy_added=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# temporary, from mailproxy integration/redisstore/install.sh\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  policy_added=1
fi
cleanup() { if [ "$policy_added" = 1 ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

before=$(pgrep -x redis-server || true)
echo "redisstore/install.sh: installing redis-server"
apt-get -o DPkg::Lock::Timeout=600 update
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends redis-server
after=$(pgrep -x redis-server || true)
if [ -n "$after" ] && [ -z "$before" ]; then
  echo "redisstore/install.sh: the package started a system redis-server; stopping it"
  (service redis-server stop || kill $after) || true
fi
echo "redisstore/install.sh: done"
