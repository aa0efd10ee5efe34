#!/usr/bin/env bash
# The template's test suite (extra arguments go to pytest). pytest exits non-zero when no test ran.
source "$(dirname "$0")/venv.sh"
# Two tests need system packages: the model report renders in headless Chromium, and an MLflow server runs on
# PostgreSQL. Install Debian's packages when we can (root, apt-get); elsewhere those tests skip and say why.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null) || echo "test.sh: could not install ${missing[*]}; their tests will skip"
fi
cd "$ROOT"
exec python -m pytest "$@"
