#!/usr/bin/env bash
# Set everything up and run the whole test suite.
# Always: SQLite and fakeredis, plus the cache's integration tests on Redis at 127.0.0.1:6379 db 15
# (REDIS_URL_TEST). With DATABASE_URL=postgresql://... every database test also runs on PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh requirements-test.txt  # the service's requirements and the tests' own
exec .venv/bin/pytest "$@"
