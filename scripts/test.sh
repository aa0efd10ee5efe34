#!/usr/bin/env bash
# The template's test suite (extra arguments go to pytest). pytest exits non-zero when no test ran.
source "$(dirname "$0")/venv.sh"
# The model-report test renders the page in headless Chromium: install Debian's package when we can (root,
# apt-get); elsewhere that one test skips and says why.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
        || echo "test.sh: could not install chromium; the report rendering test will skip"
fi
cd "$ROOT"
exec python -m pytest "$@"
