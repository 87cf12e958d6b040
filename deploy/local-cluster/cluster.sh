#!/usr/bin/env bash
# A local s3sftp cluster on loopback, no containers: a 3-node Garage cluster (replication
# factor 3), three s3sftp gateways sharing one host key set and one users file, and HAProxy
# in front of them (TCP mode, PROXY protocol v2, health checks on each gateway's /readyz).
# It is the deployment docs/scale-out.md describes for real machines, shrunk onto one host.
#
#   deploy/local-cluster/cluster.sh up            start everything, print how to connect
#                                                 (after a down without --purge: start the
#                                                 same cluster again, data included)
#   deploy/local-cluster/cluster.sh down [--purge] stop everything (--purge: delete the state)
#   deploy/local-cluster/cluster.sh status        what runs, and what HAProxy thinks of it
#   deploy/local-cluster/cluster.sh start-gateway N   (re)start gateway N (1-3) if it is down
#   deploy/local-cluster/cluster.sh stop-gateway N    SIGTERM gateway N and wait for it to exit
#
# Settings (environment):
#   S3SFTP_CLUSTER_DIR   state directory [/tmp/s3sftp-cluster]; everything lives there
#   S3SFTP_CLUSTER_PORT  HAProxy's SFTP port [2200]; the other ports follow from it:
#                        gateways SSH +1..+3, gateways /metrics+/readyz +11..+13,
#                        Garage S3 API +21..+23, Garage RPC +31..+33, HAProxy stats +40
#   S3SFTP_BIN           the s3sftp binary [target/release/s3sftp of this checkout, or PATH]
#   GARAGE_BIN           the garage binary [garage on PATH]
#   HAPROXY_BIN          the haproxy binary [haproxy on PATH, or /usr/sbin/haproxy]
#   ORPHAN_AGE           the gateways' --orphan-age-hours [24h]
#   ORPHAN_SWEEP         the gateways' --orphan-sweep-hours [1h]
#   DRAIN_DELAY          the gateways' --drain-delay [5s]
#   SHUTDOWN_GRACE       the gateways' --shutdown-grace [60s]
#
# Processes are started detached (setsid) and remembered by pid files in the state
# directory; `down` stops only the processes whose pid files it finds there (and checks each
# one's command line still names the state directory before signalling it).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${S3SFTP_CLUSTER_DIR:-/tmp/s3sftp-cluster}
base=${S3SFTP_CLUSTER_PORT:-2200}
bucket=s3sftp
user=demo
nodes=(1 2 3)

lb_port=$base
stats_port=$((base + 40))
gw_port() { echo $((base + $1)); }
metrics_port() { echo $((base + 10 + $1)); }
s3_port() { echo $((base + 20 + $1)); }
rpc_port() { echo $((base + 30 + $1)); }

die() {
  echo "cluster: $*" >&2
  exit 1
}
say() { echo "cluster: $*"; }

find_bins() {
  if [ -n "${S3SFTP_BIN:-}" ]; then
    s3sftp=$S3SFTP_BIN
  elif [ -x "$repo/target/release/s3sftp" ]; then
    s3sftp=$repo/target/release/s3sftp
  elif [ -n "${CARGO_TARGET_DIR:-}" ] && [ -x "$CARGO_TARGET_DIR/release/s3sftp" ]; then
    s3sftp=$CARGO_TARGET_DIR/release/s3sftp
  else
    s3sftp=$(command -v s3sftp || true)
  fi
  [ -n "$s3sftp" ] && [ -x "$s3sftp" ] ||
    die "s3sftp not found: build it with 'cargo build --release' or set S3SFTP_BIN"
  garage=${GARAGE_BIN:-$(command -v garage || true)}
  [ -n "$garage" ] && [ -x "$garage" ] ||
    die "garage not found: install it with 'cargo install garage --locked' (or set GARAGE_BIN)"
  haproxy=${HAPROXY_BIN:-$(command -v haproxy || echo /usr/sbin/haproxy)}
  [ -x "$haproxy" ] || die "haproxy not found: install it with 'apt-get install haproxy' (or set HAPROXY_BIN)"
  command -v ssh-keygen >/dev/null || die "ssh-keygen not found (package openssh-client)"
  command -v openssl >/dev/null || die "openssl not found"
}

