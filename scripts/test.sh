#!/usr/bin/env bash
# The template's test suite (extra arguments go to pytest). pytest exits non-zero when no test ran.
source "$(dirname "$0")/venv.sh"
# Three tests need system packages: the model report renders in headless Chromium, an MLflow server runs on
# PostgreSQL, and the generated Dockerfile is built and run with podman (Debian's runc; a base image made with
# debootstrap; podman-compose for compose.yaml). Install Debian's packages when we can (root, apt-get); elsewhere
# those tests skip and say why.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
for tool in podman runc debootstrap podman-compose; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null) || echo "test.sh: could not install ${missing[*]}; their tests will skip"
fi
cd "$ROOT"
exec python -m pytest "$@"
