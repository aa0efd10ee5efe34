#!/usr/bin/env bash
# Bake a project with the default answers into build/demo/ and run its whole pipeline on the embedded store.
source "$(dirname "$0")/venv.sh"
OUT=${1:-$ROOT/build/demo}
rm -rf "$OUT" && mkdir -p "$OUT"
cookiecutter --no-input -o "$OUT" "$ROOT"
PROJECT=$(find "$OUT" -mindepth 1 -maxdepth 1 -type d)
cd "$PROJECT"
pip install -q --disable-pip-version-check -e .
echo "Set-up done in ${SECONDS}s; running the pipeline."
time dvc repro
for f in metrics/prepare.json metrics/train.json metrics/analyze.json; do
  [ -f "$f" ] && python -c 'import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[1]); [print(f"  {k:32} {v:.4g}" if isinstance(v, float) else f"  {k:32} {v}") for k, v in d.items()]' "$f"
done
cat <<MSG

Project:   $PROJECT
Metrics:   $PROJECT/metrics/*.json   (dvc metrics show)
Plots:     $PROJECT/plots/train/     (dvc plots show)
Model:     $PROJECT/models/model.safetensors
MLflow:    cd $PROJECT && $ROOT/.venv/bin/mlflow ui --backend-store-uri sqlite:///$PROJECT/mlflow.db
MSG
