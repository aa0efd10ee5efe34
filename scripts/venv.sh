# Sourced by demo.sh and test.sh: make .venv with requirements-dev.txt (once per change of that file) and put
# it first on PATH. PYTHON picks the interpreter (default: python3.11, else python3; 3.10+ needed).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "error: $PY is Python < 3.10; set PYTHON=/path/to/python3.10+" >&2; exit 1; }
[ -x "$ROOT/.venv/bin/python" ] || "$PY" -m venv "$ROOT/.venv"
want=$(sha256sum "$ROOT/requirements-dev.txt" | cut -d' ' -f1)
if [ "$(cat "$ROOT/.venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  echo "Installing requirements-dev.txt into .venv (torch is ~4 GB the first time)..."
  "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
  echo "$want" > "$ROOT/.venv/.requirements.sha256"
fi
export PATH="$ROOT/.venv/bin:$PATH" MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
