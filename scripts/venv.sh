# Sourced by demo.sh and test.sh: make .venv hold exactly requirements-dev.lock (the template's dev environment,
# hash-pinned, made from requirements-dev.txt by scripts/lock.py), once per change of that lock, and put it first
# on PATH. Installs with uv: the one on PATH, else uv from the package index (the version the lock pins).
# PYTHON picks the interpreter (default: python3.11, else python3; 3.11+ needed).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "error: $PY is Python < 3.11; set PYTHON=/path/to/python3.11+" >&2; exit 1; }
LOCK="$ROOT/requirements-dev.lock"
want=$(sha256sum "$LOCK" | cut -d' ' -f1)
if [ "$(cat "$ROOT/.venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  UV=$(command -v uv || true)
  if [ -z "$UV" ] && [ ! -x "$ROOT/.venv/bin/uv" ]; then
    echo "Bootstrapping uv from the package index into .venv..."
    [ -x "$ROOT/.venv/bin/pip" ] || "$PY" -m venv "$ROOT/.venv"
    "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check "$(grep -o '^uv==[^ ]*' "$LOCK")"
  fi
  UV=${UV:-$ROOT/.venv/bin/uv}
  [ -x "$ROOT/.venv/bin/python" ] || "$UV" venv -q --python "$PY" "$ROOT/.venv"
  echo "Installing requirements-dev.lock into .venv with uv (torch is ~4 GB the first time)..."
  # sync: exactly the lock, hashes checked; what the lock lacks is removed (uv itself is in the lock).
  "$UV" pip sync -q --python "$ROOT/.venv/bin/python" --require-hashes "$LOCK"
  echo "$want" > "$ROOT/.venv/.requirements.sha256"
fi
export PATH="$ROOT/.venv/bin:$PATH" MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
