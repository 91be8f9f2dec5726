#!/usr/bin/env bash
# Set everything up and run the service under gunicorn on http://127.0.0.1:8000.
# Embedded defaults: SQLite (instance/profile-service.db) with demo data and an in-process cache.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh requirements.txt  # pip runs only when requirements.txt changed
export FLASK_APP=wsgi
.venv/bin/flask db upgrade
.venv/bin/flask seed --if-empty
# The in-process cache is private to one process, so without REDIS_URL one worker (with threads)
# runs; with REDIS_URL, sync workers, 2 per core, as measured best in docs/PERFORMANCE.md.
if [ -n "${REDIS_URL:-}" ]; then
  concurrency=(--workers "${WEB_CONCURRENCY:-$(( $(nproc) * 2 ))}" --worker-class sync)
else
  concurrency=(--workers 1 --threads "${WEB_THREADS:-4}")
fi
exec .venv/bin/gunicorn "${concurrency[@]}" --bind "${BIND:-127.0.0.1:8000}" wsgi:app  # the service logs one JSON access line per request itself
