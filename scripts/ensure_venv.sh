#!/usr/bin/env bash
# Create .venv from requirements.txt when it is missing or when requirements.txt changed since it was made.
set -euo pipefail
cd "$(dirname "$0")/.."
want=$(sha256sum requirements.txt | cut -d' ' -f1)
have=$(cat .venv/.requirements.sha256 2>/dev/null || true)
if [ -x .venv/bin/python ] && [ "$want" = "$have" ]; then
  exit 0
fi
echo "[venv] creating .venv from requirements.txt (about 2-3 minutes, ~5 GB)"
start=$(date +%s)
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e . 2>/dev/null || true
echo "$want" > .venv/.requirements.sha256
echo "[venv] ready in $(( $(date +%s) - start )) s"
