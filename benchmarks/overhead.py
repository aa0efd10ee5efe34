"""Fixed costs: bake time, each stage's import and tracking set-up, and the no-op `dvc repro` against DVC's own
no-op on trivial stages.

    .venv/bin/python benchmarks/overhead.py [--repeats 5] [--out benchmarks/results]

Bakes the default segmentation project (git + DVC initialised), runs the pipeline once on small params, then
times, `--repeats` times each, interleaved: `dvc repro` with nothing to do in that project and in a bare DVC
repository with six trivial stages (`cp` from one file to the next); `python -c "import <pkg>.<stage>"` per
stage; and `store.connect` to the embedded store. Targets: no-op `dvc repro` <= 1.5 s.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from pipeline import cpu_model  # noqa: E402

from helpers import TINY, bake, project_env  # noqa: E402  (after the sys.path insert)

STAGES = ("prepare", "train", "analyze", "optimize", "robustness", "register")


def timed(cmd, cwd, env):
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def trivial_dvc_repo(path, env):
    """Six chained stages that copy a file: what DVC itself costs when there is nothing to do."""
    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=path, env=env, check=True)
    (path / "s0.txt").write_text("x\n")
    stages = {f"s{i}": {"cmd": f"cp s{i - 1}.txt s{i}.txt", "deps": [f"s{i - 1}.txt"], "outs": [f"s{i}.txt"]}
              for i in range(1, 7)}
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    subprocess.run(["dvc", "repro", "-q"], cwd=path, env=env, check=True)


def summary(values):
    return {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
            "max_s": round(max(values), 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bake_s = []
        for i in range(args.repeats):
            start = time.perf_counter()
            project = bake(tmp / f"bake{i}", init_git=True)
            bake_s.append(time.perf_counter() - start)
        env = project_env(project)
        package = project.name.replace("-", "_")
        params = yaml.safe_load((project / "params.yaml").read_text())
        for section, values in TINY.items():
            params[section].update(values)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run(["dvc", "repro"], cwd=project, env=env, check=True, capture_output=True)
        trivial = tmp / "trivial"
        trivial_dvc_repo(trivial, env)

        noop = {"project": [], "trivial": []}
        imports = {stage: [] for stage in STAGES}
        connect = []
        connect_code = (f"import time; from {package}.lib import params, store; t = time.perf_counter(); "
                        "store.connect(params.load()['mlflow'], store.repo_root()); "
                        "print(time.perf_counter() - t)")
        for _ in range(args.repeats):
            noop["project"].append(timed(["dvc", "repro"], project, env))
            noop["trivial"].append(timed(["dvc", "repro"], trivial, env))
            for stage in STAGES:
                imports[stage].append(timed([sys.executable, "-c", f"import {package}.{stage}"], project, env))
            out = subprocess.run([sys.executable, "-c", connect_code], cwd=project, env=env, check=True,
                                 capture_output=True, text=True).stdout
            connect.append(float(out.strip().splitlines()[-1]))
        baseline = timed([sys.executable, "-c", "pass"], project, env)

    result = {"machine": {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
              "repeats": args.repeats, "bake": summary(bake_s),
              "noop_repro": {k: summary(v) for k, v in noop.items()},
              "python_startup_s": round(baseline, 3),
              "stage_import": {k: summary(v) for k, v in imports.items()},
              "tracking_connect": summary(connect)}
    out = Path(args.out) / f"overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"bake (git + dvc init + first commit): {result['bake']['median_s']:.2f} s median")
    print(f"no-op dvc repro: project (6 stages) {result['noop_repro']['project']['median_s']:.2f} s, "
          f"trivial 6-stage repo {result['noop_repro']['trivial']['median_s']:.2f} s; target <= 1.5 s")
    print("| stage | import s (median) |\n|---|---|")
    for stage, s in result["stage_import"].items():
        print(f"| {stage} | {s['median_s']:.2f} |")
    print(f"python startup {baseline:.2f} s; store.connect {result['tracking_connect']['median_s']:.3f} s")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
