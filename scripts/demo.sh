#!/usr/bin/env bash
# Bake a project with the default answers into build/demo/, install its uv.lock into its own .venv and run its
# whole pipeline on the embedded store.
source "$(dirname "$0")/venv.sh"
OUT=${1:-$ROOT/build/demo}
rm -rf "$OUT" && mkdir -p "$OUT"
cookiecutter --no-input -o "$OUT" "$ROOT"
PROJECT=$(find "$OUT" -mindepth 1 -maxdepth 1 -type d)
cd "$PROJECT"
uv sync --frozen --quiet  # the versions the template's lock holds: already in uv's cache from venv.sh
echo "Set-up done in ${SECONDS}s; running the pipeline."
time uv run --frozen dvc repro
python - <<'PY'
import json
train, robust = json.load(open("metrics/train.json")), json.load(open("metrics/robustness.json"))
reg = json.load(open("metrics/register.json"))
print("\ntrain:", ", ".join(f"{k} {v:.4g}" for k, v in train.items()))
print(open("reports/optimize.md").read())
print(f"robustness: score {robust['score']:.3f} ({robust['level']}), security findings "
      f"{robust['security/pass']} pass / {robust['security/warn']} warn / {robust['security/fail']} fail")
print("register:", ", ".join(f"{k} {v}" for k, v in reg.items() if not k.startswith("gate/")))
PY
cat <<MSG

Project:   $PROJECT
Metrics:   $PROJECT/metrics/*.json   (every figure; dvc metrics show: the headline ones)
Plots:     $PROJECT/plots/           (dvc plots show)
Reports:   $PROJECT/reports/model.html (everything on one page; also analyze.html, optimize.md, robustness.html)
Models:    $PROJECT/models/model.safetensors, $PROJECT/models/deployable/
Registry:  models:/<slug>@champion (mlflow.pyfunc.load_model)
MLflow:    cd $PROJECT && uv run mlflow ui --backend-store-uri sqlite:///mlflow.db
MSG
