#!/usr/bin/env bash
# Create .venv if needed and pip-install the given requirements file into it, but only when a
# requirements*.txt file changed since the last install (their hash is kept in a stamp file in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
requirements="${1:-requirements.txt}"
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=".venv/.installed-${requirements//\//_}.sha256"
digest=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r "$requirements"
  echo "$digest" > "$stamp"
fi
