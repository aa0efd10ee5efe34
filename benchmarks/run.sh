#!/usr/bin/env bash
# The whole benchmark suite, one command: bash benchmarks/run.sh   (about 20 minutes on 2 cores; run it on an
# otherwise idle machine). Each script prints its table and writes a JSON into benchmarks/results/.
source "$(dirname "$0")/../scripts/venv.sh"
cd "$ROOT"
python benchmarks/overhead.py
python benchmarks/tracking.py
python benchmarks/pipeline.py
