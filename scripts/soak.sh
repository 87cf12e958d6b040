#!/usr/bin/env bash
# Soak test (docs/soak.md): builds in release and runs the ignored `soak` test against the
# release `s3sftp serve` binary, on loopback only, for a bounded time.
#
#   scripts/soak.sh                                  # 300 s, 50 clients
#   SOAK_SECONDS=60 SOAK_CLIENTS=10 scripts/soak.sh  # a quick smoke run
#
# Settings: SOAK_SECONDS, SOAK_CLIENTS, SOAK_SEED, SOAK_MEMORY_MIB, SOAK_THINK_MS,
# SOAK_KILL_RATE, SOAK_FAULT_EVERY_MS, SOAK_HOSTILE, SOAK_OUT (report and server log). An external S3
# server named by S3SFTP_TEST_S3_* (plain HTTP) is used instead of the embedded store.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SOAK_SECONDS:=300}"
: "${SOAK_CLIENTS:=50}"
if [ "$SOAK_SECONDS" -gt 3600 ] || [ "$SOAK_SECONDS" -lt 10 ]; then
  echo "soak.sh: SOAK_SECONDS must be between 10 and 3600" >&2
  exit 2
fi
if [ "$SOAK_CLIENTS" -gt 200 ] || [ "$SOAK_CLIENTS" -lt 1 ]; then
  echo "soak.sh: SOAK_CLIENTS must be between 1 and 200" >&2
  exit 2
fi
export SOAK_SECONDS SOAK_CLIENTS
exec cargo test --locked --release --test soak -- --ignored --nocapture --test-threads=1
