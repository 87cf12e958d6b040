#!/usr/bin/env bash
# The test command (README): unit tests, then the integration suite with real SSH clients
# against a real S3 HTTP server. With --external, the integration suite (tests/main.rs) against
# the S3 server named by S3SFTP_TEST_S3_*: the embedded store's own tests (embedded_s3) and
# the unit tests are skipped; the suites that use no S3 (users_*, fuzz_corpus) run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--external" ]; then
  : "${S3SFTP_TEST_S3_ENDPOINT:?set S3SFTP_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY)}"
  exec cargo test --locked --test integration -- --test-threads=2
fi
exec cargo test --locked --workspace -- --test-threads=2
