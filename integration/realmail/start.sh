#!/usr/bin/env bash
# start.sh DIR — start two real Dovecot instances (dovecot-a, dovecot-b) and
# one Postfix on 127.0.0.1 high ports, everything (config, sockets, queues,
# logs, mail) under DIR. They share one Maildir root, so a message delivered
# by Postfix is readable over IMAP/POP3 from either Dovecot, exactly like
# backends on one NFS store. See README.md for users, ports and DIR/env.
#
# Touches nothing outside DIR except: it may add o+x (search, not read) to DIR
# and to DIR's ancestors below the temp dir so the unprivileged mail, dovecot
# and postfix users can reach DIR/mail and the sockets. Must run as root
# (Dovecot and Postfix switch users). Never touches system instances.
#
# Port overrides: export any *_PORT variable named in DIR/env before calling.
set -euo pipefail

die() { echo "realmail/start.sh: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: start.sh DIR"
[ "$(id -u)" -eq 0 ] || die "must run as root (Dovecot/Postfix drop privileges to mail/dovecot/postfix)"
for cmd in dovecot doveadm postfix postconf openssl setpriv; do
  command -v "$cmd" >/dev/null || die "$cmd not found; run integration/realmail/install.sh"
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
DIR=$(cd "$1" && pwd -P)
# Dovecot/Postfix config syntax and unix socket paths (max 108 bytes, Dovecot
# puts e.g. run/token-login/tokenlogin under base_dir) limit the path.
[[ $DIR =~ ^[A-Za-z0-9._/+-]+$ ]] || die "DIR must contain only [A-Za-z0-9._/+-]: $DIR"
[ "${#DIR}" -le 72 ] || die "DIR path too long for unix sockets (${#DIR} > 72 chars): $DIR"

if [ -f "$DIR/env" ]; then
  # shellcheck disable=SC1091
  old_pids=$(. "$DIR/env"; echo "${DOVECOT_A_PID:-} ${DOVECOT_B_PID:-} ${POSTFIX_PID:-}")
  for p in $old_pids; do
    if kill -0 "$p" 2>/dev/null; then die "an instance from $DIR/env is still running (pid $p); run stop.sh $DIR first"; fi
  done
fi

HOST=127.0.0.1
DOMAIN=example.test
NUSERS=220
PASSWORD=pw
MASTER_USER=proxy
MASTER_PASSWORD=proxypw
# Dovecot's oauth2 passdb asks here; a test runs the introspection service.
OAUTH2_INTROSPECTION_PORT=${OAUTH2_INTROSPECTION_PORT:-21180}

DOVECOT_A_IMAP_PORT=${DOVECOT_A_IMAP_PORT:-21143}
DOVECOT_A_POP3_PORT=${DOVECOT_A_POP3_PORT:-21110}
DOVECOT_A_IMAP_HAPROXY_PORT=${DOVECOT_A_IMAP_HAPROXY_PORT:-21144}
DOVECOT_A_POP3_HAPROXY_PORT=${DOVECOT_A_POP3_HAPROXY_PORT:-21111}
DOVECOT_B_IMAP_PORT=${DOVECOT_B_IMAP_PORT:-22143}
DOVECOT_B_POP3_PORT=${DOVECOT_B_POP3_PORT:-22110}
DOVECOT_B_IMAP_HAPROXY_PORT=${DOVECOT_B_IMAP_HAPROXY_PORT:-22144}
DOVECOT_B_POP3_HAPROXY_PORT=${DOVECOT_B_POP3_HAPROXY_PORT:-22111}
POSTFIX_SMTP_PORT=${POSTFIX_SMTP_PORT:-21025}
POSTFIX_SMTP_HAPROXY_PORT=${POSTFIX_SMTP_HAPROXY_PORT:-21026}
DOVECOT_A_LMTP_PORT=${DOVECOT_A_LMTP_PORT:-21024}
DOVECOT_A_SIEVE_PORT=${DOVECOT_A_SIEVE_PORT:-21190}
DOVECOT_B_LMTP_PORT=${DOVECOT_B_LMTP_PORT:-22024}
DOVECOT_B_SIEVE_PORT=${DOVECOT_B_SIEVE_PORT:-22190}
# Postfix delivers the LMTP users (below) to mailproxy's LMTP listener here;
# a test's mailproxy listens on it while it runs. Nothing of ours listens
# there otherwise: their mail waits in Postfix's queue.
MAILPROXY_LMTP_PORT=${MAILPROXY_LMTP_PORT:-21924}
# userN with N in [LMTP_USER_FROM, NUSERS) get their mail through mailproxy's
# LMTP; the others through Postfix's virtual(8), as before.
LMTP_USER_FROM=200

MAIL_USER=mail
MAIL_UID=$(id -u "$MAIL_USER")
MAIL_GID=$(id -g "$MAIL_USER")
for u in dovecot dovenull postfix; do id "$u" >/dev/null 2>&1 || die "system user $u missing; run install.sh"; done
getent group postdrop >/dev/null || die "group postdrop missing; run install.sh"

ALL_PORTS="$DOVECOT_A_IMAP_PORT $DOVECOT_A_POP3_PORT $DOVECOT_A_IMAP_HAPROXY_PORT $DOVECOT_A_POP3_HAPROXY_PORT
  $DOVECOT_B_IMAP_PORT $DOVECOT_B_POP3_PORT $DOVECOT_B_IMAP_HAPROXY_PORT $DOVECOT_B_POP3_HAPROXY_PORT
  $POSTFIX_SMTP_PORT $POSTFIX_SMTP_HAPROXY_PORT
  $DOVECOT_A_LMTP_PORT $DOVECOT_A_SIEVE_PORT $DOVECOT_B_LMTP_PORT $DOVECOT_B_SIEVE_PORT"

# A stale server on one of our ports would answer the greeting check and hide
# a failed start, so refuse to start when any port already accepts.
for p in $ALL_PORTS; do
  if (exec 3<>"/dev/tcp/$HOST/$p") 2>/dev/null; then
    die "$HOST:$p already accepts connections (a previous harness not stopped?)"
  fi
done

# --- permissions ------------------------------------------------------------
# mail (uid $MAIL_UID) delivers and reads mail, dovecot/dovenull/postfix use
# sockets and files under DIR: every ancestor needs the search bit for others.
# Fix DIR itself and ancestors below the temp dir (Go's t.TempDir makes 0700
# dirs); refuse to chmod anything else.
TMPROOT=$(cd "${TMPDIR:-/tmp}" && pwd -P)
d=$DIR
while [ "$d" != / ]; do
  if ! setpriv --reuid="$MAIL_UID" --regid="$MAIL_GID" --clear-groups test -x "$d" 2>/dev/null; then
    if [ "$d" = "$DIR" ] || [[ $d == "$TMPROOT"/* ]]; then
      chmod o+x "$d"
    else
      die "user $MAIL_USER cannot traverse $d; use a DIR under $TMPROOT or chmod o+x $d"
    fi
  fi
  d=$(dirname "$d")
done

# --- layout -------------------------------------------------------------------
mkdir -p "$DIR"/{a,b}/{run,state} "$DIR"/tls "$DIR"/mail "$DIR"/home \
         "$DIR"/postfix/{etc,spool,data}
chown "$MAIL_UID:$MAIL_GID" "$DIR/mail" "$DIR/home"
chmod 0750 "$DIR/mail" "$DIR/home"
chown postfix "$DIR/postfix/data"   # master.lock etc.; postfix check insists

if [ ! -s "$DIR/tls/cert.pem" ]; then
  # Throwaway self-signed cert: STARTTLS/implicit TLS work, tests trust it as CA.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:mail.$DOMAIN" \
    -keyout "$DIR/tls/key.pem" -out "$DIR/tls/cert.pem" 2>/dev/null
  chmod 0600 "$DIR/tls/key.pem"
  chmod 0644 "$DIR/tls/cert.pem"
fi

# Users: canonical name is domainless "userN"; Dovecot strips any @domain and
# lowercases (auth_username_format = %Ln), Postfix accepts userN@example.test.
# Both resolve to the Maildir $DIR/mail/userN.
{
  for ((i = 0; i < NUSERS; i++)); do
    printf 'user%d:{PLAIN}%s::::%s/home/user%d::\n' "$i" "$PASSWORD" "$DIR" "$i"
  done
} >"$DIR/users"
printf '%s:{PLAIN}%s::::::\n' "$MASTER_USER" "$MASTER_PASSWORD" >"$DIR/masters"
chmod 0644 "$DIR/users" "$DIR/masters"   # test passwords only

# --- dovecot ----------------------------------------------------------------
# dovecot_conf NAME IMAP POP3 IMAP_HAPROXY POP3_HAPROXY LMTP SIEVE
dovecot_conf() {
  local n=$1 imap=$2 pop3=$3 imaph=$4 pop3h=$5 lmtp=$6 sieve=$7 base="$DIR/$1"
  cat <<EOF
# Generated by mailproxy integration/realmail/start.sh for Dovecot 2.3.
# Standalone: includes nothing from /etc/dovecot.
instance_name = dovecot-$n
base_dir = $base/run
state_dir = $base/state
listen = $HOST
protocols = imap pop3 lmtp sieve
shutdown_clients = yes

log_path = $base/dovecot.log
info_log_path = $base/dovecot.log
debug_log_path = $base/dovecot.log
log_timestamp = "%Y-%m-%d %H:%M:%S "
auth_verbose = yes
verbose_proctitle = yes
# The greeting names the backend so tests can tell where a session landed.
login_greeting = dovecot-$n ready.

# mailproxy sits on loopback: trust its ID x-originating-ip / XCLIENT and
# PROXY headers. Connections from these nets also count as "secured".
login_trusted_networks = 127.0.0.0/8 ::1
haproxy_trusted_networks = 127.0.0.0/8 ::1
disable_plaintext_auth = no
auth_mechanisms = plain login oauthbearer xoauth2
# "User7", "user7" and "user7@example.test" are all user7.
auth_username_format = %Ln
# Master login: LOGIN user7*proxy proxypw, or SASL PLAIN authzid=user7
# authcid=proxy.
auth_master_user_separator = *

ssl = yes
ssl_cert = <$DIR/tls/cert.pem
ssl_key = <$DIR/tls/key.pem

# One Maildir root shared by both instances (indexes inside it, as on NFS).
mail_location = maildir:$DIR/mail/%n
mail_uid = $MAIL_UID
mail_gid = $MAIL_GID
first_valid_uid = $MAIL_UID
first_valid_gid = $MAIL_GID
default_internal_user = dovecot
default_login_user = dovenull

namespace inbox {
  inbox = yes
  mailbox Drafts {
    special_use = \\Drafts
    auto = subscribe
  }
  mailbox Sent {
    special_use = \\Sent
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
    auto = subscribe
  }
}

passdb {
  driver = passwd-file
  args = scheme=PLAIN $DIR/masters
  master = yes
  pass = yes
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN $DIR/users
}
# OAUTHBEARER and XOAUTH2 only: the token is checked by the introspection
# service at OAUTH2_INTROSPECTION_PORT (RFC 7662, POST token=...).
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $DIR/oauth2.conf.ext
}
userdb {
  driver = passwd-file
  args = $DIR/users
}

service imap-login {
  inet_listener imap {
    address = $HOST
    port = $imap
  }
  inet_listener imaps {
    port = 0
  }
  inet_listener imap_haproxy {
    address = $HOST
    port = $imaph
    haproxy = yes
  }
}
service pop3-login {
  inet_listener pop3 {
    address = $HOST
    port = $pop3
  }
  inet_listener pop3s {
    port = 0
  }
  inet_listener pop3_haproxy {
    address = $HOST
    port = $pop3h
    haproxy = yes
  }
}
service auth {
  # Postfix smtpd_sasl_type = dovecot uses this (SMTP AUTH on the backend).
  unix_listener auth-postfix {
    mode = 0660
    user = postfix
    group = postfix
  }
}
service stats {
  # imap/pop3 run as $MAIL_USER, not in group dovecot.
  unix_listener stats-writer {
    mode = 0666
  }
}
protocol imap {
  # Tests open many sessions per user from 127.0.0.1 (default 10).
  mail_max_userip_connections = 1000
}
protocol pop3 {
  mail_max_userip_connections = 1000
}

# LMTP (mailproxy delivers here) and ManageSieve (Pigeonhole); the scripts
# live in the shared home directories, like the Maildirs.
service lmtp {
  inet_listener lmtp {
    address = $HOST
    port = $lmtp
  }
}
service managesieve-login {
  inet_listener sieve {
    address = $HOST
    port = $sieve
  }
}
protocol lmtp {
  postmaster_address = postmaster@$DOMAIN
}
plugin {
  sieve = file:~/sieve;active=~/.dovecot.sieve
}
EOF
}
dovecot_conf a "$DOVECOT_A_IMAP_PORT" "$DOVECOT_A_POP3_PORT" "$DOVECOT_A_IMAP_HAPROXY_PORT" "$DOVECOT_A_POP3_HAPROXY_PORT" \
  "$DOVECOT_A_LMTP_PORT" "$DOVECOT_A_SIEVE_PORT" >"$DIR/a/dovecot.conf"
dovecot_conf b "$DOVECOT_B_IMAP_PORT" "$DOVECOT_B_POP3_PORT" "$DOVECOT_B_IMAP_HAPROXY_PORT" "$DOVECOT_B_POP3_HAPROXY_PORT" \
  "$DOVECOT_B_LMTP_PORT" "$DOVECOT_B_SIEVE_PORT" >"$DIR/b/dovecot.conf"

# --- postfix ----------------------------------------------------------------
PF="$DIR/postfix"
cat >"$PF/etc/main.cf" <<EOF
# Generated by mailproxy integration/realmail/start.sh for Postfix 3.x.
compatibility_level = 3.6
queue_directory = $PF/spool
data_directory = $PF/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = $PF/maillog
maillog_file_prefixes = $PF

myhostname = mail.$DOMAIN
mydomain = $DOMAIN
myorigin = \$myhostname
mydestination = localhost
inet_interfaces = $HOST
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
biff = no
append_dot_mydomain = no
smtpd_banner = \$myhostname ESMTP postfix (mailproxy realmail)

# Nothing leaves this machine: no relay, no DNS, no local(8) mailboxes.
relayhost =
default_transport = error:5.7.1 outbound mail disabled in the realmail harness
relay_transport = error:5.7.1 outbound mail disabled in the realmail harness
local_transport = error:5.1.1 local delivery disabled in the realmail harness
alias_maps =
alias_database =
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
smtpd_peername_lookup = no

# userN@$DOMAIN -> $DIR/mail/userN/ (Maildir), owned by $MAIL_USER like Dovecot's.
virtual_mailbox_domains = $DOMAIN
virtual_mailbox_base = $DIR/mail
virtual_mailbox_maps = texthash:$PF/etc/vmailbox
virtual_uid_maps = static:$MAIL_UID
virtual_gid_maps = static:$MAIL_GID
virtual_minimum_uid = $MAIL_UID
# The LMTP users go through mailproxy's LMTP listener instead (a site puts
# virtual_transport = lmtp:inet:HOST:PORT; here only some users do, so the
# other tests keep virtual(8)).
transport_maps = texthash:$PF/etc/transport

# mailproxy on loopback may rewrite the client identity.
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_authorized_xforward_hosts = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination

smtpd_tls_security_level = may
smtpd_tls_cert_file = $DIR/tls/cert.pem
smtpd_tls_key_file = $DIR/tls/key.pem
smtpd_tls_auth_only = no
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = $DIR/a/run/auth-postfix
EOF

cat >"$PF/etc/master.cf" <<EOF
# Generated by mailproxy integration/realmail/start.sh. No chroot, no smtp(8)
# client, no local(8): only what accepting and virtual(8) delivery needs.
# service type  private unpriv  chroot  wakeup  maxproc command + args
$HOST:$POSTFIX_SMTP_PORT inet n - n - - smtpd
$HOST:$POSTFIX_SMTP_HAPROXY_PORT inet n - n - - smtpd
  -o smtpd_upstream_proxy_protocol=haproxy
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF

{
  for ((i = 0; i < NUSERS; i++)); do printf 'user%d@%s user%d/\n' "$i" "$DOMAIN" "$i"; done
} >"$PF/etc/vmailbox"
{
  for ((i = LMTP_USER_FROM; i < NUSERS; i++)); do
    printf 'user%d@%s lmtp:inet:%s:%s\n' "$i" "$DOMAIN" "$HOST" "$MAILPROXY_LMTP_PORT"
  done
} >"$PF/etc/transport"

cat >"$DIR/oauth2.conf.ext" <<EOF
introspection_mode = post
introspection_url = http://$HOST:$OAUTH2_INTROSPECTION_PORT/introspect
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
EOF
chmod 0644 "$DIR/oauth2.conf.ext"

# --- env file -----------------------------------------------------------------
write_env() {
  cat >"$DIR/env.tmp" <<EOF
# Written by mailproxy integration/realmail/start.sh; sourceable by sh.
REALMAIL_DIR=$DIR
REALMAIL_HOST=$HOST
REALMAIL_DOMAIN=$DOMAIN
REALMAIL_USER_PREFIX=user
REALMAIL_USER_COUNT=$NUSERS
REALMAIL_PASSWORD=$PASSWORD
REALMAIL_MASTER_USER=$MASTER_USER
REALMAIL_MASTER_PASSWORD=$MASTER_PASSWORD
REALMAIL_MAIL_ROOT=$DIR/mail
REALMAIL_MAIL_UID=$MAIL_UID
REALMAIL_MAIL_GID=$MAIL_GID
REALMAIL_TLS_CERT=$DIR/tls/cert.pem
REALMAIL_TLS_KEY=$DIR/tls/key.pem
OAUTH2_INTROSPECTION_PORT=$OAUTH2_INTROSPECTION_PORT
DOVECOT_A_CONF=$DIR/a/dovecot.conf
DOVECOT_A_BASE_DIR=$DIR/a/run
DOVECOT_A_LOG=$DIR/a/dovecot.log
DOVECOT_A_IMAP_PORT=$DOVECOT_A_IMAP_PORT
DOVECOT_A_POP3_PORT=$DOVECOT_A_POP3_PORT
DOVECOT_A_IMAP_HAPROXY_PORT=$DOVECOT_A_IMAP_HAPROXY_PORT
DOVECOT_A_POP3_HAPROXY_PORT=$DOVECOT_A_POP3_HAPROXY_PORT
DOVECOT_A_LMTP_PORT=$DOVECOT_A_LMTP_PORT
DOVECOT_A_SIEVE_PORT=$DOVECOT_A_SIEVE_PORT
DOVECOT_A_PID=${DOVECOT_A_PID:-}
DOVECOT_B_CONF=$DIR/b/dovecot.conf
DOVECOT_B_BASE_DIR=$DIR/b/run
DOVECOT_B_LOG=$DIR/b/dovecot.log
DOVECOT_B_IMAP_PORT=$DOVECOT_B_IMAP_PORT
DOVECOT_B_POP3_PORT=$DOVECOT_B_POP3_PORT
DOVECOT_B_IMAP_HAPROXY_PORT=$DOVECOT_B_IMAP_HAPROXY_PORT
DOVECOT_B_POP3_HAPROXY_PORT=$DOVECOT_B_POP3_HAPROXY_PORT
DOVECOT_B_LMTP_PORT=$DOVECOT_B_LMTP_PORT
DOVECOT_B_SIEVE_PORT=$DOVECOT_B_SIEVE_PORT
DOVECOT_B_PID=${DOVECOT_B_PID:-}
POSTFIX_CONFIG_DIR=$PF/etc
POSTFIX_QUEUE_DIR=$PF/spool
POSTFIX_LOG=$PF/maillog
POSTFIX_SMTP_PORT=$POSTFIX_SMTP_PORT
POSTFIX_SMTP_HAPROXY_PORT=$POSTFIX_SMTP_HAPROXY_PORT
POSTFIX_PID=${POSTFIX_PID:-}
MAILPROXY_LMTP_PORT=$MAILPROXY_LMTP_PORT
REALMAIL_LMTP_USER_FROM=$LMTP_USER_FROM
EOF
  mv "$DIR/env.tmp" "$DIR/env"
}

# Read a pid file, waiting (bounded) for it to appear.
read_pid() {
  local f=$1 i pid
  for ((i = 0; i < 100; i++)); do
    if [ -s "$f" ]; then
      pid=$(tr -dc '0-9' <"$f")
      if [ -n "$pid" ]; then echo "$pid"; return 0; fi
    fi
    sleep 0.05
  done
  return 1
}

show_logs() {
  for f in "$DIR/a/dovecot.log" "$DIR/b/dovecot.log" "$PF/maillog" "$DIR/postfix-start.log"; do
    [ -f "$f" ] || continue
    echo "----- tail $f" >&2
    tail -n 30 "$f" >&2
  done
}

started=0
on_exit() {
  local rc=$?
  if [ "$started" -ne 1 ]; then
    show_logs
    echo "realmail/start.sh: start failed; stopping what was started" >&2
    "$HERE/stop.sh" "$DIR" >&2 || true
  fi
  exit "$rc"
}
trap on_exit EXIT

DOVECOT_A_PID='' DOVECOT_B_PID='' POSTFIX_PID=''
write_env   # so stop.sh knows the config paths even if a start below fails

rm -f "$DIR"/{a,b}/dovecot.log "$PF/maillog"
dovecot -c "$DIR/a/dovecot.conf"
DOVECOT_A_PID=$(read_pid "$DIR/a/run/master.pid") || die "dovecot-a wrote no pid"
write_env
dovecot -c "$DIR/b/dovecot.conf"
DOVECOT_B_PID=$(read_pid "$DIR/b/run/master.pid") || die "dovecot-b wrote no pid"
write_env

# `postfix start` runs its own permission/config check (postfix-script check-fatal).
postfix -c "$PF/etc" start >"$DIR/postfix-start.log" 2>&1 || die "postfix start failed"
POSTFIX_PID=$(read_pid "$PF/spool/pid/master.pid") || die "postfix wrote no pid"
write_env

# --- wait for greetings ---------------------------------------------------------
# greets PORT PREFIX QUIT: read the greeting, say goodbye politely.
greets() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    IFS= read -r -t 2 line <&3 || exit 1
    printf "%s\r\n" "$3" >&3
    [[ $line == "$2"* ]]' "$HOST" "$1" "$2" "$3" 2>/dev/null
}
checks=(
  "$DOVECOT_A_IMAP_PORT|* OK|a LOGOUT"
  "$DOVECOT_A_POP3_PORT|+OK|QUIT"
  "$DOVECOT_B_IMAP_PORT|* OK|a LOGOUT"
  "$DOVECOT_B_POP3_PORT|+OK|QUIT"
  "$POSTFIX_SMTP_PORT|220 |QUIT"
  "$DOVECOT_A_LMTP_PORT|220 |QUIT"
  "$DOVECOT_B_LMTP_PORT|220 |QUIT"
  "$DOVECOT_A_SIEVE_PORT|\"IMPLEMENTATION\"|LOGOUT"
  "$DOVECOT_B_SIEVE_PORT|\"IMPLEMENTATION\"|LOGOUT"
)
deadline=$((SECONDS + 20))
for c in "${checks[@]}"; do
  IFS='|' read -r port prefix quit <<<"$c"
  until greets "$port" "$prefix" "$quit"; do
    [ "$SECONDS" -lt "$deadline" ] || die "no greeting on $HOST:$port within 20s"
    sleep 0.1
  done
done

started=1
echo "realmail: dovecot-a pid $DOVECOT_A_PID imap $DOVECOT_A_IMAP_PORT pop3 $DOVECOT_A_POP3_PORT;" \
  "dovecot-b pid $DOVECOT_B_PID imap $DOVECOT_B_IMAP_PORT pop3 $DOVECOT_B_POP3_PORT;" \
  "postfix pid $POSTFIX_PID smtp $POSTFIX_SMTP_PORT; env in $DIR/env"
