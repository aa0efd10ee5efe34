"""Default `dvc repro` (prepare + train) from a fresh bake, per task: wall time and quality.

    .venv/bin/python benchmarks/pipeline.py [--tasks segmentation classification] [--out benchmarks/results]

Bakes with the default answers, runs `dvc repro` with the generated params untouched, and writes one JSON
per run with the machine it ran on. Targets (issue 2): <= 5 minutes on 2 CPU cores; val dice >= 0.9
(segmentation), val accuracy >= 0.9 (classification).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import bake, project_env  # noqa: E402


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def run(task, workdir):
    project = bake(workdir, task=task, init_git=True)
    start = time.perf_counter()
    subprocess.run(["dvc", "repro"], cwd=project, env=project_env(project), check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    metric = "dice" if task == "segmentation" else "accuracy"
    m = json.loads((project / "metrics/train.json").read_text())
    return {"task": task, "wall_s": round(wall, 1), "train_time_s": round(m["train_time_s"], 1),
            "epochs_run": m["epochs_run"], f"val_{metric}": round(m[f"best_val/{metric}"], 4),
            f"test_{metric}": round(m[f"test/{metric}"], 4)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["segmentation", "classification"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version()}
    results = []
    for task in args.tasks:
        with tempfile.TemporaryDirectory() as tmp:
            r = run(task, Path(tmp))
        print(json.dumps(r), flush=True)
        results.append(r)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"pipeline-{stamp}.json").write_text(json.dumps({"machine": machine, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
