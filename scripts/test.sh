#!/usr/bin/env bash
# The template's test suite (extra arguments go to pytest). pytest exits non-zero when no test ran.
source "$(dirname "$0")/venv.sh"
cd "$ROOT"
exec python -m pytest "$@"
