#!/usr/bin/env bash
# The test command (README): unit tests, then the integration suite with real SSH clients
# against a real S3 HTTP server. With --external, only the suites that make sense against
# the S3 server named by S3SFTP_TEST_S3_* (the embedded store's own tests are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--external" ]; then
  : "${S3SFTP_TEST_S3_ENDPOINT:?set S3SFTP_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY)}"
  exec cargo test --locked --test sftp_openssh --test sftp_protocol --test scp_legacy --test hardening --test secrets_in_logs --test users_live --test s3_faults --test s3_fault_logs --test s3_requests --test proxy_protocol --test upload_order -- --test-threads=2
fi
exec cargo test --locked --workspace -- --test-threads=2