# Whether the process in pid file $1 is alive and still ours (its command line names the
# state directory), so a recycled pid is never signalled.
alive() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$state"
}

# launch PIDFILE LOG CMD...: runs CMD detached in its own session; the process writes its
# own pid (so the pid is the program's, not a wrapper's).
launch() {
  local pidfile=$1 log=$2
  shift 2
  rm -f "$pidfile"
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" >>"$log" 2>&1 </dev/null &
  for _ in $(seq 50); do
    [ -s "$pidfile" ] && return 0
    sleep 0.1
  done
  die "could not start $1"
}

# stop PIDFILE NAME [SECONDS]: SIGTERM, wait, then SIGKILL.
stop() {
  local pidfile=$1 name=$2 wait=${3:-30} pid
  if ! alive "$pidfile"; then
    rm -f "$pidfile"
    return 0
  fi
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $((wait * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name did not stop within ${wait}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  say "stopped $name (pid $pid)"
}

port_free() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
# As the servers bind: a port that only has connections in TIME_WAIT is free.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

wait_port() {
  python3 - "$1" "$2" <<'PY'
import socket, sys, time
for _ in range(300):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(f"cluster: {sys.argv[2]} is not listening on port {sys.argv[1]} after 60s")
PY
}

# wait_ready N: until gateway N's /readyz answers 200 (S3 answered its probe).
wait_ready() {
  local port
  port=$(metrics_port "$1")
  for _ in $(seq 300); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; then
      return 0
    fi
    alive "$state/gw/$1/pid" || die "gateway $1 exited; see $state/gw/$1/log"
    sleep 0.2
  done
  die "gateway $1 is not ready after 60s; see $state/gw/$1/log"
}

g() {
  local n=$1
  shift
  "$garage" -c "$state/garage/n$n/garage.toml" "$@"
}

garage_up() {
  local secret n dir id ids=()
  secret=$(openssl rand -hex 32)
  for n in "${nodes[@]}"; do
    dir=$state/garage/n$n
    mkdir -p "$dir/meta" "$dir/data"
    cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$(rpc_port "$n")"
rpc_public_addr = "127.0.0.1:$(rpc_port "$n")"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$(s3_port "$n")"
root_domain = ".s3.garage.localhost"
EOF
    chmod 600 "$dir/garage.toml"
    launch "$dir/pid" "$dir/log" "$garage" -c "$dir/garage.toml" server
  done
  for n in "${nodes[@]}"; do
    wait_port "$(rpc_port "$n")" "garage node $n (RPC)"
    wait_port "$(s3_port "$n")" "garage node $n (S3 API)"
  done
  for n in "${nodes[@]}"; do
    for _ in $(seq 50); do
      id=$(g "$n" node id -q 2>/dev/null | cut -d@ -f1) && [ -n "$id" ] && break
      sleep 0.2
    done
    [ -n "$id" ] || die "garage node $n has no node id; see $state/garage/n$n/log"
    ids+=("$id")
  done
  # Node 1 connects to the others; gossip does the rest.
  g 1 node connect "${ids[1]}@127.0.0.1:$(rpc_port 2)" >/dev/null
  g 1 node connect "${ids[2]}@127.0.0.1:$(rpc_port 3)" >/dev/null
  # One node per zone: with replication factor 3 every block and every metadata entry is
  # on all three, and any two of them make a quorum.
  for n in "${nodes[@]}"; do
    g 1 layout assign -z "dc$n" -c 10G "${ids[$((n - 1))]}" >/dev/null
  done
  g 1 layout apply --version 1 >/dev/null
  # Wait until every node has the layout (a fresh node answers S3 with 503 before).
  for _ in $(seq 100); do
    if [ "$(g 1 status 2>/dev/null | grep -c 'dc[123]')" -ge 3 ]; then break; fi
    sleep 0.2
  done
  # Garage key ids are GK + 24 hex digits, secrets 64 hex digits.
  access_key=GK$(openssl rand -hex 12)
  secret_key=$(openssl rand -hex 32)
  g 1 key import --yes -n s3sftp "$access_key" "$secret_key" >/dev/null
  g 1 bucket create "$bucket" >/dev/null
  g 1 bucket allow --read --write --owner "$bucket" --key s3sftp >/dev/null
  say "garage: 3 nodes (zones dc1 dc2 dc3, replication factor 3), bucket $bucket"
}

identity_up() {
  mkdir -p "$state/hostkeys"
  ssh-keygen -q -t ed25519 -N '' -C s3sftp-cluster -f "$state/hostkeys/ssh_host_ed25519_key"
  ssh-keygen -q -t ecdsa -b 256 -N '' -C s3sftp-cluster -f "$state/hostkeys/ssh_host_ecdsa_key"
  ssh-keygen -q -t rsa -b 3072 -N '' -C s3sftp-cluster -f "$state/hostkeys/ssh_host_rsa_key"
  password=$(openssl rand -base64 18 | tr -d '/+=')
  printf '%s\n' "$password" | "$s3sftp" users --users-file "$state/users.json" \
    add "$user" --prefix "users/$user/" --password-stdin >/dev/null
  say "one host key set for all gateways in $state/hostkeys; users file $state/users.json"
}

write_env() {
  umask 077
  cat >"$state/cluster.env" <<EOF
# Written by cluster.sh up: what the gateways, the kill test and status need to know.
S3SFTP_CLUSTER_DIR=$state
S3SFTP_CLUSTER_PORT=$base
S3SFTP_BIN=$s3sftp
GARAGE_BIN=$garage
HAPROXY_BIN=$haproxy
CLUSTER_BUCKET=$bucket
CLUSTER_USER=$user
CLUSTER_PASSWORD=$password
CLUSTER_S3_ACCESS_KEY=$access_key
CLUSTER_S3_SECRET_KEY=$secret_key
CLUSTER_S3_ENDPOINTS=http://127.0.0.1:$(s3_port 1),http://127.0.0.1:$(s3_port 2),http://127.0.0.1:$(s3_port 3)
CLUSTER_LB_PORT=$lb_port
CLUSTER_GATEWAY_PORTS=$(gw_port 1),$(gw_port 2),$(gw_port 3)
CLUSTER_METRICS_PORTS=$(metrics_port 1),$(metrics_port 2),$(metrics_port 3)
CLUSTER_STATS_PORT=$stats_port
CLUSTER_ORPHAN_AGE=${ORPHAN_AGE:-24h}
CLUSTER_ORPHAN_SWEEP=${ORPHAN_SWEEP:-1h}
CLUSTER_DRAIN_DELAY=${DRAIN_DELAY:-5s}
CLUSTER_SHUTDOWN_GRACE=${SHUTDOWN_GRACE:-60s}
EOF
  umask 022
}

# Each gateway's command line, in a script of its own so a gateway restarts exactly as it
# first started (start-gateway, the kill test). Gateway N talks to Garage node N.
write_gateway() {
  local n=$1 dir=$state/gw/$1
  mkdir -p "$dir/state"
  cat >"$dir/run.sh" <<EOF
#!/usr/bin/env bash
# Gateway $n of the local cluster (written by cluster.sh up).
set -a
. "$state/cluster.env"
set +a
export S3SFTP_S3_ACCESS_KEY=\$CLUSTER_S3_ACCESS_KEY S3SFTP_S3_SECRET_KEY=\$CLUSTER_S3_SECRET_KEY
exec "$s3sftp" serve \\
  --listen 127.0.0.1:$(gw_port "$n") \\
  --state-dir "$dir/state" \\
  --host-key "$state/hostkeys/ssh_host_ed25519_key" \\
  --host-key "$state/hostkeys/ssh_host_ecdsa_key" \\
  --host-key "$state/hostkeys/ssh_host_rsa_key" \\
  --users-file "$state/users.json" \\
  --bucket $bucket \\
  --s3-endpoint http://127.0.0.1:$(s3_port "$n") \\
  --s3-region garage \\
  --s3-path-style \\
  --proxy-protocol \\
  --proxy-trusted-cidrs 127.0.0.1/32 \\
  --penalty-exempt-cidrs 127.0.0.0/8 \\
  --metrics-listen 127.0.0.1:$(metrics_port "$n") \\
  --drain-delay ${DRAIN_DELAY:-5s} \\
  --shutdown-grace ${SHUTDOWN_GRACE:-60s} \\
  --orphan-age-hours ${ORPHAN_AGE:-24h} \\
  --orphan-sweep-hours ${ORPHAN_SWEEP:-1h}
EOF
  chmod 700 "$dir/run.sh"
}

start_gateway() {
  local n=$1 dir=$state/gw/$1
  [ -x "$dir/run.sh" ] || die "no gateway $n in $state (run: $0 up)"
  if alive "$dir/pid"; then
    say "gateway $n already runs (pid $(cat "$dir/pid"))"
    return 0
  fi
  echo "=== start $(date -u +%FT%TZ)" >>"$dir/log"
  launch "$dir/pid" "$dir/log" "$dir/run.sh"
  wait_ready "$n"
  say "gateway $n ready: ssh 127.0.0.1:$(gw_port "$n"), /readyz http://127.0.0.1:$(metrics_port "$n")/readyz (pid $(cat "$dir/pid"))"
}

haproxy_up() {
  local dir=$state/haproxy
  mkdir -p "$dir"
  cat >"$dir/haproxy.cfg" <<EOF
# HAProxy in front of the s3sftp gateways (written by cluster.sh up; see
# docs/scale-out-cluster.md for what each line is for).
global
    log stdout format raw local0 info
    maxconn 4000

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    # SSH sessions sit idle between commands: the gateways close idle ones themselves
    # (--idle-timeout, 10 minutes), so HAProxy must not cut them sooner.
    timeout client 1h
    timeout server 1h
    timeout check 2s

frontend sftp
    bind 127.0.0.1:$lb_port
    default_backend gateways

backend gateways
    balance leastconn
    # A connection refused by a dead gateway (before the checks notice) is tried on another.
    option redispatch
    retries 3
    # The health check is HTTP on each gateway's operations port: /readyz answers 503 from
    # the moment the gateway gets SIGTERM (for --drain-delay, while it still accepts) and
    # when S3 stopped answering its probes.
    option httpchk GET /readyz
    http-check expect status 200
    # Every connection begins with a PROXY v2 header carrying the client's address (the
    # health checks do not: they go to another port). inter 1s fall 2: a gateway is out
    # within about 2 s of turning unready, well inside its 5 s drain delay.
    default-server send-proxy-v2 check inter 1s fall 2 rise 2
    server gw1 127.0.0.1:$(gw_port 1) check port $(metrics_port 1)
    server gw2 127.0.0.1:$(gw_port 2) check port $(metrics_port 2)
    server gw3 127.0.0.1:$(gw_port 3) check port $(metrics_port 3)

listen stats
    mode http
    bind 127.0.0.1:$stats_port
    stats enable
    stats uri /
    stats refresh 2s
EOF
  "$haproxy" -c -q -f "$dir/haproxy.cfg" || die "haproxy refuses $dir/haproxy.cfg"
  launch "$dir/pid" "$dir/log" "$haproxy" -db -f "$dir/haproxy.cfg"
  wait_port "$stats_port" haproxy
  say "haproxy: sftp on 127.0.0.1:$lb_port, stats on http://127.0.0.1:$stats_port/"
}

# `up` on a cluster stopped by `down` (without --purge): its processes start again as they
# were, with their data, keys and users.
resume() {
  set -a
  # shellcheck disable=SC1091
  . "$state/cluster.env"
  set +a
  base=$S3SFTP_CLUSTER_PORT
  lb_port=$base
  stats_port=$((base + 40))
  password=$CLUSTER_PASSWORD
  local n dir
  for n in "${nodes[@]}"; do
    dir=$state/garage/n$n
    alive "$dir/pid" || launch "$dir/pid" "$dir/log" "$GARAGE_BIN" -c "$dir/garage.toml" server
  done
  for n in "${nodes[@]}"; do
    wait_port "$(s3_port "$n")" "garage node $n (S3 API)"
  done
  say "garage: 3 nodes running"
  for n in "${nodes[@]}"; do
    start_gateway "$n"
  done
  dir=$state/haproxy
  if ! alive "$dir/pid"; then
    launch "$dir/pid" "$dir/log" "$HAPROXY_BIN" -db -f "$dir/haproxy.cfg"
    wait_port "$stats_port" haproxy
  fi
  say "haproxy: sftp on 127.0.0.1:$lb_port, stats on http://127.0.0.1:$stats_port/"
}

print_connect() {
  cat <<EOF

The cluster is up (state in $state).
Connect through HAProxy:

    sftp -P $lb_port $user@127.0.0.1        password: $password

(The password is also in $state/cluster.env. Each gateway refuses connections that do not
come through HAProxy: it expects a PROXY header from 127.0.0.1.)
Status: $0 status    Stop: $0 down [--purge]
EOF
}

cmd_up() {
  if [ -f "$state/cluster.env" ]; then
    resume
    sleep 2
    print_connect
    return 0
  fi
  find_bins
  local p
  for p in $lb_port $stats_port $(gw_port 1) $(gw_port 2) $(gw_port 3) \
    $(metrics_port 1) $(metrics_port 2) $(metrics_port 3) $(s3_port 1) $(s3_port 2) \
    $(s3_port 3) $(rpc_port 1) $(rpc_port 2) $(rpc_port 3); do
    port_free "$p" || die "port $p is in use: pick another base with S3SFTP_CLUSTER_PORT"
  done
  mkdir -p "$state"
  chmod 700 "$state"
  # shellcheck disable=SC2064 # $0 and $state are meant to be expanded now
  trap "[ \$? -eq 0 ] || echo 'cluster: up did not finish: see the logs under $state; \"$0 down --purge\" stops what started' >&2" EXIT
  "$s3sftp" --version
  "$garage" --version
  local version
  # Not `| head -1`: under pipefail, haproxy's SIGPIPE would end the script.
  version=$("$haproxy" -v)
  echo "${version%%$'\n'*}"
  garage_up
  identity_up
  write_env
  local n
  for n in "${nodes[@]}"; do
    write_gateway "$n"
    start_gateway "$n"
  done
  haproxy_up
  # HAProxy starts with every server up; give the first checks a moment to confirm.
  sleep 2
  print_connect
}

cmd_down() {
  local purge=${1:-}
  [ -d "$state" ] || {
    say "nothing in $state"
    return 0
  }
  local n
  stop "$state/haproxy/pid" haproxy 10
  for n in "${nodes[@]}"; do
    stop "$state/gw/$n/pid" "gateway $n" 90
  done
  for n in "${nodes[@]}"; do
    stop "$state/garage/n$n/pid" "garage node $n" 30
  done
  if [ "$purge" = "--purge" ]; then
    rm -rf "$state"
    say "removed $state"
  fi
}

cmd_status() {
  [ -f "$state/cluster.env" ] || die "no cluster in $state"
  local n what pidfile ready
  for n in "${nodes[@]}"; do
    pidfile=$state/garage/n$n/pid
    if alive "$pidfile"; then what="runs (pid $(cat "$pidfile"))"; else what=down; fi
    echo "garage node $n   S3 127.0.0.1:$(s3_port "$n")  $what"
  done
  for n in "${nodes[@]}"; do
    pidfile=$state/gw/$n/pid
    if alive "$pidfile"; then what="runs (pid $(cat "$pidfile"))"; else what=down; fi
    ready=$(curl -sS "http://127.0.0.1:$(metrics_port "$n")/readyz" 2>/dev/null | head -1 || true)
    echo "gateway $n       SSH 127.0.0.1:$(gw_port "$n")  $what  readyz: ${ready:-no answer}"
  done
  pidfile=$state/haproxy/pid
  if alive "$pidfile"; then what="runs (pid $(cat "$pidfile"))"; else what=down; fi
  echo "haproxy         SSH 127.0.0.1:$lb_port  $what"
  curl -fsS "http://127.0.0.1:$stats_port/;csv" 2>/dev/null |
    awk -F, '$1=="gateways" && $2 ~ /^gw/ {printf "  haproxy sees %s: %s (%s sessions now, %s in all)\n", $2, $18, $5, $8}' ||
    true
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down "${2:-}" ;;
  status) cmd_status ;;
  start-gateway)
    start_gateway "${2:?usage: $0 start-gateway N}"
    ;;
  stop-gateway) stop "$state/gw/${2:?usage: $0 stop-gateway N}/pid" "gateway $2" 90 ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
